"""A bulk upload's apply phase: one chunk of staged rows decided and applied in one transaction.

Device rows are applied set-based: one UPDATE … FROM unnest for their SIMs, one INSERT for their corpsim.*
outbox rows, one for the timeline, one upsert of what each row set. Employee rows too: everyone in the chunk
is locked and counted toward the 20-number limit (by passport blind index) in two statements, walked in
file order; their verification cases are opened together (CaseUseCases.open_cases_in); then their SIMs,
events and timeline as for devices. A row that fails a check is reported and not written, its neighbours
are. Only rows replacing an employee's binding (ending their case, or comparing the person) take the
single-SIM steps, each in a savepoint. The chunk's outcomes and the job's progress commit with its effects:
a chunk is applied exactly once, however often the job is resumed.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections import Counter
from typing import Any

import msgspec

from services.common import db, outbox
from services.common.domain_errors import DomainError
from services.common.events import CorpSimBinding, CorpSimBound
from services.verification.corporate import bulk_store, store
from services.verification.corporate.domain.limits import NUMBER_LIMIT
from services.verification.corporate.domain.sim import COUNTED_STATUSES, Action, transition
from services.verification.corporate.oauth import SCOPE_WRITE, Caller
from services.verification.corporate.schemas import EmployeeData
from services.verification.corporate.transitions import apply
from services.verification.corporate.usecases import (
    SIM_NOT_FOUND,
    CorporateSims,
    StoredEmployee,
    limit_reached,
    passport_key,
)
from services.verification.domain.compare import Holder
from services.verification.usecases import mask_holder
from services.verification.usecases.cases import CaseToOpen

BULK_CONTEXT = "bulk_rows.payload_enc"
DEVICE_NAMES = ("device_type", "device_name", "device_id_kind", "device_id", "installation_address")
_COUNTED: list[str] = sorted(COUNTED_STATUSES)
Decided = dict[int, tuple[str, str, str]]  # row number → (outcome, field, reason)
_timeline_detail = msgspec.json.Encoder()


class StagedRow(msgspec.Struct, kw_only=True):
    """What an employee row's payload_enc holds: the validated row (the number and the person)."""

    number: str
    kind: str
    device: dict[str, str | None] | None = None
    employee: EmployeeData | None = None


async def apply_chunk(
    sims: CorporateSims,
    conn: db.Connection,
    job: bulk_store.JobRow,
    *,
    first: int,
    last: int,
    column_of: dict[str, str],
) -> None:
    """Decide and apply rows first..last of the job, and count them, in one transaction on `conn`."""
    now = sims._now()
    decided: Decided = {}
    async with conn.transaction():
        await bulk_store.mark_not_on_contract(conn, job.id, job.company_id, first, last, reason=SIM_NOT_FOUND)
        rows = await bulk_store.lock_chunk(conn, job.id, job.company_id, first, last)
        fast: list[tuple[Any, Any]] = []
        employees: list[Any] = []
        one_by_one: list[Any] = []
        for r in rows:
            if r["same_row"]:
                decided[r["row_no"]] = ("unchanged", "", "the same row was applied before")
            elif r["case_id"] is not None or r["binding"] == "employee":
                # Replacing an employee binding: its case is ended, or the same person's data compared
                # (decrypted), through the single-SIM use case's own steps, row by row.
                one_by_one.append(r)
            elif r["kind"] == "employee":
                employees.append(r)
            elif r["binding"] == "device" and r["status"] != "rejected" and _same_device(r):
                decided[r["row_no"]] = ("unchanged", "", "the SIM has this binding already")
            else:
                verb = "rebind" if r["status"] != "unregistered" else "bind"
                action: Action = f"{verb}_device"  # type: ignore[assignment]
                try:
                    outcome = transition(r["status"], r["binding"], action)
                except DomainError as exc:
                    decided[r["row_no"]] = ("error", exc.field or "", exc.message)
                    continue
                fast.append((r, outcome))
        if fast:
            await _write_device_bindings(conn, job, fast, now)
            for r, _ in fast:
                decided[r["row_no"]] = ("applied", "", "")
        people = sorted(
            {bytes(r["passport_index"]) for r in [*employees, *one_by_one] if r["kind"] == "employee"}
        )
        if people:
            # Serialise with every other bind of these people (store.lock_person's lock), all at once.
            await bulk_store.lock_people(conn, people)
        if employees:
            await _write_employee_bindings(
                sims, conn, job, employees, now=now, decided=decided, column_of=column_of
            )
        if one_by_one:
            await _apply_one_by_one(
                sims, conn, job, one_by_one, now=now, decided=decided, column_of=column_of
            )
        if decided:
            nos = sorted(decided)
            await bulk_store.set_outcomes(
                conn,
                job.id,
                row_nos=nos,
                outcomes=[decided[n][0] for n in nos],
                fields=[decided[n][1] for n in nos],
                reasons=[decided[n][2] for n in nos],
            )
        await bulk_store.count_progress(conn, job.id, first, last)


