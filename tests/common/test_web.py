"""Health, metrics, OpenAPI and the one error shape, on a real service app against real servers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from support.harness import make_settings, migrate_service

from services.common.embedded import EmbeddedPostgres
from services.common.settings import Settings
from services.notifier.app import create_app


async def test_ready_turns_503_when_postgres_stops_and_200_when_back(
    nats_url: str, nats_namespace: str, tmp_path: Path
) -> None:
    postgres = EmbeddedPostgres(tmp_path / "pg", fsync=False).start()
    try:
        settings = make_settings(postgres.url, nats_url, nats_namespace)
        await migrate_service(settings, "notifier")
        async with AsyncTestClient(app=create_app(settings)) as client:
            ok = await client.get("/health/ready")
            assert ok.status_code == 200, ok.text
            assert ok.json() == {
                "status": "ok",
                "checks": {"postgres": "ok", "postgres_workers": "ok", "nats": "ok"},
            }

            postgres.stop()
            down = await client.get("/health/ready")
            assert down.status_code == 503
            assert down.json()["checks"]["postgres"].startswith("unavailable")
            assert down.json()["checks"]["postgres_workers"].startswith("unavailable")
            assert (await client.get("/health/live")).status_code == 200

            postgres.start()  # same port and data

            async def is_ready() -> int:
                return (await client.get("/health/ready")).status_code

            for _ in range(100):
                if await is_ready() == 200:
                    break
                await asyncio.sleep(0.1)
            assert await is_ready() == 200
    finally:
        postgres.stop()


@pytest.fixture
async def client(settings: Settings):  # type: ignore[no-untyped-def]
    await migrate_service(settings, "notifier")
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        yield test_client


async def test_errors_share_one_shape(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    missing = await client.get("/no/such/page")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {"code": "not_found", "message": missing.json()["error"]["message"], "field": None}
    }
    wrong_method = await client.delete("/health/live")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


async def test_metrics_openapi_and_request_id(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    await client.get("/health/live")
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert "abonent_http_requests_total" in metrics.text
    schema = await client.get("/schema/openapi.json")
    assert schema.status_code == 200
    assert "/health/ready" in schema.json()["paths"]
    echoed = await client.get("/health/live", headers={"X-Request-ID": "abc123"})
    assert echoed.headers["x-request-id"] == "abc123"


async def test_domain_errors_map_to_statuses_in_the_one_shape() -> None:
    from litestar import Litestar, get
    from litestar.params import FromPath

    from services.common.domain_errors import Conflict, Gone, NotFound, TooMany
    from services.common.errors import EXCEPTION_HANDLERS

    raised = {
        "gone": Gone("link_used", "This link was already used", field="token"),
        "conflict": Conflict("wrong_state", "Already completed"),
        "missing": NotFound("case_not_found", "No such case"),
        "budget": TooMany("budget_spent", "Too many requests", retry_after_s=30),
    }

    @get("/raise/{which:str}")
    async def raiser(which: FromPath[str]) -> None:
        raise raised[which]

    async with AsyncTestClient(Litestar([raiser], exception_handlers=EXCEPTION_HANDLERS)) as plain:
        gone = await plain.get("/raise/gone")
        assert gone.status_code == 410
        assert gone.json() == {
            "error": {"code": "link_used", "message": "This link was already used", "field": "token"}
        }
        assert (await plain.get("/raise/conflict")).status_code == 409
        assert (await plain.get("/raise/missing")).json()["error"]["code"] == "case_not_found"
        budget = await plain.get("/raise/budget")
        assert budget.status_code == 429
        assert budget.headers["retry-after"] == "30"
