"""Phone normalisation to E.164: formats, allowed countries, number types, garbage, masking."""

from __future__ import annotations

import pytest

from services.callback.domain.phone import PhoneRejected, normalize_phone
from services.common.logging import mask_phone


@pytest.mark.parametrize(
    "raw",
    [
        "8 (912) 345-67-89",
        "89123456789",
        "+7 912 345 67 89",
        "+7(912)3456789",
        "7 912 345-67-89",
        "912 345 67 89",
        "  8-912-345-67-89\t",
    ],
)
def test_russian_mobile_formats(raw: str) -> None:
    assert normalize_phone(raw, {"RU"}) == "+79123456789"


def test_russian_landline_accepted() -> None:
    assert normalize_phone("8 (495) 123-45-67", ["RU"]) == "+74951234567"


def test_kazakhstan_shares_plus_seven() -> None:
    assert normalize_phone("+7 701 123 45 67", ["RU", "KZ"]) == "+77011234567"
    assert normalize_phone("8 701 123 45 67", ["ru", "kz"]) == "+77011234567"
    with pytest.raises(PhoneRejected) as raised:
        normalize_phone("+7 701 123 45 67", ["RU"])
    assert raised.value.code == "country_not_allowed"
    with pytest.raises(PhoneRejected) as raised:
        normalize_phone("+7 912 345 67 89", ["KZ"])
    assert raised.value.code == "country_not_allowed"


def test_other_default_region() -> None:
    assert normalize_phone("0151 23456789", ["DE"], default_region="DE") == "+4915123456789"


def test_empty_allow_list_allows_nothing() -> None:
    with pytest.raises(PhoneRejected) as raised:
        normalize_phone("+7 912 345 67 89", [])
    assert raised.value.code == "country_not_allowed"


@pytest.mark.parametrize(
    "raw",
    [
        "8 809 505 1234",  # RU premium rate
        "8 800 555 35 35",  # RU toll-free: the operator pays
        "+1 900 555 0199",  # US premium rate
    ],
)
def test_toll_fraud_numbers_rejected(raw: str) -> None:
    with pytest.raises(PhoneRejected) as raised:
        normalize_phone(raw, ["RU", "US"])
    assert raised.value.code == "number_type_not_allowed"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "abc",
        "call me",
        "123",
        "+7 912",
        "+7 999 999 99 99 99 99",
        "+7 (012) 345-67-89",
        "8 912 345 67 89 ext. 12",
        "8 912 345 67 89;ext=12",
        "1-800-FLOWERS",
        "9" * 200,
        "+",
    ],
)
def test_garbage_rejected(raw: str) -> None:
    with pytest.raises(PhoneRejected) as raised:
        normalize_phone(raw, ["RU", "US"])
    assert raised.value.code == "invalid_phone"
    assert raised.value.message


def test_mask_phone() -> None:
    assert mask_phone("+79123456789") == "+7912*****89"
    assert mask_phone("+4915123456789") == "+4915*******89"
    assert mask_phone("not a phone") == "***********"
