"""SQL of organisations (tenants) and of which back-office identities administer only one of them."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from services.common.db import Connection

# Where rows from before organisations live, and where tooling that names none puts new ones.
DEFAULT_ORG = "default"


class Organisation(msgspec.Struct, kw_only=True):
    org_id: str
    name: str
    created_at: dt.datetime
    updated_at: dt.datetime


_ORG_COLUMNS = "org_id, name, created_at, updated_at"


async def upsert_org(conn: Connection, org_id: str, name: str) -> tuple[Organisation, bool]:
    record = await conn.fetchrow(
        "insert into organisations (org_id, name) values ($1, $2)"
        " on conflict (org_id) do update set name = excluded.name, updated_at = now()"
        f" returning {_ORG_COLUMNS}, (xmax = 0) as created",
        org_id,
        name,
    )
    assert record is not None
    created = bool(record["created"])
    return msgspec.convert({k: v for k, v in dict(record).items() if k != "created"}, Organisation), created


async def get_org(conn: Connection, org_id: str) -> Organisation | None:
    record = await conn.fetchrow(f"select {_ORG_COLUMNS} from organisations where org_id = $1", org_id)
    return None if record is None else msgspec.convert(dict(record), Organisation)


async def list_orgs(conn: Connection, org_id: str | None) -> list[Organisation]:
    """Every organisation, or only `org_id` when given."""
    records = await conn.fetch(
        f"select {_ORG_COLUMNS} from organisations where $1::text is null or org_id = $1 order by org_id",
        org_id,
    )
    return [msgspec.convert(dict(r), Organisation) for r in records]


async def admin_org(conn: Connection, principal_id: uuid.UUID) -> str | None:
    """The one organisation this token or staff member administers; None for a platform admin."""
    value = await conn.fetchval(
        "select org_id from organisation_admins where principal_id = $1", principal_id
    )
    return None if value is None else str(value)


async def identity_exists(conn: Connection, principal_id: uuid.UUID) -> bool:
    """A bearer token or staff account with this id exists in this service's schema."""
    return bool(
        await conn.fetchval(
            "select exists (select 1 from auth_tokens where id = $1)"
            " or exists (select 1 from staff where id = $1)",
            principal_id,
        )
    )


async def bind_admin(conn: Connection, principal_id: uuid.UUID, org_id: str) -> None:
    await conn.execute(
        "insert into organisation_admins (principal_id, org_id) values ($1, $2)"
        " on conflict (principal_id) do update set org_id = excluded.org_id",
        principal_id,
        org_id,
    )


async def site_org(conn: Connection, site_key: str) -> str | None:
    value = await conn.fetchval("select org_id from sites where site_key = $1", site_key)
    return None if value is None else str(value)


async def agent_org(conn: Connection, login: str) -> str | None:
    value = await conn.fetchval("select org_id from agents where login = $1", login)
    return None if value is None else str(value)


async def delivery_org(conn: Connection, channel: str, delivery_id: uuid.UUID) -> str | None:
    """The organisation of the site a webhook delivery of `channel` belongs to (subscriber = site key)."""
    value = await conn.fetchval(
        "select s.org_id from outbound_webhooks w join sites s on s.site_key = w.subscriber"
        " where w.id = $1 and w.channel = $2",
        delivery_id,
        channel,
    )
    return None if value is None else str(value)
