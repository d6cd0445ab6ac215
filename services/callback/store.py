"""All SQL of the callback service. Parameters are always bound; callers own the transaction."""

from __future__ import annotations

import datetime as dt
import uuid
import zlib
from typing import Any

import msgspec

from services.callback.schemas import DEFAULT_MAX_TALK_S, Site, SiteSettings
from services.common.crypto import DataProtector
from services.common.db import Connection
from services.common.webhooks import Endpoint

PENDING_STATES = ("requested", "scheduled", "dialing", "connected")


class CallbackRow(msgspec.Struct, kw_only=True):
    """A callbacks row as the service layer uses it (the phone stays encrypted here)."""

    id: uuid.UUID
    site_key: str
    queue: str
    phone_enc: bytes
    phone_hash: bytes
    phone_masked: str
    visitor_id: str | None
    visitor_tz: str
    lang: str
    not_before: dt.time | None
    status: str
    requested_at: dt.datetime
    due_at: dt.datetime
    promise_kind: str
    promised_earliest: dt.datetime
    promised_latest: dt.datetime
    attempts: int
    max_attempts: int
    outcome: str | None
    first_dial_at: dt.datetime | None
    connected_at: dt.datetime | None
    ended_at: dt.datetime | None
    page_url: str
    referrer: str
    utm: dict[str, str]
    consent_version: str | None
    merged_count: int
    updated_at: dt.datetime
    last_attempt_by: dt.datetime | None = None
    promise_reason: str = "queue"


_CALLBACK_COLUMNS = ", ".join(f.name for f in msgspec.structs.fields(CallbackRow))


def _row(record: Any) -> CallbackRow:
    return msgspec.convert(dict(record), CallbackRow)


# --- sites --------------------------------------------------------------------------------------------


# Context (associated data) of the encrypted CRM webhook secret; its row id is the site key.
WEBHOOK_SECRET_CONTEXT = "callback.sites.crm_webhook_secret"  # noqa: S105 (a label, not a secret)
_SITE_COLUMNS = (
    "site_key, settings - 'crm_webhook_secret' as settings, updated_at,"
    " (crm_webhook_secret_enc is not null or coalesce(settings->>'crm_webhook_secret', '') <> '')"
    " as crm_webhook_secret_set"
)


async def upsert_site(
    conn: Connection,
    site_key: str,
    settings: SiteSettings,
    *,
    webhook_secret_enc: bytes | msgspec.UnsetType | None = msgspec.UNSET,
) -> tuple[Site, bool]:
    """Create or replace a site. The webhook secret is kept unless `webhook_secret_enc` is given (None
    clears it): it never travels inside `settings`, which responses show."""
    stored = msgspec.to_builtins(msgspec.structs.replace(settings, crm_webhook_secret=msgspec.UNSET))
    keep = webhook_secret_enc is msgspec.UNSET
    record = await conn.fetchrow(
        "insert into sites (site_key, settings, crm_webhook_secret_enc) values ($1, $2, $3)"
        " on conflict (site_key) do update set settings = excluded.settings, updated_at = now(),"
        "  crm_webhook_secret_enc = case when $4 then sites.crm_webhook_secret_enc"
        "   else excluded.crm_webhook_secret_enc end"
        " returning updated_at, (xmax = 0) as created, crm_webhook_secret_enc is not null as secret_set",
        site_key,
        stored,
        None if keep else webhook_secret_enc,
        keep,
    )
    assert record is not None
    site = Site(
        site_key=site_key,
        settings=msgspec.structs.replace(settings, crm_webhook_secret=msgspec.UNSET),
        updated_at=record["updated_at"],
        crm_webhook_secret_set=record["secret_set"],
    )
    return site, bool(record["created"])


async def get_site(conn: Connection, site_key: str) -> Site | None:
    record = await conn.fetchrow(f"select {_SITE_COLUMNS} from sites where site_key = $1", site_key)
    return None if record is None else msgspec.convert(dict(record), Site)


