"""Schemathesis over every corporate SIM operation (the company's API, OAuth, the back office): no 5xx, every
answer documented and conforming to the schema, schema-breaking input refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import msgspec
import pytest
from schemathesis import GenerationMode
from support.fuzz import FuzzReport, exercise, fetch_schema
from support.harness import running_service
from support.verification import AUTH

from services.common.settings import Settings
from services.verification.identity.config import IdentitySettings

EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 12}
CORPORATE = ("/oauth/", "/.well-known/", "/v1/corporate/", "/v1/companies", "/v1/admin/companies")
# Operations a company's token calls (the rest are the back office's, with a staff token).
COMPANY_API = ("/v1/corporate/sims", "/v1/corporate/bulk-uploads")
# The schema's example numbers are on the demo contract, so generated requests also reach real SIMs.
NUMBERS = ["+79161234567", "+79161234568"]


def fuzz_corporate(base: str, company_bearer: dict[str, str]) -> FuzzReport:
    report = FuzzReport()
    exercise(
        fetch_schema(base),
        base,
        report,
        headers=lambda path: company_bearer if path.startswith(COMPANY_API) else dict(AUTH),
        include=lambda path: path.startswith(CORPORATE),
        examples=EXAMPLES,
    )
    return report


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
        report = await asyncio.to_thread(fuzz_corporate, base, bearer)
    examples = report.examples
    print("schemathesis:", examples)
    assert not report.failures, report.summary()
    # Every corporate operation of the schema, both modes (a new route joins by its path prefix).
    assert len(examples) >= 2 * 20, examples
    assert report.positive_ran_everywhere(), examples
