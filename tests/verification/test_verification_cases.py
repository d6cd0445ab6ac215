"""The case API against real PostgreSQL/NATS: validation, idempotent open, audit, cancel, extend, keys."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from support.harness import TEST_DATA_KEYS, TEST_INDEX_KEY, make_settings
from support.verification import AUTH, LINK_BASE, MATCH_CASE

from services.common import db as dbmod
from services.common.crypto import DataProtector, new_key
from services.common.rotation import rotate_column
from services.common.settings import Settings
from services.verification.app import ENCRYPTED_COLUMNS


def case(**changes: Any) -> dict[str, Any]:
    return {**MATCH_CASE, **changes}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("msisdn", "12345"),
        ("msisdn", "+4930123456"),
        ("birth_date", "2999-01-01"),
        ("birth_date", "not a date"),
        ("passport_series", "451"),
        ("passport_series", "45a0"),
        ("passport_number", "12345"),
        ("passport_issuer_code", "770001"),
        ("passport_issue_date", "2999-01-01"),
        ("reason", "because"),
        ("lang", "de"),
        ("tz", "Mars/Olympus"),
        ("last_name", ""),
        ("last_name", "Robert'); drop table cases;--"),
    ],
)
async def test_every_bad_field_is_a_400_naming_it(
    client: AsyncTestClient[Any], field: str, value: str
) -> None:
    response = await client.post("/v1/cases", json=case(**{field: value}), headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field


async def test_missing_and_unknown_fields_are_named(client: AsyncTestClient[Any]) -> None:
    body = case()
    del body["passport_number"]
    response = await client.post("/v1/cases", json=body, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "passport_number"
    response = await client.post("/v1/cases", json=case(snils="123"), headers=AUTH)
    assert response.status_code == 400
    assert "snils" in response.text


async def test_auth_and_scopes(client: AsyncTestClient[Any]) -> None:
    assert (await client.post("/v1/cases", json=case())).status_code == 401
    assert (await client.get("/v1/cases", headers={"Authorization": "Bearer nope"})).status_code == 401


async def test_open_is_idempotent_per_number_and_key(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    first = await client.post("/v1/cases", json=case(), headers={**AUTH, "Idempotency-Key": "k-1"})
    assert first.status_code == 201, first.text
    opened = first.json()
    assert opened["msisdn"] == "+7 916 ***-**-67"
    assert opened["holder"] == {"name": "Иванов И. И.", "passport": "45** ***456"}
    assert opened["last_day"] == "2026-12-15"
    assert opened["link"].startswith(LINK_BASE + "/")
    assert len(opened["link"]) <= 30
    # The same number again (another reason, no key): the active case comes back.
    again = await client.post("/v1/cases", json=case(reason="outdated_data"), headers=AUTH)
    assert again.status_code == 200
    assert again.json()["id"] == opened["id"]
    # The same key and body: the same case; the same key with another body: 409.
    replay = await client.post("/v1/cases", json=case(), headers={**AUTH, "Idempotency-Key": "k-1"})
    assert replay.status_code == 200
    assert replay.json()["id"] == opened["id"]
    other = await client.post(
        "/v1/cases", json=case(msisdn="+79161234568"), headers={**AUTH, "Idempotency-Key": "k-1"}
    )
    assert other.status_code == 409
    assert other.json()["error"]["field"] == "Idempotency-Key"
    assert await db.fetchval("select count(*) from verification.cases") == 1
    # Nothing personal is stored in the clear.
    row = await db.fetchrow("select * from verification.cases")
    dumped = repr(dict(row))
    for secret in ("123456", "Иванов", "9161234567", "4510"):
        assert secret not in dumped
    # The link was issued through the outbox with the full number for the notifier.
    subjects = await db.fetch("select subject from verification.outbox")
    assert [r["subject"] for r in subjects] == ["verification.link_issued"]


async def test_list_read_cancel_extend_are_audited(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    opened = (await client.post("/v1/cases", json=case(), headers=AUTH)).json()
    other = (
        await client.post("/v1/cases", json=case(msisdn="+79161234568", reason="outdated_data"), headers=AUTH)
    ).json()
    listed = await client.get("/v1/cases", params={"reason": "outdated_data"}, headers=AUTH)
    assert [c["id"] for c in listed.json()] == [other["id"]]
    by_number = await client.get("/v1/cases", params={"msisdn": "8 916 123-45-67"}, headers=AUTH)
    assert [c["id"] for c in by_number.json()] == [opened["id"]]
    bad_filter = await client.get("/v1/cases", params={"status": "weird"}, headers=AUTH)
    assert bad_filter.status_code == 400
    assert bad_filter.json()["error"]["field"] == "status"
    window = await client.get(
        "/v1/cases",
        params={"deadline_from": "2026-12-15T00:00:00Z", "deadline_to": "2026-12-16T00:00:00Z"},
        headers=AUTH,
    )
    assert [c["id"] for c in window.json()] == [opened["id"]]

    extended = await client.post(
        f"/v1/cases/{opened['id']}/extend", json={"days": 5, "reason": "subscriber abroad"}, headers=AUTH
    )
    assert extended.status_code == 200, extended.text
    assert extended.json()["last_day"] == "2026-12-20"
    bad = await client.post(
        f"/v1/cases/{opened['id']}/extend", json={"days": 0, "reason": "x y z"}, headers=AUTH
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["field"] == "days"

    cancelled = await client.post(
        f"/v1/cases/{opened['id']}/cancel", json={"reason": "confirmed in the office"}, headers=AUTH
    )
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = await client.post(f"/v1/cases/{opened['id']}/cancel", json={"reason": "twice"}, headers=AUTH)
    assert again.status_code == 409

    detail = await client.get(f"/v1/cases/{opened['id']}", headers={**AUTH, "X-Audit-Reason": "complaint 42"})
    assert detail.status_code == 200
    timeline = detail.json()["timeline"]
    kinds = [entry["kind"] for entry in timeline]
    assert kinds[:2] == ["opened", "link_issued"]
    assert {"listed", "extended", "cancelled", "read"} <= set(kinds)
    extended_entry = next(e for e in timeline if e["kind"] == "extended")
    assert extended_entry["actor"] == "token:bootstrap" or extended_entry["actor"].startswith("token:")
    assert extended_entry["detail"]["why"] == "subscriber abroad"
    assert timeline[-1]["detail"] == {"why": "complaint 42"}
    assert (
        await client.get("/v1/cases/5b0f3c1e-8a9d-4c2b-9e1f-7a6b5c4d3e2f", headers=AUTH)
    ).status_code == 404
    # Cancelling ends the timers and plans the purge.
    jobs = await db.fetch(
        "select kind from verification.scheduled_jobs where key like $1 order by kind", opened["id"] + "%"
    )
    assert [j["kind"] for j in jobs] == ["verification.purge"]


async def test_schema_documents_the_case_api(client: AsyncTestClient[Any]) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    assert "/v1/cases" in schema["paths"]
    post = schema["paths"]["/v1/cases"]["post"]
    assert "770-001" in json.dumps(post)  # the request example
    assert "/v/{token}" not in schema["paths"]


async def test_keys_rotate_over_case_personal_data(
    client: AsyncTestClient[Any], settings: Settings, db: asyncpg.Connection
) -> None:
    opened = (await client.post("/v1/cases", json=case(), headers=AUTH)).json()
    rotated_settings = make_settings(
        settings.database_url,
        settings.nats_url,
        settings.nats_namespace,
        data_keys=f"{TEST_DATA_KEYS},t2:{new_key()}",
        data_key_id="t2",
        index_key=TEST_INDEX_KEY,
    )
    protector = DataProtector.from_settings(rotated_settings)
    pool = await dbmod.create_pool(settings.database_url, "verification", max_size=2)
    try:
        for column in ENCRYPTED_COLUMNS:
            count = await rotate_column(pool, protector, column)
            # One case: its two columns hold one value each (corporate columns are empty here).
            expected = (1, 0, 0) if column.table == "cases" else (0, 0, 0)
            assert (count.rotated, count.failed, count.remaining) == expected, column.label
    finally:
        await pool.close()
    row = await db.fetchrow("select msisdn_enc, holder_enc from verification.cases")
    assert protector.key_id_of(bytes(row["msisdn_enc"])) == "t2"
    assert protector.key_id_of(bytes(row["holder_enc"])) == "t2"
    # The running service (ring t1 only) can no longer read them; a service with the new ring can.
    assert "Иванов" in protector.decrypt(bytes(row["holder_enc"]), "verification.cases.holder", opened["id"])


async def test_audit_reason_header_reaches_the_timeline(client: AsyncTestClient[Any]) -> None:
    """`X-Audit-Reason` on a list and on a read is the `why` of the audit entries those reads write."""
    opened = (await client.post("/v1/cases", json=case(), headers=AUTH)).json()
    reasoned = {**AUTH, "X-Audit-Reason": "ticket 7 from the call centre"}
    listed = await client.get("/v1/cases", params={"status": "open"}, headers=reasoned)
    assert [c["id"] for c in listed.json()] == [opened["id"]]
    plain = await client.get(f"/v1/cases/{opened['id']}", headers=AUTH)
    detail = await client.get(f"/v1/cases/{opened['id']}", headers=reasoned)
    assert plain.status_code == detail.status_code == 200
    reads = [(e["kind"], e["detail"]) for e in detail.json()["timeline"] if e["kind"] in ("listed", "read")]
    assert reads == [
        ("listed", {"why": "ticket 7 from the call centre"}),
        ("read", {"why": ""}),
        ("read", {"why": "ticket 7 from the call centre"}),
    ]
    too_long = await client.get(f"/v1/cases/{opened['id']}", headers={**AUTH, "X-Audit-Reason": "x" * 201})
    assert too_long.status_code == 400
    # Documented under its header name, so back-office clients know to send it.
    schema = (await client.get("/schema/openapi.json")).json()
    parameters = schema["paths"]["/v1/cases/{case_id}"]["get"]["parameters"]
    assert {"name": "X-Audit-Reason", "in": "header"} in [
        {"name": p["name"], "in": p["in"]} for p in parameters
    ]
