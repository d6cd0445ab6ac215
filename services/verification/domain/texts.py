"""Words the subscriber reads: the SMS with the link, month names, the masked number."""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

from services.common.phone import mask_phone

Lang = Literal["ru", "en"]

# A two-segment UCS-2 SMS carries 2 × 67 characters (the user data header takes the rest).
SMS_MAX_CHARS = 134
LINK_MAX_CHARS = 30

_MONTHS_RU = (
    "января", "февраля", "марта", "апреля", "мая", "июня",
    "июля", "августа", "сентября", "октября", "ноября", "декабря",
)  # fmt: skip
_MONTHS_EN = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


def day_month(day: dt.date, lang: Lang) -> str:
    """ "14 декабря" / "14 December"."""
    months = _MONTHS_RU if lang == "ru" else _MONTHS_EN
    return f"{day.day} {months[day.month - 1]}"


def sms_text(operator: str, last_day: dt.date, link: str, lang: Lang) -> str:
    """The notice with the link, as issue 11 words it; fits two UCS-2 segments with a ≤ 30-char link."""
    when = day_month(last_day, lang)
    if lang == "ru":
        return f"{operator}: подтвердите паспортные данные до {when}, иначе номер будет заблокирован: {link}"
    return f"{operator}: confirm your passport data by {when} or the number will be suspended: {link}"


def spaced_mask(e164: str) -> str:
    """+7 916 ***-**-67: the country and operator code and the last two digits, as the page shows it."""
    digits = re.sub(r"\D", "", e164)
    if len(digits) == 11 and digits.startswith("7"):
        return f"+7 {digits[1:4]} ***-**-{digits[-2:]}"
    return mask_phone(e164)
