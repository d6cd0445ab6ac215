"""Schemathesis over every corporate SIM operation (the company's API, OAuth, the back office): no 5xx, every
answer documented and conforming to the schema, schema-breaking input refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from support.harness import running_service
from support.verification import AUTH

from services.common.settings import Settings
from services.verification.identity.config import IdentitySettings

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 12}
CORPORATE = ("/oauth/", "/.well-known/", "/v1/corporate/", "/v1/companies", "/v1/admin/companies")
# Operations a company's token calls (the rest are the back office's, with a staff token).
COMPANY_API = ("/v1/corporate/sims", "/v1/corporate/bulk-uploads")
# The schema's example numbers are on the demo contract, so generated requests also reach real SIMs.
NUMBERS = ["+79161234567", "+79161234568"]


def run_operation(
    operation: Any, mode: GenerationMode, count: int, base: str, headers: dict[str, str]
) -> int:
    """Examples of one operation in one mode; how many ran (failures raise, grouped)."""
    seen = 0

    @hypothesis_settings(
        max_examples=count,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        nonlocal seen
        seen += 1
        case.call_and_validate(base_url=base, headers=headers, checks=CHECKS, timeout=30)

    run()
    return seen


def exercise(base: str, company_bearer: dict[str, str]) -> tuple[dict[str, int], dict[str, str]]:
    schema = schemathesis.openapi.from_url(f"{base}/schema/openapi.json")
    examples: dict[str, int] = {}
    failures: dict[str, str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith(CORPORATE):
            continue
        headers = company_bearer if operation.path.startswith(COMPANY_API) else dict(AUTH)
        for mode, count in EXAMPLES.items():
            label = f"{operation.method.upper()} {operation.path} ({mode.value})"
            try:
                examples[label] = run_operation(operation, mode, count, base, headers)
            except BaseExceptionGroup as exc:
                failures[label] = f"{type(exc).__name__}: {exc}"
                examples[label] = -1
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE, label
                examples[label] = 0
    return examples, failures


# About 650 requests: a couple of minutes alone, longer on a loaded CI machine.
@pytest.mark.timeout(900)
async def test_every_corporate_operation_answers_as_documented(
    settings: Settings, identity: IdentitySettings, tmp_path: Path
) -> None:
    # The service process signs in at the sandbox ESIA the fixture runs (needed to start, unused here).
    env = {
        f"ABONENT_{f.name.upper()}": str(getattr(identity, f.name)) for f in msgspec.structs.fields(identity)
    }
    async with running_service(settings, "verification", tmp_path, **env) as base:
        async with httpx.AsyncClient(base_url=base, headers=AUTH) as http:
            company = await http.post(
                "/v1/companies", json={"name": "ПАО Сбербанк", "inn": "7707083893", "ogrn": "1027700132195"}
            )
            assert company.status_code == 201, company.text
            company_id = company.json()["id"]
            added = await http.post(f"/v1/companies/{company_id}/numbers", json={"numbers": NUMBERS})
            assert added.json()["added"] == 2, added.text
            made = (await http.post(f"/v1/companies/{company_id}/clients", json={})).json()
            token = await http.post(
                "/oauth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": made["client_id"],
                    "client_secret": made["client_secret"],
                },
                headers={"Authorization": ""},
            )
            assert token.status_code == 200, token.text
        bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
        examples, failures = await asyncio.to_thread(exercise, base, bearer)
    print("schemathesis:", examples)
    assert not failures, "\n\n".join(f"{op}:\n{text}" for op, text in failures.items())
    # Every corporate operation of the schema, both modes (a new route joins by its path prefix).
    assert len(examples) >= 2 * 20, examples
    assert all(n != 0 for label, n in examples.items() if "(positive)" in label), examples
