"""Bulk upload of corporate SIM bindings on real PostgreSQL/NATS: a large file with mixed errors and its
report, re-upload idempotency, Windows-1251 with `;`, JSON Lines, each malformed file, tenant isolation."""

from __future__ import annotations

import base64
import codecs
import json
import os
import random
import time
import uuid
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from support.corporate_bulk import put_on_contract
from support.polling import until
from support.verification import AUTH, MATCH_CASE

from services.common.crypto import DataProtector
from services.common.domain_errors import Invalid
from services.common.phone import PhoneRejected, parse_phone
from services.common.settings import Settings
from services.verification.corporate.bulk import MAX_BYTES, bulk_e164

SBER = {"name": "ПАО Сбербанк", "inn": "7707083893", "ogrn": "1027700132195"}
GAZPROM = {"name": "ПАО Газпром", "inn": "7736050003", "ogrn": "1027700070518"}
UPLOADS = "/v1/corporate/bulk-uploads"
CSV = {"Content-Type": "text/csv"}
JSONL = {"Content-Type": "application/jsonl"}


def luhn(body: str) -> str:
    """`body` (14 digits) with its Luhn check digit."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return body + str((10 - total % 10) % 10)


def number(i: int) -> str:
    return f"+7916{5000000 + i:07d}"


async def add_numbers(client: AsyncTestClient[Any], company_id: str, numbers: list[str]) -> None:
    for start in range(0, len(numbers), 1000):
        added = await client.post(
            f"/v1/companies/{company_id}/numbers",
            json={"numbers": numbers[start : start + 1000]},
            headers=AUTH,
        )
        assert added.status_code == 200, added.text


async def onboard(client: AsyncTestClient[Any], data: dict[str, str], first: str) -> dict[str, str]:
    created = await client.post("/v1/companies", json=data, headers=AUTH)
    assert created.status_code == 201, created.text
    company_id = created.json()["id"]
    await add_numbers(client, company_id, [first])
    made = await client.post(f"/v1/companies/{company_id}/clients", json={"name": "HR"}, headers=AUTH)
    assert made.status_code == 201, made.text
    basic = base64.b64encode(f"{made.json()['client_id']}:{made.json()['client_secret']}".encode()).decode()
    issued = await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers={"Authorization": f"Basic {basic}"}
    )
    assert issued.status_code == 200, issued.text
    return {"id": company_id, "Authorization": f"Bearer {issued.json()['access_token']}"}


async def company(client: AsyncTestClient[Any], data: dict[str, str], numbers: list[str]) -> dict[str, str]:
    auth = await onboard(client, data, numbers[0])
    await add_numbers(client, auth["id"], numbers[1:])
    return {"Authorization": auth["Authorization"]}


async def finished(client: AsyncTestClient[Any], location: str, auth: dict[str, str]) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        job = (await client.get(location, headers=auth)).json()
        return job if job["state"] in ("done", "failed") else None

    job = await until(done, timeout=120, interval=0.1)
    assert job["state"] == "done", job
    return job


async def upload(
    client: AsyncTestClient[Any], body: bytes, auth: dict[str, str], headers: dict[str, str] = CSV
) -> dict[str, Any]:
    response = await client.post(UPLOADS, content=body, headers={**auth, **headers})
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"{UPLOADS}/{response.json()['id']}"
    return await finished(client, response.headers["location"], auth)


async def report(client: AsyncTestClient[Any], job: dict[str, Any], auth: dict[str, str]) -> list[list[str]]:
    import csv
    import io

    response = await client.get(job["report_url"], headers=auth)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["row", "outcome", "field", "reason"]
    return rows[1:]


def mixed_file(rows: int) -> tuple[bytes, dict[int, str]]:
    """A device file: every 10th row a kind of error; {row number: the field its error names}."""
    lines = ["number,kind,device_type,device_name,imei,mac,installation_address"]
    errors: dict[int, str] = {}
    for i in range(1, rows + 1):
        imei = luhn(f"35{i:012d}")
        match i % 10:
            case 1:  # a wrong Luhn digit
                bad = imei[:-1] + str((int(imei[-1]) + 1) % 10)
                lines.append(f"{number(i)},device,meter,Меркурий,{bad},,Москва")
                errors[i] = "imei"
            case 2:  # not on the contract
                lines.append(f"{number(rows + i)},device,meter,Меркурий,{imei},,Москва")
                errors[i] = "number"
            case 3:
                lines.append(f"{number(i)},device,toaster,X,{imei},,Москва")
                errors[i] = "device_type"
            case 4:  # stationary without its address
                lines.append(f"{number(i)},device,meter,Меркурий,{imei},,")
                errors[i] = "installation_address"
            case 5:
                lines.append(
                    f"{number(i)},device,tracker,GPS,,00-1a-2b-3c-{i // 256 % 256:02x}-{i % 256:02x},"
                )
            case 6:
                lines.append(f"not-a-number,device,meter,Меркурий,{imei},,Москва")
                errors[i] = "number"
            case _:
                lines.append(f"{number(i)},device,meter,Меркурий {i},{imei},,Москва")
    return ("\r\n".join(lines) + "\r\n").encode(), errors


async def check_mixed(
    client: AsyncTestClient[Any], db: asyncpg.Connection, settings: Settings, rows: int
) -> None:
    auth = await onboard(client, SBER, number(1))
    numbers = [number(i) for i in range(2, rows + 1)]
    await put_on_contract(db, DataProtector.from_settings(settings), uuid.UUID(auth["id"]), numbers)
    a = {"Authorization": auth["Authorization"]}
    body, errors = mixed_file(rows)
    started = time.monotonic()
    job = await upload(client, body, a)
    elapsed = time.monotonic() - started
    valid = rows - len(errors)
    assert (job["total"], job["done"], job["errors"], job["applied"], job["unchanged"]) == (
        rows,
        rows,
        len(errors),
        valid,
        0,
    ), job
    reported = await report(client, job, a)
    assert {int(r[0]): r[2] for r in reported} == errors
    assert all(r[1] == "error" and r[3] for r in reported)
    by_row = {int(r[0]): r[3] for r in reported}
    assert "Luhn" in by_row[1]
    assert by_row[2] == "No SIM with this number on your contract"
    # Applied rows went through the state machine: pending submission, one corpsim.bound event each.
    counts = await db.fetchrow(
        "select count(*) filter (where status = 'pending_submission' and binding = 'device') as bound,"
        " count(*) filter (where status = 'unregistered') as unbound from verification.sims"
    )
    assert (counts["bound"], counts["unbound"]) == (valid, rows - valid)
    events = await db.fetchval("select count(*) from verification.outbox where subject = 'corpsim.bound'")
    assert events == valid
    meter = await client.get(f"/v1/corporate/sims/{number(7)}", headers=a)
    assert meter.json()["device"]["name"] == "Меркурий 7"
    assert meter.json()["status"] == "pending_submission"

    again = await upload(client, body, a)
    assert (again["applied"], again["unchanged"], again["errors"]) == (0, valid, len(errors)), again
    assert sum(r[1] == "unchanged" for r in await report(client, again, a)) == valid
    assert (
        await db.fetchval("select count(*) from verification.outbox where subject = 'corpsim.bound'") == valid
    )
    print(f"{rows} rows: {elapsed:.1f}s")  # shown with -s: how fast the API path was


async def test_bulk_upload_10000_rows_with_mixed_errors_then_idempotent(
    client: AsyncTestClient[Any], db: asyncpg.Connection, settings: Settings
) -> None:
    await check_mixed(client, db, settings, 10_000)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(os.environ.get("ABONENT_BULK_LONG") != "1", reason="ABONENT_BULK_LONG=1 runs it")
async def test_bulk_upload_100000_rows_with_mixed_errors_then_idempotent(
    client: AsyncTestClient[Any], db: asyncpg.Connection, settings: Settings
) -> None:
    await check_mixed(client, db, settings, 100_000)


async def test_cp1251_semicolons_and_dates_as_exported_by_russian_excel(client: AsyncTestClient[Any]) -> None:
    a = await company(client, SBER, [number(1), number(2)])
    text = (
        "Number;Kind;Device_Type;Device_Name;IMEI;Installation_Address\r\n"
        f"{number(1)};device;meter;Счётчик «Меркурий»;{luhn('35000000000001')};"
        "г. Москва, ул. Тверская, д. 1\r\n"
        f"8 916 500-00-02;device;tracker;Трекер;{luhn('35000000000002')};\r\n"
    )
    job = await upload(client, codecs.encode(text, "cp1251"), a)
    assert (job["applied"], job["errors"]) == (2, 0), await report(client, job, a)
    sim = (await client.get(f"/v1/corporate/sims/{number(1)}", headers=a)).json()
    assert sim["device"]["name"] == "Счётчик «Меркурий»"
    assert sim["device"]["installation_address"] == "г. Москва, ул. Тверская, д. 1"
    # The same content in UTF-8 with a BOM and commas is the same rows: nothing changes.
    utf8 = text.replace(";", ",").replace("г. Москва, ул. Тверская, д. 1", '"г. Москва, ул. Тверская, д. 1"')
    again = await upload(client, codecs.BOM_UTF8 + utf8.encode(), a)
    assert (again["applied"], again["unchanged"]) == (0, 2), await report(client, again, a)


async def test_jsonl_with_an_employee_and_a_device(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    a = await company(client, SBER, [number(1), number(2), number(3)])
    employee = {k: v for k, v in MATCH_CASE.items() if k not in ("msisdn", "reason", "lang", "tz")}
    lines = [
        {"number": number(1), "kind": "employee", **employee, "birth_date": "12.04.1985"},
        {
            "number": number(2),
            "kind": "device",
            "device_type": "tracker",
            "device_name": "GPS",
            "mac": "00:1a:2b:3c:4d:5e",
        },
        {"number": number(3), "kind": "employee", **employee, "passport_issuer_code": "77-001"},
    ]
    body = "\n".join(json.dumps(line, ensure_ascii=False) for line in lines).encode()
    job = await upload(client, body, a, JSONL)
    assert (job["applied"], job["errors"]) == (2, 1), job
    assert [(r[0], r[2]) for r in await report(client, job, a)] == [("3", "passport_issuer_code")]
    sim = (await client.get(f"/v1/corporate/sims/{number(1)}", headers=a)).json()
    assert sim["status"] == "pending_employee_confirmation"
    assert sim["confirmation_link"]
    assert await db.fetchval("select count(*) from verification.cases where reason = 'corporate_sim'") == 1
    again = await upload(client, body, a, JSONL)
    assert (again["applied"], again["unchanged"], again["errors"]) == (0, 2, 1), again
    assert await db.fetchval("select count(*) from verification.cases") == 1


async def test_malformed_files_get_one_error_and_nothing_is_applied(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    a = await company(client, SBER, [number(1)])
    good = f"{number(1)},device,tracker,GPS,{luhn('35000000000001')}\n"
    header = "number,kind,device_type,device_name,imei\n"
    cases: list[tuple[bytes, dict[str, str], int, str]] = [
        (codecs.BOM_UTF8 + (header + good).encode() + b"\xff\xfe", CSV, 400, "broken_encoding"),
        (("number,device_type,device_name,imei\n" + good).encode(), CSV, 400, "missing_columns"),
        (("number,kind,colour,device_name,imei\n" + good).encode(), CSV, 400, "unknown_columns"),
        ((header + good + "a,b,c,d,e,f\n").encode(), CSV, 400, "malformed_row"),
        ((header + good + f"{number(2)},device\n" * 100_000).encode(), CSV, 400, "too_many_rows"),
        (b"", CSV, 400, "missing_columns"),
        (header.encode(), CSV, 400, "empty_file"),
        (b'{"number": "+79165000001", "kind": "device"}\n[1]\n', JSONL, 400, "malformed_json"),
        (b'{"number": "+79165000001", "colour": "red"}\n', JSONL, 400, "unknown_columns"),
        (
            '{"number": "+79165000001", "kind": "device", "device_name": "Счётчик"}\n'.encode("cp1251"),
            JSONL,
            400,
            "broken_encoding",
        ),
        ((header + good).encode(), {"Content-Type": "application/json"}, 415, "unsupported_media_type"),
    ]
    for body, headers, status, code in cases:
        response = await client.post(UPLOADS, content=body, headers={**a, **headers})
        assert response.status_code == status, (code, response.text)
        assert response.json()["error"]["code"] == code, response.text
    # Over the byte limit: refused by its length, before it is read.
    response = await client.post(UPLOADS, content=b"number,kind\n" + b"#" * MAX_BYTES, headers={**a, **CSV})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "body_too_large"
    assert await db.fetchval("select count(*) from verification.bulk_jobs") == 0
    assert (await client.get(f"/v1/corporate/sims/{number(1)}", headers=a)).json()["status"] == "unregistered"


async def test_jobs_are_confined_to_the_company(client: AsyncTestClient[Any]) -> None:
    a = await company(client, SBER, [number(1)])
    b = await company(client, GAZPROM, [number(2)])
    job = await upload(
        client,
        f"number,kind,device_type,device_name,mac\n{number(1)},device,tracker,GPS,00:1a:2b:3c:4d:5e\n".encode(),
        a,
    )
    theirs = await client.get(f"{UPLOADS}/{job['id']}", headers=b)
    nobody = await client.get(f"{UPLOADS}/{uuid.uuid4()}", headers=b)
    assert theirs.status_code == nobody.status_code == 404
    assert theirs.json() == nobody.json()
    assert (await client.get(job["report_url"], headers=b)).status_code == 404
    # B's file naming A's number: not on B's contract, like a number nowhere.
    mine = await upload(
        client,
        f"number,kind,device_type,device_name,mac\n{number(1)},device,tracker,GPS,00:1a:2b:3c:4d:5f\n".encode(),
        b,
    )
    assert [r[2:] for r in await report(client, mine, b)] == [
        ["number", "No SIM with this number on your contract"]
    ]
    assert (await client.get(f"/v1/corporate/sims/{number(1)}", headers=a)).json()["device"][
        "mac"
    ] == "00:1A:2B:3C:4D:5E"
    # A read-only token cannot upload.
    read_only = await client.post(
        UPLOADS, content=b"number,kind\n", headers={**CSV, "Authorization": "Bearer x"}
    )
    assert read_only.status_code == 401


async def test_the_20_number_limit_is_counted_for_everyone_in_the_file_in_file_order(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    a = await company(client, SBER, [number(i) for i in range(1, 5)])
    employee = {k: v for k, v in MATCH_CASE.items() if k not in ("msisdn", "reason", "lang", "tz")}
    # Another operator's 18 numbers for this person: two more places, then the limit.
    known = await client.post(
        "/v1/corporate/known-numbers",
        json={
            "passport_series": employee["passport_series"],
            "passport_number": employee["passport_number"],
            "operator": "ПАО МТС",
            "numbers": [f"+7915{7000000 + i:07d}" for i in range(18)],
        },
        headers=AUTH,
    )
    assert known.status_code == 200, known.text
    other = {**employee, "passport_number": "654321"}
    lines = [
        {"number": number(1), "kind": "employee", **employee},
        {"number": number(2), "kind": "employee", **other},  # someone else: not counted with them
        {"number": number(3), "kind": "employee", **employee},
        {"number": number(4), "kind": "employee", **employee},  # the 21st
    ]
    body = "\n".join(json.dumps(line, ensure_ascii=False) for line in lines).encode()
    job = await upload(client, body, a, JSONL)
    assert (job["applied"], job["errors"]) == (3, 1), job
    [refused] = await report(client, job, a)
    assert refused[:3] == ["4", "error", "passport_number"]
    assert "limit is 20" in refused[3]
    assert await db.fetchval("select count(*) from verification.cases where reason = 'corporate_sim'") == 3
    over = await client.get(f"/v1/corporate/sims/{number(4)}", headers=a)
    assert over.json()["status"] == "unregistered"


async def test_rows_replacing_an_employee_binding_end_its_case_row_by_row(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    a = await company(client, SBER, [number(1), number(2)])
    employee = {k: v for k, v in MATCH_CASE.items() if k not in ("msisdn", "reason", "lang", "tz")}
    first = [
        {"number": number(1), "kind": "employee", **employee},
        {"number": number(2), "kind": "employee", **employee},
    ]
    job = await upload(client, "\n".join(json.dumps(x) for x in first).encode(), a, JSONL)
    assert (job["applied"], job["errors"]) == (2, 0), job
    # Number 1 goes to a device, number 2 to another person: each pending case ends with its binding.
    second = [
        {
            "number": number(1),
            "kind": "device",
            "device_type": "tracker",
            "device_name": "GPS",
            "mac": "00:1a:2b:3c:4d:5e",
        },
        {"number": number(2), "kind": "employee", **employee, "passport_number": "654321"},
    ]
    again = await upload(client, "\n".join(json.dumps(x) for x in second).encode(), a, JSONL)
    assert (again["applied"], again["errors"]) == (2, 0), await report(client, again, a)
    device = (await client.get(f"/v1/corporate/sims/{number(1)}", headers=a)).json()
    assert (device["status"], device["binding"]) == ("pending_submission", "device")
    person = (await client.get(f"/v1/corporate/sims/{number(2)}", headers=a)).json()
    assert person["status"] == "pending_employee_confirmation"
    statuses = await db.fetch(
        "select status, count(*) as n from verification.cases group by status order by status"
    )
    assert [(r["status"], r["n"]) for r in statuses] == [("cancelled", 2), ("open", 1)]
    rebound = await db.fetchval("select count(*) from verification.outbox where subject = 'corpsim.bound'")
    assert rebound == 4


def test_the_e164_shortcut_accepts_exactly_what_parse_phone_accepts() -> None:
    rng = random.Random(13)
    samples = [f"+7{rng.randrange(10**9, 10**10)}" for _ in range(5000)]
    samples += ["+79161234567", "+74951234567", "+78001234567", "+77012345678", "+76012345678", "+7916123456"]
    for raw in samples:
        try:
            expected: str | None = parse_phone(raw, ["RU"]).e164
        except PhoneRejected:
            expected = None
        try:
            got: str | None = bulk_e164(raw)
        except Invalid:
            got = None
        assert got == expected, raw
