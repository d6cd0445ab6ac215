"""Callee phone numbers: the callback service's use of services.common.phone, and its refusal texts."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from services.callback.domain.texts import Lang
from services.common.phone import (
    PhoneRejected,
    PhoneRejection,
    calling_code,
    country_in,
    country_name,
    parse_phone,
)

__all__ = [
    "PhoneRejected",
    "PhoneRejection",
    "calling_code",
    "country_name",
    "default_country",
    "normalize_phone",
    "refusal_message",
]


def default_country(allowed_countries: Sequence[str]) -> str:
    """The site's first allowed country: how national formats are read and what the widget preselects."""
    return allowed_countries[0].upper() if allowed_countries else "RU"


def normalize_phone(raw: str, allowed_countries: Collection[str], default_region: str = "RU") -> str:
    """E.164 form of `raw` if we may call it (see `services.common.phone.parse_phone`)."""
    return parse_phone(raw, allowed_countries, default_region).e164


def refusal_message(rejected: PhoneRejected, lang: Lang) -> str:
    """What the visitor reads when their number is refused, in their language."""
    if rejected.reason != "unsupported_country":
        return rejected.message
    if rejected.country is None:
        where = "этой страны" if lang == "ru" else "in this country"
    else:
        where = country_in(rejected.country, lang)
    return f"Мы не звоним на номера {where}" if lang == "ru" else f"We don't call numbers {where}"
