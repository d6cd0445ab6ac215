"""Compare what the identity provider says with the contract: normalised names, dates, the passport."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata

import msgspec

from services.verification.identity.base import PersonRecord

# Latin letters that look like Cyrillic ones, as they slip into names typed on a Latin keyboard.
_LOOKALIKES = str.maketrans(
    {
        "a": "а",
        "b": "в",
        "c": "с",
        "e": "е",
        "h": "н",
        "k": "к",
        "m": "м",
        "o": "о",
        "p": "р",
        "t": "т",
        "x": "х",
        "y": "у",
        "ё": "е",
    }
)
# Hyphens, dashes, spaces, apostrophes and dots do not distinguish people ("Салтыков-Щедрин",
# "Салтыков – Щедрин", "Салтыков Щедрин").
_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212'’ʼ`.]+")


class Holder(msgspec.Struct, frozen=True, kw_only=True):
    """The contract holder's data from billing (decrypted only for the comparison)."""

    last_name: str
    first_name: str
    middle_name: str = ""
    birth_date: dt.date
    passport_series: str
    passport_number: str
    passport_issue_date: dt.date
    passport_issuer_code: str


def normalize_name(value: str) -> str:
    text = unicodedata.normalize("NFKC", value).casefold()
    return _SEPARATORS.sub("", text.translate(_LOOKALIKES))


def _digits(value: str) -> str:
    return re.sub(r"\D", "", value)


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    matched: bool
    # Names of the fields that differ (never their values): full_name, birth_date, document_type,
    # passport_number, passport_issue_date, passport_issuer_code, msisdn.
    fields: list[str]


def compare(holder: Holder, person: PersonRecord, *, msisdn: str = "") -> Comparison:
    """`msisdn` (E.164) non-empty: it must also be among the person's verified mobile numbers."""
    fields: list[str] = []
    names = [
        (holder.last_name, person.last_name),
        (holder.first_name, person.first_name),
        (holder.middle_name, person.middle_name),
    ]
    if any(normalize_name(ours) != normalize_name(theirs) for ours, theirs in names):
        fields.append("full_name")
    if person.birth_date != holder.birth_date:
        fields.append("birth_date")
    passport = next((doc for doc in person.documents if doc.doc_type == "RF_PASSPORT"), None)
    if passport is None:
        fields.append("document_type")
    else:
        ours = _digits(holder.passport_series) + _digits(holder.passport_number)
        if _digits(passport.series) + _digits(passport.number) != ours:
            fields.append("passport_number")
        if passport.issue_date != holder.passport_issue_date:
            fields.append("passport_issue_date")
        if _digits(passport.issuer_code) != _digits(holder.passport_issuer_code):
            fields.append("passport_issuer_code")
    if msisdn and _digits(msisdn) not in {_digits(phone) for phone in person.mobile_phones}:
        fields.append("msisdn")
    return Comparison(matched=not fields, fields=fields)
