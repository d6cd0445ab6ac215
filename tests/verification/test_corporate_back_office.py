"""The corporate back office on real PostgreSQL/NATS: a company's webhook endpoint (validated, its secret
encrypted, the change audited) and the overview page (companies, overdue SIMs, people over the limit)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient
from support.verification import AUTH

from services.common.clock import ManualClock

COMPANY = {"name": "ПАО Газпром", "inn": "7736050003", "ogrn": "1027700070518"}
SECRET = "a-company-secret-of-some-length"


async def company(client: AsyncTestClient[Any], numbers: list[str]) -> str:
    created = await client.post("/v1/companies", json=COMPANY, headers=AUTH)
    assert created.status_code == 201, created.text
    company_id = str(created.json()["id"])
    added = await client.post(f"/v1/companies/{company_id}/numbers", json={"numbers": numbers}, headers=AUTH)
    assert added.status_code == 200, added.text
    return company_id


async def test_company_webhook_is_validated_encrypted_and_audited(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    company_id = await company(client, ["+79162220001"])
    path = f"/v1/admin/companies/{company_id}/webhook"
    for body, field in [
        ({"url": "ftp://x", "secret": SECRET}, "url"),
        ({"url": "https://hr.example/hooks", "secret": "short"}, "secret"),
    ]:
        refused = await client.put(path, json=body, headers=AUTH)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["field"] == field
    unknown = await client.put(
        "/v1/admin/companies/00000000-0000-4000-8000-000000000000/webhook",
        json={"url": "https://hr.example/hooks", "secret": SECRET},
        headers=AUTH,
    )
    assert unknown.status_code == 404
    assert (
        await client.put(path, json={"url": "https://hr.example/hooks", "secret": SECRET})
    ).status_code == 401

    done = await client.put(path, json={"url": "https://hr.example/hooks", "secret": SECRET}, headers=AUTH)
    assert done.status_code == 200, done.text
    assert done.json() == {"company_id": company_id, "url": "https://hr.example/hooks"}
    stored = await db.fetchval("select secret_enc from verification.company_webhooks")
    assert SECRET.encode() not in stored
    audit = await db.fetchrow("select kind, actor, detail from verification.corporate_audit")
    assert audit["kind"] == "webhook_set"
    assert audit["actor"]
    assert SECRET not in audit["detail"]


async def test_overview_lists_companies_overdue_sims_and_people_over_the_limit(
    client: AsyncTestClient[Any], db: asyncpg.Connection, clock: ManualClock
) -> None:
    await company(client, ["+79162220002", "+79162220003"])
    # One SIM is past its deadline; the other still has time.
    await db.execute(
        "update verification.sims set deadline = $1 where id = (select id from verification.sims limit 1)",
        clock.now() - dt.timedelta(hours=1),
    )
    passport = {"passport_series": "4510", "passport_number": "654321"}
    known = [f"+7916777{i:04d}" for i in range(21)]
    added = await client.post(
        "/v1/corporate/known-numbers", json={**passport, "operator": "МТС", "numbers": known}, headers=AUTH
    )
    assert added.status_code in (200, 201), added.text

    page = await client.get("/back-office/corporate", headers=AUTH)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    companies = html.split('id="companies"')[1].split("</table>")[0]
    assert COMPANY["name"] in companies
    assert "<td>2</td><td>0</td><td>1</td>" in companies  # SIMs, registered, overdue
    overdue = html.split('id="overdue"')[1].split("</table>")[0]
    assert overdue.count("<tr>") == 2  # the header and the one overdue SIM
    # Masked numbers only, on the whole page.
    assert "+79162220002" not in html
    assert "+79162220003" not in html
    over = html.split('id="over-limit"')[1].split("</table>")[0]
    assert "<td>21</td>" in over
    assert "654321" not in html
    assert (
        await db.fetchval("select count(*) from verification.corporate_audit where kind = 'overview_read'")
        == 1
    )
    assert (await client.get("/back-office/corporate")).status_code == 401
