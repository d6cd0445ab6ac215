"""The notifier's row types and state names, shared by the store's modules."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
import msgspec

PHONE_CONTEXT = "notifier.recipients.phone_enc"
# Message states that have not reached a provider yet: a later state in the thread replaces them.
PENDING_STATES = ("queued", "deferred")


class RecipientRow(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    phone_enc: bytes
    phone_masked: str
    lang: str
    tz: str
    tz_rule: str
    phone_invalid_at: dt.datetime | None


class NewRecipient(msgspec.Struct, frozen=True, kw_only=True):
    """A recipient row to upsert (store.upsert_recipient / upsert_recipients)."""

    new_id: uuid.UUID
    phone_hash: bytes
    phone_enc: bytes
    phone_masked: str
    lang: str
    tz: str
    tz_rule: str


class MessageRow(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    occurred_at: dt.datetime
    recipient_id: uuid.UUID
    tenant: str
    purpose: str
    category: str
    thread_key: str
    template: str
    template_version: int
    template_id: str
    lang: str
    body: str
    urgent: bool
    legally_required: bool
    edit_in_place: bool
    channel_order: list[str]
    state: str
    send_at: dt.datetime
    expires_at: dt.datetime | None
    deadline: dt.datetime | None
    timing_rule: str
    created_at: dt.datetime

    @property
    def critical(self) -> bool:
        return self.urgent or self.legally_required


class AttemptRow(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    message_id: uuid.UUID
    channel: str
    kind: str
    address: str
    edit_of: str
    is_fallback: bool
    state: str
    not_before: dt.datetime
    tries: int
    lease_until: dt.datetime | None
    claim_token: uuid.UUID | None
    provider_message_id: str | None
    segments: int
    cost_minor: int
    sent_at: dt.datetime | None
    delivered_at: dt.datetime | None
    error: str | None


class TimelineEntry(msgspec.Struct, frozen=True, kw_only=True):
    at: dt.datetime
    what: str
    channel: str
    detail: str


class NewAttempt(msgspec.Struct, frozen=True, kw_only=True):
    """A new message's first attempt (store.start_attempts): no edit, not a fallback."""

    message_id: uuid.UUID
    channel: str
    kind: str
    address: str
    not_before: dt.datetime


class TimelineNote(msgspec.Struct, frozen=True):
    """A timeline entry to write (store.add_timelines writes several in one statement)."""

    message_id: uuid.UUID
    at: dt.datetime
    what: str
    channel: str = ""
    detail: str = ""


class RecipientFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What planning asks about a recipient, read in one query (store.recipient_facts)."""

    opted_out: bool
    # channel -> chat id of bound messengers, oldest binding first.
    bindings: dict[str, str]
    # Non-critical SMS going or gone in the asked interval (the fatigue budget).
    non_critical_sms: int


# msgspec.structs.fields resolves the (postponed) annotations on every call: a profile of the benchmark
# found it at 8% of the notifier's time, so each row type's names are read once.
_FIELD_NAMES: dict[type[Any], frozenset[str]] = {}


def _field_names(kind: type[Any]) -> frozenset[str]:
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = frozenset(f.name for f in msgspec.structs.fields(kind))
    return names


def as_row(kind: type[Any], record: asyncpg.Record | None) -> Any:
    if record is None:
        return None
    names = _field_names(kind)
    return kind(**{k: v for k, v in record.items() if k in names})
