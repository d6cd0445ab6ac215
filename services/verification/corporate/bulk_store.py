"""SQL of the bulk upload: jobs, the COPY-fed staging table, and the set-based apply of device bindings."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from services.common import db

STAGING_COLUMNS = (
    "job_id",
    "row_no",
    "msisdn_index",
    "kind",
    "row_hash",
    "payload_enc",
    "device_type",
    "device_name",
    "device_id_kind",
    "device_id",
    "installation_address",
    "outcome",
    "field",
    "reason",
    "passport_index",
)


class JobRow(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    company_id: uuid.UUID
    actor: str
    state: str
    format: str
    total: int
    done: int
    applied: int
    unchanged: int
    errors: int
    failure: str
    created_at: dt.datetime
    finished_at: dt.datetime | None
    next_row: int = 1


_JOB_COLUMNS = ", ".join(f.name for f in msgspec.structs.fields(JobRow))


async def insert_job(conn: db.Connection, job: JobRow) -> None:
    await conn.execute(
        f"insert into bulk_jobs ({_JOB_COLUMNS})"
        f" values ({', '.join(f'${i}' for i in range(1, len(msgspec.structs.fields(JobRow)) + 1))})",
        *(getattr(job, f.name) for f in msgspec.structs.fields(JobRow)),
    )


async def get_job(conn: db.Connection, company_id: uuid.UUID, job_id: uuid.UUID) -> JobRow | None:
    # Confined to the caller's company: another company's job reads exactly like a missing one.
    record = await conn.fetchrow(
        f"select {_JOB_COLUMNS} from bulk_jobs where company_id = $1 and id = $2", company_id, job_id
    )
    return None if record is None else msgspec.convert(dict(record), JobRow)


async def job_by_id(conn: db.Connection, job_id: uuid.UUID) -> JobRow | None:
    """The job for its runner (which is not a caller: no company filter)."""
    record = await conn.fetchrow(f"select {_JOB_COLUMNS} from bulk_jobs where id = $1", job_id)
    return None if record is None else msgspec.convert(dict(record), JobRow)


async def set_total(conn: db.Connection, job_id: uuid.UUID, total: int) -> None:
    await conn.execute("update bulk_jobs set total = $2 where id = $1", job_id, total)


async def unfinished_jobs(conn: db.Connection, limit: int) -> list[uuid.UUID]:
    """Jobs not done, oldest first: those of a process that stopped are resumed by whoever finds them."""
    rows = await conn.fetch(
        "select id from bulk_jobs where state in ('queued', 'running') order by created_at limit $1", limit
    )
    return [r["id"] for r in rows]


def _lock_key(job_id: uuid.UUID) -> int:
    # A bigint advisory-lock key from the job id (a collision only makes two jobs take turns).
    return int.from_bytes(job_id.bytes[:8], "big", signed=True)


async def try_lock_job(conn: db.Connection, job_id: uuid.UUID) -> bool:
    """Claim the job for this session: a session-level advisory lock, so it is released when the session
    ends, however the process that held it ended (no lease to wait out after a crash)."""
    locked: bool = await conn.fetchval("select pg_try_advisory_lock($1)", _lock_key(job_id))
    return locked


async def unlock_job(conn: db.Connection, job_id: uuid.UUID) -> None:
    await conn.execute("select pg_advisory_unlock($1)", _lock_key(job_id))


async def set_job_state(
    conn: db.Connection, job_id: uuid.UUID, state: str, *, failure: str = "", at: dt.datetime | None = None
) -> None:
    await conn.execute(
        "update bulk_jobs set state = $2, failure = $3, finished_at = $4 where id = $1",
        job_id,
        state,
        failure,
        at,
    )


async def copy_rows(conn: db.Connection, records: Iterable[Sequence[Any]]) -> None:
    """COPY validated rows into the staging table (one round trip per chunk)."""
    await conn.copy_records_to_table("bulk_rows", records=records, columns=STAGING_COLUMNS)


async def mark_duplicates(conn: db.Connection, job_id: uuid.UUID) -> None:
    """A number in the file more than once: every row after its first is an error (which one wins would
    otherwise depend on the order rows are applied)."""
    # The staged rows are not committed yet, so no autovacuum has counted them: without fresh statistics
    # the planner took 100 000 rows for a few and joined them by nested loops (30 s and a timeout on a
    # re-upload). ANALYZE samples this transaction's own rows too; it takes well under a second.
    await conn.execute("analyze bulk_rows")
    # One pass over the job's rows with a window; the update then finds each row by its primary key.
    await conn.execute(
        "update bulk_rows d set outcome = 'error', field = 'number',"
        " reason = 'the number is in this file more than once (first at row ' || f.first || ')'"
        " from (select row_no, min(row_no) over (partition by msisdn_index) as first from bulk_rows"
        "       where job_id = $1 and msisdn_index is not null) f"
        " where d.job_id = $1 and d.row_no = f.row_no and f.row_no > f.first",
        job_id,
    )


async def mark_not_on_contract(
    conn: db.Connection, job_id: uuid.UUID, company_id: uuid.UUID, first: int, last: int, *, reason: str
) -> None:
    """Rows whose number is not a SIM of this company (the single-SIM API's 404, per row)."""
    await conn.execute(
        "update bulk_rows r set outcome = 'error', field = 'number', reason = $5"
        " where r.job_id = $1 and r.row_no between $3 and $4 and r.outcome = 'pending'"
        " and not exists (select 1 from company_numbers n join sims s on s.number_id = n.id"
        "   where n.company_id = $2 and n.msisdn_index = r.msisdn_index and n.removed_at is null)",
        job_id,
        company_id,
        first,
        last,
        reason,
    )


async def lock_chunk(
    conn: db.Connection, job_id: uuid.UUID, company_id: uuid.UUID, first: int, last: int
) -> list[Any]:
    """The chunk's pending rows with their SIM, locked, and whether the row is what last set the SIM."""
    return list(
        await conn.fetch(
            "select r.row_no, r.kind, r.msisdn_index, r.row_hash, r.payload_enc, r.passport_index,"
            " r.device_type, r.device_name,"
            " r.device_id_kind, r.device_id, r.installation_address,"
            " s.id as sim_id, s.status, s.binding, s.version, s.case_id, n.msisdn_masked,"
            " s.device_type as s_device_type, s.device_name as s_device_name,"
            " s.device_id_kind as s_device_id_kind, s.device_id as s_device_id,"
            " s.installation_address as s_installation_address,"
            " coalesce(a.row_hash = r.row_hash and a.sim_version = s.version, false) as same_row"
            " from bulk_rows r"
            " join company_numbers n on n.company_id = $2 and n.msisdn_index = r.msisdn_index"
            "  and n.removed_at is null"
            " join sims s on s.number_id = n.id and s.company_id = $2"
            " left join bulk_applied a on a.sim_id = s.id"
            " where r.job_id = $1 and r.row_no between $3 and $4 and r.outcome = 'pending'"
            " order by s.id for update of s",
            job_id,
            company_id,
            first,
            last,
        )
    )


async def apply_device_bindings(
    conn: db.Connection,
    company_id: uuid.UUID,
    columns: dict[str, list[Any]],
    now: dt.datetime,
) -> list[Any]:
    """Set the device bindings of many SIMs in one statement (each at the version it was read and
    locked at); their (id, version) after it. Employee columns and any case are cleared as by a rebind."""
    return list(
        await conn.fetch(
            "update sims s set status = u.status, status_reason = '', binding = 'device',"
            " employee_enc = null, employee_masked = null, passport_index = null, case_id = null,"
            " device_type = u.device_type, device_name = u.device_name, device_id_kind = u.device_id_kind,"
            " device_id = u.device_id, installation_address = u.installation_address,"
            " bound_at = $2, updated_at = $2, version = s.version + 1"
            " from unnest($3::uuid[], $4::int[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],"
            "  $10::text[]) as u (id, version, status, device_type, device_name, device_id_kind, device_id,"
            "  installation_address)"
            " where s.company_id = $1 and s.id = u.id and s.version = u.version"
            " returning s.id, s.version",
            company_id,
            now,
            columns["id"],
            columns["version"],
            columns["status"],
            columns["device_type"],
            columns["device_name"],
            columns["device_id_kind"],
            columns["device_id"],
            columns["installation_address"],
        )
    )


async def apply_employee_bindings(
    conn: db.Connection,
    company_id: uuid.UUID,
    *,
    ids: list[uuid.UUID],
    versions: list[int],
    statuses: list[str],
    employee_encs: list[bytes],
    employee_masks: list[str],
    passport_indexes: list[bytes],
    case_ids: list[uuid.UUID],
    now: dt.datetime,
) -> list[Any]:
    """Bind many SIMs to their employees in one statement (each at the version it was read and locked at);
    their (id, version) after it. Device columns are cleared as by a rebind."""
    return list(
        await conn.fetch(
            "update sims s set status = u.status, status_reason = '', binding = 'employee',"
            " employee_enc = u.employee_enc, employee_masked = u.employee_masked,"
            " passport_index = u.passport_index, case_id = u.case_id,"
            " device_type = null, device_name = null, device_id_kind = null, device_id = null,"
            " installation_address = null, bound_at = $2, updated_at = $2, version = s.version + 1"
            " from unnest($3::uuid[], $4::int[], $5::text[], $6::bytea[], $7::text[], $8::bytea[],"
            "  $9::uuid[]) as u (id, version, status, employee_enc, employee_masked, passport_index, case_id)"
            " where s.company_id = $1 and s.id = u.id and s.version = u.version"
            " returning s.id, s.version",
            company_id,
            now,
            ids,
            versions,
            statuses,
            employee_encs,
            employee_masks,
            passport_indexes,
            case_ids,
        )
    )


async def add_timeline(
    conn: db.Connection,
    company_id: uuid.UUID,
    sim_ids: list[uuid.UUID],
    kinds: list[str],
    details: list[str],
    *,
    actor: str,
    at: dt.datetime,
) -> None:
    await conn.execute(
        "insert into sim_timeline (company_id, sim_id, at, kind, actor, detail)"
        " select $1, t.sim_id, $4, t.kind, $5, t.detail::jsonb"
        " from unnest($2::uuid[], $3::text[], $6::text[]) as t (sim_id, kind, detail)",
        company_id,
        sim_ids,
        kinds,
        at,
        actor,
        details,
    )


async def remember_applied(
    conn: db.Connection,
    company_id: uuid.UUID,
    sim_ids: list[uuid.UUID],
    hashes: list[bytes],
    versions: list[int],
) -> None:
    await conn.execute(
        "insert into bulk_applied (company_id, sim_id, row_hash, sim_version)"
        " select $1, a.sim_id, a.row_hash, a.sim_version"
        " from unnest($2::uuid[], $3::bytea[], $4::int[]) as a (sim_id, row_hash, sim_version)"
        " on conflict (sim_id) do update"
        " set row_hash = excluded.row_hash, sim_version = excluded.sim_version",
        company_id,
        sim_ids,
        hashes,
        versions,
    )


async def set_outcomes(
    conn: db.Connection,
    job_id: uuid.UUID,
    *,
    row_nos: list[int],
    outcomes: list[str],
    fields: list[str],
    reasons: list[str],
) -> None:
    await conn.execute(
        "update bulk_rows r set outcome = o.outcome, field = o.field, reason = o.reason"
        " from unnest($2::int[], $3::text[], $4::text[], $5::text[]) as o (row_no, outcome, field, reason)"
        " where r.job_id = $1 and r.row_no = o.row_no",
        job_id,
        row_nos,
        outcomes,
        fields,
        reasons,
    )


async def lock_people(conn: db.Connection, people: list[bytes]) -> None:
    """store.lock_person for many people in one statement, in one order (two jobs cannot deadlock)."""
    await conn.execute(
        "select pg_advisory_xact_lock(hashtextextended(encode(p.idx, 'hex'), 0))"
        " from (select distinct idx from unnest($1::bytea[]) as u (idx) order by idx) p",
        people,
    )


async def count_people_numbers(
    conn: db.Connection, people: list[bytes], sims: list[uuid.UUID], statuses: list[str]
) -> list[int]:
    """store.count_person_numbers for each (person, SIM) pair at once, in the pairs' order: the numbers the
    person holds at every company, except that SIM, plus other operators' known numbers (once each)."""
    rows = await conn.fetch(
        "select q.ord, (select count(distinct idx) from ("
        "   select n.msisdn_index as idx from sims s join company_numbers n on n.id = s.number_id"
        "   where s.passport_index = q.person and s.status = any($3::text[]) and s.id <> q.sim"
        "   union all"
        "   select k.msisdn_index from person_known_numbers k where k.passport_index = q.person"
        " ) numbers) as held"
        " from unnest($1::bytea[], $2::uuid[]) with ordinality as q (person, sim, ord) order by q.ord",
        people,
        sims,
        statuses,
    )
    return [r["held"] for r in rows]


async def count_progress(
    conn: db.Connection, job_id: uuid.UUID, first: int, last: int, *, state: str = "running"
) -> None:
    """Add the decided rows first..last to the job's counters and move its resume point past them (in the
    chunk's transaction: a chunk counts once however often the job is resumed)."""
    await conn.execute(
        "update bulk_jobs j set next_row = $3 + 1, state = $4,"
        " done = j.done + c.done, applied = j.applied + c.applied,"
        " unchanged = j.unchanged + c.unchanged, errors = j.errors + c.errors"
        " from (select count(*) filter (where outcome <> 'pending') as done,"
        "  count(*) filter (where outcome = 'applied') as applied,"
        "  count(*) filter (where outcome = 'unchanged') as unchanged,"
        "  count(*) filter (where outcome = 'error') as errors"
        "  from bulk_rows where job_id = $1 and row_no between $2 and $3) c"
        " where j.id = $1",
        job_id,
        first,
        last,
        state,
    )


async def forget_payloads(conn: db.Connection, job_id: uuid.UUID) -> None:
    """Once applied, the staged personal data is no longer needed (the report keeps no values)."""
    await conn.execute("update bulk_rows set payload_enc = null where job_id = $1", job_id)


async def report_rows(conn: db.Connection, job_id: uuid.UUID, after: int, limit: int) -> list[Any]:
    return list(
        await conn.fetch(
            "select row_no, outcome, field, reason from bulk_rows"
            " where job_id = $1 and row_no > $2 and outcome in ('error', 'unchanged')"
            " order by row_no limit $3",
            job_id,
            after,
            limit,
        )
    )
