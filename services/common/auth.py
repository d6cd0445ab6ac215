"""Back-office identities for every service: scopes, bearer tokens, staff, sign-in and sessions (storage)."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import logging
import re
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import msgspec

from services.common import db
from services.common.crypto import hash_password, token_hash, verify_password
from services.common.settings import Settings

log = logging.getLogger(__name__)

# Scopes are "<service>:<what>"; the service part says which schema holds the identities that carry it.
SCOPE_PATTERN = re.compile(r"[a-z][a-z0-9_]*:[a-z][a-z0-9_]*")
LOGIN_PATTERN = re.compile(r"[a-z0-9][a-z0-9._@\-]{1,63}")
# Recognisable in logs and by secret scanners; the rest is 256 random bits.
TOKEN_PREFIX = "abt_"  # noqa: S105 - a public prefix, not a secret


# --- scopes ---------------------------------------------------------------------------------------------


def scope_service(scope: str) -> str:
    """The service whose schema holds identities with this scope ("callback:admin" -> "callback")."""
    return scope.split(":", 1)[0]


def check_declared_scopes(service: str, scopes: Iterable[str]) -> None:
    """A service may only declare scopes named after itself; the CLI relies on that to find the schema."""
    for scope in scopes:
        if not SCOPE_PATTERN.fullmatch(scope) or scope_service(scope) != service:
            raise ValueError(f"service {service} declares scope {scope!r}; its scopes are '{service}:<what>'")


def parse_scopes(text: str, catalogue: Mapping[str, str]) -> list[str]:
    """Comma-separated scopes, each from the catalogue; ValueError names the unknown ones."""
    scopes = sorted({part.strip() for part in text.split(",") if part.strip()})
    if not scopes:
        raise ValueError("name at least one scope")
    unknown = [scope for scope in scopes if scope not in catalogue]
    if unknown:
        raise ValueError(f"unknown scope {', '.join(unknown)}; known scopes: {', '.join(sorted(catalogue))}")
    return scopes


def normalize_login(login: str) -> str:
    normalized = login.strip().lower()
    if not LOGIN_PATTERN.fullmatch(normalized):
        raise ValueError("a login is 2-64 characters: a-z, 0-9, '.', '_', '@', '-'")
    return normalized


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling: a token (a system) or a staff member (a person), with what they may do."""

    kind: Literal["token", "staff"]
    id: uuid.UUID
    name: str
    scopes: tuple[str, ...]

    @property
    def who(self) -> str:
        """For audit lines: "token:crm-sync", "staff:olga"."""
        return f"{self.kind}:{self.name}"


# --- tokens ---------------------------------------------------------------------------------------------


