"""Schemathesis over every callback operation: no 5xx, every answer documented and conforming."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from litestar.testing import AsyncTestClient
from schemathesis import GenerationMode
from support.callback_api import ADMIN, ask, put_site, site_body
from support.fuzz import FuzzReport, exercise, fetch_schema
from support.harness import running_service

from services.common.settings import Settings

Client = AsyncTestClient[Any]
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
# Examples per operation and mode (the checks are support.fuzz.CHECKS: no 5xx, every answer documented
# and conforming, schema-breaking data refused); ABONENT_SCHEMATHESIS_HUNT=<examples> hunts at random.
EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 20}
# The schema's own example site key: schemathesis' explicit-examples phase then reaches a real site.
EXAMPLE_SITE = "shop-42"


async def test_every_operation_answers_as_documented(settings: Settings, tmp_path: Path) -> None:
    env = {"ABONENT_OFFER_RATE_LIMIT_PER_MINUTE": "100000"}
    async with running_service(settings, "callback", tmp_path, **env) as base:
        async with httpx.AsyncClient(base_url=base, headers=ADMIN) as client:
            seeded = await client.put(f"/v1/admin/sites/{EXAMPLE_SITE}", json=site_body())
            assert seeded.status_code == 201, seeded.text
        report = FuzzReport()
        started = time.monotonic()
        await asyncio.to_thread(
            exercise, fetch_schema(base), base, report, headers=lambda path: dict(ADMIN), examples=EXAMPLES
        )
        elapsed = time.monotonic() - started
    print(f"schemathesis: {sum(report.examples.values())} requests in {elapsed:.0f}s", report.examples)
    assert not report.failures, report.summary()
    assert report.positive_ran_everywhere(), report.examples


# --- what schemathesis found, pinned (in process, against the same real servers) -----------------------


async def test_tz_is_an_enum_of_the_zones_we_accept_and_00_is_refused(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    offer = schema["paths"]["/v1/sites/{site_key}/offer"]["get"]
    zones = next(p for p in offer["parameters"] if p["name"] == "tz")["schema"]["enum"]
    assert "Asia/Novosibirsk" in zones
    assert "00" not in zones
    components = schema["components"]["schemas"]
    assert components["CallbackCreate"]["properties"]["visitor_tz"]["enum"] == zones
    assert components["SiteSettings"]["properties"]["timezone"]["enum"] == zones
    await put_site(client)
    refused = await client.get("/v1/sites/shop/offer", params={"tz": "00"})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["field"] == "tz"
    # Every zone the schema lists is accepted (a sample across the list: each one is a real zone file).
    for zone in zones[:: max(len(zones) // 20, 1)]:
        answer = await client.get("/v1/sites/shop/offer", params={"tz": zone})
        assert answer.status_code == 200, (zone, answer.text)


async def test_unknown_body_fields_are_refused_and_the_schema_forbids_them(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    components = schema["components"]["schemas"]
    for name in ("CallbackCreate", "Reschedule", "AgentSettings", "PresenceChange"):
        assert components[name]["additionalProperties"] is False, name
    await put_site(client)
    refused = await ask(client, favourite_colour="red")
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["field"] == "favourite_colour"


async def test_widget_fields_not_before_0_is_refused_as_the_schema_says(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    assert schema["components"]["schemas"]["WidgetFields"]["properties"]["not_before"]["type"] == "boolean"
    for body, name in (
        (site_body(widget_fields={"not_before": 0}), "widget_fields.not_before"),
        (site_body(max_talk_s="2"), "max_talk_s"),
    ):
        refused = await client.put("/v1/admin/sites/shop", json=body, headers=ADMIN)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["field"] == name
    assert (await client.get("/v1/admin/sites/shop", headers=ADMIN)).status_code == 404  # nothing stored
    # Query strings are text by nature: numbers in them are still read as numbers.
    await put_site(client)
    listed = await client.get("/v1/admin/sites/shop/webhook-deliveries", params={"limit": "5"}, headers=ADMIN)
    assert listed.status_code == 200, listed.text


async def test_every_answer_is_documented_in_the_one_error_shape(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    # Litestar's {status_code, detail, extra}: we never send it.
    assert "Validation Exception" not in str(schema)
    assert "'detail'" not in str(schema)
    put_site_answers = schema["paths"]["/v1/admin/sites/{site_key}"]["put"]["responses"]
    assert {"200", "201", "400", "401", "403", "413", "503"} <= set(put_site_answers)
    for path, method, status in (
        ("/v1/admin/sites/{site_key}", "get", "404"),
        ("/v1/sites/{site_key}/callbacks", "post", "409"),
        ("/v1/callbacks/{callback_id}/cancel", "post", "409"),
        ("/agent/api/heartbeat", "post", "401"),
        ("/v1/admin/webhook-deliveries/{delivery_id}/retry", "post", "409"),
    ):
        answer = schema["paths"][path][method]["responses"][status]
        assert answer["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
    created = await client.put("/v1/admin/sites/shop", json=site_body(), headers=ADMIN)
    assert created.status_code == 201  # the status the schema now documents
