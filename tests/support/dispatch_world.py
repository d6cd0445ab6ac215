"""A callback schema with sites, agents and requests made through the real intake: the dispatcher tests'
world (each test file adds the dispatcher it needs)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from support.callback_api import site_body

from services.callback.schemas import CallbackCreate, SiteSettings
from services.callback.store import agents as agent_store
from services.callback.store import sites as site_store
from services.callback.usecases.intake import Intake
from services.callback.usecases.sites import SiteDirectory
from services.common import db as dbmod
from services.common.crypto import DataProtector, hash_password
from services.common.settings import Settings


@dataclass
class DispatchWorld:
    settings: Settings
    pool: dbmod.Pool
    protector: DataProtector
    intake: Intake
    requests: int = 0

    @classmethod
    async def open(cls, settings: Settings) -> DispatchWorld:
        pool = await dbmod.create_pool(settings.database_url, "callback")
        protector = DataProtector.from_settings(settings)
        return cls(settings, pool, protector, Intake(pool, protector, SiteDirectory(pool)))

    async def site(self, key: str, **overrides: object) -> None:
        async with self.pool.acquire() as conn:
            await site_store.upsert_site(conn, key, msgspec.convert(site_body(**overrides), SiteSettings))

    async def agent(
        self,
        login: str,
        *,
        queues: Sequence[str] = ("default",),
        endpoint: str = "PJSIP/101",
        ready: bool = True,
    ) -> uuid.UUID:
        agent = agent_store.AgentRow(
            id=uuid.uuid4(),
            login=login,
            name=login,
            password_hash=hash_password("x" * 8),
            queues=list(queues),
            endpoint=endpoint,
        )
        async with self.pool.acquire() as conn:
            await agent_store.upsert_agent(conn, agent)
            if ready:
                await agent_store.set_presence(conn, agent.id, "ready")
        return agent.id

    async def ask(self, site_key: str) -> uuid.UUID:
        """An ASAP request as the widget makes it (distinct phone and address each time), through the
        intake alone: nobody calls the dispatcher's wake()."""
        self.requests += 1
        offer = await self.intake.offer(site_key, "Europe/Moscow", "en", None)
        body = CallbackCreate(
            phone=f"+7912{self.requests:07d}",
            visitor_tz="Europe/Moscow",
            form_token=offer.form_token,
            consent=True,
        )
        _, created = await self.intake.create(
            site_key,
            body,
            client_ip=f"10.1.{self.requests // 200}.{self.requests % 200}",
            idempotency_key=None,
        )
        return uuid.UUID(str(created.id))
