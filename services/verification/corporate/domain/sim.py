"""The corporate SIM state machine: which action moves which status where, and the event it emits.

unregistered → pending_employee_confirmation (bind an employee; they confirm through the ESIA sign-in)
             | pending_submission (bind a device, or the employee confirmed)
pending_submission → submitted (sent to the registry) → accepted | rejected(reason)
Any bound SIM can be unbound (→ unregistered) or rebound (the new binding starts over); a rejected SIM is
fixed by a rebind. An employee whose portal data differs from the binding, or who does not confirm in time,
rejects it (the company fixes the binding and rebinds).
"""

from __future__ import annotations

from typing import Literal, get_args

import msgspec

from services.common.domain_errors import Conflict

SimStatus = Literal[
    "unregistered",
    "pending_employee_confirmation",
    "pending_submission",
    "submitted",
    "accepted",
    "rejected",
]
SIM_STATUSES: tuple[SimStatus, ...] = get_args(SimStatus)
BOUND_STATUSES: frozenset[SimStatus] = frozenset(SIM_STATUSES) - {"unregistered"}
# Statuses that count toward a person's 20-number limit (the SIM is, or is about to be, theirs).
COUNTED_STATUSES: frozenset[SimStatus] = frozenset(
    {"pending_employee_confirmation", "pending_submission", "submitted", "accepted", "rejected"}
)
Binding = Literal["employee", "device"]
Action = Literal[
    "bind_employee",
    "bind_device",
    "rebind_employee",
    "rebind_device",
    "unbind",
    "employee_confirmed",
    "employee_mismatch",
    "employee_expired",
    "submit",
    "accept",
    "reject",
]
# corpsim.bound / corpsim.unbound / corpsim.status_changed (see services/common/events.py).
EventKind = Literal["bound", "unbound", "status_changed"]


class SimTransition(msgspec.Struct, frozen=True, kw_only=True):
    """Where an action leads: the new status and binding, the reason kept with it, the event to emit."""

    status: SimStatus
    binding: Binding | None
    reason: str
    event: EventKind
    # A bind that replaced an earlier binding (corpsim.bound says so).
    rebound: bool = False


class TransitionRefused(Conflict):
    """The SIM's status does not allow the action (409 with a code naming why)."""


def transition(
    status: SimStatus, binding: Binding | None, action: Action, *, reason: str = ""
) -> SimTransition:
    """The SIM's next state after `action`, or TransitionRefused. `reason` is required for reject."""
    if action in ("bind_employee", "bind_device"):
        if status != "unregistered":
            raise TransitionRefused(
                "sim_already_bound",
                f"the SIM is already bound ({status}); unbind or rebind it",
                field="status",
            )
        return _bound(action, rebound=False)
    if action in ("rebind_employee", "rebind_device"):
        if status not in BOUND_STATUSES:
            raise TransitionRefused("sim_not_bound", "the SIM is not bound; bind it instead", field="status")
        return _bound(action, rebound=True)
    if action == "unbind":
        if status not in BOUND_STATUSES:
            raise TransitionRefused("sim_not_bound", "the SIM is not bound", field="status")
        return SimTransition(status="unregistered", binding=None, reason="", event="unbound")
    if action in ("employee_confirmed", "employee_mismatch", "employee_expired"):
        if status != "pending_employee_confirmation":
            raise TransitionRefused(
                "sim_not_awaiting_employee", f"the SIM does not await an employee ({status})", field="status"
            )
        if action == "employee_confirmed":
            return SimTransition(
                status="pending_submission", binding=binding, reason="", event="status_changed"
            )
        return SimTransition(
            status="rejected",
            binding=binding,
            reason=reason
            or ("employee_data_mismatch" if action == "employee_mismatch" else "employee_not_confirmed"),
            event="status_changed",
        )
    if action == "submit":
        if status != "pending_submission":
            raise TransitionRefused(
                "sim_not_ready_for_submission",
                f"the SIM is not ready for submission ({status})",
                field="status",
            )
        return SimTransition(status="submitted", binding=binding, reason="", event="status_changed")
    if action in ("accept", "reject"):
        if status != "submitted":
            raise TransitionRefused(
                "sim_not_submitted", f"the SIM is not submitted ({status})", field="status"
            )
        if action == "accept":
            return SimTransition(status="accepted", binding=binding, reason="", event="status_changed")
        if not reason.strip():
            raise ValueError("a rejection needs a reason")
        return SimTransition(status="rejected", binding=binding, reason=reason, event="status_changed")
    raise ValueError(f"unknown action {action!r}")


def _bound(action: Action, *, rebound: bool) -> SimTransition:
    if action.endswith("employee"):
        # The employee must confirm through their own ESIA account before anything is submitted.
        return SimTransition(
            status="pending_employee_confirmation",
            binding="employee",
            reason="",
            event="bound",
            rebound=rebound,
        )
    return SimTransition(
        status="pending_submission", binding="device", reason="", event="bound", rebound=rebound
    )
