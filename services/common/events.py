"""The event catalogue: every event any Abonent service publishes, in one place.

Rules (msgspec schema evolution):
- An event is a frozen, tagged Struct. Its tag is "<subject>.v<N>", e.g. "callback.requested.v1"; it is
  published on the subject without the version ("callback.requested").
- A compatible change adds a field WITH a default. Existing fields never change type or meaning.
- An incompatible change is a new Struct with tag v<N+1>, published alongside v<N> until every consumer
  reads v<N+1>.
- `event_id` is the Nats-Msg-Id and the inbox key: the same logical event always keeps its id.
- Delivery is AT LEAST ONCE and UNORDERED. Every committed event is published (outbox relays lease rows,
  publish outside any transaction, mark them after; a dead relay's lease expires and another relay
  republishes, which JetStream drops inside its 2-minute duplicate window) and every consumer applies it
  exactly once through its inbox. No order is promised, not even per aggregate: relays publish
  concurrent batches, a taken-over batch lands after newer events, and consumer retries reorder again.
  Consumers decide by `occurred_at` and `state`, never by arrival order; a tag a consumer does not know
  (a v2 beside v1) is skipped by it, not dead-lettered.
- Personal data: only events a consumer must act on carry a phone number (callback.requested,
  callback.failed and the verification notices, for the notifier; corpsim.suspension_due and
  corpsim.restored, for billing). Logs mask it; CRM webhooks mask
  it. The embedded dev NATS stores streams unencrypted: production must enable JetStream encryption at
  rest (server `jetstream.cipher`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import ClassVar, Literal

import msgspec


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Common envelope fields. Subclasses set SUBJECT and a versioned tag."""

    SUBJECT: ClassVar[str]
    event_id: uuid.UUID = msgspec.field(default_factory=uuid.uuid4)
    occurred_at: dt.datetime = msgspec.field(default_factory=utc_now)


# --- system -------------------------------------------------------------------------------------------


class SystemProbe(Event, frozen=True, kw_only=True, tag="system.probe.v1"):
    """A canary through the whole outbox → JetStream → inbox path (health checks, tests)."""

    SUBJECT = "system.probe"
    note: str = ""


# --- callback -----------------------------------------------------------------------------------------

CallbackStateName = Literal[
    "requested", "scheduled", "dialing", "connected", "completed", "failed", "cancelled", "expired"
]


class CallbackEvent(Event, frozen=True, kw_only=True):
    """Every callback.* event names the request, its site and the state it moved to."""

    callback_id: uuid.UUID
    site_key: str
    state: CallbackStateName


class CallbackRequested(CallbackEvent, frozen=True, kw_only=True, tag="callback.requested.v1"):
    SUBJECT = "callback.requested"
    phone: str  # E.164
    visitor_tz: str
    lang: str
    promised_earliest: dt.datetime
    promised_latest: dt.datetime
    promise_kind: Literal["asap", "scheduled"]
    page_url: str = ""


class CallbackScheduled(CallbackEvent, frozen=True, kw_only=True, tag="callback.scheduled.v1"):
    """Queued for a time: at creation, after a reschedule, or after a failed attempt with a retry left."""

    SUBJECT = "callback.scheduled"
    due_at: dt.datetime
    promised_earliest: dt.datetime
    promised_latest: dt.datetime
    reason: str = ""
    # For retries: when the last remaining attempt happens if none connects (the visitor's retry plan).
    last_attempt_by: dt.datetime | None = None


class CallbackMerged(CallbackEvent, frozen=True, kw_only=True, tag="callback.merged.v1"):
    """A second request for the same phone and site joined the pending one (it keeps its place)."""

    SUBJECT = "callback.merged"


class CallbackDialing(CallbackEvent, frozen=True, kw_only=True, tag="callback.dialing.v1"):
    SUBJECT = "callback.dialing"
    attempt: int
    agent_id: str = ""


