"""Schemathesis over the verification case API (cases, billing deliveries, whoami, health) and the
subscriber's pages and back-office pages (a hand-written schema: they are not in /schema): no 5xx, every
answer documented and conforming, schema-breaking input refused. The corporate API has its own test."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance
from support.fuzz import (
    REDIRECT,
    FuzzReport,
    answers,
    document,
    exercise,
    fetch_schema,
    path_text,
    query,
    sign_in_paths,
    with_examples,
)
from support.harness import running_service
from support.verification import AUTH, MATCH_CASE

from services.common.settings import Settings
from services.verification.identity.config import IdentitySettings

CORPORATE = ("/oauth/", "/.well-known/", "/v1/corporate/", "/v1/companies", "/v1/admin/companies")
CASE_EXAMPLES = {GenerationMode.POSITIVE: 15, GenerationMode.NEGATIVE: 10}
PAGE_EXAMPLES = {GenerationMode.POSITIVE: 10, GenerationMode.NEGATIVE: 6}
# Pages are HTML: their answers are documented by status and media type (no JSON schema to conform to).
PAGE_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]


def hidden_routes(token: str) -> dict[str, Any]:
    """The routes verification leaves out of /schema, as they answer (services/verification/subscriber.py,
    corporate/back_office.py, services/common/auth_pages.py); `token` is a real link's."""
    lang = query("lang", 5)
    css = {"text/css": {"schema": {"type": "string"}}}
    return document(
        "verification pages",
        {
            "/v/static/page.css": {
                "get": {"responses": {"200": {"description": "the pages' style", "content": css}}}
            },
            "/v/callback": {
                "get": {
                    "parameters": [
                        query("state", 100),
                        query("code", 4096),
                        query("error", 200),
                        query("error_description", 1000),
                    ],
                    "responses": answers(400, s303=REDIRECT),
                }
            },
            "/v/{token}": {
                "get": {
                    "parameters": [path_text("token", token), lang],
                    "responses": answers(200, 400, 404, 410),
                }
            },
            "/v/{token}/start": {
                "get": {
                    "parameters": [path_text("token", token), lang],
                    "responses": answers(200, 400, 404, 410, s303=REDIRECT),
                }
            },
            "/v/{token}/result": {
                "get": {
                    "parameters": [path_text("token", token), lang],
                    "responses": answers(200, 400, 404, 410),
                }
            },
            "/back-office/corporate": {"get": {"responses": answers(200, 401, 403)}},
            **sign_in_paths(),
        },
    )


def fuzz(base: str, case_id: str, token: str) -> FuzzReport:
    report = FuzzReport()
    api = with_examples(fetch_schema(base), {"case_id": case_id})
    exercise(
        api,
        base,
        report,
        headers=lambda path: dict(AUTH),
        include=lambda path: not path.startswith(CORPORATE),
        examples=CASE_EXAMPLES,
    )
    # A subscriber's browser carries no credentials; the back-office page and sign-out get the token.
    exercise(
        hidden_routes(token),
        base,
        report,
        headers=lambda path: {} if path.startswith("/v/") else dict(AUTH),
        examples=PAGE_EXAMPLES,
        checks=PAGE_CHECKS,
    )
    return report


@pytest.mark.timeout(300)
async def test_every_case_operation_and_page_answers_as_documented(
    settings: Settings, identity: IdentitySettings, tmp_path: Path
) -> None:
    env = {
        f"ABONENT_{f.name.upper()}": str(getattr(identity, f.name)) for f in msgspec.structs.fields(identity)
    }
    async with running_service(settings, "verification", tmp_path, **env) as base:
        async with httpx.AsyncClient(base_url=base, headers=AUTH) as http:
            opened = await http.post("/v1/cases", json=MATCH_CASE)
            assert opened.status_code == 201, opened.text
            case = opened.json()
        token = case["link"].rsplit("/", 1)[1]
        started = time.monotonic()
        report = await asyncio.to_thread(fuzz, base, case["id"], token)
        elapsed = time.monotonic() - started
    print(f"schemathesis: {sum(report.examples.values())} requests in {elapsed:.0f}s", report.examples)
    assert not report.failures, report.summary()
    assert report.positive_ran_everywhere(), report.examples
    assert any(label.startswith("POST /v1/cases ") for label in report.examples), report.examples
    assert any(label.startswith("GET /v/{token}/start ") for label in report.examples), report.examples


# --- what schemathesis found, pinned (in process, against the same real servers) -----------------------


async def test_an_offset_past_bigint_is_a_400_naming_it_not_a_500(client: AsyncTestClient[Any]) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    offset = next(p for p in schema["paths"]["/v1/cases"]["get"]["parameters"] if p["name"] == "offset")
    assert offset["schema"]["maximum"] == 2**31 - 1
    refused = await client.get("/v1/cases", params={"offset": "82812345332683259904"}, headers=AUTH)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["field"] == "offset"
    deepest = await client.get("/v1/cases", params={"offset": str(2**31 - 1)}, headers=AUTH)
    assert deepest.status_code == 200, deepest.text
    assert deepest.json() == []
