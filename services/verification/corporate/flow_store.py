"""SQL of a corporate SIM after binding: registry submissions, deadlines, company webhooks, back-office views.

Same rules as store.py: every function runs on the connection (and transaction) given, and every function
that touches a company's rows takes `company_id`, except the workers' claims and the back office's overview,
which cross tenants by design and say so.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec

from services.common import db

WEBHOOK_SECRET_CONTEXT = "verification.company_webhooks.secret"  # noqa: S105 (a context name)

# --- registry submissions ---------------------------------------------------------------------------------


class SubmissionRow(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    company_id: uuid.UUID
    sim_id: uuid.UUID
    bound_at: dt.datetime
    state: str
    attempts: int = 0
    next_attempt_at: dt.datetime
    lease_until: dt.datetime | None = None
    lease_token: uuid.UUID | None = None
    registry_ref: str | None = None
    reason: str = ""
    last_error: str | None = None
    created_at: dt.datetime
    updated_at: dt.datetime


_SUBMISSION_COLUMNS = ", ".join(f.name for f in msgspec.structs.fields(SubmissionRow))


_RETURNING = ", ".join("r." + f.name for f in msgspec.structs.fields(SubmissionRow))


def _submission(record: Any) -> SubmissionRow:
    return msgspec.convert(dict(record), SubmissionRow)


async def queue_pending_submissions(conn: db.Connection, *, now: dt.datetime, limit: int) -> int:
    """A queued submission (fresh id) for each SIM ready for submission that has no live one (all tenants).

    Set-based: one statement however many SIMs a bulk upload made ready."""
    result = await conn.execute(
        "insert into registry_submissions (id, company_id, sim_id, bound_at, state, next_attempt_at,"
        " created_at, updated_at)"
        " select gen_random_uuid(), s.company_id, s.id, s.bound_at, 'queued', $1, $1, $1"
        " from sims s where s.status = 'pending_submission' and s.bound_at is not null"
        "  and not exists (select 1 from registry_submissions r"
        "   where r.sim_id = s.id and r.state in ('queued', 'sent'))"
        " order by s.updated_at, s.id limit $2"
        " on conflict do nothing",
        now,
        limit,
    )
    return int(result.split()[-1])


async def claim_submissions(
    conn: db.Connection, *, now: dt.datetime, lease: dt.timedelta, limit: int
) -> list[SubmissionRow]:
    """Lease due submissions (all tenants): each is "in flight until" now + lease under a fresh token."""
    records = await conn.fetch(
        "with due as ("
        "  select id from registry_submissions"
        "  where state in ('queued', 'sent') and next_attempt_at <= $1"
        "   and (lease_until is null or lease_until <= $1)"
        "  order by next_attempt_at, id limit $3 for update skip locked"
        ")"
        " update registry_submissions r set lease_until = $2, lease_token = gen_random_uuid(),"
        f" updated_at = $1 from due where r.id = due.id returning {_RETURNING}",
        now,
        now + lease,
        limit,
    )
    return [_submission(r) for r in records]


async def lock_submission(
    conn: db.Connection, submission_id: uuid.UUID, token: uuid.UUID
) -> SubmissionRow | None:
    """The submission if this worker still holds its lease (else another took over after it expired)."""
    record = await conn.fetchrow(
        f"select {_SUBMISSION_COLUMNS} from registry_submissions"
        " where id = $1 and lease_token = $2 for update",
        submission_id,
        token,
    )
    return None if record is None else _submission(record)


async def settle_submission(
    conn: db.Connection,
    submission_id: uuid.UUID,
    *,
    state: str,
    now: dt.datetime,
    next_attempt_at: dt.datetime,
    attempts: int,
    registry_ref: str | None = None,
    reason: str = "",
    last_error: str | None = None,
) -> None:
    """Record what the call gave and release the lease."""
    await conn.execute(
        "update registry_submissions set state = $2, next_attempt_at = $3, attempts = $4,"
        " registry_ref = coalesce($5, registry_ref), reason = $6, last_error = $7, lease_until = null,"
        " lease_token = null, updated_at = $8 where id = $1",
        submission_id,
        state,
        next_attempt_at,
        attempts,
        registry_ref,
        reason,
        last_error,
        now,
    )


async def list_submissions(
    conn: db.Connection, company_id: uuid.UUID, sim_id: uuid.UUID
) -> list[SubmissionRow]:
    records = await conn.fetch(
        f"select {_SUBMISSION_COLUMNS} from registry_submissions where company_id = $1 and sim_id = $2"
        " order by created_at, id",
        company_id,
        sim_id,
    )
    return [_submission(r) for r in records]


# --- deadlines ------------------------------------------------------------------------------------------


class DeadlineTarget(msgspec.Struct, kw_only=True):
    """What deciding a SIM's deadline needs."""

    id: uuid.UUID
    company_id: uuid.UUID
    number_id: uuid.UUID
    status: str
    binding: str | None
    deadline: dt.datetime | None
    suspended_at: dt.datetime | None
    use_from: dt.date | None
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int
    msisdn_enc: bytes
    msisdn_masked: str


_TARGET = (
    "select s.id, s.company_id, s.number_id, s.status, s.binding, s.deadline, s.suspended_at, s.use_from,"
    " s.created_at,"
    " s.updated_at, s.version, n.msisdn_enc, n.msisdn_masked"
    " from sims s join company_numbers n on n.id = s.number_id and n.company_id = s.company_id"
)


