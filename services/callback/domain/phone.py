"""Callee phone numbers: normalisation to E.164 with country and number-type checks, and masking for logs."""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType

__all__ = ["PhoneRejected", "PhoneRejectionCode", "normalize_phone"]

PhoneRejectionCode = Literal["invalid_phone", "country_not_allowed", "number_type_not_allowed"]

# Only numbers a person answers: premium-rate, toll-free, shared-cost, UAN... numbers are refused so a
# public "call me back" form cannot be used to make the operator pay for calls (toll fraud).
_CALLABLE_TYPES = frozenset(
    {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE, PhoneNumberType.FIXED_LINE_OR_MOBILE}
)
# Far longer than any phone number with formatting; bounds the parser's work on hostile input.
_MAX_RAW_LENGTH = 64


class PhoneRejected(ValueError):
    """A phone number the callback service will not call; `code` is stable, `message` is for people."""

    def __init__(self, code: PhoneRejectionCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code: PhoneRejectionCode = code
        self.message = message


def normalize_phone(raw: str, allowed_countries: Collection[str], default_region: str = "RU") -> str:
    """E.164 form of `raw` (national formats read as `default_region`, e.g. "8 (912) 345-67-89" in RU).

    `allowed_countries` are ISO 3166 alpha-2 codes; it is an allow-list, so an empty one allows nothing.
    """
    text = raw.strip()
    if not text or len(text) > _MAX_RAW_LENGTH or any(char.isalpha() for char in text):
        # Letters would be read as a vanity keypad number ("1-800-FLOWERS"); a form field wants digits.
        raise PhoneRejected("invalid_phone", "not a phone number")
    try:
        number = phonenumbers.parse(text, default_region.upper())
    except NumberParseException as exc:
        raise PhoneRejected("invalid_phone", "not a phone number") from exc
    if not phonenumbers.is_valid_number(number):
        raise PhoneRejected("invalid_phone", "not a valid phone number")
    if number.extension:
        # An automated callback cannot dial an extension; accepting it would silently drop it.
        raise PhoneRejected("invalid_phone", "extensions cannot be called back")
    region = phonenumbers.region_code_for_number(number)
    if region is None or region.upper() not in {country.upper() for country in allowed_countries}:
        raise PhoneRejected(
            "country_not_allowed", f"numbers from {region or 'this country'} are not accepted"
        )
    if phonenumbers.number_type(number) not in _CALLABLE_TYPES:
        raise PhoneRejected("number_type_not_allowed", "only mobile and landline numbers can be called back")
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)
