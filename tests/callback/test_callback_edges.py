"""Edges of the callback API: secret-free access log, /offer rate limit, the RU production calendar opt-in."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from support.callback_api import ADMIN, put_site
from support.harness import migrate_service

from services.callback.app import create_app
from services.callback.schemas import SiteSettings
from services.callback.settings import CallbackSettings
from services.callback.usecases.sites import site_calendar
from services.common.logging import JsonFormatter
from services.common.settings import Settings

Client = AsyncTestClient[Any]


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Everything the service logs, formatted as in production (JSON, masked)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("callback"))
    # The test's own HTTP client logs the URLs it requests; that is not the service's log.
    handler.addFilter(lambda record: not record.name.startswith("httpx"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(previous)


def access_entries(stream: io.StringIO) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    return [entry for entry in entries if entry["logger"] == "abonent.access"]


@pytest.fixture
async def limited_client(settings: Settings) -> AsyncIterator[Client]:
    await migrate_service(settings, "callback")
    app = create_app(settings, CallbackSettings(offer_rate_limit_per_minute=3))
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


async def test_access_log_has_route_templates_and_no_tokens_or_phones(
    client: Client, log_lines: io.StringIO
) -> None:
    await put_site(client)
    token = "s3cr3t-status-token-" + uuid.uuid4().hex
    callback_id = uuid.uuid4()
    status = await client.get(
        f"/v1/callbacks/{callback_id}", params={"token": token}, headers={"X-Request-ID": "req-1"}
    )
    assert status.status_code == 404
    # A phone where a site key goes, and one in a path no route matches.
    await client.get("/v1/sites/79123456789/offer", params={"tz": "Europe/Moscow", "token": token})
    await client.get("/v1/phones/+79123456789/lookup", params={"token": token})

    text = log_lines.getvalue()
    assert token not in text
    assert "9123456789" not in text
    assert str(callback_id) not in text
    entries = access_entries(log_lines)
    by_request = {entry["request_id"]: entry for entry in entries}
    first = by_request["req-1"]
    assert first["route"] == "/v1/callbacks/{callback_id}"
    assert first["method"] == "GET"
    assert first["status"] == 404
    assert first["service"] == "callback"
    assert isinstance(first["duration_ms"], float)
    assert first["duration_ms"] >= 0
    routes = [(entry["route"], entry["status"]) for entry in entries]
    assert ("/v1/sites/{site_key}/offer", 404) in routes
    assert (None, 404) in routes  # unmatched paths are logged too, without their path
    assert all(entry.get("request_id") for entry in entries)


async def test_offer_is_rate_limited_per_ip_with_retry_after(limited_client: Client) -> None:
    client = limited_client
    await put_site(client)
    for _ in range(3):
        ok = await client.get("/v1/sites/shop/offer", params={"tz": "Europe/Moscow"})
        assert ok.status_code == 200, ok.text
    limited = await client.get("/v1/sites/shop/offer", params={"tz": "Europe/Moscow"})
    assert limited.status_code == 429
    assert limited.json() == {
        "error": {"code": "rate_limited", "message": limited.json()["error"]["message"], "field": None}
    }
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    # Only /offer is limited by this budget: the widget's config and the API stay reachable.
    assert (await client.get("/v1/sites/shop/config")).status_code == 200
    assert (await client.get("/health/live")).status_code == 200


async def test_cors_headers_reach_a_rate_limited_browser(limited_client: Client) -> None:
    """The widget must be able to read the 429 and its Retry-After from the shop's origin."""
    client = limited_client
    await put_site(client)
    origin = {"Origin": "https://shop.example"}
    for _ in range(3):
        await client.get("/v1/sites/shop/offer", headers=origin)
    limited = await client.get("/v1/sites/shop/offer", headers=origin)
    assert limited.status_code == 429
    assert limited.headers["access-control-allow-origin"] == "https://shop.example"
    assert "retry-after" in limited.headers["access-control-expose-headers"]


async def test_a_site_can_opt_into_the_ru_production_calendar(client: Client) -> None:
    created = await put_site(client, production_calendar="RU", working_hours={"mon": [["09:00", "18:00"]]})
    assert created["settings"]["production_calendar"] == "RU"
    stored = await client.get("/v1/admin/sites/shop", headers=ADMIN)
    settings = msgspec.convert(stored.json()["settings"], SiteSettings)
    calendar = site_calendar(settings)
    # Saturday 1 November 2025 was worked for Monday 3 November, which was a day off.
    assert calendar.is_open_at(dt.datetime(2025, 11, 1, 8, tzinfo=dt.UTC))  # 11:00 Moscow
    assert not calendar.is_open_at(dt.datetime(2025, 11, 3, 8, tzinfo=dt.UTC))
    assert calendar.next_opening(dt.datetime(2025, 11, 2, tzinfo=dt.UTC)) == dt.datetime(
        2025, 11, 10, 6, tzinfo=dt.UTC
    )
    plain = site_calendar(msgspec.structs.replace(settings, production_calendar=None))
    assert plain.is_open_at(dt.datetime(2025, 11, 3, 8, tzinfo=dt.UTC))
