"""Corporate SIM API on real PostgreSQL/NATS: onboarding, OAuth tokens and key rotation, tenant isolation
on every endpoint, device and employee bindings, the employee's ESIA confirmation, the 20-number limit."""

from __future__ import annotations

import base64
import datetime as dt
import json
import urllib.parse
from typing import Any

import asyncpg
import nats.js.errors
import pytest
from litestar.testing import AsyncTestClient
from support.corporate_api import GAZPROM, SBER, bearer, get_token, jwt_part, onboard
from support.esia_sandbox import Sandbox
from support.harness import TEST_DATA_KEYS, TEST_INDEX_KEY, make_settings
from support.polling import until
from support.verification import AUTH, MATCH_CASE

from services.common import bus as busmod
from services.common import db as dbmod
from services.common.clock import ManualClock
from services.common.crypto import DataProtector, new_key
from services.common.events import CorpSimBound, decode_event
from services.common.rotation import rotate_column
from services.common.settings import Settings
from services.verification.app import ENCRYPTED_COLUMNS
from services.verification.identity.base import SignInStart

A_NUMBER, A_OTHER, B_NUMBER, NOWHERE = "+79161230001", "+79161230002", "+79161239001", "+79161235555"
METER = {
    "device": {
        "type": "meter",
        "name": "Меркурий 234",
        "imei": "490154203237518",
        "installation_address": "Москва, Тверская 1",
    }
}
TRACKER = {"device": {"type": "tracker", "name": "GPS", "mac": "00-1a-2b-3c-4d-5e"}}
EMPLOYEE = {
    "employee": {k: v for k, v in MATCH_CASE.items() if k not in ("msisdn", "reason")}
}  # Иванов, whom the sandbox ESIA knows as oid 1000000001
IVANOV, PETROVA = "1000000001", "1000000002"


async def test_company_onboarding_validates_ids_and_numbers(client: AsyncTestClient[Any]) -> None:
    for body, field, code in [
        ({**SBER, "inn": "7707083894"}, "inn", "inn_control_digit"),
        ({**SBER, "inn": "770708389"}, "inn", "inn_length"),
        ({**SBER, "ogrn": "1027700132196"}, "ogrn", "ogrn_control_digit"),
        ({**SBER, "ogrn": "304500116000158"}, "ogrn", "ogrn_control_digit"),
        ({**SBER, "ogrn": "304500116000157"}, "inn", "inn_ogrn_kind_mismatch"),
        ({**SBER, "name": "   "}, "name", "invalid_name"),
    ]:
        response = await client.post("/v1/companies", json=body, headers=AUTH)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["field"] == field
        assert response.json()["error"]["code"] == code
    entrepreneur = {"name": "ИП Иванов", "inn": "500100732259", "ogrn": "304500116000157"}
    created = await client.post("/v1/companies", json=entrepreneur, headers=AUTH)
    assert created.status_code == 201, created.text
    assert created.json()["kind"] == "entrepreneur"
    assert (await client.post("/v1/companies", json=SBER)).status_code == 401
    a, _, _ = await onboard(client, SBER, [A_NUMBER])
    again = await client.post("/v1/companies", json=SBER, headers=AUTH)
    assert again.status_code == 409
    b = (await client.post("/v1/companies", json=GAZPROM, headers=AUTH)).json()["id"]
    added = await client.post(
        f"/v1/companies/{b}/numbers", json={"numbers": [A_NUMBER, "8 916 123-90-01", "12345"]}, headers=AUTH
    )
    assert [(r["outcome"], r["number"]) for r in added.json()["results"]] == [
        ("on_another_contract", A_NUMBER),
        ("added", B_NUMBER),
        ("invalid", "12345"),
    ]
    repeat = await client.post(f"/v1/companies/{a}/numbers", json={"numbers": [A_NUMBER]}, headers=AUTH)
    assert repeat.json()["results"][0]["outcome"] == "already_on_contract"
    assert (await client.get(f"/v1/companies/{a}", headers=AUTH)).json()["sims"] == 1