async def list_sites(conn: Connection) -> list[Site]:
    records = await conn.fetch(f"select {_SITE_COLUMNS} from sites order by site_key")
    return [msgspec.convert(dict(r), Site) for r in records]


async def seal_plain_webhook_secrets(conn: Connection, protector: DataProtector) -> int:
    """Encrypt secrets written in plaintext into `settings` before 0005_keyring; return how many."""
    records = await conn.fetch(
        "select site_key, settings->>'crm_webhook_secret' as secret from sites"
        " where settings ? 'crm_webhook_secret' for update"
    )
    for record in records:
        secret = record["secret"] or ""
        await conn.execute(
            "update sites set settings = settings - 'crm_webhook_secret',"
            " crm_webhook_secret_enc = coalesce($2, crm_webhook_secret_enc) where site_key = $1",
            record["site_key"],
            protector.encrypt(secret, WEBHOOK_SECRET_CONTEXT, record["site_key"]) if secret else None,
        )
    return len(records)


# --- budgets and guards -------------------------------------------------------------------------------


async def lock(conn: Connection, *parts: str) -> None:
    """Serialise concurrent requests for the same key (site+phone, site+ip) until the transaction ends."""
    await conn.execute(
        "select pg_advisory_xact_lock($1, $2)", 1, zlib.crc32("|".join(parts).encode()) - 2**31
    )


async def recent_by_ip(
    conn: Connection, site_key: str, ip_hash: bytes, since: dt.datetime
) -> tuple[int, dt.datetime | None]:
    """Requests from this network, repeats that joined a pending request (aliases) included."""
    record = await conn.fetchrow(
        "select count(*) as n, min(at) as oldest from ("
        " select requested_at as at from callbacks"
        " where site_key = $1 and client_ip_hash = $2 and requested_at > $3"
        " union all select created_at from callback_aliases"
        " where site_key = $1 and client_ip_hash = $2 and created_at > $3) recent",
        site_key,
        ip_hash,
        since,
    )
    assert record is not None
    return int(record["n"]), record["oldest"]


async def recent_by_phone(
    conn: Connection, phone_hash: bytes, since: dt.datetime
) -> tuple[int, dt.datetime | None]:
    """Requests for this phone on any site (merges count too): no one is called endlessly."""
    record = await conn.fetchrow(
        "select coalesce(sum(1 + merged_count), 0) as n, min(requested_at) as oldest from callbacks"
        " where phone_hash = $1 and requested_at > $2",
        phone_hash,
        since,
    )
    assert record is not None
    return int(record["n"]), record["oldest"]


async def count_site_since(conn: Connection, site_key: str, since: dt.datetime) -> int:
    value = await conn.fetchval(
        "select count(*) from callbacks where site_key = $1 and requested_at >= $2", site_key, since
    )
    return int(value or 0)


async def spend_form_token(conn: Connection, token_hash: bytes) -> bool:
    """True the first time a form token is used; afterwards it is spent."""
    spent = await conn.fetchval(
        "insert into spent_form_tokens (token_hash) values ($1) on conflict do nothing returning true",
        token_hash,
    )
    return bool(spent)


# Context of the encrypted status token kept for Idempotency-Key replays; its row id is the row's `id`.
IDEMPOTENT_TOKEN_CONTEXT = "callback.idempotency_keys.status_token"  # noqa: S105 (a label)


class IdempotentAnswer(msgspec.Struct, kw_only=True, frozen=True):
    id: uuid.UUID
    request_hash: bytes
    status_code: int
    response: dict[str, Any]
    status_token_enc: bytes | None


async def get_idempotent(conn: Connection, site_key: str, key: str) -> IdempotentAnswer | None:
    record = await conn.fetchrow(
        "select id, request_hash, status_code, response, status_token_enc from idempotency_keys"
        " where site_key = $1 and key = $2",
        site_key,
        key,
    )
    return None if record is None else msgspec.convert(dict(record), IdempotentAnswer)


