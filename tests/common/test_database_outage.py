"""While PostgreSQL is down a service answers 503 with Retry-After (a dependency is down), never 500."""

from __future__ import annotations

from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from support.harness import TEST_ADMIN_TOKEN, make_settings, migrate_service

from services.callback.app import create_app
from services.common.embedded import EmbeddedPostgres

pytestmark = pytest.mark.slow
ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}


async def test_requests_while_postgres_is_down_are_503_with_retry_after(
    tmp_path: Path, nats_url: str, nats_namespace: str
) -> None:
    # A PostgreSQL of its own: the session's server is shared with every other test.
    postgres = EmbeddedPostgres(tmp_path / "pg", fsync=False).start()
    try:
        settings = make_settings(postgres.url, nats_url, nats_namespace)
        await migrate_service(settings, "callback")
        async with AsyncTestClient(app=create_app(settings)) as client:
            assert (await client.get("/v1/admin/sites", headers=ADMIN)).status_code == 200
            postgres.stop()
            for _ in range(3):  # connections cut by the shutdown, then connections refused
                response = await client.get("/v1/admin/sites", headers=ADMIN)
                assert response.status_code == 503, response.text
                assert response.headers["Retry-After"] == "1"
                assert response.json()["error"]["code"] == "unavailable"
            assert (await client.get("/health/ready")).status_code == 503
            postgres.start()
            assert (await client.get("/v1/admin/sites", headers=ADMIN)).status_code == 200
    finally:
        postgres.stop()