async def test_tokens_by_basic_and_post_and_their_errors(client: AsyncTestClient[Any]) -> None:
    _, client_id, secret = await onboard(client, SBER, [A_NUMBER])
    issued = await get_token(client, client_id, secret)
    assert issued["token_type"] == "Bearer"
    assert issued["expires_in"] == 600
    assert issued["scope"] == "corporate-sims:read corporate-sims:write"
    header, claims = jwt_part(issued["access_token"], 0), jwt_part(issued["access_token"], 1)
    assert (header["alg"], header["typ"]) == ("ES256", "at+jwt")
    assert claims["client_id"] == client_id
    assert claims["exp"] - claims["iat"] == 600
    jwks = await client.get("/.well-known/jwks.json")
    assert [k["kid"] for k in jwks.json()["keys"]] == [header["kid"]]
    assert "d" not in jwks.json()["keys"][0]
    assert "max-age=300" in jwks.headers["cache-control"]

    by_post = await client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
            "scope": "corporate-sims:read",
        },
    )
    assert by_post.status_code == 200, by_post.text
    assert by_post.json()["scope"] == "corporate-sims:read"
    assert by_post.headers["cache-control"] == "no-store"

    # RFC 6749 §5.2: {"error", "error_description"}, which OAuth client libraries parse; invalid_client
    # is 401 with a Basic challenge however the secret was sent; the rest 400. Never cached.
    basic = {"Authorization": "Basic " + base64.b64encode(f"{client_id}:nope".encode()).decode()}
    credentials = {"client_id": client_id, "client_secret": secret}
    for label, kwargs, status, error in [
        (
            "wrong secret by Basic",
            {"data": {"grant_type": "client_credentials"}, "headers": basic},
            401,
            "invalid_client",
        ),
        (
            "wrong secret in the form",
            {"data": {"grant_type": "client_credentials", "client_id": client_id, "client_secret": "x"}},
            401,
            "invalid_client",
        ),
        (
            "unknown client",
            {"data": {"grant_type": "client_credentials", "client_id": "cs_x", "client_secret": "y"}},
            401,
            "invalid_client",
        ),
        ("no credentials", {"data": {"grant_type": "client_credentials"}}, 401, "invalid_client"),
        (
            "broken Basic",
            {"data": {"grant_type": "client_credentials"}, "headers": {"Authorization": "Basic !!"}},
            401,
            "invalid_client",
        ),
        (
            "password grant",
            {"data": {"grant_type": "password", **credentials}},
            400,
            "unsupported_grant_type",
        ),
        ("no grant_type", {"data": credentials}, 400, "invalid_request"),
        (
            "unknown scope",
            {"data": {"grant_type": "client_credentials", **credentials, "scope": "admin"}},
            400,
            "invalid_scope",
        ),
        ("JSON body", {"json": {"grant_type": "client_credentials", **credentials}}, 400, "invalid_request"),
        (
            "repeated field",
            {
                "content": b"grant_type=client_credentials&grant_type=password",
                "headers": {"Content-Type": "application/x-www-form-urlencoded"},
            },
            400,
            "invalid_request",
        ),
    ]:
        answer = await client.post("/oauth/token", **kwargs)  # type: ignore[arg-type]
        assert (answer.status_code, answer.json()["error"]) == (status, error), (label, answer.text)
        assert set(answer.json()) == {"error", "error_description"}, label
        assert answer.json()["error_description"], label
        assert answer.headers["cache-control"] == "no-store", label
        if status == 401:
            assert answer.headers["www-authenticate"] == 'Basic realm="abonent-corporate", charset="UTF-8"'
        else:
            assert "www-authenticate" not in answer.headers, label
    # The schema documents the exception.
    schema = (await client.get("/schema/openapi.json")).json()
    answers = schema["paths"]["/oauth/token"]["post"]["responses"]
    assert answers["401"]["content"]["application/json"]["schema"]["$ref"].endswith("/TokenError")
    assert answers["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/TokenError")
    assert "RFC 6749" in schema["paths"]["/oauth/token"]["post"]["description"]


