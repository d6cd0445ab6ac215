"""SQL of agents and their presence: sign-in rows, Ready/break, reservation for a call, release."""

from __future__ import annotations

import uuid

import msgspec

from services.callback.store.orgs import DEFAULT_ORG
from services.common.db import Connection

PRESENCE_TTL_S = 15  # a closed console tab stops heartbeats; the agent is gone this many seconds later


class AgentRow(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    login: str
    name: str
    password_hash: str
    queues: list[str]
    endpoint: str
    # The organisation the agent works for: they are only ever given its requests (its queues).
    org_id: str = DEFAULT_ORG


class AgentInAnotherOrg(Exception):
    """The login is taken by another organisation's agent (agents never move between organisations)."""


_AGENT_COLUMNS = "id, login, name, password_hash, queues, endpoint, org_id"


class PresenceRow(msgspec.Struct, kw_only=True):
    status: str
    online: bool
    current_callback: uuid.UUID | None
    current_attempt: uuid.UUID | None


async def upsert_agent(conn: Connection, agent: AgentRow) -> bool:
    """Create or replace an agent; True when created. Raises AgentInAnotherOrg when the login is taken
    by another organisation's agent."""
    created = await conn.fetchval(
        "insert into agents (id, login, name, password_hash, queues, endpoint, org_id)"
        " values ($1, $2, $3, $4, $5, $6, $7)"
        " on conflict (login) do update set name = excluded.name, password_hash = excluded.password_hash,"
        " queues = excluded.queues, endpoint = excluded.endpoint where agents.org_id = excluded.org_id"
        " returning (xmax = 0)",
        agent.id,
        agent.login,
        agent.name,
        agent.password_hash,
        agent.queues,
        agent.endpoint,
        agent.org_id,
    )
    if created is None:
        raise AgentInAnotherOrg(agent.login)
    await conn.execute(
        "insert into agent_presence (agent_id) select id from agents where login = $1 on conflict do nothing",
        agent.login,
    )
    return bool(created)


async def agent_by_login(conn: Connection, login: str) -> AgentRow | None:
    record = await conn.fetchrow(f"select {_AGENT_COLUMNS} from agents where login = $1", login)
    return None if record is None else msgspec.convert(dict(record), AgentRow)


async def agent_by_id(conn: Connection, agent_id: uuid.UUID) -> AgentRow | None:
    record = await conn.fetchrow(f"select {_AGENT_COLUMNS} from agents where id = $1", agent_id)
    return None if record is None else msgspec.convert(dict(record), AgentRow)


async def set_presence(conn: Connection, agent_id: uuid.UUID, status: str) -> None:
    """Ready restarts the idle clock only when the agent was not already ready."""
    await conn.execute(
        "update agent_presence set status = $2, last_seen_at = now(),"
        " ready_since = case when $2 = 'ready' and (status <> 'ready' or ready_since is null)"
        " then now() when $2 = 'ready' then ready_since else null end where agent_id = $1",
        agent_id,
        status,
    )


async def heartbeat(conn: Connection, agent_id: uuid.UUID) -> PresenceRow | None:
    record = await conn.fetchrow(
        "update agent_presence set last_seen_at = now() where agent_id = $1"
        " returning status, true as online, current_callback, current_attempt",
        agent_id,
    )
    return None if record is None else msgspec.convert(dict(record), PresenceRow)


# An agent a dispatcher may reserve right now: Ready, not on a call, console alive (alias p = agent_presence).
RESERVABLE = (
    "p.status = 'ready' and p.current_attempt is null"
    f" and p.last_seen_at > now() - interval '{PRESENCE_TTL_S} seconds'"
)


async def ready_agent_count(conn: Connection, org_id: str, queue: str) -> int:
    """Ready, online, idle agents of an organisation's queue (nobody stands in for agents who are not
    there)."""
    value = await conn.fetchval(
        "select count(*) from agents a join agent_presence p on p.agent_id = a.id"
        f" where a.org_id = $1 and $2 = any(a.queues) and {RESERVABLE}",
        org_id,
        queue,
    )
    return int(value or 0)


async def release_agent(conn: Connection, attempt_id: uuid.UUID, status: str | None = None) -> None:
    """Free the agent of this attempt; back to the end of the idle line (or to `status`, e.g. break)."""
    await conn.execute(
        "update agent_presence set current_callback = null, current_attempt = null,"
        " status = coalesce($2, status), ready_since = now() where current_attempt = $1",
        attempt_id,
        status,
    )


async def agent_attempt(conn: Connection, agent_id: uuid.UUID) -> uuid.UUID | None:
    """The attempt an agent is held by, if any."""
    value = await conn.fetchval("select current_attempt from agent_presence where agent_id = $1", agent_id)
    return value if isinstance(value, uuid.UUID) else None


async def free_agent(conn: Connection, agent_id: uuid.UUID) -> None:
    """Detach the agent from whatever call it is held by (an operator's release)."""
    await conn.execute(
        "update agent_presence set current_callback = null, current_attempt = null, ready_since = now()"
        " where agent_id = $1",
        agent_id,
    )
