"""All SQL of corporate SIMs; each function runs on the connection (and transaction) given.

Tenancy: every function that reads or writes a company's rows takes `company_id` and filters by it, so a
forgotten filter is a missing argument, not a leak. Only the 20-number count and the back office's report
look across companies, and they return counts and masked numbers, never another company's rows.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, TypeVar

import msgspec

from services.common import db

# DataProtector contexts (table.column) and blind-index purposes. Numbers use the subscriber flow's
# purpose, so a corporate number and a verification case for it share one index value.
MSISDN_CONTEXT = "verification.company_numbers.msisdn"
EMPLOYEE_CONTEXT = "verification.sims.employee"
SIGNING_KEY_CONTEXT = "verification.signing_keys.private"
MSISDN_INDEX = "verification.msisdn"
PASSPORT_INDEX = "verification.passport"


T = TypeVar("T")


def _convert(record: Any, kind: type[T]) -> T:
    return msgspec.convert(dict(record), kind)


def _columns(kind: type[msgspec.Struct], prefix: str = "") -> str:
    return ", ".join(prefix + f.name for f in msgspec.structs.fields(kind))


async def _insert(conn: db.Connection, table: str, row: msgspec.Struct, suffix: str = "") -> Any:
    fields = msgspec.structs.fields(type(row))
    values = [getattr(row, f.name) for f in fields]
    placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    return await conn.fetchval(
        f"insert into {table} ({_columns(type(row))}) values ({placeholders}) {suffix}", *values
    )


# --- companies ------------------------------------------------------------------------------------------


class CompanyRow(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str
    inn: str
    ogrn: str
    status: str
    created_by: str
    created_at: dt.datetime


async def insert_company(conn: db.Connection, row: CompanyRow) -> bool:
    """False when a company with this INN or OGRN exists already."""
    inserted = await _insert(conn, "companies", row, "on conflict do nothing returning true")
    return bool(inserted)


async def get_company(conn: db.Connection, company_id: uuid.UUID) -> CompanyRow | None:
    record = await conn.fetchrow(f"select {_columns(CompanyRow)} from companies where id = $1", company_id)
    return None if record is None else _convert(record, CompanyRow)


async def company_by_inn(conn: db.Connection, inn: str) -> CompanyRow | None:
    record = await conn.fetchrow(f"select {_columns(CompanyRow)} from companies where inn = $1", inn)
    return None if record is None else _convert(record, CompanyRow)


async def list_companies(conn: db.Connection, *, limit: int, offset: int) -> list[CompanyRow]:
    records = await conn.fetch(
        f"select {_columns(CompanyRow)} from companies order by created_at, id limit $1 offset $2",
        limit,
        offset,
    )
    return [_convert(r, CompanyRow) for r in records]


# --- the contract's numbers -----------------------------------------------------------------------------


class NumberRow(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    company_id: uuid.UUID
    msisdn_enc: bytes
    msisdn_index: bytes
    msisdn_masked: str
    added_at: dt.datetime
    removed_at: dt.datetime | None = None


async def insert_number(conn: db.Connection, row: NumberRow) -> bool:
    """False when the number is on a live contract already (this company's or another's)."""
    inserted = await _insert(
        conn,
        "company_numbers",
        row,
        "on conflict (msisdn_index) where removed_at is null do nothing returning true",
    )
    return bool(inserted)


async def number_owner(conn: db.Connection, msisdn_index: bytes) -> uuid.UUID | None:
    """The company whose live contract has this number (back office only: it crosses tenants)."""
    owner: uuid.UUID | None = await conn.fetchval(
        "select company_id from company_numbers where msisdn_index = $1 and removed_at is null", msisdn_index
    )
    return owner


# --- API clients ----------------------------------------------------------------------------------------


class ClientRow(msgspec.Struct, kw_only=True):
    client_id: str
    company_id: uuid.UUID
    name: str
    secret_hash: bytes
    scopes: list[str]
    created_by: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None


async def insert_client(conn: db.Connection, row: ClientRow) -> None:
    await _insert(conn, "api_clients", row)


async def get_client(conn: db.Connection, client_id: str) -> ClientRow | None:
    """By its client_id (the credential names its company; no company filter is possible yet)."""
    record = await conn.fetchrow(
        f"select {_columns(ClientRow)} from api_clients where client_id = $1", client_id
    )
    return None if record is None else _convert(record, ClientRow)


async def set_client_secret(
    conn: db.Connection, company_id: uuid.UUID, client_id: str, secret_hash: bytes
) -> None:
    await conn.execute(
        "update api_clients set secret_hash = $3, revoked_at = null where company_id = $1 and client_id = $2",
        company_id,
        client_id,
        secret_hash,
    )


async def list_clients(conn: db.Connection, company_id: uuid.UUID) -> list[ClientRow]:
    records = await conn.fetch(
        f"select {_columns(ClientRow)} from api_clients where company_id = $1 order by created_at, client_id",
        company_id,
    )
    return [_convert(r, ClientRow) for r in records]


async def revoke_client(conn: db.Connection, company_id: uuid.UUID, client_id: str, at: dt.datetime) -> bool:
    done = await conn.fetchval(
        "update api_clients set revoked_at = $3 where company_id = $1 and client_id = $2"
        " and revoked_at is null returning true",
        company_id,
        client_id,
        at,
    )
    return bool(done)


# --- signing keys ---------------------------------------------------------------------------------------


class SigningKeyRow(msgspec.Struct, kw_only=True):
    kid: str
    alg: str
    private_enc: bytes
    public_jwk: dict[str, Any]
    created_at: dt.datetime
    not_before: dt.datetime
    retired_at: dt.datetime | None = None


async def insert_signing_key(conn: db.Connection, row: SigningKeyRow) -> None:
    await _insert(conn, "signing_keys", row)


async def signing_keys(conn: db.Connection) -> list[SigningKeyRow]:
    """Every key, newest first (callers pick the signer and the published set by time)."""
    records = await conn.fetch(
        f"select {_columns(SigningKeyRow)} from signing_keys order by created_at desc, kid"
    )
    return [_convert(r, SigningKeyRow) for r in records]


async def retire_signing_key(conn: db.Connection, kid: str, at: dt.datetime) -> None:
    await conn.execute(
        "update signing_keys set retired_at = $2 where kid = $1 and retired_at is null", kid, at
    )


async def drop_signing_keys(conn: db.Connection, retired_before: dt.datetime) -> int:
    """Keys retired long enough ago that no token they signed is still valid."""
    result = await conn.execute("delete from signing_keys where retired_at < $1", retired_before)
    return int(result.split()[-1])


async def lock_signing_keys(conn: db.Connection) -> None:
    """Serialises rotation between replicas for the caller's transaction."""
    await conn.execute("select pg_advisory_xact_lock(hashtext('verification.signing_keys'))")