async def test_scopes_expiry_and_revocation(client: AsyncTestClient[Any], clock: ManualClock) -> None:
    company_id, reader_id, reader_secret = await onboard(client, SBER, [A_NUMBER], ["corporate-sims:read"])
    reader = (await get_token(client, reader_id, reader_secret))["access_token"]
    assert (await client.get(f"/v1/corporate/sims/{A_NUMBER}", headers=bearer(reader))).status_code == 200
    refused = await client.post(f"/v1/corporate/sims/{A_NUMBER}/binding", json=METER, headers=bearer(reader))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
    assert 'scope="corporate-sims:write"' in refused.headers["www-authenticate"]

    missing = await client.get("/v1/corporate/sims")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer ")
    for bad in ("nope", "a.b.c", reader[:-4] + "AAAA", "Basic " + reader):
        answer = await client.get("/v1/corporate/sims", headers={"Authorization": f"Bearer {bad}"})
        assert answer.status_code == 401, bad
        assert 'error="invalid_token"' in answer.headers["www-authenticate"]
        assert set(answer.json()["error"]) == {"code", "message", "field"}
    # Staff tokens are not company tokens.
    assert (await client.get("/v1/corporate/sims", headers=AUTH)).status_code == 401

    clock.advance(dt.timedelta(seconds=600 + 31))
    expired = await client.get("/v1/corporate/sims", headers=bearer(reader))
    assert expired.status_code == 401
    assert "expired" in expired.json()["error"]["message"]
    assert 'error="invalid_token"' in expired.headers["www-authenticate"]
    # Resource endpoints keep the API's own error shape (only /oauth/token speaks RFC 6749's).
    assert set(expired.json()["error"]) == {"code", "message", "field"}

    fresh = (await get_token(client, reader_id, reader_secret))["access_token"]
    assert (await client.get("/v1/corporate/sims", headers=bearer(fresh))).status_code == 200
    revoked = await client.delete(f"/v1/companies/{company_id}/clients/{reader_id}", headers=AUTH)
    assert revoked.status_code == 204
    assert (await client.get("/v1/corporate/sims", headers=bearer(fresh))).status_code == 401
    again = await client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": reader_id, "client_secret": reader_secret},
    )
    assert (again.status_code, again.json()["error"]) == (401, "invalid_client")


async def test_signing_keys_rotate_with_overlap(client: AsyncTestClient[Any], clock: ManualClock) -> None:
    _, client_id, secret = await onboard(client, SBER, [A_NUMBER])
    first = (await get_token(client, client_id, secret))["access_token"]
    old_kid = jwt_part(first, 0)["kid"]
    # Near the end of the 30-day period the next key is published, but does not sign yet.
    clock.advance(dt.timedelta(days=30) - dt.timedelta(minutes=5))
    before = (await get_token(client, client_id, secret))["access_token"]
    assert jwt_part(before, 0)["kid"] == old_kid
    kids = [k["kid"] for k in (await client.get("/.well-known/jwks.json")).json()["keys"]]
    assert len(kids) == 2
    assert old_kid in kids
    new_kid = next(k for k in kids if k != old_kid)
    # After the JWKS cache lifetime it signs; the old key stays published for the tokens it signed.
    clock.advance(dt.timedelta(minutes=7))
    after = (await get_token(client, client_id, secret))["access_token"]
    assert jwt_part(after, 0)["kid"] == new_kid
    assert (await client.get("/v1/corporate/sims", headers=bearer(before))).status_code == 200
    assert (await client.get("/v1/corporate/sims", headers=bearer(after))).status_code == 200
    kids = {k["kid"] for k in (await client.get("/.well-known/jwks.json")).json()["keys"]}
    assert kids == {old_kid, new_kid}
    # Once every token the old key signed has expired, it is no longer published.
    clock.advance(dt.timedelta(seconds=600 + 31))
    await get_token(client, client_id, secret)
    kids = {k["kid"] for k in (await client.get("/.well-known/jwks.json")).json()["keys"]}
    assert kids == {new_kid}
    assert (await client.get("/v1/corporate/sims", headers=bearer(before))).status_code == 401


