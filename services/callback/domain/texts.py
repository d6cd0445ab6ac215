"""What the visitor reads about their request's status, in their language."""

from __future__ import annotations

from typing import Literal

Lang = Literal["ru", "en"]

_STATUS_TEXTS: dict[str, dict[Lang, str]] = {
    "dialing": {"ru": "Звоним вам прямо сейчас", "en": "Calling you now"},
    "connected": {"ru": "Соединено", "en": "Connected"},
    "completed": {"ru": "Звонок завершён. Спасибо!", "en": "Call completed. Thank you!"},
    "failed": {
        "ru": "Мы не дозвонились — выберите другое время",
        "en": "We missed you — choose another time",
    },
    "cancelled": {"ru": "Заявка отменена", "en": "Request cancelled"},
    "expired": {
        "ru": "Заявка устарела — оставьте новую, и мы перезвоним",
        "en": "This request has expired — leave a new one and we'll call you",
    },
}


def status_text(status: str, lang: Lang, promise_text: str) -> str:
    """Pending requests show their promise; every other state has a fixed sentence."""
    if status in ("requested", "scheduled"):
        return promise_text
    return _STATUS_TEXTS.get(status, {}).get(lang, status)