async def _write_device_bindings(
    conn: db.Connection, job: bulk_store.JobRow, fast: list[tuple[Any, Any]], now: dt.datetime
) -> None:
    columns: dict[str, list[Any]] = {
        "id": [r["sim_id"] for r, _ in fast],
        "version": [r["version"] for r, _ in fast],
        "status": [o.status for _, o in fast],
        **{n: [r[n] for r, _ in fast] for n in DEVICE_NAMES},
    }
    written = {
        rec["id"]: rec["version"]
        for rec in await bulk_store.apply_device_bindings(conn, job.company_id, columns, now)
    }
    if len(written) != len(fast):  # every SIM was locked at the version read: this cannot happen
        raise RuntimeError("a locked SIM changed during its bulk update")
    await _events_and_timeline(conn, job, fast, written, binding="device", now=now)


async def _events_and_timeline(
    conn: db.Connection,
    job: bulk_store.JobRow,
    pairs: list[tuple[Any, Any]],
    written: dict[uuid.UUID, int],
    *,
    binding: CorpSimBinding,
    now: dt.datetime,
) -> None:
    """The corpsim.bound events, timeline entries and applied-row hashes of SIMs just bound, set-based."""
    event_ids = _uuid4s(len(pairs))
    events = [
        CorpSimBound(
            event_id=event_id,
            sim_id=r["sim_id"],
            company_id=job.company_id,
            state=o.status,
            version=written[r["sim_id"]],
            msisdn_masked=r["msisdn_masked"],
            occurred_at=now,
            binding=binding,
            rebound=o.rebound,
        )
        for (r, o), event_id in zip(pairs, event_ids, strict=True)
    ]
    ids, subjects, payloads = outbox.as_columns(*events)
    await conn.execute(outbox.insert_from_columns("$1", "$2", "$3"), ids, subjects, payloads)
    await bulk_store.add_timeline(
        conn,
        job.company_id,
        [r["sim_id"] for r, _ in pairs],
        ["rebound" if o.rebound else "bound" for _, o in pairs],
        [
            _timeline_detail.encode(
                {
                    "from": r["status"],
                    "to": o.status,
                    "binding": binding,
                    "version": written[r["sim_id"]],
                    "bulk_upload": str(job.id),
                    "row": r["row_no"],
                }
            ).decode()
            for r, o in pairs
        ],
        actor=f"client:{job.actor}",
        at=now,
    )
    await bulk_store.remember_applied(
        conn,
        job.company_id,
        [r["sim_id"] for r, _ in pairs],
        [bytes(r["row_hash"]) for r, _ in pairs],
        [written[r["sim_id"]] for r, _ in pairs],
    )