async def deadline_target(
    conn: db.Connection, company_id: uuid.UUID, sim_id: uuid.UUID, *, lock: bool = True
) -> DeadlineTarget | None:
    record = await conn.fetchrow(
        _TARGET + " where s.company_id = $1 and s.id = $2" + (" for update of s" if lock else ""),
        company_id,
        sim_id,
    )
    return None if record is None else msgspec.convert(dict(record), DeadlineTarget)


async def sims_needing_deadline(conn: db.Connection, *, limit: int) -> list[DeadlineTarget]:
    """SIMs not registered that have no deadline yet (all tenants; the sweep), locked, skipping busy ones."""
    records = await conn.fetch(
        _TARGET + " where s.deadline is null and s.status <> 'accepted'"
        " order by s.created_at, s.id limit $1 for update of s skip locked",
        limit,
    )
    return [msgspec.convert(dict(r), DeadlineTarget) for r in records]


async def set_deadline(
    conn: db.Connection,
    company_id: uuid.UUID,
    sim_id: uuid.UUID,
    *,
    deadline: dt.datetime | None,
    suspended_at: dt.datetime | None,
    now: dt.datetime,
) -> int:
    """Write the deadline and the suspension mark; the new version (a client holding the old one re-reads)."""
    version: int = await conn.fetchval(
        "update sims set deadline = $3, suspended_at = $4, updated_at = $5, version = version + 1"
        " where company_id = $1 and id = $2 returning version",
        company_id,
        sim_id,
        deadline,
        suspended_at,
        now,
    )
    return version


# --- company webhooks -----------------------------------------------------------------------------------


class CompanyWebhookRow(msgspec.Struct, kw_only=True):
    company_id: uuid.UUID
    url: str
    secret_enc: bytes
    updated_by: str
    updated_at: dt.datetime


async def put_company_webhook(conn: db.Connection, row: CompanyWebhookRow) -> None:
    await conn.execute(
        "insert into company_webhooks (company_id, url, secret_enc, updated_by, updated_at)"
        " values ($1, $2, $3, $4, $5) on conflict (company_id) do update set url = excluded.url,"
        " secret_enc = excluded.secret_enc, updated_by = excluded.updated_by,"
        " updated_at = excluded.updated_at",
        row.company_id,
        row.url,
        row.secret_enc,
        row.updated_by,
        row.updated_at,
    )


async def get_company_webhook(conn: db.Connection, company_id: uuid.UUID) -> CompanyWebhookRow | None:
    record = await conn.fetchrow(
        "select company_id, url, secret_enc, updated_by, updated_at from company_webhooks"
        " where company_id = $1",
        company_id,
    )
    return None if record is None else msgspec.convert(dict(record), CompanyWebhookRow)


# --- audit ----------------------------------------------------------------------------------------------


async def add_audit(
    conn: db.Connection,
    company_id: uuid.UUID | None,
    *,
    at: dt.datetime,
    kind: str,
    actor: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """A back-office action on corporate data (a read, a setting); never personal values in `detail`."""
    await conn.execute(
        "insert into corporate_audit (company_id, at, kind, actor, detail) values ($1, $2, $3, $4, $5)",
        company_id,
        at,
        kind,
        actor,
        detail or {},
    )


class AuditEntry(msgspec.Struct, kw_only=True):
    company_id: uuid.UUID | None
    at: dt.datetime
    kind: str
    actor: str
    detail: dict[str, Any]


async def audit_entries(conn: db.Connection, company_id: uuid.UUID | None, *, limit: int) -> list[AuditEntry]:
    records = await conn.fetch(
        "select company_id, at, kind, actor, detail from corporate_audit"
        " where company_id is not distinct from $1 order by id desc limit $2",
        company_id,
        limit,
    )
    return [msgspec.convert(dict(r), AuditEntry) for r in records]


# --- the back office's overview (crosses tenants by design) ----------------------------------------------


class CompanyOverview(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str
    inn: str
    ogrn: str
    status: str
    sims: int
    accepted: int
    overdue: int


async def company_overview(conn: db.Connection, *, now: dt.datetime, limit: int) -> list[CompanyOverview]:
    """Each company with its SIM count, registered ones and SIMs past their deadline."""
    records = await conn.fetch(
        "select c.id, c.name, c.inn, c.ogrn, c.status,"
        "  count(s.id) as sims,"
        "  count(s.id) filter (where s.status = 'accepted') as accepted,"
        "  count(s.id) filter (where s.deadline <= $1 and s.status <> 'accepted') as overdue"
        " from companies c left join sims s on s.company_id = c.id"
        " group by c.id order by overdue desc, c.name, c.id limit $2",
        now,
        limit,
    )
    return [msgspec.convert(dict(r), CompanyOverview) for r in records]


class OverdueSim(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    company_id: uuid.UUID
    company_name: str
    msisdn_masked: str
    status: str
    status_reason: str
    binding: str | None
    deadline: dt.datetime
    suspended_at: dt.datetime | None


async def overdue_sims(conn: db.Connection, *, now: dt.datetime, limit: int) -> list[OverdueSim]:
    """SIMs past their deadline and still not registered, oldest deadline first (masked numbers only)."""
    records = await conn.fetch(
        "select s.id, s.company_id, c.name as company_name, n.msisdn_masked, s.status, s.status_reason,"
        "  s.binding, s.deadline, s.suspended_at"
        " from sims s join companies c on c.id = s.company_id"
        "  join company_numbers n on n.id = s.number_id and n.company_id = s.company_id"
        " where s.deadline <= $1 and s.status <> 'accepted'"
        " order by s.deadline, s.id limit $2",
        now,
        limit,
    )
    return [msgspec.convert(dict(r), OverdueSim) for r in records]
