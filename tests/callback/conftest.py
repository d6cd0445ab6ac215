"""Fixtures for callback tests: the real app (in process) on this test's database and NATS namespace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from support.harness import migrate_service

from services.callback.app import create_app
from services.common.settings import Settings


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    await migrate_service(settings, "callback")
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        yield test_client
