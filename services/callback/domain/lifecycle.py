"""Callback request state machine: the allowed transitions and the event each one emits."""

from __future__ import annotations

import enum
from collections.abc import Mapping

__all__ = [
    "BORN_INTO",
    "EVENT_FOR_STATE",
    "RETIMABLE",
    "TRANSITIONS",
    "CallbackState",
    "IllegalTransition",
    "born",
    "is_terminal",
    "retime",
    "transition",
]


class CallbackState(enum.StrEnum):
    REQUESTED = "requested"
    SCHEDULED = "scheduled"
    DIALING = "dialing"
    CONNECTED = "connected"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


_S = CallbackState

TRANSITIONS: Mapping[CallbackState, frozenset[CallbackState]] = {
    # ASAP requests go straight to dialing; others wait for their time in scheduled.
    _S.REQUESTED: frozenset({_S.SCHEDULED, _S.DIALING, _S.CANCELLED, _S.EXPIRED}),
    _S.SCHEDULED: frozenset({_S.DIALING, _S.CANCELLED, _S.EXPIRED}),
    # Back to scheduled = retry later after an unanswered or busy attempt; failed = attempts exhausted.
    _S.DIALING: frozenset({_S.CONNECTED, _S.SCHEDULED, _S.FAILED, _S.CANCELLED}),
    _S.CONNECTED: frozenset({_S.COMPLETED, _S.FAILED, _S.CANCELLED}),
    _S.COMPLETED: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.EXPIRED: frozenset(),
}

# A re-time gives a waiting request a new due time without a transition (a due request that may not be
# dialed now, e.g. outside the visitor's window, waits for its next allowed time). It is not scheduled ->
# scheduled: the state does not change, and only a waiting request may be re-timed.
RETIMABLE: frozenset[CallbackState] = frozenset({_S.SCHEDULED})

# A new request is born requested and may move on at once, in the transaction that creates it: its row is
# written once, in the state it ends up in (no insert-then-update), and each state passed through is still
# announced (callback.requested, then callback.<state>). Only waiting states may be skipped into this way.
BORN_INTO: frozenset[CallbackState] = frozenset({_S.REQUESTED, _S.SCHEDULED})

# Event published when a request enters the state (callback.requested when it is created).
EVENT_FOR_STATE: Mapping[CallbackState, str] = {state: f"callback.{state.value}" for state in CallbackState}


class IllegalTransition(Exception):
    """A transition the state machine does not allow."""

    def __init__(self, current: CallbackState, target: CallbackState) -> None:
        super().__init__(f"illegal callback transition {current.value} -> {target.value}")
        self.current = current
        self.target = target


def is_terminal(state: CallbackState) -> bool:
    return not TRANSITIONS[state]


def transition(current: CallbackState, target: CallbackState) -> CallbackState:
    """`target` if the move from `current` is allowed, else IllegalTransition."""
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(current, target)
    return target


def retime(current: CallbackState) -> CallbackState:
    """`current` if a request in it may get a new due time (the state is kept), else IllegalTransition."""
    if current not in RETIMABLE:
        raise IllegalTransition(current, current)
    return current


def born(target: CallbackState) -> tuple[CallbackState, ...]:
    """The states a new request passes through to be born in `target` (requested first), each one an event;
    IllegalTransition unless requested -> `target` is an allowed first step into a waiting state."""
    if target is _S.REQUESTED:
        return (_S.REQUESTED,)
    if target not in BORN_INTO:
        raise IllegalTransition(_S.REQUESTED, target)
    return (_S.REQUESTED, transition(_S.REQUESTED, target))
