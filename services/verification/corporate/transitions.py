"""Applying a SIM transition: the row at its next version, the corpsim.* event and the audit entry, all in
the caller's transaction (the one place a SIM changes, for the API and for the employee's case alike)."""

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
)


async def apply(
    conn: db.Connection,
    current: store.SimWithNumber,
    outcome: SimTransition,
    *,
    actor: str,
    now: dt.datetime,
    binding: dict[str, Any] | None = None,
    detail: dict[str, Any] | None = None,
) -> store.SimRow:
    """Write the transition (with the new binding's columns, if any) at the next version, or raise a
    409 when the SIM changed since it was read."""
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
    return new


def _state(status: str) -> CorpSimState:
    # The table's check constraint and the state machine hold the same names (a unit test compares them).
    return cast(CorpSimState, status)


def _binding(binding: str | None) -> CorpSimBinding:
    return cast(CorpSimBinding, binding)


EmployeeOutcome = Literal["confirmed", "mismatch", "expired"]


async def employee_case_decided(
    conn: db.Connection, case_id: uuid.UUID, outcome: EmployeeOutcome, fields: list[str], now: dt.datetime
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
    return await apply(conn, found, moved, actor=actor, now=now, detail={"case_id": str(case_id)})
