"""Schemathesis over every callback operation: no 5xx, every answer documented and conforming."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from litestar.testing import AsyncTestClient
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from support.callback_api import ADMIN, ask, put_site, site_body
from support.harness import running_service

from services.common.settings import Settings

Client = AsyncTestClient[Any]
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
# The four the issue asks for, plus: data that breaks the schema is refused (a 0 for a boolean, an unknown
# field where the schema forbids them). Not positive_data_acceptance: by design some schema-valid data is
# refused — control characters in text (services/common/text_guard.py), phone numbers libphonenumber
# rejects, form tokens we did not sign, and rules across fields (a range's end after its start).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Examples per operation and mode: schema-valid data, then data that breaks the schema (which must be
# refused with a documented 4xx, never a 5xx). Derandomized so a CI run is repeatable; to hunt locally,
# ABONENT_SCHEMATHESIS_HUNT=<examples> runs that many random examples per operation and mode instead.
HUNT = int(os.environ.get("ABONENT_SCHEMATHESIS_HUNT", "0"))
EXAMPLES = {GenerationMode.POSITIVE: HUNT or 30, GenerationMode.NEGATIVE: HUNT or 20}
# The schema's own example site key: schemathesis' explicit-examples phase then reaches a real site.
EXAMPLE_SITE = "shop-42"


@dataclass
class Report:
    examples: dict[str, int] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def exercise(base: str, report: Report) -> None:
    """Every operation, one at a time (one worker), with the back-office token on every request."""
    schema = schemathesis.openapi.from_url(f"{base}/schema/openapi.json")
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode, examples in EXAMPLES.items():
            label = f"{operation.method.upper()} {operation.path} ({mode.value})"
            count = 0

            @hypothesis_settings(
                max_examples=examples,
                deadline=None,
                derandomize=not HUNT,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                nonlocal count
                count += 1
                case.call_and_validate(base_url=base, headers=dict(ADMIN), checks=CHECKS, timeout=30)

            try:
                run()
            except BaseExceptionGroup as exc:  # every operation runs; all failures are reported together
                report.failures[label] = f"{type(exc).__name__}: {exc}"
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE, label  # nothing to break: no parameters, no body
            report.examples[label] = count


async def test_every_operation_answers_as_documented(settings: Settings, tmp_path: Path) -> None:
    env = {"ABONENT_OFFER_RATE_LIMIT_PER_MINUTE": "100000"}
    async with running_service(settings, "callback", tmp_path, **env) as base:
        async with httpx.AsyncClient(base_url=base, headers=ADMIN) as client:
            seeded = await client.put(f"/v1/admin/sites/{EXAMPLE_SITE}", json=site_body())
            assert seeded.status_code == 201, seeded.text
        report = Report()
        started = time.monotonic()
        await asyncio.to_thread(exercise, base, report)
        elapsed = time.monotonic() - started
    print(f"schemathesis: {sum(report.examples.values())} requests in {elapsed:.0f}s", report.examples)
    assert not report.failures, "\n\n".join(f"{op}:\n{text}" for op, text in report.failures.items())
    assert all(count > 0 for label, count in report.examples.items() if "(positive)" in label), (
        report.examples
    )


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
