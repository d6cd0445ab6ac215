"""The offer as sent: each distinct offer encoded once with its ETag; a request only splices in its token."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import msgspec

from services.callback.schemas import Lang, Offer
from services.callback.usecases.intake import Intake

__all__ = ["OfferResponder", "OfferWork", "offer_etag"]

# Encodings kept: one per site, zone, language and "not before" asked for lately (as the intake's offers).
ENCODINGS_KEPT = 1024
# Stands in for the form token while an offer is encoded; the JSON string it becomes is cut out.
_MARK = "\x1eform-token\x1e"
_MARK_JSON = msgspec.json.encode(_MARK)
_encode = msgspec.json.Encoder().encode


def offer_etag(offer: Offer) -> str:
    """A weak ETag over what the visitor sees (promise kind and text, slots, challenge). The exact promised
    instants and the form token are left out: an offer that reads the same is the same offer a few
    seconds later, and the client's earlier token stays good until it is spent."""
    seen = (
        offer.open_now,
        None if offer.promise is None else (offer.promise.kind, offer.promise.text),
        offer.slot_minutes,
        offer.slot_ranges,
        offer.pow,
    )
    return 'W/"' + hashlib.sha256(_encode(seen)).hexdigest()[:24] + '"'


class OfferWork(msgspec.Struct, kw_only=True):
    """Offers answered and bodies encoded (for tests and profiling: encoding is per offer, not per view)."""

    answered: int = 0
    encoded: int = 0


class _Encoded(msgspec.Struct, frozen=True, kw_only=True):
    bare: Offer  # the offer without its form token
    etag: str
    head: bytes  # the JSON body up to the token's string ...
    tail: bytes  # ... and after it


class OfferResponder:
    """Offers as response bodies. The intake makes (and reuses) the offer; what it shows changes a few
    times a second at most, while every page view asks, so the body is JSON-encoded and its ETag hashed
    once per distinct offer and each answer is two byte joins around its fresh form token."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.work = OfferWork()
        self._encoded: OrderedDict[tuple[str, str, str, str | None], _Encoded] = OrderedDict()

    async def answer(self, site_key: str, tz: str, lang: Lang, not_before: str | None) -> tuple[bytes, str]:
        """The offer's JSON body (with its own form token) and its ETag."""
        offer = await self.intake.offer(site_key, tz, lang, not_before)
        token = offer.form_token
        offer = msgspec.structs.replace(offer, form_token="")  # compared (and kept) without its token
        key = (site_key, tz, lang, not_before)
        encoded = self._encoded.get(key)
        if encoded is None or encoded.bare != offer:
            encoded = self._encode(offer)
            self._encoded[key] = encoded
            if len(self._encoded) > ENCODINGS_KEPT:
                self._encoded.popitem(last=False)
        else:
            self._encoded.move_to_end(key)
        self.work.answered += 1
        return encoded.head + _encode(token) + encoded.tail, encoded.etag

    def _encode(self, bare: Offer) -> _Encoded:
        self.work.encoded += 1
        body = _encode(msgspec.structs.replace(bare, form_token=_MARK))
        head, mark, tail = body.partition(_MARK_JSON)
        if not mark:
            raise AssertionError("the form token's place was not found in the encoded offer")
        return _Encoded(bare=bare, etag=offer_etag(bare), head=head, tail=tail)
