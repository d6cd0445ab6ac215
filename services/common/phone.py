"""Phone numbers: parsing to E.164 against allowed countries, country names in ru/en, and masking."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType, geocoder

__all__ = [
    "ParsedPhone",
    "PhoneRejected",
    "PhoneRejection",
    "calling_code",
    "country_in",
    "country_name",
    "mask_phone",
    "parse_phone",
]

PhoneLang = Literal["ru", "en"]
PhoneRejection = Literal["invalid_phone", "unsupported_country", "number_type_not_allowed"]

# Only numbers a person answers: premium-rate, toll-free, shared-cost, UAN... numbers are refused so a
# public form that makes us dial cannot be used to make the operator pay for calls (toll fraud).
_CALLABLE_TYPES = frozenset(
    {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE, PhoneNumberType.FIXED_LINE_OR_MOBILE}
)
# Far longer than any phone number with formatting; bounds the parser's work on hostile input.
_MAX_RAW_LENGTH = 64


@dataclass(frozen=True, slots=True)
class ParsedPhone:
    e164: str
    country: str  # ISO 3166 alpha-2 of the number itself (not of the site)


class PhoneRejected(ValueError):
    """A number we will not call: `reason` is stable, `country` is the number's own country when the
    parser could tell (so a refusal can name it), `message` is a plain English explanation."""

    def __init__(self, reason: PhoneRejection, message: str, country: str | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: PhoneRejection = reason
        self.message = message
        self.country = country


def parse_phone(raw: str, allowed_countries: Collection[str], default_region: str = "RU") -> ParsedPhone:
    """`raw` as E.164 with its country; national formats are read as `default_region`
    ("8 (912) 345-67-89" in RU), international ones ("+49 30 12345678") keep their own country.

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
            "unsupported_country", f"numbers in {region or 'this country'} are not called", region
        )
    if phonenumbers.number_type(number) not in _CALLABLE_TYPES:
        raise PhoneRejected(
            "number_type_not_allowed", "only mobile and landline numbers can be called back", region
        )
    return ParsedPhone(e164=phonenumbers.format_number(number, PhoneNumberFormat.E164), country=region)


def calling_code(country: str) -> int:
    """The international calling code of a country (49 for DE, 7 for RU and KZ); 0 if unknown."""
    return int(phonenumbers.country_code_for_region(country.upper()))


# phonenumbers' own names, corrected where its Russian data is missing or misspelt.
_NAMES: dict[PhoneLang, dict[str, str]] = {
    "en": {"AC": "Ascension Island", "TA": "Tristan da Cunha", "XK": "Kosovo"},
    "ru": {
        "EG": "Египет",
        "GB": "Великобритания",
        "US": "США",
        "AE": "ОАЭ",
        "KG": "Киргизия",
        "ME": "Черногория",
        "RS": "Сербия",
        "MW": "Малави",
        "MV": "Мальдивы",
    },
}
# Where the Russian prepositional case ("в Германии") does not follow from the simple endings below.
_RU_IN: dict[str, str] = {
    "BY": "в Беларуси",
    "IL": "в Израиле",
    "NL": "в Нидерландах",
    "PH": "на Филиппинах",
    "CU": "на Кубе",
    "CY": "на Кипре",
    "MT": "на Мальте",
    "JM": "на Ямайке",
    "MG": "на Мадагаскаре",
    "MU": "на Маврикии",
    "MV": "на Мальдивах",
    "KR": "в Южной Корее",
    "KP": "в Северной Корее",
    "NZ": "в Новой Зеландии",
    "ZA": "в ЮАР",
    "SA": "в Саудовской Аравии",
    "DO": "в Доминиканской Республике",
    "BA": "в Боснии и Герцеговине",
    "LK": "в Шри-Ланке",
    "CR": "в Коста-Рике",
    "PR": "в Пуэрто-Рико",
    "EG": "в Египте",
    "GB": "в Великобритании",
    "CZ": "в Чехии",
    "US": "в США",
    "AE": "в ОАЭ",
    "TW": "на Тайване",
}
# English names that read as "in the …".
_EN_THE = frozenset({"US", "GB", "NL", "PH", "AE", "CZ", "DO", "BS", "MV", "CF", "CD", "KY", "FO"})
_RU_SIMPLE = re.compile(r"^[А-ЯЁ][а-яё]+$")


def country_name(country: str, lang: PhoneLang) -> str:
    """A country's name in Russian or English ("Германия", "Germany"); the code itself if unknown."""
    code = country.upper()
    return (
        _NAMES[lang].get(code)
        or _geo_name(code, lang)
        or _NAMES["en"].get(code)
        or _geo_name(code, "en")
        or code
    )


def _geo_name(code: str, lang: str) -> str:
    # phonenumbers names countries through a number; its example number stands for the country.
    example = phonenumbers.example_number(code)
    return str(geocoder.country_name_for_number(example, lang)) if example is not None else ""


def country_in(country: str, lang: PhoneLang) -> str:
    """ "in Germany" / "в Германии": the country as it follows "We don't call numbers …"."""
    code = country.upper()
    name = country_name(code, lang)
    if lang == "en":
        return f"in the {name}" if code in _EN_THE else f"in {name}"
    if code in _RU_IN:
        return _RU_IN[code]
    if _RU_SIMPLE.match(name):
        # "во Франции", "во Вьетнаме": в doubles before в/ф and another consonant.
        prep = "во" if name[0] in "ВФ" and name[1] not in "аеёиоуыэюя" else "в"
        # Single-word names decline regularly: -ия → -ии, -а/-я/-й → -е, a consonant → +е; names
        # ending in о/у/и/е/э/ю (Перу, Того, Чили) do not decline at all.
        if name.endswith("ия"):
            return f"{prep} {name[:-1]}и"
        if name.endswith(("а", "я", "й")):
            return f"{prep} {name[:-1]}е"
        if name[-1] in "оуиеэю":
            return f"{prep} {name}"
        if name[-1] not in "ёыь":
            return f"{prep} {name}е"
    # Multi-word and untranslated names: a form that needs no declension.
    return f"в стране «{name}»"


def mask_phone(phone: str) -> str:
    """Keep the country code and last two digits (+7912*****89): matchable by eye, useless to a thief."""
    digits = re.sub(r"\D", "", phone)
    if len(digits) < 6:
        return "*" * len(phone)  # not a phone number: hide all of it
    return ("+" if phone.strip().startswith("+") else "") + digits[:4] + "*" * (len(digits) - 6) + digits[-2:]
