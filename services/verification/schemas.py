"""What the case API accepts and answers (msgspec structs; personal data only ever masked on the way out)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

import msgspec

from services.verification.domain.policy import CaseReason, SubscriberReason

CaseStatus = Literal["open", "mismatch", "suspended", "confirmed", "restored", "cancelled"]
ACTIVE_STATUSES: tuple[CaseStatus, ...] = ("open", "mismatch", "suspended")
Lang = Literal["ru", "en"]

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100, description="As in the passport")]
OptionalName = Annotated[str, msgspec.Meta(max_length=100)]
Series = Annotated[str, msgspec.Meta(pattern=r"^\d{4}$", description="4 digits, e.g. 4510")]
Number = Annotated[str, msgspec.Meta(pattern=r"^\d{6}$", description="6 digits, e.g. 123456")]
IssuerCode = Annotated[str, msgspec.Meta(pattern=r"^\d{3}-\d{3}$", description="NNN-NNN, e.g. 770-001")]
Reason = Annotated[str, msgspec.Meta(min_length=3, max_length=500, description="Why, for the audit log")]


class CaseOpen(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The contract holder's data from billing and why the case is opened."""

    msisdn: Annotated[str, msgspec.Meta(max_length=32, description="The subscriber's number, E.164")]
    reason: SubscriberReason
    last_name: Name
    first_name: Name
    middle_name: OptionalName = ""
    birth_date: dt.date
    passport_series: Series
    passport_number: Number
    passport_issue_date: dt.date
    passport_issuer_code: IssuerCode
    lang: Lang = "ru"
    # IANA zone of the subscriber; deadlines and reminders follow it.
    tz: Annotated[str, msgspec.Meta(max_length=64)] = "Europe/Moscow"


class CaseCancel(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Reason


class LinkReissue(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Reason


class CaseExtend(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    days: Annotated[int, msgspec.Meta(ge=1, le=90, description="Days added to the current deadline")]
    reason: Reason


class HolderView(msgspec.Struct, kw_only=True, frozen=True):
    """Masked: enough to recognise the case, not enough to use the document."""

    name: str  # "Иванов И. И."
    passport: str  # "45** ***456"


class CaseView(msgspec.Struct, kw_only=True, frozen=True):
    id: uuid.UUID
    status: CaseStatus
    reason: CaseReason
    msisdn: str  # masked: +7 916 ***-**-67
    lang: Lang
    tz: str
    opened_at: dt.datetime
    deadline: dt.datetime
    last_day: dt.date  # the deadline as the subscriber reads it, in their zone
    suspended_at: dt.datetime | None = None
    closed_at: dt.datetime | None = None
    mismatch_fields: list[str] = []
    holder: HolderView | None = None  # None once personal data is purged
    # The subscriber's link while the case is active (the back office may resend it).
    link: str | None = None


class TimelineEntry(msgspec.Struct, kw_only=True, frozen=True):
    at: dt.datetime
    kind: str
    actor: str
    detail: dict[str, Any]


class CaseDetail(msgspec.Struct, kw_only=True, frozen=True):
    case: CaseView
    timeline: list[TimelineEntry]


CASE_EXAMPLE: dict[str, Any] = {
    "msisdn": "+79161234567",
    "reason": "regulator_request",
    "last_name": "Иванов",
    "first_name": "Иван",
    "middle_name": "Иванович",
    "birth_date": "1985-04-12",
    "passport_series": "4510",
    "passport_number": "123456",
    "passport_issue_date": "2010-05-20",
    "passport_issuer_code": "770-001",
    "lang": "ru",
    "tz": "Europe/Moscow",
}
CASE_VIEW_EXAMPLE: dict[str, Any] = {
    "id": "5b0f3c1e-8a9d-4c2b-9e1f-7a6b5c4d3e2f",
    "status": "open",
    "reason": "regulator_request",
    "msisdn": "+7 916 ***-**-67",
    "lang": "ru",
    "tz": "Europe/Moscow",
    "opened_at": "2026-11-29T09:00:00Z",
    "deadline": "2026-12-14T21:00:00Z",
    "last_day": "2026-12-14",
    "suspended_at": None,
    "closed_at": None,
    "mismatch_fields": [],
    "holder": {"name": "Иванов И. И.", "passport": "45** ***456"},
    "link": "https://mf.ru/v/Ab3x9Qz0LmN1pR",
}