async def _write_employee_bindings(
    sims: CorporateSims,
    conn: db.Connection,
    job: bulk_store.JobRow,
    rows: list[Any],
    *,
    now: dt.datetime,
    decided: Decided,
    column_of: dict[str, str],
) -> None:
    """Employee rows on SIMs without an employee binding, set-based: everyone's numbers counted in one
    statement (in file order, each applied row adding to its person), their verification cases opened
    together (CaseUseCases.open_cases_in), then the SIMs, events, timeline as for devices."""
    rows = sorted(rows, key=lambda r: r["row_no"])  # the file's order decides who takes a last place
    counts = await bulk_store.count_people_numbers(
        conn, [bytes(r["passport_index"]) for r in rows], [r["sim_id"] for r in rows], _COUNTED
    )
    taken: Counter[bytes] = Counter()
    ready: list[tuple[Any, StagedRow, Holder, EmployeeData, Any]] = []
    for r, held_before in zip(rows, counts, strict=True):
        person = bytes(r["passport_index"])
        row = msgspec.json.decode(
            sims.protector.decrypt(bytes(r["payload_enc"]), BULK_CONTEXT, job.id), type=StagedRow
        )
        employee = row.employee
        if employee is None:
            raise RuntimeError("an employee row was staged without its employee")
        verb = "rebind" if r["status"] != "unregistered" else "bind"
        action: Action = f"{verb}_employee"  # type: ignore[assignment]
        try:
            holder = sims._check_employee(employee, row.number)
            outcome = transition(r["status"], r["binding"], action)
            # An earlier row of this chunk for the same person holds one more number (its SIM was not
            # theirs before: SIMs bound to an employee take the row-by-row way).
            held = held_before + taken[person]
            if held >= NUMBER_LIMIT:
                raise limit_reached(held)
        except DomainError as exc:
            decided[r["row_no"]] = ("error", column_of.get(exc.field or "", exc.field or ""), exc.message)
            continue
        taken[person] += 1
        ready.append((r, row, holder, employee, outcome))
    if not ready:
        return
    who = f"client:{job.actor}"
    case_ids = await sims.cases.open_cases_in(
        conn,
        [CaseToOpen(msisdn=row.number, holder=h, lang=e.lang, tz=e.tz) for _, row, h, e, _ in ready],
        reason="corporate_sim",
        actor=who,
        now=now,
    )
    bound: list[tuple[Any, Any, dict[str, Any]]] = []
    for (r, _, holder, employee, outcome), case_id in zip(ready, case_ids, strict=True):
        if case_id is None:
            decided[r["row_no"]] = (
                "error",
                "number",
                "The number has an open subscriber-verification case; bind it once that case is closed",
            )
            continue
        stored = StoredEmployee(holder=holder, lang=employee.lang, tz=employee.tz)
        fields = {
            "employee_enc": sims.protector.encrypt(
                msgspec.json.encode(stored).decode(), store.EMPLOYEE_CONTEXT, r["sim_id"]
            ),
            "employee_masked": mask_holder(holder).name,
            "passport_index": bytes(r["passport_index"]),
            "case_id": case_id,
        }
        bound.append((r, outcome, fields))
    if not bound:
        return
    written = {
        rec["id"]: rec["version"]
        for rec in await bulk_store.apply_employee_bindings(
            conn,
            job.company_id,
            ids=[r["sim_id"] for r, _, _ in bound],
            versions=[r["version"] for r, _, _ in bound],
            statuses=[o.status for _, o, _ in bound],
            employee_encs=[f["employee_enc"] for _, _, f in bound],
            employee_masks=[f["employee_masked"] for _, _, f in bound],
            passport_indexes=[f["passport_index"] for _, _, f in bound],
            case_ids=[f["case_id"] for _, _, f in bound],
            now=now,
        )
    }
    if len(written) != len(bound):  # every SIM was locked at the version read: this cannot happen
        raise RuntimeError("a locked SIM changed during its bulk update")
    pairs = [(r, o) for r, o, _ in bound]
    await _events_and_timeline(conn, job, pairs, written, binding="employee", now=now)
    for r, _, _ in bound:
        decided[r["row_no"]] = ("applied", "", "")


