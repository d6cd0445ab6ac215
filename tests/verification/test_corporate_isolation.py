"""Tenant isolation through every company endpoint (real PostgreSQL/NATS, the app in process): company A
cannot read, bind, rebind, unbind, upload over or detect company B's numbers or jobs. Each of B's numbers
answers A exactly like a number that is on nobody's contract (status and body), and nothing of B's
changes; a token's scopes confine what its client may do."""

from __future__ import annotations

import csv
import io
import urllib.parse
import uuid
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient
from support.corporate_api import GAZPROM, SBER, bearer, get_token, onboard
from support.polling import until

A_NUMBER, B_DEVICE, B_PERSON, NOWHERE = "+79161250001", "+79161259001", "+79161259002", "+79161255555"
UPLOADS = "/v1/corporate/bulk-uploads"
METER = {
    "device": {
        "type": "meter",
        "name": "Меркурий 234",
        "imei": "490154203237518",
        "installation_address": "Москва, Тверская 1",
        "use_from": "2026-12-15",
    }
}
TRACKER = {"device": {"type": "tracker", "name": "GPS", "mac": "00-1a-2b-3c-4d-5e"}}
EMPLOYEE = {
    "employee": {
        "last_name": "Иванов",
        "first_name": "Иван",
        "middle_name": "Иванович",
        "birth_date": "1985-04-12",
        "passport_series": "4510",
        "passport_number": "123456",
        "passport_issue_date": "2010-05-20",
        "passport_issuer_code": "770-001",
    }
}


async def finished(client: AsyncTestClient[Any], location: str, auth: dict[str, str]) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        job = (await client.get(location, headers=auth)).json()
        return job if job["state"] in ("done", "failed") else None

    job: dict[str, Any] = await until(done, timeout=120, interval=0.1)
    return job


async def report(client: AsyncTestClient[Any], url: str, auth: dict[str, str]) -> list[list[str]]:
    response = await client.get(url, headers=auth)
    assert response.status_code == 200, response.text
    return list(csv.reader(io.StringIO(response.text)))[1:]


