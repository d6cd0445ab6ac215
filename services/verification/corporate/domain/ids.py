"""Russian company identifiers checked by their control digits: INN (10 or 12 digits), OGRN, OGRNIP."""

from __future__ import annotations

from typing import Literal

from services.common.domain_errors import Invalid

EntityKind = Literal["legal_entity", "entrepreneur"]

_INN10 = (2, 4, 10, 3, 5, 9, 4, 6, 8)
_INN12_11 = (7, 2, 4, 10, 3, 5, 9, 4, 6, 8)
_INN12_12 = (3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8)


def _weighted(digits: str, weights: tuple[int, ...]) -> int:
    return sum(int(d) * w for d, w in zip(digits, weights, strict=False)) % 11 % 10


def _digits_only(value: str, field: str, what: str, lengths: tuple[int, ...]) -> str:
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        raise Invalid(f"{field}_not_digits", f"{what} must consist of digits only", field=field)
    if len(text) not in lengths:
        expected = " or ".join(str(n) for n in lengths)
        raise Invalid(f"{field}_length", f"{what} must have {expected} digits, got {len(text)}", field=field)
    return text


def check_inn(value: str, field: str = "inn") -> str:
    """The INN with its control digit(s) verified: 10 digits (organisation) or 12 (person/entrepreneur)."""
    inn = _digits_only(value, field, "INN", (10, 12))
    if len(inn) == 10:
        ok = _weighted(inn, _INN10) == int(inn[9])
    else:
        ok = _weighted(inn, _INN12_11) == int(inn[10]) and _weighted(inn, _INN12_12) == int(inn[11])
    if not ok:
        raise Invalid(f"{field}_control_digit", "INN control digit does not match", field=field)
    return inn


def check_ogrn(value: str, field: str = "ogrn") -> str:
    """An OGRN (13 digits, organisation): the 13th digit is the first 12 as a number mod 11 mod 10."""
    ogrn = _digits_only(value, field, "OGRN", (13,))
    if int(ogrn[:12]) % 11 % 10 != int(ogrn[12]):
        raise Invalid(f"{field}_control_digit", "OGRN control digit does not match", field=field)
    return ogrn


def check_ogrnip(value: str, field: str = "ogrn") -> str:
    """An OGRNIP (15 digits, entrepreneur): the 15th digit is the first 14 as a number mod 13 mod 10."""
    ogrnip = _digits_only(value, field, "OGRNIP", (15,))
    if int(ogrnip[:14]) % 13 % 10 != int(ogrnip[14]):
        raise Invalid(f"{field}_control_digit", "OGRNIP control digit does not match", field=field)
    return ogrnip


def check_company_ids(inn: str, ogrn: str) -> tuple[str, str, EntityKind]:
    """(inn, ogrn, kind): an organisation has a 10-digit INN and an OGRN; an entrepreneur 12 and an OGRNIP."""
    checked_inn = check_inn(inn, "inn")
    digits = ogrn.strip()
    if len(digits) == 15:
        checked_ogrn, kind = check_ogrnip(digits, "ogrn"), "entrepreneur"
    else:
        checked_ogrn, kind = check_ogrn(digits, "ogrn"), "legal_entity"
    if (kind == "legal_entity") != (len(checked_inn) == 10):
        raise Invalid(
            "inn_ogrn_kind_mismatch",
            "an organisation has a 10-digit INN and a 13-digit OGRN; an entrepreneur a 12-digit INN and "
            "a 15-digit OGRNIP",
            field="inn",
        )
    return checked_inn, checked_ogrn, kind  # type: ignore[return-value]
