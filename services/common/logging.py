"""Structured JSON logs with request/event ids, and masking so personal data never reaches a log line."""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import re
import sys
from typing import Any

import msgspec

# Re-exported: masking lives with the rest of the phone rules; logs are its main user.
from services.common.phone import mask_phone

__all__ = [
    "JsonFormatter",
    "MaskingTextFormatter",
    "configure_logging",
    "event_id_var",
    "mask_document",
    "mask_phone",
    "mask_pii",
    "request_id_var",
]

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
event_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("event_id", default=None)

# Phone numbers: optional +, then 10-15 digits possibly split by spaces, dashes, dots or brackets.
_PHONE_RE = re.compile(r"(?<![\w/])\+?\d[\d\s\-().]{8,18}\d(?![\w/])")
# Passport-like numbers: "45 12 345678", "4512 345678", "4512345678".
_DOCUMENT_RE = re.compile(r"(?<!\d)\d{2}\s?\d{2}\s?\d{6}(?!\d)")


def mask_document(number: str) -> str:
    digits = re.sub(r"\D", "", number)
    return "*" * max(len(digits) - 2, 0) + digits[-2:]


_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{2}:\d{2}:\d{2}")


def _mask_phone_match(match: re.Match[str]) -> str:
    found = match.group(0)
    # Timestamps look like digit runs too; leave them readable.
    return found if _DATE_RE.search(found) else mask_phone(found)


def mask_pii(text: str) -> str:
    """Mask anything that looks like a phone or document number inside free text."""
    text = _DOCUMENT_RE.sub(lambda m: mask_document(m.group(0)), text)
    return _PHONE_RE.sub(_mask_phone_match, text)


_encoder = msgspec.json.Encoder()
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; message and extras are masked."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": mask_pii(record.getMessage()),
        }
        if (request_id := request_id_var.get()) is not None:
            entry["request_id"] = request_id
        if (event_id := event_id_var.get()) is not None:
            entry["event_id"] = event_id
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = mask_pii(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = mask_pii(self.formatException(record.exc_info))
        return _encoder.encode(entry).decode()


class MaskingTextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's API
        record.message = mask_pii(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: object) -> str:  # noqa: N802 - logging's API
        return mask_pii(super().formatException(ei))  # type: ignore[arg-type]


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(
            MaskingTextFormatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Uvicorn's access log carries raw paths and query strings (phones, tokens): ours, written by
    # services/common/web.py, logs route templates instead.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("nats").setLevel("WARNING")
    # httpx logs every outbound URL at INFO; webhook and provider URLs can carry secrets.
    logging.getLogger("httpx").setLevel("WARNING")
