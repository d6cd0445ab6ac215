"""A bulk upload's apply phase: one chunk of staged rows decided and applied in one transaction.

Device rows (the bulk of a file) are applied set-based: one UPDATE … FROM unnest for their SIMs, one INSERT
for their corpsim.* outbox rows, one for the timeline, one upsert of what each row set. Employee rows get
the 20-number limit checked set-based by passport blind index (everyone in the chunk locked and counted in
two statements); each then opens its verification case through the subscriber flow's own in-transaction
use case inside a savepoint, so a row that fails is reported and rolled back alone. The chunk's outcomes
and the job's progress commit with its effects: a chunk is applied exactly once, however often the job is
resumed.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from typing import Any

import msgspec

from services.common import db, outbox
from services.common.domain_errors import Conflict, DomainError
from services.common.events import CorpSimBound
from services.verification.corporate import bulk_store, store
from services.verification.corporate.domain.limits import LEGAL_SOURCE, NUMBER_LIMIT
from services.verification.corporate.domain.sim import COUNTED_STATUSES, Action, transition
from services.verification.corporate.oauth import SCOPE_WRITE, Caller
from services.verification.corporate.schemas import EmployeeData
from services.verification.corporate.transitions import apply
from services.verification.corporate.usecases import (
    SIM_NOT_FOUND,
    CorporateSims,
    StoredEmployee,
    passport_key,
)
from services.verification.usecases import mask_holder

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


def limit_reached(held: int) -> Conflict:
    """The single-SIM binding's refusal, word for word."""
    return Conflict(
        "number_limit_reached",
        f"This person already holds {held} numbers across all operators; the limit is {NUMBER_LIMIT} "
        f"({LEGAL_SOURCE})",
        field="employee.passport_number",
    )


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
        one_by_one: list[Any] = []
        for r in rows:
            if r["same_row"]:
                decided[r["row_no"]] = ("unchanged", "", "the same row was applied before")
            elif r["kind"] != "device" or r["case_id"] is not None:
                one_by_one.append(r)  # an employee, or a device replacing an employee's pending case
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
    events = [
        CorpSimBound(
            sim_id=r["sim_id"],
            company_id=job.company_id,
            state=o.status,
            version=written[r["sim_id"]],
            msisdn_masked=r["msisdn_masked"],
            occurred_at=now,
            binding="device",
            rebound=o.rebound,
        )
        for r, o in fast
    ]
    ids, subjects, payloads = outbox.as_columns(*events)
    await conn.execute(outbox.insert_from_columns("$1", "$2", "$3"), ids, subjects, payloads)
    await bulk_store.add_timeline(
        conn,
        job.company_id,
        [r["sim_id"] for r, _ in fast],
        ["rebound" if o.rebound else "bound" for _, o in fast],
        [
            _timeline_detail.encode(
                {
                    "from": r["status"],
                    "to": o.status,
                    "binding": "device",
                    "version": written[r["sim_id"]],
                    "bulk_upload": str(job.id),
                    "row": r["row_no"],
                }
            ).decode()
            for r, o in fast
        ],
        actor=f"client:{job.actor}",
        at=now,
    )
    await bulk_store.remember_applied(
        conn,
        job.company_id,
        [r["sim_id"] for r, _ in fast],
        [bytes(r["row_hash"]) for r, _ in fast],
        [written[r["sim_id"]] for r, _ in fast],
    )


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
    """Employee rows (and devices replacing an employee's pending case), each in a savepoint; the 20-number
    limit of every person in the chunk checked set-based first."""
    caller = Caller(company_id=job.company_id, client_id=job.actor, scopes=frozenset({SCOPE_WRITE}))
    rows = sorted(rows, key=lambda r: r["row_no"])  # the file's order decides who takes a last place
    people = [r for r in rows if r["passport_index"] is not None]
    held_at_start: dict[int, int] = {}
    if people:
        indexes = [bytes(r["passport_index"]) for r in people]
        # Serialise with every other bind of these people (store.lock_person's lock), then count them all.
        await bulk_store.lock_people(conn, indexes)
        counts = await bulk_store.count_people_numbers(conn, indexes, [r["sim_id"] for r in people], _COUNTED)
        held_at_start = {r["row_no"]: held for r, held in zip(people, counts, strict=True)}
    seen: Counter[bytes] = Counter()
    remembered: list[tuple[uuid.UUID, bytes, int]] = []
    for r in rows:
        person = None if r["passport_index"] is None else bytes(r["passport_index"])
        held = held_at_start.get(r["row_no"], 0)
        if person is not None and seen[person]:
            # The person is on an earlier row of this chunk too: count again, seeing that row's binding.
            held = await store.count_person_numbers(conn, person, _COUNTED, except_sim=r["sim_id"])
        if person is not None:
            seen[person] += 1
        try:
            async with conn.transaction():  # a savepoint: the row is atomic
                version = await _bind_one(
                    sims, conn, caller, job, r, now=now, held=None if person is None else held
                )
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
        case_id, created = await sims.cases.open_case_in(
            conn,
            msisdn=row.number,
            holder=holder,
            reason="corporate_sim",
            lang=employee.lang,
            tz=employee.tz,
            actor=caller.who,
            now=now,
        )
        if not created:
            raise Conflict(
                "verification_case_open",
                "The number has an open subscriber-verification case; bind it once that case is closed",
                field="number",
            )
        stored = StoredEmployee(holder=holder, lang=employee.lang, tz=employee.tz)
        fields: dict[str, Any] = {
            "employee_enc": sims.protector.encrypt(
                msgspec.json.encode(stored).decode(), store.EMPLOYEE_CONTEXT, sim.id
            ),
            "employee_masked": mask_holder(holder).name,
            "passport_index": sims.protector.blind_index(
                passport_key(holder.passport_series, holder.passport_number), store.PASSPORT_INDEX
            ),
            "case_id": case_id,
            "bound_at": now,
        }
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
        actor=caller.who,
        now=now,
        binding=fields,
        detail={"bulk_upload": str(job.id), "row": r["row_no"]},
    )
    return new.version


def _same_device(r: Any) -> bool:
    return all(r[n] == r[f"s_{n}"] for n in DEVICE_NAMES)
