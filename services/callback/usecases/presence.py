"""Agents and presence: ready agents per queue; the console's use cases (sign-in, presence, live call)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec

from services.callback.store import agents as agent_store
from services.callback.store import attempts as attempt_store
from services.callback.store import callbacks as callback_store
from services.callback.store import history
from services.callback.usecases.common import PHONE_CONTEXT
from services.callback.usecases.orgs import Tenancy, target_org
from services.callback.usecases.sites import SiteDirectory
from services.common import db
from services.common.crypto import DataProtector, hash_password, verify_password
from services.common.domain_errors import Conflict, NotFound


class AgentAvailability(Protocol):
    """Ready agents per (organisation, queue), asked inside the caller's transaction (it reads through
    its connection)."""

    async def ready_agents(self, conn: db.Connection, org_id: str, queue: str) -> int: ...


class PresenceAgents:
    """Ready agents from the console's presence: Ready, idle, console alive. Nobody stands in for agents
    who are not there; later times come from the site's staffing schedule."""

    async def ready_agents(self, conn: db.Connection, org_id: str, queue: str) -> int:
        return await agent_store.ready_agent_count(conn, org_id, queue)


class LiveCall(msgspec.Struct, kw_only=True):
    """The call an agent is on, with what the client card shows (the phone decrypted for the agent)."""

    attempt: attempt_store.AttemptRow
    callback: callback_store.CallbackRow
    site_name: str
    phone: str
    earlier: list[history.HistoryEntry]


class Presence:
    """The agent console's use cases."""

    def __init__(
        self,
        pool: db.Pool,
        protector: DataProtector,
        sites: SiteDirectory,
        on_queues_changed: Callable[[str, list[str]], None] | None = None,
    ) -> None:
        self.pool = pool
        self.protector = protector
        self.sites = sites
        # Told when an agent's presence changes the capacity of their queues (promises may move).
        self.on_queues_changed = on_queues_changed

    async def put_agent(
        self,
        login: str,
        *,
        name: str,
        password: str,
        queues: list[str],
        endpoint: str,
        tenancy: Tenancy,
        org: str | None = None,
    ) -> tuple[agent_store.AgentRow, bool]:
        """Create or replace an agent of the caller's organisation (`org` lets the platform admin choose);
        True when created. A login another organisation's agent holds is a conflict."""
        password_hash = hash_password(password)
        async with self.pool.acquire() as conn:
            agent = agent_store.AgentRow(
                id=uuid.uuid4(),
                login=login,
                name=name,
                password_hash=password_hash,
                queues=queues,
                endpoint=endpoint,
                org_id=await target_org(conn, tenancy, org),
            )
            try:
                created = await agent_store.upsert_agent(conn, agent)
            except agent_store.AgentInAnotherOrg:
                raise Conflict(
                    "login_taken", f"The login {login!r} is taken; choose another", field="login"
                ) from None
        return agent, created

    async def agent(self, agent_id: uuid.UUID) -> agent_store.AgentRow | None:
        async with self.pool.acquire() as conn:
            return await agent_store.agent_by_id(conn, agent_id)

    async def sign_in(self, login: str, password: str) -> agent_store.AgentRow | None:
        """The agent, when the login and password match."""
        async with self.pool.acquire() as conn:
            agent = await agent_store.agent_by_login(conn, login.strip().lower())
        if agent is None or not verify_password(password, agent.password_hash):
            return None
        return agent

    async def set_presence(self, agent_id: uuid.UUID, status: str) -> None:
        async with self.pool.acquire() as conn:
            await agent_store.set_presence(conn, agent_id, status)
            agent = await agent_store.agent_by_id(conn, agent_id)
        if agent is not None and self.on_queues_changed is not None:
            self.on_queues_changed(agent.org_id, agent.queues)

    async def heartbeat(
        self, agent: agent_store.AgentRow
    ) -> tuple[agent_store.PresenceRow | None, LiveCall | None]:
        """Keep the agent's presence alive; their presence and the call they are on, if any."""
        agent_id = agent.id
        async with self.pool.acquire() as conn:
            presence = await agent_store.heartbeat(conn, agent_id)
            if presence is None or presence.current_attempt is None or presence.current_callback is None:
                return presence, None
            attempt = await attempt_store.get_attempt(conn, presence.current_attempt)
            row = await callback_store.get_callback(conn, presence.current_callback)
            # Reservation never crosses organisations; should a row ever say otherwise, the card stays shut.
            if attempt is None or row is None or row.org_id != agent.org_id:
                return presence, None
            site = await self.sites.require(row.site_key, conn)
            call = LiveCall(
                attempt=attempt,
                callback=row,
                site_name=site.settings.name,
                phone=self.protector.decrypt(row.phone_enc, PHONE_CONTEXT, row.id),
                earlier=await history.earlier_requests(conn, row),
            )
        return presence, call

    async def release_agent(
        self, login: str, end_call: Callable[[uuid.UUID], Awaitable[None]], tenancy: Tenancy
    ) -> uuid.UUID | None:
        """An operator frees an agent stuck with a call: the call is ended through `end_call` (the attempt
        tracker's forced end) and the agent detached whatever the attempt's state. Returns that attempt.
        Another organisation's agent is not found, as a missing one."""
        async with self.pool.acquire() as conn:
            agent = await agent_store.agent_by_login(conn, login)
            if agent is None or not tenancy.sees(agent.org_id):
                raise NotFound("agent_not_found", f"No agent with login {login!r}", field="login")
            attempt_id = await agent_store.agent_attempt(conn, agent.id)
        if attempt_id is not None:
            await end_call(attempt_id)
        async with self.pool.acquire() as conn:
            # Whatever the attempt's state was, the operator's word frees the agent.
            await agent_store.free_agent(conn, agent.id)
        return attempt_id
