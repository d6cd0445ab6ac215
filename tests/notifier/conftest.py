"""Fixtures for notifier tests: the real app in process on this test's PostgreSQL and NATS, with a clock."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from litestar import Litestar
from support.harness import migrate_service
from support.notifier import T0, Harness

from services.common import bus as busmod
from services.common.clock import ManualClock
from services.common.settings import Settings
from services.notifier.app import create_app
from services.notifier.channels.base import Channel
from services.notifier.settings import NotifierSettings


class _Lifespan:
    """Runs the app's lifespan in a task of its own, entered and exited in that task (anyio insists)."""

    def __init__(self, app: Litestar) -> None:
        self.app = app
        self._started = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with self.app.lifespan():
            self._started.set()
            await self._stop.wait()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        done, _ = await asyncio.wait(
            [self._task, asyncio.create_task(self._started.wait())], return_when="FIRST_COMPLETED"
        )
        if self._task in done:
            self._task.result()  # raises why start-up failed

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


@pytest.fixture
async def harness_factory(settings: Settings, bus: busmod.Bus) -> AsyncIterator[Any]:
    """Start the notifier (once per test) with optional own settings and extra channels."""
    await migrate_service(settings, "notifier")
    fast = msgspec.structs.replace(settings, scheduler_poll_interval_s=0.2)
    opened: list[tuple[Any, httpx.AsyncClient, asyncpg.Connection]] = []

    async def start(
        own: NotifierSettings | None = None, channels: list[Channel] | None = None, at: dt.datetime = T0
    ) -> Harness:
        clock = ManualClock(at)
        app = create_app(fast, own or NotifierSettings(), channels=channels, clock=clock)
        # The app runs in this test's event loop (Litestar's test client would run it in another), so the
        # test can drive its scheduler and sender directly.
        lifespan = _Lifespan(app)
        await lifespan.start()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notifier.test")
        conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": "notifier"})
        opened.append((lifespan, client, conn))
        return Harness(app, client, bus, conn, clock)

    yield start
    for lifespan, client, conn in opened:
        await conn.close()
        await client.aclose()
        await lifespan.stop()


@pytest.fixture
async def harness(harness_factory: Any) -> Harness:
    started: Harness = await harness_factory()
    return started