async def _apply_one_by_one(
    sims: CorporateSims,
    conn: db.Connection,
    job: bulk_store.JobRow,
    rows: list[Any],
    *,
    now: dt.datetime,
    decided: Decided,
    column_of: dict[str, str],
) -> None:
    """Rows replacing an employee's binding, each in a savepoint with the single-SIM steps (rare: a first
    upload has none). Their people are locked by the caller; each is counted after every earlier row."""
    caller = Caller(company_id=job.company_id, client_id=job.actor, scopes=frozenset({SCOPE_WRITE}))
    remembered: list[tuple[uuid.UUID, bytes, int]] = []
    for r in sorted(rows, key=lambda r: r["row_no"]):
        person = bytes(r["passport_index"]) if r["kind"] == "employee" else None
        held = None
        if person is not None:
            held = await store.count_person_numbers(conn, person, _COUNTED, except_sim=r["sim_id"])
        try:
            async with conn.transaction():  # a savepoint: the row is atomic
                version = await _bind_one(sims, conn, caller, job, r, now=now, held=held)
        except DomainError as exc:
            decided[r["row_no"]] = ("error", column_of.get(exc.field or "", exc.field or ""), exc.message)
            continue
        if version is None:
            decided[r["row_no"]] = ("unchanged", "", "the SIM has this binding already")
        else:
            decided[r["row_no"]] = ("applied", "", "")
            remembered.append((r["sim_id"], bytes(r["row_hash"]), version))
    if remembered:
        await bulk_store.remember_applied(
            conn,
            job.company_id,
            [sim for sim, _, _ in remembered],
            [h for _, h, _ in remembered],
            [v for _, _, v in remembered],
        )


async def _bind_one(
    sims: CorporateSims,
    conn: db.Connection,
    caller: Caller,
    job: bulk_store.JobRow,
    r: Any,
    *,
    now: dt.datetime,
    held: int | None,
) -> int | None:
    """The single-SIM PUT's binding, in the chunk's transaction: the SIM's new version, or None when it has
    this binding already. `held`: the numbers the employee holds elsewhere (counted by the caller)."""
    found = await store.sim_by_number(conn, job.company_id, bytes(r["msisdn_index"]), lock=True)
    if found is None:  # locked with the chunk: it cannot have left the contract since
        raise RuntimeError("a locked SIM disappeared during its bulk update")
    sim = found.sim
    if r["kind"] == "employee":
        row = msgspec.json.decode(
            sims.protector.decrypt(bytes(r["payload_enc"]), BULK_CONTEXT, job.id), type=StagedRow
        )
        employee = row.employee
        if employee is None:
            raise RuntimeError("an employee row was staged without its employee")
        holder = sims._check_employee(employee, row.number)
        if sims._same_binding(sim, holder, employee, None):
            return None
        if held is not None and held >= NUMBER_LIMIT:
            raise limit_reached(held)
        verb = "rebind" if sim.status != "unregistered" else "bind"
        action: Action = f"{verb}_employee"  # type: ignore[assignment]
        outcome = transition(sim.status, sim.binding, action)  # type: ignore[arg-type]  # the check constraint
        await sims._end_case(conn, sim, caller.who, "the SIM was rebound", now)
        fields = await sims.employee_binding(
            conn,
            caller=caller,
            sim=sim,
            e164=row.number,
            holder=holder,
            employee=employee,
            now=now,
            person=sims.protector.blind_index(
                passport_key(holder.passport_series, holder.passport_number), store.PASSPORT_INDEX
            ),
        )
    else:
        device = {n: r[n] for n in DEVICE_NAMES}
        if (
            sim.status != "rejected"
            and sim.binding == "device"
            and all(getattr(sim, k) == v for k, v in device.items())
        ):
            return None
        verb = "rebind" if sim.status != "unregistered" else "bind"
        action = f"{verb}_device"  # type: ignore[assignment]
        outcome = transition(sim.status, sim.binding, action)  # type: ignore[arg-type]
        await sims._end_case(conn, sim, caller.who, "the SIM was rebound", now)
        fields = {**device, "bound_at": now}
    new = await apply(
        conn,
        found,
        outcome,
        flow=sims.flow,
        actor=caller.who,
        now=now,
        binding=fields,
        detail={"bulk_upload": str(job.id), "row": r["row_no"]},
    )
    return new.version


def _uuid4s(n: int) -> list[uuid.UUID]:
    """n uuid4s from one read of the OS's randomness (uuid4 makes a system call per id: it showed)."""
    raw = os.urandom(16 * n)
    return [uuid.UUID(bytes=raw[i : i + 16], version=4) for i in range(0, 16 * n, 16)]


def _same_device(r: Any) -> bool:
    return all(r[n] == r[f"s_{n}"] for n in DEVICE_NAMES)
