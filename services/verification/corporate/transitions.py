"""Applying a SIM transition: the row at its next version with its deadline, the corpsim.* event, the
deadline's timers and the audit entries, all in the caller's transaction (the one place a SIM changes, for
the API, the registry worker and the employee's case alike)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal, cast

import msgspec

from services.common import db, outbox
from services.common.domain_errors import Conflict
from services.common.events import (
    CorpSimBinding,
    CorpSimBound,
    CorpSimEvent,
    CorpSimState,
    CorpSimStatusChanged,
    CorpSimUnbound,
)
from services.verification.corporate import store
from services.verification.corporate.domain.sim import SimStatus, SimTransition, transition
from services.verification.corporate.lifecycle import CorporateFlow

# The binding's columns, cleared by an unbind and replaced by a rebind.
BINDING_FIELDS = (
    "employee_enc",
    "employee_masked",
    "passport_index",
    "device_type",
    "device_name",
    "device_id_kind",
    "device_id",
    "installation_address",
    "case_id",
    "bound_at",
    "use_from",
)


async def apply(
    conn: db.Connection,
    current: store.SimWithNumber,
    outcome: SimTransition,
    *,
    flow: CorporateFlow,
    actor: str,
    now: dt.datetime,
    binding: dict[str, Any] | None = None,
    detail: dict[str, Any] | None = None,
) -> store.SimRow:
    """Write the transition (with the new binding's columns, if any, and the deadline its new state
    has) at the next version, or raise a 409 when the SIM changed since it was read."""
    sim = current.sim
    changes: dict[str, Any] = dict.fromkeys(BINDING_FIELDS) if outcome.event != "status_changed" else {}
    changes.update(binding or {})
    new = msgspec.structs.replace(
        sim,
        status=outcome.status,
        status_reason=outcome.reason,
        binding=outcome.binding,
        updated_at=now,
        **changes,
    )
    # The deadline moves with the status in this same write: accepted clears it (and restores a
    # suspended number), a SIM that needs registration and has none gets one, a device's start date
    # brings it forward.
    deadline = flow.deadline_change(new, now)
    new = msgspec.structs.replace(new, deadline=deadline.deadline, suspended_at=deadline.suspended_at)
    version = await store.save_sim(conn, new, sim.version)
    if version is None:
        raise Conflict("sim_changed", "The SIM changed meanwhile; read it again and retry", field="version")
    new = msgspec.structs.replace(new, version=version)
    common: dict[str, Any] = {
        "sim_id": sim.id,
        "company_id": sim.company_id,
        "state": _state(outcome.status),
        "version": version,
        "msisdn_masked": current.msisdn_masked,
        "occurred_at": now,
    }
    event: CorpSimEvent
    if outcome.event == "bound":
        event = CorpSimBound(**common, binding=_binding(outcome.binding), rebound=outcome.rebound)
        kind = "rebound" if outcome.rebound else "bound"
    elif outcome.event == "unbound":
        event = CorpSimUnbound(**common, binding=_binding(sim.binding))
        kind = "unbound"
    else:
        event = CorpSimStatusChanged(**common, from_state=_state(sim.status), reason=outcome.reason)
        kind = "status_changed"
    await outbox.append(conn, event)
    entry = {
        "from": sim.status,
        "to": outcome.status,
        "binding": outcome.binding or sim.binding,
        "version": version,
    }
    if outcome.reason:
        entry["reason"] = outcome.reason
    await store.add_sim_timeline(
        conn, sim.company_id, sim.id, at=now, kind=kind, actor=actor, detail={**entry, **(detail or {})}
    )
    await flow.deadline_changed(
        conn,
        msgspec.structs.replace(current, sim=new),
        deadline,
        was_suspended_at=sim.suspended_at,
        now=now,
    )
    return new


def _state(status: str) -> CorpSimState:
    # The table's check constraint and the state machine hold the same names (a unit test compares them).
    return cast(CorpSimState, status)


def _binding(binding: str | None) -> CorpSimBinding:
    return cast(CorpSimBinding, binding)


EmployeeOutcome = Literal["confirmed", "mismatch", "expired"]


async def employee_case_decided(
    conn: db.Connection,
    case_id: uuid.UUID,
    outcome: EmployeeOutcome,
    fields: list[str],
    now: dt.datetime,
    *,
    flow: CorporateFlow,
) -> store.SimRow | None:
    """The employee's verification case decided (in the case's transaction): the SIM moves on to
    submission, or is rejected with the reason. Nothing when the SIM was unbound or rebound meanwhile."""
    # The case id is the only link a case has to its SIM; it names exactly one SIM of one company.
    found = await store.sim_by_case(conn, case_id, lock=True)
    if found is None or found.sim.status != "pending_employee_confirmation":
        return None
    status: SimStatus = "pending_employee_confirmation"
    if outcome == "confirmed":
        moved = transition(status, "employee", "employee_confirmed")
    elif outcome == "mismatch":
        moved = transition(
            status, "employee", "employee_mismatch", reason="employee_data_mismatch:" + ",".join(fields)
        )
    else:
        moved = transition(status, "employee", "employee_expired")
    actor = "system" if outcome == "expired" else "employee"
    return await apply(conn, found, moved, flow=flow, actor=actor, now=now, detail={"case_id": str(case_id)})