class CallbackCallProgress(CallbackEvent, frozen=True, kw_only=True, tag="callback.progress.v1"):
    """A dialing step inside one attempt: agent ringing, agent answered, visitor ringing, ..."""

    SUBJECT = "callback.progress"
    attempt: int
    step: str
    agent_id: str = ""


class CallbackConnected(CallbackEvent, frozen=True, kw_only=True, tag="callback.connected.v1"):
    SUBJECT = "callback.connected"
    attempt: int
    agent_id: str = ""


class CallbackCompleted(CallbackEvent, frozen=True, kw_only=True, tag="callback.completed.v1"):
    SUBJECT = "callback.completed"
    talk_seconds: float = 0.0


class CallbackFailed(CallbackEvent, frozen=True, kw_only=True, tag="callback.failed.v1"):
    """The last attempt failed; the notifier may offer the visitor a reschedule link."""

    SUBJECT = "callback.failed"
    phone: str
    lang: str
    outcome: str
    attempts: int


class CallbackCancelled(CallbackEvent, frozen=True, kw_only=True, tag="callback.cancelled.v1"):
    SUBJECT = "callback.cancelled"
    by: Literal["visitor", "agent", "system"] = "visitor"


class CallbackExpired(CallbackEvent, frozen=True, kw_only=True, tag="callback.expired.v1"):
    SUBJECT = "callback.expired"


class CallbackTelephonyEvent(Event, frozen=True, kw_only=True, tag="callback.telephony.v1"):
    """What a telephony adapter saw about one dial attempt, carried durably from the replica that heard it
    to whichever replica applies it (published on `callback.telephony.<attempt>`, not through the outbox:
    it must get through while PostgreSQL is down). Internal to the callback service: not a CallbackEvent,
    so CRM webhooks and status streams never see it.

    Either `kind` is one of the adapter's call event kinds, or `kind` is "notice" and `notice` holds a
    provider's raw notification (its JSON), translated by the replica that applies it."""

    SUBJECT = "callback.telephony"
    attempt_id: str
    adapter: str
    kind: str
    at: dt.datetime
    provider_call_id: str | None = None
    detail: str = ""
    bridged_at: dt.datetime | None = None
    notice: str = ""


# --- verification -------------------------------------------------------------------------------------
# A case asks one subscriber (an MSISDN) to confirm the passport data on their contract by a deadline.
# The notifier turns link_issued / reminder_due / suspension_due into messages; the billing adapter
# acts on suspension_due / restored. Only these carry the phone: the notifier must reach the person.

VerificationReason = Literal["outdated_data", "used_by_other_person", "regulator_request", "corporate_sim"]
VerificationCaseState = Literal["open", "confirmed", "mismatch", "suspended", "restored", "cancelled"]


class VerificationEvent(Event, frozen=True, kw_only=True):
    """Every verification.* event names the case, the number and the state the case moved to."""

    case_id: uuid.UUID
    state: VerificationCaseState


class VerificationLinkIssued(VerificationEvent, frozen=True, kw_only=True, tag="verification.link_issued.v1"):
    """A case was opened (or its link re-issued): the subscriber must be sent the link (legally required)."""

    SUBJECT = "verification.link_issued"
    msisdn: str  # E.164
    reason: VerificationReason
    deadline: dt.datetime
    link: str  # the short single-use link, absolute URL
    lang: str = "ru"
    tz: str = ""  # IANA zone when known; "" lets the notifier derive one from the number


class VerificationReminderDue(
    VerificationEvent, frozen=True, kw_only=True, tag="verification.reminder_due.v1"
):
    """A reminder from the case's policy schedule fell due (e.g. 7, 3, 1 days before the deadline)."""

    SUBJECT = "verification.reminder_due"
    msisdn: str
    deadline: dt.datetime
    link: str
    days_left: int
    lang: str = "ru"
    tz: str = ""