class TokenRow(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str
    scopes: list[str]
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    bootstrap: bool


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


async def insert_token(
    conn: db.Connection,
    *,
    token_id: uuid.UUID,
    name: str,
    token: str,
    scopes: Sequence[str],
    expires_at: dt.datetime | None,
) -> None:
    await conn.execute(
        "insert into auth_tokens (id, name, token_hash, scopes, expires_at) values ($1, $2, $3, $4, $5)",
        token_id,
        name,
        token_hash(token),
        list(scopes),
        expires_at,
    )


async def list_tokens(conn: db.Connection) -> list[TokenRow]:
    rows = await conn.fetch(
        "select id, name, scopes, created_at, last_used_at, expires_at, revoked_at, bootstrap"
        " from auth_tokens order by created_at, id"
    )
    return [TokenRow(**dict(row)) for row in rows]


async def token_ids(conn: db.Connection, id_or_name: str) -> list[uuid.UUID]:
    """Tokens not yet revoked whose id or name is `id_or_name`."""
    try:
        token_id: uuid.UUID | None = uuid.UUID(id_or_name)
    except ValueError:
        token_id = None
    rows = await conn.fetch(
        "select id from auth_tokens where revoked_at is null and (id = $1 or name = $2)", token_id, id_or_name
    )
    return [row["id"] for row in rows]


async def revoke_token(conn: db.Connection, token_id: uuid.UUID) -> bool:
    status = await conn.execute(
        "update auth_tokens set revoked_at = now() where id = $1 and revoked_at is null", token_id
    )
    return status != "UPDATE 0"


async def register_bootstrap_token(conn: db.Connection, token: str, scopes: Sequence[str]) -> None:
    """ABONENT_ADMIN_TOKEN becomes a token row with every scope of this service.

    Changing or unsetting the variable revokes the previous bootstrap token; a bootstrap token revoked
    with `abonent tokens revoke` stays revoked across restarts (it never comes back by itself)."""
    digest = token_hash(token) if token else None
    await conn.execute(
        "update auth_tokens set revoked_at = now()"
        " where bootstrap and revoked_at is null and token_hash is distinct from $1",
        digest,
    )
    if digest is None:
        return
    if len(token) < 32:
        # Stored as an unsalted SHA-256: fine for random tokens, guessable for short chosen ones.
        log.warning("ABONENT_ADMIN_TOKEN is short; prefer a random one (e.g. from `abonent tokens create`)")
    # The `where` keeps an ordinary token that happens to equal the variable from gaining scopes.
    await conn.execute(
        "insert into auth_tokens (id, name, token_hash, scopes, bootstrap)"
        " values ($1, 'bootstrap', $2, $3, true)"
        " on conflict (token_hash) do update set scopes = excluded.scopes where auth_tokens.bootstrap",
        uuid.uuid4(),
        digest,
        list(scopes),
    )


async def token_principal(conn: db.Connection, token: str) -> Principal | None:
    """The principal of a live token (known, not expired, not revoked); None otherwise."""
    row = await conn.fetchrow(
        "select id, name, scopes,"
        " last_used_at is null or last_used_at < now() - interval '60 seconds' as stale"
        " from auth_tokens"
        " where token_hash = $1 and revoked_at is null and (expires_at is null or expires_at > now())",
        token_hash(token),
    )
    if row is None:
        return None
    # Refreshed at most once a minute, so authenticating does not turn every read into a write.
    if row["stale"]:
        await conn.execute("update auth_tokens set last_used_at = now() where id = $1", row["id"])
    return Principal(kind="token", id=row["id"], name=row["name"], scopes=tuple(row["scopes"]))


# --- staff ----------------------------------------------------------------------------------------------


class StaffRow(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    login: str
    scopes: list[str]
    created_at: dt.datetime
    sessions: int


async def staff_id(conn: db.Connection, login: str) -> uuid.UUID | None:
    found: uuid.UUID | None = await conn.fetchval("select id from staff where login = $1", login)
    return found


async def upsert_staff(
    conn: db.Connection,
    *,
    login: str,
    scopes: Sequence[str],
    password_hash: str | None,
    keep_existing_password: bool = False,
) -> uuid.UUID:
    """Create or update an account. A new password ends the account's sessions; scopes apply at once
    because sessions read them from the account on every request. `keep_existing_password` sets the
    password only on a new account (the dev seed)."""
    existing = await staff_id(conn, login)
    if existing is None:
        if password_hash is None:
            raise ValueError(f"staff account {login!r} does not exist yet: it needs a password")
        new_id = uuid.uuid4()
        await conn.execute(
            "insert into staff (id, login, password_hash, scopes) values ($1, $2, $3, $4)",
            new_id,
            login,
            password_hash,
            list(scopes),
        )
        return new_id
    if keep_existing_password:
        password_hash = None
    await conn.execute(
        "update staff set scopes = $2, password_hash = coalesce($3, password_hash) where id = $1",
        existing,
        list(scopes),
        password_hash,
    )
    if password_hash is not None:
        await conn.execute("delete from staff_sessions where staff_id = $1", existing)
    return existing


async def remove_staff(conn: db.Connection, login: str) -> bool:
    # Sessions go with the account (on delete cascade).
    return await conn.execute("delete from staff where login = $1", login) != "DELETE 0"


async def list_staff(conn: db.Connection) -> list[StaffRow]:
    rows = await conn.fetch(
        "select st.id, st.login, st.scopes, st.created_at,"
        " (select count(*) from staff_sessions s where s.staff_id = st.id and s.expires_at > now())::int"
        " as sessions from staff st order by st.login"
    )
    return [StaffRow(**dict(row)) for row in rows]


# --- sign-in budget and sessions -----------------------------------------------------------------------


def _budget_key(login: str, client: str) -> bytes:
    # Fixed-size key; rows live one window and are deleted on success.
    return hashlib.sha256(f"sign-in\x00{login}\x00{client}".encode()).digest()


async def spend_sign_in_attempt(
    conn: db.Connection, login: str, client: str, window_s: int
) -> tuple[int, int]:
    """Count this attempt against (login, client) before checking the password, atomically, so parallel
    guesses cannot slip past the budget. Returns (attempts in this window, seconds until it ends)."""
    row = await conn.fetchrow(
        "insert into sign_in_budget as b (key_hash, failures, window_started_at) values ($1, 1, now())"
        " on conflict (key_hash) do update set"
        "  failures = case when b.window_started_at <= now() - make_interval(secs => $2)"
        "   then 1 else b.failures + 1 end,"
        "  window_started_at = case when b.window_started_at <= now() - make_interval(secs => $2)"
        "   then now() else b.window_started_at end"
        " returning failures,"
        "  ceil(extract(epoch from b.window_started_at + make_interval(secs => $2) - now()))::int as left_s",
        _budget_key(login, client),
        float(window_s),
    )
    assert row is not None
    return int(row["failures"]), max(1, int(row["left_s"]))


async def clear_sign_in_budget(conn: db.Connection, login: str, client: str, window_s: int) -> None:
    await conn.execute("delete from sign_in_budget where key_hash = $1", _budget_key(login, client))
    # Opportunistic pruning keeps the table to the failures of the current window.
    await conn.execute(
        "delete from sign_in_budget where window_started_at < now() - make_interval(secs => $1)",
        float(window_s),
    )


async def staff_credentials(conn: db.Connection, login: str) -> tuple[uuid.UUID, str] | None:
    row = await conn.fetchrow("select id, password_hash from staff where login = $1", login)
    return None if row is None else (row["id"], row["password_hash"])


async def start_session(conn: db.Connection, staff: uuid.UUID, max_age_s: int) -> tuple[str, str]:
    """A new session; returns (the cookie value, its CSRF token). Only the cookie's hash is stored."""
    session_id = secrets.token_urlsafe(32)
    csrf_token = secrets.token_urlsafe(24)
    await conn.execute("delete from staff_sessions where staff_id = $1 and expires_at <= now()", staff)
    await conn.execute(
        "insert into staff_sessions (id_hash, staff_id, csrf_token, expires_at)"
        " values ($1, $2, $3, now() + make_interval(secs => $4))",
        token_hash(session_id),
        staff,
        csrf_token,
        float(max_age_s),
    )
    return session_id, csrf_token


async def session_principal(
    conn: db.Connection, session_id: str, idle_timeout_s: int
) -> tuple[Principal, str] | None:
    """The staff member of a live session (within both idle and absolute expiry) and its CSRF token."""
    row = await conn.fetchrow(
        "select st.id, st.login, st.scopes, s.csrf_token,"
        " s.last_seen_at < now() - interval '60 seconds' as stale"
        " from staff_sessions s join staff st on st.id = s.staff_id"
        " where s.id_hash = $1 and s.expires_at > now()"
        " and s.last_seen_at > now() - make_interval(secs => $2)",
        token_hash(session_id),
        float(idle_timeout_s),
    )
    if row is None:
        return None
    if row["stale"]:
        await conn.execute(
            "update staff_sessions set last_seen_at = now() where id_hash = $1", token_hash(session_id)
        )
    principal = Principal(kind="staff", id=row["id"], name=row["login"], scopes=tuple(row["scopes"]))
    return principal, str(row["csrf_token"])


async def end_session(conn: db.Connection, session_id: str) -> None:
    await conn.execute("delete from staff_sessions where id_hash = $1", token_hash(session_id))


@functools.cache
def _decoy_password_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


class SignedIn(msgspec.Struct, frozen=True, kw_only=True):
    session_id: str
    csrf_token: str


class SignInRefused(msgspec.Struct, frozen=True, kw_only=True):
    # One reason for an unknown login and a wrong password: the answer must not reveal which logins exist.
    reason: Literal["wrong_credentials", "rate_limited"]
    retry_after_s: int = 0


async def sign_in(
    pool: db.Pool, settings: Settings, login: str, password: str, client: str
) -> SignedIn | SignInRefused:
    """Check a staff password within the (login, client) budget and open a session."""
    login = login.strip().lower()
    async with pool.acquire() as conn:
        attempts, left_s = await spend_sign_in_attempt(conn, login, client, settings.sign_in_window_s)
        if attempts > settings.sign_in_max_failures:
            return SignInRefused(reason="rate_limited", retry_after_s=left_s)
        # A login that cannot exist (control characters, NUL) is never sent to PostgreSQL.
        credentials = await staff_credentials(conn, login) if LOGIN_PATTERN.fullmatch(login) else None
    # scrypt runs off the event loop and without a pooled connection held; an unknown login costs the
    # same hash so timing does not tell logins apart.
    stored = credentials[1] if credentials else _decoy_password_hash()
    matches = await asyncio.to_thread(verify_password, password, stored)
    if credentials is None or not matches:
        return SignInRefused(reason="wrong_credentials")
    async with pool.acquire() as conn, conn.transaction():
        await clear_sign_in_budget(conn, login, client, settings.sign_in_window_s)
        session_id, csrf_token = await start_session(conn, credentials[0], settings.session_max_age_s)
    return SignedIn(session_id=session_id, csrf_token=csrf_token)
