"""Dial attempt states, the moves between them, and what an attempt's end means (pure, no I/O)."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping

import msgspec

from services.callback.domain.calendar import CalleeWindow, SiteCalendar
from services.callback.domain.retry import Outcome, RetrySpacing, decide_retry, last_attempt_by

__all__ = [
    "LIVE_STATES",
    "PROGRESS_STATES",
    "TRANSITIONS",
    "AttemptState",
    "FailedAttemptPlan",
    "IllegalAttemptTransition",
    "Outcome",
    "agent_status_after",
    "can_move",
    "final_outcome",
    "plan_after_failed_attempt",
]


class AttemptState(enum.StrEnum):
    PLACING = "placing"  # reserved and committed; the order is not (known to be) at the provider yet
    PLACED = "placed"  # the provider took the order
    AGENT_RINGING = "agent_ringing"
    AGENT_ANSWERED = "agent_answered"
    VISITOR_RINGING = "visitor_ringing"
    VISITOR_ANSWERED = "visitor_answered"
    CONNECTED = "connected"  # bridged: the people talk
    ENDED = "ended"


_A = AttemptState

# Progress reported by the provider's call events. Events of one call may arrive out of order or twice,
# so any progress step may follow any other (and a fast provider's may overtake the 'placed' mark).
PROGRESS_STATES: frozenset[AttemptState] = frozenset(
    {_A.AGENT_RINGING, _A.AGENT_ANSWERED, _A.VISITOR_RINGING, _A.VISITOR_ANSWERED}
)

TRANSITIONS: Mapping[AttemptState, frozenset[AttemptState]] = {
    _A.PLACING: frozenset({_A.PLACED, *PROGRESS_STATES, _A.CONNECTED, _A.ENDED}),
    _A.PLACED: frozenset({*PROGRESS_STATES, _A.CONNECTED, _A.ENDED}),
    **{step: frozenset({*PROGRESS_STATES, _A.CONNECTED, _A.ENDED}) for step in PROGRESS_STATES},
    _A.CONNECTED: frozenset({_A.ENDED}),
    _A.ENDED: frozenset(),
}

# States in which a call exists at the provider ('placing' ones are re-placed by the dispatcher's recovery).
LIVE_STATES: tuple[AttemptState, ...] = (
    _A.PLACED,
    _A.AGENT_RINGING,
    _A.AGENT_ANSWERED,
    _A.VISITOR_RINGING,
    _A.VISITOR_ANSWERED,
    _A.CONNECTED,
)


class IllegalAttemptTransition(Exception):
    def __init__(self, current: AttemptState, target: AttemptState) -> None:
        super().__init__(f"illegal attempt transition {current.value} -> {target.value}")
        self.current = current
        self.target = target


def can_move(current: str, target: AttemptState) -> bool:
    """Whether an attempt in `current` may move to `target` (a late or repeated event may not)."""
    return target in TRANSITIONS[AttemptState(current)]


def move(current: str, target: AttemptState) -> AttemptState:
    """`target` if allowed from `current`, else IllegalAttemptTransition."""
    if not can_move(current, target):
        raise IllegalAttemptTransition(AttemptState(current), target)
    return target


def final_outcome(reported: Outcome, state: str) -> Outcome:
    """The outcome an attempt ends with: a call that ends without having been bridged never connected
    the people, whatever ended it, so it is a failure."""
    if reported == "connected" and state != AttemptState.CONNECTED:
        return "failed"
    return reported


def agent_status_after(outcome: Outcome) -> str | None:
    """The presence an agent gets when their attempt ends (None: keep it). An agent who let it ring goes
    on break instead of being rung again and again."""
    return "break" if outcome == "agent_no_answer" else None


class FailedAttemptPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What a failed attempt leads to: `next_at` None means the request has failed for good."""

    attempts: int  # attempts that count, after this one
    next_at: dt.datetime | None
    last_attempt_by: dt.datetime | None


def plan_after_failed_attempt(
    outcome: Outcome,
    attempts_done: int,
    spacing: RetrySpacing,
    *,
    now: dt.datetime,
    site: SiteCalendar,
    callee: CalleeWindow,
) -> FailedAttemptPlan:
    """Retry (when, and when the last remaining try would be) or give up, after an unconnected attempt."""
    decision = decide_retry(outcome, attempts_done, spacing, now=now, site=site, callee=callee)
    attempts = attempts_done if decision.counts_as_attempt else attempts_done - 1
    if decision.next_at is None:
        return FailedAttemptPlan(attempts=attempts, next_at=None, last_attempt_by=None)
    last = last_attempt_by(decision.next_at, spacing.max_attempts - attempts, spacing, site, callee)
    return FailedAttemptPlan(attempts=attempts, next_at=decision.next_at, last_attempt_by=last)