class VerificationConfirmed(VerificationEvent, frozen=True, kw_only=True, tag="verification.confirmed.v1"):
    """The data the state portal returned matches the contract."""

    SUBJECT = "verification.confirmed"


class VerificationMismatch(VerificationEvent, frozen=True, kw_only=True, tag="verification.mismatch.v1"):
    """The subscriber signed in but the portal's data differs; back office must look (fields, no values)."""

    SUBJECT = "verification.mismatch"
    fields: list[str] = []


class VerificationSuspensionDue(
    VerificationEvent, frozen=True, kw_only=True, tag="verification.suspension_due.v1"
):
    """The deadline passed unconfirmed: billing suspends the number; the subscriber is told (urgent)."""

    SUBJECT = "verification.suspension_due"
    msisdn: str
    reason: VerificationReason
    link: str = ""
    lang: str = "ru"
    tz: str = ""


class VerificationRestored(VerificationEvent, frozen=True, kw_only=True, tag="verification.restored.v1"):
    """A suspended number's data was confirmed: billing restores service."""

    SUBJECT = "verification.restored"
    msisdn: str
    lang: str = "ru"
    tz: str = ""


class VerificationConsentDenied(
    VerificationEvent, frozen=True, kw_only=True, tag="verification.consent_denied.v1"
):
    """The subscriber signed in but refused to share the data; the case stays open until the deadline."""

    SUBJECT = "verification.consent_denied"


class VerificationAccountNotConfirmed(
    VerificationEvent, frozen=True, kw_only=True, tag="verification.account_not_confirmed.v1"
):
    """The subscriber's Gosuslugi account is unconfirmed (is_tru=false, ESIA-007055); the case stays open."""

    SUBJECT = "verification.account_not_confirmed"


class VerificationExpired(VerificationEvent, frozen=True, kw_only=True, tag="verification.expired.v1"):
    """The deadline passed without a confirmation (the case moves to suspended with suspension_due)."""

    SUBJECT = "verification.expired"
    deadline: dt.datetime


class VerificationCaseCancelled(
    VerificationEvent, frozen=True, kw_only=True, tag="verification.case_cancelled.v1"
):
    SUBJECT = "verification.case_cancelled"
    by: str = ""


# --- corpsim ------------------------------------------------------------------------------------------
# A company's corporate SIM (issue 13): who or what uses it and where its registration stands. One event
# per kind of change: bound (a new or replaced binding), unbound, status_changed (every other move of the
# state machine, from_state → state with the reason), and the deadline pair suspension_due / restored.
# The number travels masked except where billing must act on it (suspension_due, restored); company
# webhooks look the full number up by sim_id inside the verification service.

CorpSimState = Literal[
    "unregistered", "pending_employee_confirmation", "pending_submission", "submitted", "accepted", "rejected"
]
CorpSimBinding = Literal["employee", "device"]


class CorpSimEvent(Event, frozen=True, kw_only=True):
    """Every corpsim.* event names the SIM, its company, the state it is in and its row version."""

    sim_id: uuid.UUID
    company_id: uuid.UUID
    state: CorpSimState
    version: int
    msisdn_masked: str


class CorpSimBound(CorpSimEvent, frozen=True, kw_only=True, tag="corpsim.bound.v1"):
    """The SIM was bound to an employee (who must now confirm) or a device (ready for submission)."""

    SUBJECT = "corpsim.bound"
    binding: CorpSimBinding
    rebound: bool = False  # it replaced an earlier binding


class CorpSimUnbound(CorpSimEvent, frozen=True, kw_only=True, tag="corpsim.unbound.v1"):
    """The binding was removed: the SIM is unregistered again (and heads toward a deadline)."""

    SUBJECT = "corpsim.unbound"
    binding: CorpSimBinding


