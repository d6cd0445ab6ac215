"""The telephony contract: what the callback service asks of any PBX or telephony cloud.

One dial attempt (`CallOrder.attempt_id`) produces a stream of `CallEvent`s that ends with exactly one
terminal event: ENDED after BRIDGED, or one of the failure kinds. Adapters push their events through
`EventStream`, which drops anything an attempt emits after its terminal event, so a late or duplicated
provider notification can never produce a second outcome.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import enum
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Literal, Protocol, TypeAlias, TypeVar, runtime_checkable

import msgspec

__all__ = [
    "ANSWERED_KIND",
    "RINGING_KIND",
    "TERMINAL_KINDS",
    "CallEvent",
    "CallEventKind",
    "CallOrder",
    "CallOutcome",
    "DialOrder",
    "EventStream",
    "Leg",
    "TelephonyAdapter",
    "TelephonyError",
    "outcome_of",
    "prune_finished",
    "utc_now",
]

DialOrder: TypeAlias = Literal["agent_first", "customer_first"]
Leg: TypeAlias = Literal["agent", "visitor"]

_E164 = re.compile(r"\+[1-9]\d{6,14}")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CallOrder(msgspec.Struct, frozen=True, kw_only=True):
    """One dial attempt: ring an agent and a visitor and bridge them."""

    attempt_id: str  # our id for ONE dial attempt (uuid4 hex); adapters use it for idempotency/correlation
    visitor_phone: str  # E.164
    agent_endpoint: str  # adapter-specific: "PJSIP/101" (ARI), SIP extension "101" (cloud), agent id (sim)
    caller_id: str  # number shown to the visitor
    whisper_text: str  # what the agent hears before the visitor is dialled (adapters may ignore it)
    order: DialOrder = "agent_first"
    ring_timeout_s: int = 25

    def __post_init__(self) -> None:
        if not self.attempt_id:
            raise ValueError("attempt_id must not be empty")
        if not _E164.fullmatch(self.visitor_phone):
            raise ValueError("visitor_phone must be E.164, e.g. +79161234567")
        if not self.agent_endpoint:
            raise ValueError("agent_endpoint must not be empty")
        if self.ring_timeout_s <= 0:
            raise ValueError("ring_timeout_s must be positive")


class CallEventKind(enum.StrEnum):
    AGENT_RINGING = "agent_ringing"
    AGENT_ANSWERED = "agent_answered"
    AGENT_NO_ANSWER = "agent_no_answer"
    VISITOR_RINGING = "visitor_ringing"
    VISITOR_ANSWERED = "visitor_answered"
    VISITOR_BUSY = "visitor_busy"
    VISITOR_NO_ANSWER = "visitor_no_answer"
    VOICEMAIL = "voicemail"
    BRIDGED = "bridged"
    ENDED = "ended"
    FAILED = "failed"


TERMINAL_KINDS: frozenset[CallEventKind] = frozenset(
    {
        CallEventKind.ENDED,
        CallEventKind.FAILED,
        CallEventKind.AGENT_NO_ANSWER,
        CallEventKind.VISITOR_NO_ANSWER,
        CallEventKind.VISITOR_BUSY,
        CallEventKind.VOICEMAIL,
    }
)
RINGING_KIND: dict[Leg, CallEventKind] = {
    "agent": CallEventKind.AGENT_RINGING,
    "visitor": CallEventKind.VISITOR_RINGING,
}
ANSWERED_KIND: dict[Leg, CallEventKind] = {
    "agent": CallEventKind.AGENT_ANSWERED,
    "visitor": CallEventKind.VISITOR_ANSWERED,
}


class CallEvent(msgspec.Struct, frozen=True, kw_only=True):
    attempt_id: str
    kind: CallEventKind
    at: dt.datetime  # UTC, timezone-aware
    provider_call_id: str | None = None
    detail: str = ""
    # On ENDED: when the people were bridged. ENDED then says everything about the conversation by itself,
    # so an ENDED applied before a delayed BRIDGED (a retry, a redelivery) still counts as talked.
    bridged_at: dt.datetime | None = None

    def __post_init__(self) -> None:
        if self.at.utcoffset() != dt.timedelta(0):
            raise ValueError("CallEvent.at must be a timezone-aware UTC datetime")

    @property
    def is_terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS


class CallOutcome(enum.StrEnum):
    CONNECTED = "connected"
    VISITOR_NO_ANSWER = "visitor_no_answer"
    BUSY = "busy"
    VOICEMAIL = "voicemail"
    AGENT_NO_ANSWER = "agent_no_answer"
    FAILED = "failed"


_OUTCOME_OF_FAILURE: dict[CallEventKind, CallOutcome] = {
    CallEventKind.FAILED: CallOutcome.FAILED,
    CallEventKind.AGENT_NO_ANSWER: CallOutcome.AGENT_NO_ANSWER,
    CallEventKind.VISITOR_NO_ANSWER: CallOutcome.VISITOR_NO_ANSWER,
    CallEventKind.VISITOR_BUSY: CallOutcome.BUSY,
    CallEventKind.VOICEMAIL: CallOutcome.VOICEMAIL,
}


def outcome_of(events: Sequence[CallEvent]) -> CallOutcome | None:
    """The final outcome of one attempt's events (in arrival order), or None while it is still going.

    CONNECTED needs BRIDGED before ENDED; an ENDED without a bridge means the people never talked.
    """
    bridged = False
    for event in events:
        if event.kind is CallEventKind.BRIDGED:
            bridged = True
        elif event.kind is CallEventKind.ENDED:
            return CallOutcome.CONNECTED if bridged else CallOutcome.FAILED
        elif event.kind in _OUTCOME_OF_FAILURE:
            return _OUTCOME_OF_FAILURE[event.kind]
    return None


class TelephonyError(Exception):
    """The provider refused or did not answer; `retryable` says whether the same order may succeed later."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.message = message

    def __repr__(self) -> str:
        return f"TelephonyError({self.message!r}, retryable={self.retryable})"