async def put_idempotent(conn: Connection, site_key: str, key: str, answer: IdempotentAnswer) -> None:
    await conn.execute(
        "insert into idempotency_keys"
        " (id, site_key, key, request_hash, status_code, response, status_token_enc)"
        " values ($1, $2, $3, $4, $5, $6, $7)",
        answer.id,
        site_key,
        key,
        answer.request_hash,
        answer.status_code,
        answer.response,
        answer.status_token_enc,
    )


# --- callbacks ----------------------------------------------------------------------------------------


async def pending_for_phone(conn: Connection, site_key: str, phone_hash: bytes) -> CallbackRow | None:
    record = await conn.fetchrow(
        f"select {_CALLBACK_COLUMNS} from callbacks"
        " where site_key = $1 and phone_hash = $2 and status = any($3::text[])",
        site_key,
        phone_hash,
        list(PENDING_STATES),
    )
    return None if record is None else _row(record)


async def insert_callback(conn: Connection, row: CallbackRow, *, client_ip_hash: bytes | None) -> None:
    values = msgspec.structs.asdict(row)
    columns = list(values)
    await conn.execute(
        f"insert into callbacks ({', '.join(columns)}, client_ip_hash, consented_at)"
        f" values ({', '.join(f'${i}' for i in range(1, len(columns) + 1))}, ${len(columns) + 1},"
        f" case when ${len(columns) + 2}::text is null then null else now() end)",
        *values.values(),
        client_ip_hash,
        row.consent_version,
    )


async def mark_merged(conn: Connection, callback_id: uuid.UUID) -> None:
    await conn.execute(
        "update callbacks set merged_count = merged_count + 1, updated_at = now() where id = $1", callback_id
    )


async def add_token(conn: Connection, callback_id: uuid.UUID, token_hash: bytes) -> None:
    await conn.execute(
        "insert into callback_tokens (token_hash, callback_id) values ($1, $2)", token_hash, callback_id
    )


class AliasRow(msgspec.Struct, kw_only=True):
    """A repeat request that joined a pending callback: its own id and token, no control over it."""

    id: uuid.UUID
    callback_id: uuid.UUID
    visitor_tz: str
    lang: str
    withdrawn_at: dt.datetime | None


async def add_alias(
    conn: Connection,
    alias: AliasRow,
    *,
    site_key: str,
    token_hash: bytes,
    client_ip_hash: bytes,
    now: dt.datetime,
) -> None:
    await conn.execute(
        "insert into callback_aliases"
        " (id, callback_id, site_key, token_hash, client_ip_hash, visitor_tz, lang, created_at)"
        " values ($1, $2, $3, $4, $5, $6, $7, $8)",
        alias.id,
        alias.callback_id,
        site_key,
        token_hash,
        client_ip_hash,
        alias.visitor_tz,
        alias.lang,
        now,
    )


async def alias_by_token(conn: Connection, alias_id: uuid.UUID, token_hash: bytes) -> AliasRow | None:
    record = await conn.fetchrow(
        "select id, callback_id, visitor_tz, lang, withdrawn_at from callback_aliases"
        " where id = $1 and token_hash = $2",
        alias_id,
        token_hash,
    )
    return None if record is None else msgspec.convert(dict(record), AliasRow)


async def withdraw_alias(conn: Connection, alias_id: uuid.UUID, now: dt.datetime) -> bool:
    """True when this call withdrew it; False when it was withdrawn already."""
    done = await conn.fetchval(
        "update callback_aliases set withdrawn_at = $2 where id = $1 and withdrawn_at is null returning true",
        alias_id,
        now,
    )
    return bool(done)


async def callback_by_token(
    conn: Connection, callback_id: uuid.UUID, token_hash: bytes
) -> CallbackRow | None:
    record = await conn.fetchrow(
        f"select {', '.join('c.' + c.strip() for c in _CALLBACK_COLUMNS.split(','))} from callbacks c"
        " join callback_tokens t on t.callback_id = c.id where c.id = $1 and t.token_hash = $2",
        callback_id,
        token_hash,
    )
    return None if record is None else _row(record)


