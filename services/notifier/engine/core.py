"""What the engine's parts share: job names, the metrics, the channel registry, recipients."""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import logging
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Sequence

import phonenumbers
from prometheus_client import Counter

from services.common import db
from services.common.calendar import QuietHours
from services.common.clock import Clock
from services.common.consumers import PoisonMessage
from services.common.crypto import DataProtector
from services.common.phone import mask_phone
from services.notifier import store
from services.notifier.channels.base import Channel
from services.notifier.domain.timing import RecipientZone, quiet_hours_for, resolve_zone
from services.notifier.routing import Router
from services.notifier.settings import NotifierSettings

# One logger name for the whole engine, as before it was split into modules.
log = logging.getLogger("services.notifier.engine")

MESSAGES = Counter(
    "abonent_notifier_messages_total",
    "Notifier outcomes per channel: sent, delivered, late_receipt, failed, retry, unknown, fallback, "
    "expired, superseded, skipped, deferred, duplicate",
    ["channel", "outcome"],
)

RELEASE_JOB = "notify.release"
FALLBACK_JOB = "notify.fallback"
SWEEP_JOB = "notify.sweep"
PHONE_INDEX = "notifier.phone"
# A callback's later event that arrives before its callback.requested (delivery is unordered) is retried
# until the phone is known; past this age it is dropped (the request predates the notifier, say).
CONTACT_WAIT = dt.timedelta(hours=1)
# A chat must share its contact this soon after opening the deep link.
BIND_CONTACT_WITHIN = dt.timedelta(hours=1)
# The longest link a template's segment budget allows for (test_notifier_templates.py renders with it).
MAX_LINK_CHARS = 60
FINAL_STATES = ("delivered", "failed", "superseded", "expired", "skipped")

# Timeline entries planned in this task but not written yet: planning a batch of events writes them in one
# statement at its end (`NotifierCore.timeline_batch`) instead of one statement per entry. None: write each
# entry at once (timers, the sender, receipts).
_PENDING_TIMELINE: contextvars.ContextVar[list[store.TimelineNote] | None] = contextvars.ContextVar(
    "notifier_pending_timeline", default=None
)


class ChannelRegistry:
    """The configured channels by name; the route slots they fill ("messenger", "sms")."""

    # Bot APIs without delivery receipts: a message they accept is in the person's chat, so acceptance
    # counts as delivery (otherwise every such message would be followed by an SMS N minutes later).
    ACCEPTED_IS_DELIVERED = frozenset({"telegram", "max"})

    def __init__(self, channels: Sequence[Channel]) -> None:
        self.by_name: dict[str, Channel] = {}
        for channel in channels:
            if channel.name in self.by_name:
                raise ValueError(f"channel {channel.name!r} configured twice")
            self.by_name[channel.name] = channel
        self.sms: Channel | None = next((c for c in channels if c.kind == "sms"), None)
        self.messengers = {c.name: c for c in channels if c.kind == "messenger"}

    def slots(self) -> set[str]:
        return ({"sms"} if self.sms is not None else set()) | ({"messenger"} if self.messengers else set())

    async def close(self) -> None:
        for channel in self.by_name.values():
            with contextlib.suppress(Exception):
                await channel.close()


class Choice:
    __slots__ = ("address", "channel", "edit_of", "kind")

    def __init__(self, channel: str, kind: str, address: str, edit_of: str = "") -> None:
        self.channel = channel
        self.kind = kind
        self.address = address
        self.edit_of = edit_of


def short_link(url: str) -> str:
    """A link for an SMS: the page itself when short, else its site (templates budget 60 characters)."""
    if len(url) <= MAX_LINK_CHARS:
        return url
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"[:MAX_LINK_CHARS] if parts.netloc else ""


def fmt_utc(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


class NotifierCore:
    """Use cases over one pool; every method that writes takes the caller's transaction (`conn`)."""

    def __init__(
        self,
        router: Router,
        registry: ChannelRegistry,
        protector: DataProtector,
        settings: NotifierSettings,
        clock: Clock,
    ) -> None:
        self.router = router
        self.registry = registry
        self.protector = protector
        self.settings = settings
        self.clock = clock

    # --- timeline ---------------------------------------------------------------------------------------

    async def note(
        self,
        conn: db.Connection,
        message_id: uuid.UUID,
        at: dt.datetime,
        what: str,
        *,
        channel: str = "",
        detail: str = "",
    ) -> None:
        """A timeline entry: buffered inside `timeline_batch`, else written now."""
        pending = _PENDING_TIMELINE.get()
        if pending is None:
            await store.add_timeline(conn, message_id, at, what, channel=channel, detail=detail)
        else:
            pending.append(store.TimelineNote(message_id, at, what, channel, detail))

    @contextlib.asynccontextmanager
    async def timeline_batch(self, conn: db.Connection) -> AsyncIterator[None]:
        """Buffer `note`s made inside the block and write them in one statement when it ends without an
        error (the caller's transaction is the same, so nothing else sees the difference)."""
        if _PENDING_TIMELINE.get() is not None:  # an outer batch writes them
            yield
            return
        pending: list[store.TimelineNote] = []
        token = _PENDING_TIMELINE.set(pending)
        try:
            yield
        finally:
            _PENDING_TIMELINE.reset(token)
        await store.add_timelines(conn, pending)

    # --- recipients ---------------------------------------------------------------------------------

    def phone_hash(self, phone: str) -> bytes:
        return self.protector.blind_index(phone, PHONE_INDEX)

    async def recipient(
        self, conn: db.Connection, phone: str, lang: str, event_tz: str
    ) -> store.RecipientRow:
        return await store.upsert_recipient(conn, self.recipient_values(phone, lang, event_tz))

    def recipient_values(self, phone: str, lang: str, event_tz: str) -> store.NewRecipient:
        """The recipient row to upsert for this phone; PoisonMessage if it is not a phone number."""
        try:
            parsed = phonenumbers.parse(phone)
        except phonenumbers.NumberParseException as exc:
            raise PoisonMessage(f"not a phone number: {exc}") from None
        if not phonenumbers.is_possible_number(parsed):
            raise PoisonMessage("not a possible phone number")
        e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
        zone = resolve_zone(e164, event_tz)
        new_id = uuid.uuid4()
        return store.NewRecipient(
            new_id=new_id,
            phone_hash=self.phone_hash(e164),
            phone_enc=self.protector.encrypt(e164, store.PHONE_CONTEXT, new_id),
            phone_masked=mask_phone(e164),
            lang=lang if lang in ("ru", "en") else "ru",
            tz=zone.tz,
            tz_rule=zone.rule,
        )

    def phone_of(self, recipient: store.RecipientRow) -> str:
        return self.protector.decrypt(recipient.phone_enc, store.PHONE_CONTEXT, recipient.id)

    def quiet_hours(self, recipient: store.RecipientRow) -> QuietHours:
        zone = RecipientZone(tz=recipient.tz, rule=recipient.tz_rule)  # type: ignore[arg-type]
        return quiet_hours_for(zone, self.settings.quiet_start, self.settings.quiet_end)

    @staticmethod
    def display_tz(recipient: store.RecipientRow) -> str:
        # Unknown zone: times in messages are given in Moscow time, as Russian operators do.
        return "Europe/Moscow" if recipient.tz_rule == "all_russia" else recipient.tz
