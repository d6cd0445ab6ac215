"""Organisations (tenants): who may act in which, and the back office's organisation use cases."""

from __future__ import annotations

import uuid

import msgspec

from services.callback.store import orgs as org_store
from services.callback.store.orgs import DEFAULT_ORG, Organisation
from services.common import db
from services.common.domain_errors import Forbidden, NotFound


class Tenancy(msgspec.Struct, frozen=True, kw_only=True):
    """Which organisations a back-office caller acts in: one (an organisation's admin) or all (None: the
    platform admin, e.g. the bootstrap token)."""

    org_id: str | None

    @property
    def platform(self) -> bool:
        return self.org_id is None

    def sees(self, org_id: str | None) -> bool:
        """Whether a row of `org_id` exists for this caller (None: no such row at all)."""
        return org_id is not None and (self.org_id is None or self.org_id == org_id)


PLATFORM = Tenancy(org_id=None)


def org_not_found(org_id: str) -> NotFound:
    return NotFound("org_not_found", f"No organisation {org_id!r}", field="org")


def platform_only() -> Forbidden:
    return Forbidden("platform_admin_only", "Only a platform administrator may do this")


async def tenancy_of(conn: db.Connection, principal_id: uuid.UUID) -> Tenancy:
    """The tenancy of an authenticated token or staff member."""
    return Tenancy(org_id=await org_store.admin_org(conn, principal_id))


async def target_org(conn: db.Connection, tenancy: Tenancy, requested: str | None) -> str:
    """The organisation a create acts in: an organisation admin's own (naming another is 404, as if it did
    not exist); the platform admin's choice, by default the default organisation."""
    if tenancy.org_id is not None:
        if requested is not None and requested != tenancy.org_id:
            raise org_not_found(requested)
        return tenancy.org_id
    org_id = requested or DEFAULT_ORG
    if await org_store.get_org(conn, org_id) is None:
        raise org_not_found(org_id)
    return org_id


class Organisations:
    """Create, list and staff organisations: creating them and naming their admins is the platform's."""

    def __init__(self, pool: db.Pool) -> None:
        self.pool = pool

    async def tenancy(self, principal_id: uuid.UUID) -> Tenancy:
        async with self.pool.acquire() as conn:
            return await tenancy_of(conn, principal_id)

    async def put(self, tenancy: Tenancy, org_id: str, name: str) -> tuple[Organisation, bool]:
        """Create or rename an organisation; True when created."""
        if not tenancy.platform:
            raise platform_only()
        async with self.pool.acquire() as conn:
            return await org_store.upsert_org(conn, org_id, name)

    async def list_orgs(self, tenancy: Tenancy) -> list[Organisation]:
        async with self.pool.acquire() as conn:
            return await org_store.list_orgs(conn, tenancy.org_id)

    async def get(self, tenancy: Tenancy, org_id: str) -> Organisation:
        async with self.pool.acquire() as conn:
            org = await org_store.get_org(conn, org_id) if tenancy.sees(org_id) else None
        if org is None:
            raise org_not_found(org_id)
        return org

    async def bind_admin(self, tenancy: Tenancy, org_id: str, principal_id: uuid.UUID) -> None:
        """Make a bearer token or staff account (by its id, as `abonent tokens|staff list` show it) an
        administrator of this organisation only. There is deliberately no unbinding: an identity without
        an organisation is a platform admin, so removing the row would raise it; revoke it instead."""
        if not tenancy.platform:
            raise platform_only()
        async with db.transaction(self.pool) as conn:
            if await org_store.get_org(conn, org_id) is None:
                raise org_not_found(org_id)
            if not await org_store.identity_exists(conn, principal_id):
                raise NotFound(
                    "identity_not_found", f"No token or staff account {principal_id}", field="principal_id"
                )
            await org_store.bind_admin(conn, principal_id, org_id)

    async def require_delivery(self, tenancy: Tenancy, channel: str, delivery_id: uuid.UUID) -> None:
        """NotFound, in the words the webhook engine uses for a missing one, unless the caller's
        organisation owns the site this delivery is for."""
        async with self.pool.acquire() as conn:
            org_id = await org_store.delivery_org(conn, channel, delivery_id)
        if not tenancy.sees(org_id) and org_id is not None:
            raise NotFound("delivery_not_found", f"No webhook delivery {delivery_id}", field="delivery_id")