async def get_callback(
    conn: Connection, callback_id: uuid.UUID, *, for_update: bool = False
) -> CallbackRow | None:
    record = await conn.fetchrow(
        f"select {_CALLBACK_COLUMNS} from callbacks where id = $1" + (" for update" if for_update else ""),
        callback_id,
    )
    return None if record is None else _row(record)


async def site_of_callback(conn: Connection, callback_id: uuid.UUID) -> str | None:
    value = await conn.fetchval("select site_key from callbacks where id = $1", callback_id)
    return None if value is None else str(value)


async def update_callback(conn: Connection, callback_id: uuid.UUID, **changes: Any) -> None:
    """Set columns by name (names come from our code, never from input)."""
    allowed = {f.name for f in msgspec.structs.fields(CallbackRow)}
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"not callback columns: {sorted(unknown)}")
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=2))
    await conn.execute(
        f"update callbacks set {assignments}, updated_at = now() where id = $1",
        callback_id,
        *changes.values(),
    )


async def record_promise(
    conn: Connection,
    callback_id: uuid.UUID,
    *,
    given_at: dt.datetime,
    kind: str,
    reason: str,
    earliest: dt.datetime,
    latest: dt.datetime,
    snapshot: dict[str, Any],
) -> None:
    await conn.execute(
        "insert into promises (callback_id, given_at, kind, reason, earliest, latest, snapshot)"
        " values ($1, $2, $3, $4, $5, $6, $7)",
        callback_id,
        given_at,
        kind,
        reason,
        earliest,
        latest,
        snapshot,
    )


async def overdue(conn: Connection, latest_before: dt.datetime) -> list[tuple[uuid.UUID, str]]:
    """Pending, never-dialed requests whose promise ended before `latest_before` (locked for the caller)."""
    records = await conn.fetch(
        "select id, site_key from callbacks where status in ('requested', 'scheduled')"
        " and promised_latest < $1 for update skip locked",
        latest_before,
    )
    return [(r["id"], r["site_key"]) for r in records]


# --- live queue state for the promise engine -----------------------------------------------------------


class QueueFigures(msgspec.Struct, kw_only=True):
    waiting_due: int  # pending requests due now (they are ahead of a new ASAP request)
    busy_elapsed_s: tuple[float, ...]  # per call in progress: seconds since it was dialed
    handle_times_s: tuple[float, ...]  # recent completed calls, newest first


async def queue_figures(conn: Connection, queue: str, now: dt.datetime, history: int = 200) -> QueueFigures:
    waiting = await conn.fetchval(
        "select count(*) from callbacks where queue = $1 and status in ('requested', 'scheduled')"
        " and due_at <= $2",
        queue,
        now,
    )
    busy = await conn.fetch(
        "select extract(epoch from ($2 - coalesce(connected_at, updated_at)))::float8 as elapsed"
        " from callbacks where queue = $1 and status in ('dialing', 'connected')",
        queue,
        now,
    )
    handled = await conn.fetch(
        "select extract(epoch from (ended_at - first_dial_at))::float8 as seconds from callbacks"
        " where queue = $1 and status = 'completed' and first_dial_at is not null"
        " and ended_at > first_dial_at"
        " order by ended_at desc limit $2",
        queue,
        history,
    )
    return QueueFigures(
        waiting_due=int(waiting or 0),
        busy_elapsed_s=tuple(max(float(r["elapsed"]), 0.0) for r in busy),
        handle_times_s=tuple(float(r["seconds"]) for r in handled),
    )


# --- agents and presence ------------------------------------------------------------------------------

PRESENCE_TTL_S = 15  # a closed console tab stops heartbeats; the agent is gone this many seconds later


