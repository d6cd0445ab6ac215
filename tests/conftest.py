"""Real PostgreSQL and NATS for the whole session: testcontainers when a Docker engine answers, else the
embedded wheels. Each test gets its own database and its own NATS namespace (streams and subjects)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

import asyncpg
import pytest
from support.harness import make_settings

from services.common import bus as busmod
from services.common.embedded import EmbeddedNats, EmbeddedPostgres
from services.common.settings import Settings


def docker_engine_answers() -> bool:
    try:
        return (
            subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


class PostgresServer(Protocol):
    def create_database(self, name: str) -> str: ...


class ContainerPostgres:
    def __init__(self) -> None:
        from testcontainers.postgres import PostgresContainer

        self.container = PostgresContainer("postgres:16-alpine").start()
        self.base = self.container.get_connection_url(driver=None)

    def create_database(self, name: str) -> str:
        import asyncio

        async def create() -> None:
            conn = await asyncpg.connect(self.base)
            try:
                await conn.execute(f'create database "{name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        return self.base.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        self.container.stop()


@pytest.fixture(scope="session")
def docker_available() -> bool:
    return docker_engine_answers()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory, docker_available: bool) -> Iterator[Any]:
    if docker_available:
        server: Any = ContainerPostgres()
    else:
        server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", fsync=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory, docker_available: bool) -> Iterator[str]:
    if docker_available:
        from testcontainers.nats import NatsContainer

        container = NatsContainer(jetstream=True).start()
        yield container.nats_uri()
        container.stop()
    else:
        server = EmbeddedNats(tmp_path_factory.mktemp("nats") / "js").start()
        yield server.url
        server.stop()


@pytest.fixture
def database_url(postgres_server: Any) -> str:
    """A fresh, empty database for this test."""
    return str(postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}"))


@pytest.fixture
def nats_namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(database_url: str, nats_url: str, nats_namespace: str) -> Settings:
    return make_settings(database_url, nats_url, nats_namespace)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to this test's database (for assertions)."""
    conn = await asyncpg.connect(settings.database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[busmod.Bus]:
    """A NATS connection in this test's namespace, with the catalogue's streams declared."""
    connected = await busmod.connect(settings.nats_url, "test", settings.nats_namespace)
    await connected.ensure_streams()
    yield connected
    await connected.close()