async def test_company_a_cannot_touch_or_detect_company_bs_numbers(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    _, a_id, a_secret = await onboard(client, SBER, [A_NUMBER])
    _, b_id, b_secret = await onboard(client, GAZPROM, [B_DEVICE, B_PERSON])
    a = bearer((await get_token(client, a_id, a_secret))["access_token"])
    b = bearer((await get_token(client, b_id, b_secret))["access_token"])
    # B's numbers are in every state a binding can have: bound to a device, awaiting an employee.
    assert (
        await client.post(f"/v1/corporate/sims/{B_DEVICE}/binding", json=METER, headers=b)
    ).status_code == 200
    assert (
        await client.post(f"/v1/corporate/sims/{B_PERSON}/binding", json=EMPLOYEE, headers=b)
    ).status_code == 200
    b_before = (await client.get("/v1/corporate/sims", headers=b)).json()["items"]
    b_rows = await db.fetch("select * from verification.sims order by id")

    async def answers(number: str) -> list[tuple[str, int, Any]]:
        path = f"/v1/corporate/sims/{urllib.parse.quote(number)}"
        calls = [
            ("read", client.get(path, headers=a)),
            ("bind a device", client.post(f"{path}/binding", json=TRACKER, headers=a)),
            ("bind an employee", client.post(f"{path}/binding", json=EMPLOYEE, headers=a)),
            ("rebind to the same device", client.put(f"{path}/binding", json=METER, headers=a)),
            ("rebind to a device", client.put(f"{path}/binding", json=TRACKER, headers=a)),
            ("rebind to an employee", client.put(f"{path}/binding", json=EMPLOYEE, headers=a)),
            ("unbind", client.delete(f"{path}/binding", headers=a)),
            ("find by number", client.get("/v1/corporate/sims", params={"number": number}, headers=a)),
        ]
        out = []
        for label, call in calls:
            response = await call
            out.append((label, response.status_code, response.json()))
        return out

    for number in (B_DEVICE, B_PERSON):
        foreign = await answers(number)
        assert foreign == await answers(NOWHERE), number
        assert [status for _, status, _ in foreign] == [404] * 7 + [200]
        assert {str(body) for _, _, body in foreign[:7]} == {
            str(
                {
                    "error": {
                        "code": "sim_not_found",
                        "message": "No SIM with this number on your contract",
                        "field": "number",
                    }
                }
            )
        }
        assert foreign[-1][2]["items"] == []
    # Filters over A's own list never reach B's SIMs.
    for params in (
        {"status": "pending_submission"},
        {"binding": "employee"},
        {"deadline_before": "2030-01-01T00:00:00Z"},
    ):
        listed = (await client.get("/v1/corporate/sims", params=params, headers=a)).json()["items"]
        assert all(s["number"] == A_NUMBER for s in listed), params

    # A bulk file naming B's numbers: each row refused exactly like a number on nobody's contract.
    body = "number,kind,device_type,device_name,mac\n" + "".join(
        f"{n},device,tracker,GPS,00:1a:2b:3c:4d:{i:02x}\n"
        for i, n in enumerate((B_DEVICE, NOWHERE, B_PERSON))
    )
    posted = await client.post(UPLOADS, content=body.encode(), headers={**a, "Content-Type": "text/csv"})
    assert posted.status_code == 202, posted.text
    job = await finished(client, posted.headers["location"], a)
    rows = await report(client, job["report_url"], a)
    assert [r[1:] for r in rows] == [["error", "number", "No SIM with this number on your contract"]] * 3
    # Nothing of anybody's changed by A's calls: every SIM row (versions, deadlines, bindings) as it was.
    assert await db.fetch("select * from verification.sims order by id") == b_rows
    assert (await client.get("/v1/corporate/sims", headers=b)).json()["items"] == b_before
    on_b = await db.fetch(
        "select distinct t.actor from verification.sim_timeline t join verification.sims s on s.id = t.sim_id"
        " join verification.companies c on c.id = s.company_id where c.inn = $1",
        GAZPROM["inn"],
    )
    assert f"client:{a_id}" not in {r["actor"] for r in on_b}

    # B's jobs and reports are A's "no such job".
    b_job = await client.post(UPLOADS, content=body.encode(), headers={**b, "Content-Type": "text/csv"})
    assert b_job.status_code == 202, b_job.text
    b_done = await finished(client, b_job.headers["location"], b)
    theirs = await client.get(b_job.headers["location"], headers=a)
    nobody = await client.get(f"{UPLOADS}/{uuid.uuid4()}", headers=a)
    assert (theirs.status_code, theirs.json()) == (nobody.status_code, nobody.json())
    assert theirs.status_code == 404
    their_report = await client.get(b_done["report_url"], headers=a)
    no_report = await client.get(f"{UPLOADS}/{uuid.uuid4()}/report.csv", headers=a)
    assert (their_report.status_code, their_report.json()) == (no_report.status_code, no_report.json())
    assert their_report.status_code == 404


async def test_scopes_confine_each_endpoint(client: AsyncTestClient[Any]) -> None:
    _, reader_id, reader_secret = await onboard(client, SBER, [A_NUMBER], ["corporate-sims:read"])
    _, writer_id, writer_secret = await onboard(client, GAZPROM, [B_DEVICE], ["corporate-sims:write"])
    reader = bearer((await get_token(client, reader_id, reader_secret))["access_token"])
    writer = bearer((await get_token(client, writer_id, writer_secret))["access_token"])
    # A client cannot get a token for a scope it was not given.
    refused = await client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": reader_id,
            "client_secret": reader_secret,
            "scope": "corporate-sims:write",
        },
    )
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_scope")
    csv_body = {"content": b"number,kind\n", "headers": {"Content-Type": "text/csv"}}
    for label, headers, call, needed in [
        ("read with write only", writer, ("GET", f"/v1/corporate/sims/{B_DEVICE}", {}), "read"),
        ("list with write only", writer, ("GET", "/v1/corporate/sims", {}), "read"),
        (
            "job with read only (the uploader's scope)",
            reader,
            ("GET", f"{UPLOADS}/{uuid.uuid4()}", {}),
            "write",
        ),
        (
            "bind with read only",
            reader,
            ("POST", f"/v1/corporate/sims/{A_NUMBER}/binding", {"json": TRACKER}),
            "write",
        ),
        (
            "rebind with read only",
            reader,
            ("PUT", f"/v1/corporate/sims/{A_NUMBER}/binding", {"json": TRACKER}),
            "write",
        ),
        ("unbind with read only", reader, ("DELETE", f"/v1/corporate/sims/{A_NUMBER}/binding", {}), "write"),
        ("upload with read only", reader, ("POST", UPLOADS, csv_body), "write"),
    ]:
        method, path, kwargs = call
        answer = await client.request(
            method, path, headers={**headers, **kwargs.pop("headers", {})}, **kwargs
        )
        assert answer.status_code == 403, (label, answer.text)
        assert answer.json()["error"]["code"] == "insufficient_scope", label
        challenge = answer.headers["www-authenticate"]
        assert challenge.startswith("Bearer "), label
        assert 'error="insufficient_scope"' in challenge, label
        assert f'scope="corporate-sims:{needed}"' in challenge, label