async def test_another_companys_number_is_indistinguishable_from_none(client: AsyncTestClient[Any]) -> None:
    _, a_id, a_secret = await onboard(client, SBER, [A_NUMBER])
    _, b_id, b_secret = await onboard(client, GAZPROM, [B_NUMBER])
    a = bearer((await get_token(client, a_id, a_secret))["access_token"])
    b = bearer((await get_token(client, b_id, b_secret))["access_token"])

    async def answers(number: str) -> list[tuple[int, Any]]:
        quoted = urllib.parse.quote(number)
        responses = [
            await client.get(f"/v1/corporate/sims/{quoted}", headers=a),
            await client.post(f"/v1/corporate/sims/{quoted}/binding", json=METER, headers=a),
            await client.put(f"/v1/corporate/sims/{quoted}/binding", json=METER, headers=a),
            await client.post(f"/v1/corporate/sims/{quoted}/binding", json=EMPLOYEE, headers=a),
            await client.put(f"/v1/corporate/sims/{quoted}/binding", json=EMPLOYEE, headers=a),
            await client.delete(f"/v1/corporate/sims/{quoted}/binding", headers=a),
            await client.get("/v1/corporate/sims", params={"number": number}, headers=a),
        ]
        return [(r.status_code, r.json()) for r in responses]

    foreign = await answers(B_NUMBER)
    assert foreign == await answers(NOWHERE)
    assert [status for status, _ in foreign] == [404, 404, 404, 404, 404, 404, 200]
    assert foreign[0][1] == {
        "error": {
            "code": "sim_not_found",
            "message": "No SIM with this number on your contract",
            "field": "number",
        }
    }
    assert foreign[-1][1]["items"] == []
    # Nothing of B's changed, and A's list holds only A's number.
    mine = (await client.get("/v1/corporate/sims", headers=b)).json()["items"]
    assert [(s["number"], s["status"], s["version"]) for s in mine] == [(B_NUMBER, "unregistered", 1)]
    assert [s["number"] for s in (await client.get("/v1/corporate/sims", headers=a)).json()["items"]] == [
        A_NUMBER
    ]