# --- SIMs -----------------------------------------------------------------------------------------------


class SimRow(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    company_id: uuid.UUID
    number_id: uuid.UUID
    status: str
    status_reason: str = ""
    deadline: dt.datetime | None = None
    version: int = 1
    binding: str | None = None
    employee_enc: bytes | None = None
    employee_masked: str | None = None
    passport_index: bytes | None = None
    device_type: str | None = None
    device_name: str | None = None
    device_id_kind: str | None = None
    device_id: str | None = None
    installation_address: str | None = None
    case_id: uuid.UUID | None = None
    created_at: dt.datetime
    bound_at: dt.datetime | None = None
    updated_at: dt.datetime
    # When the deadline passed unregistered (a later registration restores the number).
    suspended_at: dt.datetime | None = None
    # The day a device SIM starts service (it is registered 3 working days before); part of the binding.
    use_from: dt.date | None = None


class SimWithNumber(msgspec.Struct, kw_only=True):
    """A SIM and its number (joined from the contract's inventory)."""

    sim: SimRow
    msisdn_enc: bytes
    msisdn_masked: str


# Columns a transition may change (id, company, number and created_at never change).
_MUTABLE = tuple(
    f.name
    for f in msgspec.structs.fields(SimRow)
    if f.name not in ("id", "company_id", "number_id", "created_at", "version")
)
_SIM_SELECT = (
    f"select {_columns(SimRow, 's.')}, n.msisdn_enc as n_msisdn_enc, n.msisdn_masked as n_msisdn_masked"
    " from sims s join company_numbers n on n.id = s.number_id and n.company_id = s.company_id"
)


def _with_number(record: Any) -> SimWithNumber:
    data = dict(record)
    enc, masked = data.pop("n_msisdn_enc"), data.pop("n_msisdn_masked")
    return SimWithNumber(sim=msgspec.convert(data, SimRow), msisdn_enc=bytes(enc), msisdn_masked=masked)


async def insert_sim(conn: db.Connection, row: SimRow) -> None:
    await _insert(conn, "sims", row)


async def get_sim(
    conn: db.Connection, company_id: uuid.UUID, sim_id: uuid.UUID, *, lock: bool = False
) -> SimWithNumber | None:
    record = await conn.fetchrow(
        _SIM_SELECT + " where s.company_id = $1 and s.id = $2" + (" for update of s" if lock else ""),
        company_id,
        sim_id,
    )
    return None if record is None else _with_number(record)


async def sim_by_number(
    conn: db.Connection, company_id: uuid.UUID, msisdn_index: bytes, *, lock: bool = False
) -> SimWithNumber | None:
    """The company's SIM for a number on its live contract; None for a number not on it (or another's)."""
    record = await conn.fetchrow(
        _SIM_SELECT
        + " where s.company_id = $1 and n.msisdn_index = $2 and n.removed_at is null"
        + (" for update of s" if lock else ""),
        company_id,
        msisdn_index,
    )
    return None if record is None else _with_number(record)


async def sim_by_case(conn: db.Connection, case_id: uuid.UUID, *, lock: bool = False) -> SimWithNumber | None:
    """The SIM an employee's verification case confirms (the case id is the only link the case has)."""
    record = await conn.fetchrow(
        _SIM_SELECT + " where s.case_id = $1" + (" for update of s" if lock else ""), case_id
    )
    return None if record is None else _with_number(record)


async def list_sims(
    conn: db.Connection,
    company_id: uuid.UUID,
    *,
    status: str | None = None,
    binding: str | None = None,
    deadline_before: dt.datetime | None = None,
    deadline_after: dt.datetime | None = None,
    msisdn_index: bytes | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[SimWithNumber]:
    records = await conn.fetch(
        _SIM_SELECT + " where s.company_id = $1 and n.removed_at is null"
        " and ($2::text is null or s.status = $2) and ($3::text is null or s.binding = $3)"
        " and ($4::timestamptz is null or s.deadline < $4) and ($5::timestamptz is null or s.deadline >= $5)"
        " and ($6::bytea is null or n.msisdn_index = $6)"
        " order by s.deadline nulls last, s.id limit $7 offset $8",
        company_id,
        status,
        binding,
        deadline_before,
        deadline_after,
        msisdn_index,
        limit,
        offset,
    )
    return [_with_number(r) for r in records]


async def count_sims(conn: db.Connection, company_id: uuid.UUID, *, status: str | None = None) -> int:
    count: int = await conn.fetchval(
        "select count(*) from sims where company_id = $1 and ($2::text is null or status = $2)",
        company_id,
        status,
    )
    return count


async def save_sim(conn: db.Connection, row: SimRow, expected_version: int) -> int | None:
    """Write the SIM's mutable columns if it is still at `expected_version`: the new version, or None.

    Optimistic concurrency: two transitions from the same read cannot both win."""
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(_MUTABLE, start=4))
    version: int | None = await conn.fetchval(
        f"update sims set {assignments}, version = version + 1"
        " where company_id = $1 and id = $2 and version = $3 returning version",
        row.company_id,
        row.id,
        expected_version,
        *(getattr(row, name) for name in _MUTABLE),
    )
    return version


# --- the 20-number limit --------------------------------------------------------------------------------


async def lock_person(conn: db.Connection, passport_index: bytes) -> None:
    """Serialises binds of one person (across companies) so two cannot both take the 20th place."""
    await conn.execute(
        "select pg_advisory_xact_lock(hashtextextended(encode($1::bytea, 'hex'), 0))", passport_index
    )


async def count_person_numbers(
    conn: db.Connection, passport_index: bytes, statuses: list[str], *, except_sim: uuid.UUID | None = None
) -> int:
    """Numbers a person holds: SIMs bound to them at any company plus other operators' known numbers
    (a number in both is counted once)."""
    count: int = await conn.fetchval(
        "select count(distinct idx) from ("
        "  select n.msisdn_index as idx from sims s join company_numbers n on n.id = s.number_id"
        "  where s.passport_index = $1 and s.status = any($2::text[])"
        "   and ($3::uuid is null or s.id <> $3)"
        "  union all"
        "  select msisdn_index from person_known_numbers where passport_index = $1"
        ") numbers",
        passport_index,
        statuses,
        except_sim,
    )
    return count


async def add_known_number(
    conn: db.Connection,
    passport_index: bytes,
    msisdn_index: bytes,
    msisdn_masked: str,
    *,
    operator: str,
    added_by: str,
    at: dt.datetime,
) -> bool:
    inserted = await conn.fetchval(
        "insert into person_known_numbers (passport_index, msisdn_index, msisdn_masked, operator, added_by,"
        " added_at) values ($1, $2, $3, $4, $5, $6) on conflict do nothing returning true",
        passport_index,
        msisdn_index,
        msisdn_masked,
        operator,
        added_by,
        at,
    )
    return bool(inserted)


class PersonOverLimit(msgspec.Struct, kw_only=True):
    passport_index: bytes
    numbers: int
    employee_masked: str
    companies: list[uuid.UUID]


async def people_over_limit(
    conn: db.Connection, statuses: list[str], limit: int, *, page_size: int, offset: int
) -> list[PersonOverLimit]:
    """People holding more than `limit` numbers (back office; crosses tenants by design)."""
    records = await conn.fetch(
        "with numbers as ("
        "  select s.passport_index as person, n.msisdn_index as idx, s.company_id, s.employee_masked"
        "  from sims s join company_numbers n on n.id = s.number_id"
        "  where s.passport_index is not null and s.status = any($1::text[])"
        "  union all"
        "  select passport_index, msisdn_index, null, null from person_known_numbers"
        ")"
        " select person as passport_index, count(distinct idx) as numbers,"
        "  coalesce(max(employee_masked), '') as employee_masked,"
        "  coalesce(array_agg(distinct company_id) filter (where company_id is not null), '{}') as companies"
        " from numbers group by person having count(distinct idx) > $2"
        " order by count(distinct idx) desc, person limit $3 offset $4",
        statuses,
        limit,
        page_size,
        offset,
    )
    return [_convert(r, PersonOverLimit) for r in records]


# --- the SIM's audit log ----------------------------------------------------------------------------------


class SimTimelineEntry(msgspec.Struct, kw_only=True):
    at: dt.datetime
    kind: str
    actor: str
    detail: dict[str, Any]


async def add_sim_timeline(
    conn: db.Connection,
    company_id: uuid.UUID,
    sim_id: uuid.UUID,
    *,
    at: dt.datetime,
    kind: str,
    actor: str,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        "insert into sim_timeline (company_id, sim_id, at, kind, actor, detail)"
        " values ($1, $2, $3, $4, $5, $6)",
        company_id,
        sim_id,
        at,
        kind,
        actor,
        detail or {},
    )


async def add_sim_timelines(
    conn: db.Connection,
    company_id: uuid.UUID,
    sim_ids: list[uuid.UUID],
    *,
    at: dt.datetime,
    kind: str,
    actor: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """The same entry for many SIMs of one company, in one statement."""
    await conn.execute(
        "insert into sim_timeline (company_id, sim_id, at, kind, actor, detail)"
        " select $1, sim_id, $3, $4, $5, $6 from unnest($2::uuid[]) as sim_id",
        company_id,
        sim_ids,
        at,
        kind,
        actor,
        detail or {},
    )


async def sim_timeline(
    conn: db.Connection, company_id: uuid.UUID, sim_id: uuid.UUID
) -> list[SimTimelineEntry]:
    records = await conn.fetch(
        "select at, kind, actor, detail from sim_timeline where company_id = $1 and sim_id = $2 order by id",
        company_id,
        sim_id,
    )
    return [_convert(r, SimTimelineEntry) for r in records]
