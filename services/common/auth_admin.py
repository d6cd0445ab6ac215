"""`abonent tokens|staff`: one identity, written in one transaction into every service schema it needs."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Sequence

import asyncpg
import msgspec

from services.common import auth
from services.common.crypto import hash_password

# Each service checks identities in its own schema (services never read each other's tables), so an
# identity lives in every schema its scopes name: scope "callback:admin" -> schema "callback". The same
# id is used in each, so listing and revoking treat the copies as one.


class AuthAdminError(Exception):
    """A request the operator can fix (unknown token, schema not migrated); the message says how."""


class TokenListing(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str
    scopes: list[str]
    services: list[str]
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    expires_at: dt.datetime | None
    revoked: bool


class StaffListing(msgspec.Struct, kw_only=True):
    login: str
    scopes: list[str]
    services: list[str]
    sessions: int


def schemas_of(scopes: Sequence[str]) -> list[str]:
    return sorted({auth.scope_service(scope) for scope in scopes})


@contextlib.asynccontextmanager
async def _transaction(database_url: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            yield conn
    finally:
        await conn.close()


async def _has_auth_tables(conn: asyncpg.Connection[asyncpg.Record], schema: str) -> bool:
    return await conn.fetchval("select to_regclass($1)", f"{schema}.auth_tokens") is not None


async def _use_schema(conn: asyncpg.Connection[asyncpg.Record], schema: str, *, required: bool) -> bool:
    """Point the connection at `schema` for the rest of this transaction; False if it is not migrated."""
    if not await _has_auth_tables(conn, schema):
        if required:
            raise AuthAdminError(f"schema {schema!r} has no auth tables yet: run `abonent migrate` first")
        return False
    # is_local=true: like `set local`, it ends with the transaction.
    await conn.execute("select set_config('search_path', $1, true)", f"{schema}, public")
    return True


async def create_token(
    database_url: str, *, name: str, scopes: Sequence[str], expires_days: float | None
) -> tuple[uuid.UUID, str]:
    """A new token in every schema its scopes name; returns (id, the token). Only its hash is stored."""
    name = name.strip()
    if not name or name == "bootstrap":
        raise AuthAdminError("give the token a name other than 'bootstrap' (it says who uses it)")
    token_id, token = uuid.uuid4(), auth.new_token()
    expires_at = None
    if expires_days is not None:
        if expires_days <= 0:
            raise AuthAdminError("--expires-days must be positive")
        expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(days=expires_days)
    async with _transaction(database_url) as conn:
        for schema in schemas_of(scopes):
            await _use_schema(conn, schema, required=True)
            # Names are how people revoke: one live token per name.
            if await auth.token_ids(conn, name):
                raise AuthAdminError(f"a live token named {name!r} exists in {schema}; revoke it or rename")
            await auth.insert_token(
                conn, token_id=token_id, name=name, token=token, scopes=scopes, expires_at=expires_at
            )
    return token_id, token


async def list_tokens(database_url: str, services: Sequence[str]) -> list[TokenListing]:
    merged: dict[uuid.UUID, TokenListing] = {}
    async with _transaction(database_url) as conn:
        for schema in services:
            if not await _use_schema(conn, schema, required=False):
                continue
            for row in await auth.list_tokens(conn):
                seen = merged.get(row.id)
                if seen is None:
                    merged[row.id] = TokenListing(
                        id=row.id,
                        name=row.name,
                        scopes=row.scopes,
                        services=[schema],
                        created_at=row.created_at,
                        last_used_at=row.last_used_at,
                        expires_at=row.expires_at,
                        revoked=row.revoked_at is not None,
                    )
                    continue
                seen.services.append(schema)
                if row.last_used_at and (seen.last_used_at is None or row.last_used_at > seen.last_used_at):
                    seen.last_used_at = row.last_used_at
                seen.revoked = seen.revoked or row.revoked_at is not None
    return sorted(merged.values(), key=lambda t: (t.created_at, str(t.id)))


async def revoke_tokens(database_url: str, id_or_name: str, services: Sequence[str]) -> int:
    """Revoke the live token(s) with this id or name in every schema; returns how many distinct tokens."""
    revoked: set[uuid.UUID] = set()
    async with _transaction(database_url) as conn:
        for schema in services:
            if not await _use_schema(conn, schema, required=False):
                continue
            for token_id in await auth.token_ids(conn, id_or_name):
                if await auth.revoke_token(conn, token_id):
                    revoked.add(token_id)
    if not revoked:
        raise AuthAdminError(f"no live token with id or name {id_or_name!r}")
    return len(revoked)


async def add_staff(
    database_url: str,
    *,
    login: str,
    scopes: Sequence[str],
    password: str,
    services: Sequence[str],
    keep_existing_password: bool = False,
) -> None:
    """Create or update a staff account in the schemas its scopes name and drop it from the others.

    A changed password signs the account out everywhere; `keep_existing_password` (for the dev seed)
    only sets it where the account is new."""
    login = auth.normalize_login(login)
    password_hash = hash_password(password)
    wanted = schemas_of(scopes)
    async with _transaction(database_url) as conn:
        for schema in services:
            if not await _use_schema(conn, schema, required=schema in wanted):
                continue
            if schema not in wanted:
                await auth.remove_staff(conn, login)
                continue
            await auth.upsert_staff(
                conn,
                login=login,
                scopes=scopes,
                password_hash=password_hash,
                keep_existing_password=keep_existing_password,
            )


async def remove_staff(database_url: str, login: str, services: Sequence[str]) -> None:
    login = auth.normalize_login(login)
    removed = False
    async with _transaction(database_url) as conn:
        for schema in services:
            if await _use_schema(conn, schema, required=False):
                removed = await auth.remove_staff(conn, login) or removed
    if not removed:
        raise AuthAdminError(f"no staff account {login!r}")


async def list_staff(database_url: str, services: Sequence[str]) -> list[StaffListing]:
    merged: dict[str, StaffListing] = {}
    async with _transaction(database_url) as conn:
        for schema in services:
            if not await _use_schema(conn, schema, required=False):
                continue
            for row in await auth.list_staff(conn):
                seen = merged.setdefault(
                    row.login, StaffListing(login=row.login, scopes=row.scopes, services=[], sessions=0)
                )
                seen.services.append(schema)
                seen.sessions += row.sessions
    return sorted(merged.values(), key=lambda s: s.login)