async def test_device_binding_lifecycle_and_bad_input(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    _, client_id, secret = await onboard(client, SBER, [A_NUMBER, A_OTHER])
    a = bearer((await get_token(client, client_id, secret))["access_token"])
    url = f"/v1/corporate/sims/{A_NUMBER}/binding"
    for device, field, code in [
        ({**METER["device"], "imei": "490154203237519"}, "device.imei", "imei_check_digit"),
        ({**METER["device"], "imei": "4901542032375"}, "device.imei", "imei_length"),
        ({**METER["device"], "imei": None, "mac": "00:1A:2B:3C:4D"}, "device.mac", "mac_format"),
        ({**METER["device"], "imei": None, "mac": "FF:FF:FF:FF:FF:FF"}, "device.mac", "mac_multicast"),
        ({**METER["device"], "mac": "00:1A:2B:3C:4D:5E"}, "device.imei", "device_identifier"),
        ({**METER["device"], "type": "toaster"}, "device.type", "invalid_request"),
        (
            {**METER["device"], "installation_address": None},
            "device.installation_address",
            "installation_address_required",
        ),
        ({**METER["device"], "name": "  "}, "device.name", "invalid_device_name"),
    ]:
        response = await client.post(url, json={"device": device}, headers=a)
        assert response.status_code == 400, (device, response.text)
        assert (response.json()["error"]["field"], response.json()["error"]["code"]) == (field, code)
    both = await client.post(url, json={**METER, **EMPLOYEE}, headers=a)
    assert (both.status_code, both.json()["error"]["field"]) == (400, "employee")
    assert (await client.post("/v1/corporate/sims/12345/binding", json=METER, headers=a)).json()["error"][
        "field"
    ] == "number"

    bound = await client.post(url, json=METER, headers=a)
    assert bound.status_code == 200, bound.text
    sim = bound.json()
    assert (sim["status"], sim["binding"], sim["version"]) == ("pending_submission", "device", 2)
    assert sim["device"]["imei"] == "490154203237518"
    assert sim["registration"] == {
        "owner_inn": "7707083893",
        "owner_name": "ПАО Сбербанк",
        "operator_name": "Abonent Mobile",
        "operator_ogrn": "1027700000008",
    }
    again = await client.post(url, json=METER, headers=a)
    assert (again.status_code, again.json()["error"]["code"]) == (409, "sim_already_bound")
    same = await client.put(url, json=METER, headers=a)
    assert (same.status_code, same.json()["version"]) == (200, 2)
    rebound = await client.put(url, json=TRACKER, headers=a)
    assert rebound.json()["device"] == {
        "type": "tracker",
        "name": "GPS",
        "imei": None,
        "mac": "00:1A:2B:3C:4D:5E",
        "installation_address": None,
        "use_from": None,
    }
    unbound = await client.delete(url, headers=a)
    assert (unbound.json()["status"], unbound.json()["binding"], unbound.json()["device"]) == (
        "unregistered",
        None,
        None,
    )
    twice = await client.delete(url, headers=a)
    assert (twice.status_code, twice.json()["error"]["code"]) == (409, "sim_not_bound")
    # PUT on an unbound SIM binds it.
    assert (await client.put(f"/v1/corporate/sims/{A_OTHER}/binding", json=TRACKER, headers=a)).json()[
        "status"
    ] == "pending_submission"

    events = [
        json.loads(r["payload"])
        for r in await db.fetch(
            "select payload from verification.outbox where subject like 'corpsim.%' order by seq"
        )
    ]
    assert [
        (e["type"], e.get("rebound"), e["version"]) for e in events if e["msisdn_masked"].endswith("01")
    ] == [
        ("corpsim.bound.v1", False, 2),
        ("corpsim.bound.v1", True, 3),
        ("corpsim.unbound.v1", None, 4),
    ]
    assert all(A_NUMBER not in json.dumps(e) for e in events)
    filtered = await client.get("/v1/corporate/sims", params={"status": "pending_submission"}, headers=a)
    assert [s["number"] for s in filtered.json()["items"]] == [A_OTHER]
    # Every SIM got its deadline when it was put on the contract (10 working days from Monday 30 Nov).
    dated = await client.get(
        "/v1/corporate/sims", params={"deadline_before": "2026-12-14T21:00:00Z"}, headers=a
    )
    assert dated.json()["items"] == []
    dated = await client.get(
        "/v1/corporate/sims", params={"deadline_before": "2026-12-14T21:00:01Z"}, headers=a
    )
    assert len(dated.json()["items"]) == 2
    for value in ("-13823", "2026-13-45T25:00Z", "tomorrow"):
        wrong = await client.get("/v1/corporate/sims", params={"deadline_after": value}, headers=a)
        assert (wrong.status_code, wrong.json()["error"]["field"]) == (400, "deadline_after"), value
    paged = await client.get("/v1/corporate/sims", params={"page_size": 1}, headers=a)
    assert (len(paged.json()["items"]), paged.json()["next_page"]) == (1, 2)
    timeline = await db.fetch("select kind, actor from verification.sim_timeline order by id")
    assert [r["kind"] for r in timeline][:7] == [
        "added_to_contract",
        "added_to_contract",
        "deadline_set",
        "deadline_set",
        "bound",
        "rebound",
        "unbound",
    ]
    assert timeline[4]["actor"] == f"client:{client_id}"


async def sign_in(client: AsyncTestClient[Any], sandbox: Sandbox, link: str, oid: str) -> str:
    """The employee opens the link, signs in at the sandbox ESIA as `oid` and comes back; the result page."""
    token = link.rsplit("/", 1)[1]
    started = await client.get(f"/v/{token}/start", follow_redirects=False)
    assert started.status_code == 303, started.text
    query = await sandbox.sign_in(SignInStart(authorization_url=started.headers["location"], state=""), oid)
    back = await client.get("/v/callback?" + urllib.parse.urlencode(query), follow_redirects=False)
    assert back.status_code == 303, back.text
    return str((await client.get(back.headers["location"])).text)


async def test_employee_confirms_through_the_subscriber_flow(
    client: AsyncTestClient[Any], sandbox: Sandbox, db: asyncpg.Connection
) -> None:
    _, client_id, secret = await onboard(client, SBER, [A_NUMBER, A_OTHER])
    a = bearer((await get_token(client, client_id, secret))["access_token"])
    bad = {"employee": {**EMPLOYEE["employee"], "birth_date": "2999-01-01"}}
    refused = await client.post(f"/v1/corporate/sims/{A_NUMBER}/binding", json=bad, headers=a)
    assert (refused.status_code, refused.json()["error"]["field"]) == (400, "employee.birth_date")

    bound = await client.post(f"/v1/corporate/sims/{A_NUMBER}/binding", json=EMPLOYEE, headers=a)
    assert bound.status_code == 200, bound.text
    sim = bound.json()
    assert sim["status"] == "pending_employee_confirmation"
    assert sim["employee"] == {"name": "Иванов И. И.", "passport": "45** ***456"}
    assert sim["confirmation_link"].startswith("https://mf.ru/v/")
    case = await db.fetchrow("select reason, status from verification.cases")
    assert dict(case) == {"reason": "corporate_sim", "status": "open"}
    # The same person binds the second number; a different person there after a PUT replaces it.
    page = await sign_in(client, sandbox, sim["confirmation_link"], IVANOV)
    assert "Данные подтверждены" in page
    confirmed = (await client.get(f"/v1/corporate/sims/{A_NUMBER}", headers=a)).json()
    assert (confirmed["status"], confirmed["confirmation_link"]) == ("pending_submission", None)

    # Someone else signs in for the other number: the binding is rejected with the fields that differ.
    other = (await client.post(f"/v1/corporate/sims/{A_OTHER}/binding", json=EMPLOYEE, headers=a)).json()
    await sign_in(client, sandbox, other["confirmation_link"], PETROVA)
    rejected = (await client.get(f"/v1/corporate/sims/{A_OTHER}", headers=a)).json()
    assert rejected["status"] == "rejected"
    assert rejected["status_reason"].startswith("employee_data_mismatch:")
    assert "full_name" in rejected["status_reason"]
    # Fixing it is a rebind: the old case is cancelled and a new link issued.
    fixed = (await client.put(f"/v1/corporate/sims/{A_OTHER}/binding", json=EMPLOYEE, headers=a)).json()
    assert fixed["status"] == "pending_employee_confirmation"
    assert fixed["confirmation_link"] != other["confirmation_link"]
    statuses = [
        r["status"] for r in await db.fetch("select status from verification.cases order by opened_at, id")
    ]
    assert sorted(statuses) == ["cancelled", "confirmed", "open"]
    # Unbinding cancels the pending case too.
    await client.delete(f"/v1/corporate/sims/{A_OTHER}/binding", headers=a)
    assert await db.fetchval("select count(*) from verification.cases where status = 'open'") == 0
    kinds = [
        json.loads(r["payload"])["type"]
        for r in await db.fetch(
            "select payload from verification.outbox where subject like 'corpsim.%' order by seq"
        )
    ]
    assert kinds == [
        "corpsim.bound.v1",
        "corpsim.status_changed.v1",
        "corpsim.bound.v1",
        "corpsim.status_changed.v1",
        "corpsim.bound.v1",
        "corpsim.unbound.v1",
    ]
    # Personal data is stored encrypted only.
    raw = await db.fetchval(
        "select employee_enc from verification.sims where employee_enc is not null limit 1"
    )
    assert "Иванов".encode() not in raw


async def test_twenty_number_limit_across_companies_and_operators(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    passport = {"passport_series": "4510", "passport_number": "123456"}
    known = [f"+7916555{i:04d}" for i in range(18)]
    added = await client.post(
        "/v1/corporate/known-numbers", json={**passport, "operator": "МТС", "numbers": known}, headers=AUTH
    )
    assert added.json() == {"added": 18, "total_for_person": 18}
    _, a_id, a_secret = await onboard(client, SBER, [A_NUMBER, A_OTHER])
    _, b_id, b_secret = await onboard(client, GAZPROM, [B_NUMBER])
    a = bearer((await get_token(client, a_id, a_secret))["access_token"])
    b = bearer((await get_token(client, b_id, b_secret))["access_token"])
    assert (
        await client.post(f"/v1/corporate/sims/{A_NUMBER}/binding", json=EMPLOYEE, headers=a)
    ).status_code == 200
    assert (
        await client.post(f"/v1/corporate/sims/{B_NUMBER}/binding", json=EMPLOYEE, headers=b)
    ).status_code == 200
    # Rebinding one of the person's own 20 to them again is not a 21st.
    assert (
        await client.put(f"/v1/corporate/sims/{B_NUMBER}/binding", json=EMPLOYEE, headers=b)
    ).status_code == 200
    refused = await client.post(f"/v1/corporate/sims/{A_OTHER}/binding", json=EMPLOYEE, headers=a)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "number_limit_reached"
    assert refused.json()["error"]["field"] == "employee.passport_number"
    assert "20" in refused.json()["error"]["message"]
    assert (await client.get(f"/v1/corporate/sims/{A_OTHER}", headers=a)).json()["status"] == "unregistered"
    assert await db.fetchval("select count(*) from verification.cases") == 2

    assert (await client.get("/v1/corporate/people-over-limit", headers=AUTH)).json() == []
    await client.post(
        "/v1/corporate/known-numbers",
        json={**passport, "operator": "Билайн", "numbers": ["+79035550001"]},
        headers=AUTH,
    )
    report = (await client.get("/v1/corporate/people-over-limit", headers=AUTH)).json()
    assert len(report) == 1
    assert (report[0]["numbers"], report[0]["limit"], report[0]["name"]) == (21, 20, "Иванов И. И.")
    assert len(report[0]["companies"]) == 2
    assert "4510" not in json.dumps(report)
    # Company tokens cannot read the back office's report.
    assert (await client.get("/v1/corporate/people-over-limit", headers=a)).status_code == 401


async def test_employee_who_never_confirms_is_rejected_at_the_case_deadline(
    client: AsyncTestClient[Any], clock: ManualClock, db: asyncpg.Connection
) -> None:
    _, client_id, secret = await onboard(client, SBER, [A_NUMBER])
    a = bearer((await get_token(client, client_id, secret))["access_token"])
    await client.post(f"/v1/corporate/sims/{A_NUMBER}/binding", json=EMPLOYEE, headers=a)
    clock.advance(dt.timedelta(days=16))
    client.app.state.runtime.scheduler.wake()

    async def rejected() -> bool:
        return bool(await db.fetchval("select status = 'rejected' from verification.sims"))

    await until(rejected)
    sim = (
        await client.get(
            f"/v1/corporate/sims/{A_NUMBER}",
            headers=bearer((await get_token(client, client_id, secret))["access_token"]),
        )
    ).json()
    assert sim["status_reason"] == "employee_not_confirmed"
    # No subscriber suspension: the SIM's own deadline decides that (corporate rules).
    assert await db.fetchval("select status from verification.cases") == "cancelled"
    subjects = [r["subject"] for r in await db.fetch("select subject from verification.outbox order by seq")]
    assert "verification.suspension_due" not in subjects


@pytest.mark.parametrize("path", ["/v1/companies", "/v1/corporate/people-over-limit"])
async def test_back_office_needs_its_scope(client: AsyncTestClient[Any], path: str) -> None:
    assert (await client.get(path)).status_code == 401


async def test_keys_rotate_over_corporate_personal_data_and_signing_keys(
    client: AsyncTestClient[Any], settings: Settings, db: asyncpg.Connection
) -> None:
    company_id, client_id, secret = await onboard(client, SBER, [A_NUMBER])
    a = bearer((await get_token(client, client_id, secret))["access_token"])
    assert (
        await client.post(f"/v1/corporate/sims/{A_NUMBER}/binding", json=EMPLOYEE, headers=a)
    ).status_code == 200
    # The company's webhook signing secret is encrypted too (corporate/back_office.py).
    hook = {"url": "https://hr.example/hooks", "secret": "a-company-secret-of-some-length"}
    assert (
        await client.put(f"/v1/admin/companies/{company_id}/webhook", json=hook, headers=AUTH)
    ).status_code == 200
    rotated = make_settings(
        settings.database_url,
        settings.nats_url,
        settings.nats_namespace,
        data_keys=f"{TEST_DATA_KEYS},t2:{new_key()}",
        data_key_id="t2",
        index_key=TEST_INDEX_KEY,
    )
    protector = DataProtector.from_settings(rotated)
    pool = await dbmod.create_pool(settings.database_url, "verification", max_size=2)
    try:
        for column in ENCRYPTED_COLUMNS:
            count = await rotate_column(pool, protector, column)
            assert (count.rotated, count.failed, count.remaining) == (1, 0, 0), column.label
    finally:
        await pool.close()
    row = await db.fetchrow("select id, employee_enc from verification.sims")
    assert "Иванов" in protector.decrypt(bytes(row["employee_enc"]), "verification.sims.employee", row["id"])
    key = await db.fetchrow("select kid, private_enc from verification.signing_keys")
    assert protector.key_id_of(bytes(key["private_enc"])) == "t2"
    assert '"d"' in protector.decrypt(
        bytes(key["private_enc"]), "verification.signing_keys.private", key["kid"]
    )


async def test_corpsim_events_reach_jetstream(client: AsyncTestClient[Any], bus: busmod.Bus) -> None:
    company_id, client_id, secret = await onboard(client, SBER, [A_NUMBER])
    a = bearer((await get_token(client, client_id, secret))["access_token"])
    sim = (await client.post(f"/v1/corporate/sims/{A_NUMBER}/binding", json=METER, headers=a)).json()

    async def published() -> Any:
        try:
            return await bus.js.get_last_msg(bus.ns.stream("CORPSIM"), bus.ns.subject("corpsim.bound"))
        except nats.js.errors.NotFoundError:
            return None

    message = await until(published)
    event = decode_event(message.data)
    assert isinstance(event, CorpSimBound)
    assert (str(event.company_id), event.state, event.binding, event.version) == (
        company_id,
        "pending_submission",
        "device",
        sim["version"],
    )
    assert event.msisdn_masked == "+7 916 ***-**-01"