class AgentRow(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    login: str
    name: str
    password_hash: str
    queues: list[str]
    endpoint: str


class PresenceRow(msgspec.Struct, kw_only=True):
    status: str
    online: bool
    current_callback: uuid.UUID | None
    current_attempt: uuid.UUID | None


async def upsert_agent(conn: Connection, agent: AgentRow) -> bool:
    created = await conn.fetchval(
        "insert into agents (id, login, name, password_hash, queues, endpoint)"
        " values ($1, $2, $3, $4, $5, $6)"
        " on conflict (login) do update set name = excluded.name, password_hash = excluded.password_hash,"
        " queues = excluded.queues, endpoint = excluded.endpoint returning (xmax = 0)",
        agent.id,
        agent.login,
        agent.name,
        agent.password_hash,
        agent.queues,
        agent.endpoint,
    )
    await conn.execute(
        "insert into agent_presence (agent_id) select id from agents where login = $1 on conflict do nothing",
        agent.login,
    )
    return bool(created)


async def agent_by_login(conn: Connection, login: str) -> AgentRow | None:
    record = await conn.fetchrow(
        "select id, login, name, password_hash, queues, endpoint from agents where login = $1", login
    )
    return None if record is None else msgspec.convert(dict(record), AgentRow)


async def agent_by_id(conn: Connection, agent_id: uuid.UUID) -> AgentRow | None:
    record = await conn.fetchrow(
        "select id, login, name, password_hash, queues, endpoint from agents where id = $1", agent_id
    )
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


async def ready_agent_count(conn: Connection, queue: str) -> int | None:
    """Ready, online, idle agents of a queue; None when nobody of this queue used the console today."""
    record = await conn.fetchrow(
        "select count(*) filter (where p.status = 'ready' and p.current_attempt is null"
        f"   and p.last_seen_at > now() - interval '{PRESENCE_TTL_S} seconds') as ready,"
        " count(*) filter (where p.last_seen_at > now() - interval '1 day') as recent"
        " from agents a join agent_presence p on p.agent_id = a.id where $1 = any(a.queues)",
        queue,
    )
    assert record is not None
    return None if record["recent"] == 0 else int(record["ready"])


# --- dispatch and attempts ----------------------------------------------------------------------------


# An agent a dispatcher may reserve right now: Ready, not on a call, console alive (alias p = agent_presence).
_RESERVABLE = (
    "p.status = 'ready' and p.current_attempt is null"
    f" and p.last_seen_at > now() - interval '{PRESENCE_TTL_S} seconds'"
)


async def due_callbacks(
    conn: Connection, now: dt.datetime, limit: int, *, exclude: list[uuid.UUID] | None = None
) -> list[CallbackRow]:
    """Requests whose time has come and whose queue has a reservable agent, oldest original request first;
    rows are locked for this dispatcher. `exclude` = rows this pass already handled or gave up on.

    Only queues with a reservable agent count, so the oldest rows of a busy queue cannot fill the batch
    and starve the others. The queues come from the (small) agents table; the rows from the partial index
    callbacks_queue_due (queue, requested_at).
    """
    records = await conn.fetch(
        f"select {_CALLBACK_COLUMNS} from callbacks where status = 'scheduled' and due_at <= $1"
        " and id <> all($3::uuid[]) and queue in ("
        "  select unnest(a.queues) from agent_presence p join agents a on a.id = p.agent_id"
        f"  where {_RESERVABLE})"
        " order by requested_at limit $2 for update skip locked",
        now,
        limit,
        exclude or [],
    )
    return [_row(r) for r in records]


async def reserve_agent(conn: Connection, queue: str) -> AgentRow | None:
    """The longest-idle ready agent of the queue, locked; another dispatcher skips it."""
    record = await conn.fetchrow(
        "select a.id, a.login, a.name, a.password_hash, a.queues, a.endpoint"
        " from agent_presence p join agents a on a.id = p.agent_id"
        f" where {_RESERVABLE} and $1 = any(a.queues)"
        " order by p.ready_since nulls last limit 1 for update of p skip locked",
        queue,
    )
    return None if record is None else msgspec.convert(dict(record), AgentRow)


async def assign_agent(
    conn: Connection, agent_id: uuid.UUID, callback_id: uuid.UUID, attempt_id: uuid.UUID
) -> None:
    await conn.execute(
        "update agent_presence set current_callback = $2, current_attempt = $3 where agent_id = $1",
        agent_id,
        callback_id,
        attempt_id,
    )


async def release_agent(conn: Connection, attempt_id: uuid.UUID, status: str | None = None) -> None:
    """Free the agent of this attempt; back to the end of the idle line (or to `status`, e.g. break)."""
    await conn.execute(
        "update agent_presence set current_callback = null, current_attempt = null,"
        " status = coalesce($2, status), ready_since = now() where current_attempt = $1",
        attempt_id,
        status,
    )


class AttemptRow(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    callback_id: uuid.UUID
    attempt_no: int
    agent_id: uuid.UUID | None
    adapter: str
    state: str
    provider_call_id: str | None
    outcome: str | None
    started_at: dt.datetime
    placed_at: dt.datetime | None
    connected_at: dt.datetime | None


_ATTEMPT_COLUMNS = ", ".join(f.name for f in msgspec.structs.fields(AttemptRow))


async def insert_attempt(
    conn: Connection,
    attempt_id: uuid.UUID,
    callback_id: uuid.UUID,
    attempt_no: int,
    agent_id: uuid.UUID | None,
    *,
    adapter: str,
    now: dt.datetime,
) -> None:
    await conn.execute(
        "insert into dial_attempts (id, callback_id, attempt_no, agent_id, adapter, state, started_at)"
        " values ($1, $2, $3, $4, $5, 'placing', $6)",
        attempt_id,
        callback_id,
        attempt_no,
        agent_id,
        adapter,
        now,
    )


async def get_attempt(
    conn: Connection, attempt_id: uuid.UUID, *, for_update: bool = False
) -> AttemptRow | None:
    record = await conn.fetchrow(
        f"select {_ATTEMPT_COLUMNS} from dial_attempts where id = $1" + (" for update" if for_update else ""),
        attempt_id,
    )
    return None if record is None else msgspec.convert(dict(record), AttemptRow)


async def update_attempt(conn: Connection, attempt_id: uuid.UUID, **changes: Any) -> None:
    allowed = {"state", "provider_call_id", "outcome", "placed_at", "connected_at", "ended_at"}
    if set(changes) - allowed:
        raise ValueError(f"not attempt columns: {sorted(set(changes) - allowed)}")
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=2))
    await conn.execute(f"update dial_attempts set {assignments} where id = $1", attempt_id, *changes.values())