@runtime_checkable
class TelephonyAdapter(Protocol):
    """A way to place two-legged callback calls. Implementations: sim, asterisk (ARI), mango (cloud)."""

    name: str

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def can_dial(self) -> bool:
        """False while a dial would surely be refused (ARI's event stream is down): the dispatcher then
        reserves nobody and charges no request, instead of failing each dial as a provider error."""
        ...

    async def place_call(self, order: CallOrder) -> str:
        """Start dialling; return the provider's call id. The same attempt_id never rings twice.

        Raises TelephonyError(retryable=...) on provider errors and timeouts.
        """
        ...

    async def hangup(self, attempt_id: str) -> None:
        """End the attempt wherever it is; its terminal event follows. Unknown or finished ids are a no-op."""
        ...

    async def call_exists(self, attempt_id: str) -> bool | None:
        """Whether the attempt's call is still going at the provider; None when this adapter cannot tell.

        Used after a restart to close attempts whose call died with the previous process.
        """
        ...

    def events(self) -> AsyncIterator[CallEvent]:
        """The one stream of events for every call of this adapter (a single consumer reads it)."""
        ...


class EventStream:
    """Buffered single-consumer event stream that guarantees one terminal event per attempt.

    Events are buffered until read, so nothing is lost between place_call() and the consumer's first read.
    """

    # Remember finished attempts long enough to swallow late provider notifications, without growing forever.
    _FINISHED_MEMORY = 50_000

    def __init__(self) -> None:
        self._queue: asyncio.Queue[CallEvent | None] = asyncio.Queue()
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._bridged_at: dict[str, dt.datetime] = {}
        self._closed = False

    def is_finished(self, attempt_id: str) -> bool:
        return attempt_id in self._finished

    def emit(
        self,
        attempt_id: str,
        kind: CallEventKind,
        *,
        provider_call_id: str | None = None,
        detail: str = "",
    ) -> bool:
        """Queue an event; False when dropped because the attempt already ended or the stream is closed."""
        if self._closed or attempt_id in self._finished:
            return False
        at = utc_now()
        if kind is CallEventKind.BRIDGED:
            self._bridged_at[attempt_id] = at
        event = CallEvent(
            attempt_id=attempt_id,
            kind=kind,
            at=at,
            provider_call_id=provider_call_id,
            detail=detail,
            bridged_at=self._bridged_at.get(attempt_id) if kind is CallEventKind.ENDED else None,
        )
        if event.is_terminal:
            self._bridged_at.pop(attempt_id, None)
            self._finished[attempt_id] = None
            if len(self._finished) > self._FINISHED_MEMORY:
                self._finished.popitem(last=False)
        self._queue.put_nowait(event)
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[CallEvent]:
        while True:
            event = await self._queue.get()
            if event is None:
                # Leave the sentinel for any other reader so it stops too.
                self._queue.put_nowait(None)
                return
            yield event


_Call = TypeVar("_Call")

# Finished calls stay known so that a late retry of the same attempt does not ring again; only this many.
KEEP_CALLS = 10_000


def prune_finished(
    calls: dict[str, _Call], finished: Callable[[_Call], bool], keep: int = KEEP_CALLS
) -> list[_Call]:
    """Drop the oldest finished calls once more than `keep` are known; returns what was dropped."""
    if len(calls) <= keep:
        return []
    # Down to 90 % at once, so the scan happens once per keep/10 calls rather than on every call.
    excess = len(calls) - keep * 9 // 10
    doomed = [attempt_id for attempt_id, call in calls.items() if finished(call)][:excess]
    return [calls.pop(attempt_id) for attempt_id in doomed]
