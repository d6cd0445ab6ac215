"""Callback state machine: every legal move, a selection of illegal ones, terminal states and events."""

from __future__ import annotations

import itertools

import pytest

from services.callback.domain.lifecycle import (
    EVENT_FOR_STATE,
    CallbackState,
    IllegalTransition,
    born,
    is_terminal,
    retime,
    transition,
)

S = CallbackState

LEGAL = {
    (S.REQUESTED, S.SCHEDULED),
    (S.REQUESTED, S.DIALING),
    (S.REQUESTED, S.CANCELLED),
    (S.REQUESTED, S.EXPIRED),
    (S.SCHEDULED, S.DIALING),
    (S.SCHEDULED, S.CANCELLED),
    (S.SCHEDULED, S.EXPIRED),
    (S.DIALING, S.CONNECTED),
    (S.DIALING, S.SCHEDULED),
    (S.DIALING, S.FAILED),
    (S.DIALING, S.CANCELLED),
    (S.CONNECTED, S.COMPLETED),
    (S.CONNECTED, S.FAILED),
    (S.CONNECTED, S.CANCELLED),
}
TERMINAL = {S.COMPLETED, S.FAILED, S.CANCELLED, S.EXPIRED}


@pytest.mark.parametrize(("current", "target"), sorted(LEGAL))
def test_legal_transitions(current: CallbackState, target: CallbackState) -> None:
    assert transition(current, target) is target


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.REQUESTED, S.CONNECTED),
        (S.REQUESTED, S.COMPLETED),
        (S.SCHEDULED, S.CONNECTED),
        (S.SCHEDULED, S.SCHEDULED),
        (S.DIALING, S.COMPLETED),
        (S.DIALING, S.EXPIRED),
        (S.CONNECTED, S.DIALING),
        (S.CONNECTED, S.EXPIRED),
        (S.COMPLETED, S.FAILED),
        (S.CANCELLED, S.SCHEDULED),
        (S.EXPIRED, S.DIALING),
        (S.FAILED, S.SCHEDULED),
        (S.SCHEDULED, S.REQUESTED),
    ],
)
def test_illegal_transitions(current: CallbackState, target: CallbackState) -> None:
    with pytest.raises(IllegalTransition) as raised:
        transition(current, target)
    assert (raised.value.current, raised.value.target) == (current, target)
    assert f"{current.value} -> {target.value}" in str(raised.value)


def test_table_is_exactly_the_legal_set() -> None:
    allowed = set()
    for current, target in itertools.product(CallbackState, repeat=2):
        try:
            transition(current, target)
        except IllegalTransition:
            continue
        allowed.add((current, target))
    assert allowed == LEGAL


def test_terminal_states() -> None:
    assert {state for state in CallbackState if is_terminal(state)} == TERMINAL
    for state in set(CallbackState) - TERMINAL:
        assert transition(state, S.CANCELLED) is S.CANCELLED


def test_events() -> None:
    assert EVENT_FOR_STATE[S.SCHEDULED] == "callback.scheduled"
    assert EVENT_FOR_STATE[S.DIALING] == "callback.dialing"
    assert {EVENT_FOR_STATE[state] for state in CallbackState} == {
        f"callback.{state}" for state in CallbackState
    }
    assert S("dialing") is S.DIALING
    assert str(S.COMPLETED) == "completed"


def test_retime_keeps_a_waiting_state_and_nothing_else() -> None:
    # A due request outside its window is re-timed in place; scheduled -> scheduled stays illegal.
    assert retime(S.SCHEDULED) is S.SCHEDULED
    for state in set(CallbackState) - {S.SCHEDULED}:
        with pytest.raises(IllegalTransition):
            retime(state)


def test_a_request_is_born_requested_and_may_move_on_at_once_only_into_waiting() -> None:
    assert born(S.REQUESTED) == (S.REQUESTED,)
    assert born(S.SCHEDULED) == (S.REQUESTED, S.SCHEDULED), "each state passed through is announced"
    for target in set(S) - {S.REQUESTED, S.SCHEDULED}:
        with pytest.raises(IllegalTransition):
            born(target)