async def stale_attempts(
    conn: Connection, placing_before: dt.datetime, silent_before: dt.datetime
) -> list[AttemptRow]:
    """Attempts a crashed dispatcher left behind: never placed, or placed but silent far too long."""
    records = await conn.fetch(
        f"select {_ATTEMPT_COLUMNS} from dial_attempts where state <> 'ended' and ("
        " (state = 'placing' and started_at < $1) or (state <> 'placing' and state <> 'connected'"
        " and started_at < $2)) for update skip locked",
        placing_before,
        silent_before,
    )
    return [msgspec.convert(dict(r), AttemptRow) for r in records]


class OpenAttempt(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    site_key: str
    state: str
    adapter: str
    connected_at: dt.datetime | None


async def open_attempts(conn: Connection, states: list[str]) -> list[OpenAttempt]:
    """Attempts in these states with their site; no locks (finishing one re-checks it under a lock)."""
    records = await conn.fetch(
        "select a.id, c.site_key, a.state, a.adapter, a.connected_at from dial_attempts a"
        " join callbacks c on c.id = a.callback_id where a.state = any($1::text[])",
        states,
    )
    return [msgspec.convert(dict(r), OpenAttempt) for r in records]


async def calls_past_max_talk(conn: Connection, now: dt.datetime) -> list[uuid.UUID]:
    """Connected attempts longer than their site's max_talk_s; usually none, so the filter is in SQL."""
    records = await conn.fetch(
        "select a.id from dial_attempts a join callbacks c on c.id = a.callback_id"
        " join sites s on s.site_key = c.site_key"
        " where a.state = 'connected' and a.connected_at"
        "  < $1::timestamptz - make_interval(secs => coalesce((s.settings->>'max_talk_s')::int, $2::int))",
        now,
        DEFAULT_MAX_TALK_S,
    )
    return [r["id"] for r in records]


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


# --- client card and punctuality ------------------------------------------------------------------------


class HistoryEntry(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    site_key: str
    requested_at: dt.datetime
    status: str
    outcome: str | None
    attempts: int
    page_url: str


async def earlier_requests(conn: Connection, callback: CallbackRow, limit: int = 10) -> list[HistoryEntry]:
    """The visitor's earlier requests, recognised by phone (any site) or by visitor id (this site)."""
    records = await conn.fetch(
        "select id, site_key, requested_at, status, outcome, attempts, page_url from callbacks"
        " where id <> $1 and (phone_hash = $2 or (site_key = $3 and visitor_id = $4))"
        " order by requested_at desc limit $5",
        callback.id,
        callback.phone_hash,
        callback.site_key,
        callback.visitor_id,
        limit,
    )
    return [msgspec.convert(dict(r), HistoryEntry) for r in records]


class Punctuality(msgspec.Struct, kw_only=True):
    site_key: str
    requests: int
    dialed: int
    kept: int
    kept_pct: float | None
    time_to_dial_p50_s: float | None
    time_to_dial_p90_s: float | None


async def punctuality(conn: Connection, site_key: str, since: dt.datetime) -> Punctuality:
    """Promises kept = first dial no later than the promised latest; time to dial for ASAP requests."""
    record = await conn.fetchrow(
        "select count(*) as requests, count(first_dial_at) as dialed,"
        " count(*) filter (where first_dial_at <= promised_latest) as kept,"
        " percentile_cont(0.5) within group (order by extract(epoch from first_dial_at - requested_at))"
        "   filter (where promise_kind = 'asap' and first_dial_at is not null) as p50,"
        " percentile_cont(0.9) within group (order by extract(epoch from first_dial_at - requested_at))"
        "   filter (where promise_kind = 'asap' and first_dial_at is not null) as p90"
        " from callbacks where site_key = $1 and requested_at >= $2",
        site_key,
        since,
    )
    assert record is not None
    dialed = int(record["dialed"])
    return Punctuality(
        site_key=site_key,
        requests=int(record["requests"]),
        dialed=dialed,
        kept=int(record["kept"]),
        kept_pct=round(100.0 * record["kept"] / dialed, 1) if dialed else None,
        time_to_dial_p50_s=None if record["p50"] is None else round(float(record["p50"]), 1),
        time_to_dial_p90_s=None if record["p90"] is None else round(float(record["p90"]), 1),
    )


# --- CRM webhooks -------------------------------------------------------------------------------------


async def crm_webhook_url(conn: Connection, site_key: str) -> str:
    """The site's CRM webhook URL, or "" when it has none (or there is no such site)."""
    url = await conn.fetchval("select settings->>'crm_webhook_url' from sites where site_key = $1", site_key)
    return str(url or "")


async def crm_webhook_endpoint(conn: Connection, protector: DataProtector, site_key: str) -> Endpoint | None:
    """Where a site's CRM webhooks go and the secret that signs them; None when it has no URL.

    The only place the secret is read (the webhook sender's resolver comes here).
    """
    record = await conn.fetchrow(
        "select coalesce(settings->>'crm_webhook_url', '') as url, crm_webhook_secret_enc from sites"
        " where site_key = $1",
        site_key,
    )
    if record is None or not record["url"]:
        return None
    enc = record["crm_webhook_secret_enc"]
    secret = "" if enc is None else protector.decrypt(enc, WEBHOOK_SECRET_CONTEXT, site_key)
    return Endpoint(url=record["url"], secret=secret)


async def site_exists(conn: Connection, site_key: str) -> bool:
    return bool(await conn.fetchval("select true from sites where site_key = $1", site_key))