class CorpSimStatusChanged(CorpSimEvent, frozen=True, kw_only=True, tag="corpsim.status_changed.v1"):
    """employee confirmed, submitted, accepted, rejected(reason): any other move of the state machine."""

    SUBJECT = "corpsim.status_changed"
    from_state: CorpSimState
    reason: str = ""


class CorpSimSuspensionDue(CorpSimEvent, frozen=True, kw_only=True, tag="corpsim.suspension_due.v1"):
    """The registration deadline passed with the SIM unregistered or rejected: billing suspends it."""

    SUBJECT = "corpsim.suspension_due"
    msisdn: str  # E.164: billing must act on the number
    deadline: dt.datetime


class CorpSimRestored(CorpSimEvent, frozen=True, kw_only=True, tag="corpsim.restored.v1"):
    """A SIM suspended for its deadline was registered later: billing restores service."""

    SUBJECT = "corpsim.restored"
    msisdn: str


# --- notifier -----------------------------------------------------------------------------------------
# What happened to one message: for CRM, billing of SMS and dashboards. No phone, no text: the
# recipient is the notifier's own id, the subject the event that caused the message.

NotifyChannelKind = Literal["sms", "messenger"]


class NotifyEvent(Event, frozen=True, kw_only=True):
    """Every notify.* event names the message, its recipient, why it was sent and the channel used."""

    message_id: uuid.UUID
    recipient_id: uuid.UUID
    # The event the message answers (callback.failed's id, ...) and the routing purpose ("callback_missed").
    cause_event_id: uuid.UUID
    purpose: str
    # The channel that sent it ("" on a notify.failed that never reached one).
    channel: str = ""
    channel_kind: NotifyChannelKind | None = None


class NotifySent(NotifyEvent, frozen=True, kw_only=True, tag="notify.sent.v1"):
    """The provider accepted the message (an edit in place counts as a send)."""

    SUBJECT = "notify.sent"
    segments: int = 1
    cost_minor: int = 0
    fallback: bool = False
    edited_in_place: bool = False


class NotifyDelivered(NotifyEvent, frozen=True, kw_only=True, tag="notify.delivered.v1"):
    """A delivery receipt arrived; `late` when it came after the SMS fallback had already gone."""

    SUBJECT = "notify.delivered"
    late: bool = False


class NotifyFailed(NotifyEvent, frozen=True, kw_only=True, tag="notify.failed.v1"):
    """No channel delivered it: refused for good, expired, or the address is dead (`reason` says which)."""

    SUBJECT = "notify.failed"
    reason: str


AnyEvent = (
    SystemProbe
    | CallbackRequested
    | CallbackScheduled
    | CallbackMerged
    | CallbackDialing
    | CallbackCallProgress
    | CallbackConnected
    | CallbackCompleted
    | CallbackFailed
    | CallbackCancelled
    | CallbackExpired
    | CallbackTelephonyEvent
    | VerificationLinkIssued
    | VerificationReminderDue
    | VerificationConfirmed
    | VerificationMismatch
    | VerificationSuspensionDue
    | VerificationRestored
    | VerificationCaseCancelled
    | VerificationConsentDenied
    | VerificationAccountNotConfirmed
    | VerificationExpired
    | CorpSimBound
    | CorpSimUnbound
    | CorpSimStatusChanged
    | CorpSimSuspensionDue
    | CorpSimRestored
    | NotifySent
    | NotifyDelivered
    | NotifyFailed
)

# Streams, declared in code and created/updated at start. One stream per owning service.
STREAMS: dict[str, list[str]] = {
    "SYSTEM": ["system.>"],
    "CALLBACK": ["callback.>"],
    "VERIFICATION": ["verification.>"],
    "CORPSIM": ["corpsim.>"],
    "NOTIFIER": ["notifier.>", "notify.>"],
}

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(payload: bytes) -> AnyEvent:
    """Raises msgspec.DecodeError / ValidationError on a malformed or unknown event (a poison message)."""
    return _decoder.decode(payload)
