"""Phone normalisation to E.164: formats, allowed countries, number types, garbage, refusals, masking."""

from __future__ import annotations

import pytest

from services.callback.domain.phone import PhoneRejected, normalize_phone, refusal_message
from services.common.phone import country_in, country_name, mask_phone, parse_phone


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
    assert raised.value.reason == "unsupported_country"
    with pytest.raises(PhoneRejected) as raised:
        normalize_phone("+7 912 345 67 89", ["KZ"])
    assert raised.value.reason == "unsupported_country"


def test_other_default_region() -> None:
    assert normalize_phone("0151 23456789", ["DE"], default_region="DE") == "+4915123456789"


def test_empty_allow_list_allows_nothing() -> None:
    with pytest.raises(PhoneRejected) as raised:
        normalize_phone("+7 912 345 67 89", [])
    assert raised.value.reason == "unsupported_country"


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
    assert raised.value.reason == "number_type_not_allowed"


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
    assert raised.value.reason == "invalid_phone"
    assert raised.value.message


def test_mask_phone() -> None:
    assert mask_phone("+79123456789") == "+7912*****89"
    assert mask_phone("+4915123456789") == "+4915*******89"
    assert mask_phone("not a phone") == "***********"


def test_foreign_number_keeps_its_own_country_and_is_refused_by_name() -> None:
    # The case: a pasted German number must never become a Russian +7 (493) … number.
    with pytest.raises(PhoneRejected) as raised:
        normalize_phone("+49 30 12345678", ["RU"])
    assert raised.value.reason == "unsupported_country"
    assert raised.value.country == "DE"
    assert refusal_message(raised.value, "en") == "We don't call numbers in Germany"
    assert refusal_message(raised.value, "ru") == "Мы не звоним на номера в Германии"
    with pytest.raises(PhoneRejected) as raised:
        normalize_phone("+1 202 555 0123", ["RU", "KZ"])
    assert (raised.value.reason, raised.value.country) == ("unsupported_country", "US")
    assert refusal_message(raised.value, "en") == "We don't call numbers in the United States"
    assert refusal_message(raised.value, "ru") == "Мы не звоним на номера в США"


def test_allowed_foreign_numbers_parse_to_their_country() -> None:
    assert parse_phone("+1 202 555 0123", ["RU", "US"]).country == "US"
    assert parse_phone("+1 202 555 0123", ["RU", "US"]).e164 == "+12025550123"
    # The widget prefixes the picked country's code to what was typed, trunk prefix and all.
    assert parse_phone("+49 030 12345678", ["DE"]).e164 == "+493012345678"
    assert parse_phone("+7 701 123 45 67", ["RU", "KZ"]).country == "KZ"


@pytest.mark.parametrize(
    ("country", "ru", "en"),
    [
        ("DE", "в Германии", "in Germany"),
        ("RU", "в России", "in Russia"),
        ("KZ", "в Казахстане", "in Kazakhstan"),
        ("FR", "во Франции", "in France"),
        ("CN", "в Китае", "in China"),
        ("BY", "в Беларуси", "in Belarus"),
        ("PE", "в Перу", "in Peru"),
        ("GB", "в Великобритании", "in the United Kingdom"),
        ("NL", "в Нидерландах", "in the Netherlands"),
    ],
)
def test_country_in_both_languages(country: str, ru: str, en: str) -> None:
    assert country_in(country, "ru") == ru
    assert country_in(country, "en") == en


def test_country_names_never_empty() -> None:
    import phonenumbers

    for region in phonenumbers.SUPPORTED_REGIONS:
        assert country_name(region, "ru")
        assert country_name(region, "en")
        assert country_in(region, "ru").startswith(("в ", "во ", "на "))
