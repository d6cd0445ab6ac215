"""The public widget API and the admin API against real PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient
from support.callback_api import ADMIN, ask, offered_slots, put_site, sign_in_agent, site_body
from support.harness import running_service

from services.common.settings import Settings

Client = AsyncTestClient[Any]


def assert_error(response: Any, status: int, code: str, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    if field is not None:
        assert body["error"]["field"] == field, body


async def test_admin_api_needs_the_token_and_validates_settings(client: Client) -> None:
    assert_error(await client.put("/v1/admin/sites/shop", json=site_body()), 401, "unauthorized")
    assert_error(
        await client.put("/v1/admin/sites/shop", json=site_body(timezone="Mars/Base"), headers=ADMIN),
        400,
        "invalid_request",
        "timezone",
    )
    assert_error(
        await client.put("/v1/admin/sites/shop", json=site_body(allowed_countries=["XX"]), headers=ADMIN),
        400,
        "invalid_request",
        "allowed_countries",
    )
    created = await client.put("/v1/admin/sites/shop", json=site_body(), headers=ADMIN)
    assert created.status_code == 201
    again = await client.put("/v1/admin/sites/shop", json=site_body(name="Renamed"), headers=ADMIN)
    assert again.status_code == 200
    listed = await client.get("/v1/admin/sites", headers=ADMIN)
    assert [s["settings"]["name"] for s in listed.json()] == ["Renamed"]


async def test_offer_promises_within_seconds_when_agents_are_free(client: Client) -> None:
    await put_site(client)
    await sign_in_agent(client)
    offer = await client.get("/v1/sites/shop/offer", params={"tz": "Asia/Novosibirsk", "lang": "en"})
    assert offer.status_code == 200
    body = offer.json()
    assert body["open_now"] is True
    promise = body["promise"]
    assert promise["kind"] == "asap"
    assert promise["text"].startswith("We'll call you within")
    latest = dt.datetime.fromisoformat(promise["latest"])
    assert latest - dt.datetime.now(dt.UTC) < dt.timedelta(minutes=2), "hot leads: called within 1-2 minutes"
    assert offered_slots(body), "visitors may also choose a later time"
    assert_error(
        await client.get("/v1/sites/shop/offer", params={"tz": "Nowhere/City"}), 400, "invalid_timezone", "tz"
    )
    assert_error(await client.get("/v1/sites/nope/offer"), 404, "site_not_found")


async def test_offer_outside_working_hours_promises_the_next_opening(client: Client) -> None:
    open_day = (dt.datetime.now(dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=3))).weekday() + 2) % 7
    day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[open_day]
    await put_site(
        client, working_hours={day: [["09:00", "18:00"]]}, calling_window={"start": "09:00", "end": "21:00"}
    )
    body = (await client.get("/v1/sites/shop/offer", params={"tz": "Europe/Moscow", "lang": "ru"})).json()
    assert body["open_now"] is False
    earliest = dt.datetime.fromisoformat(body["promise"]["earliest"]).astimezone(
        dt.timezone(dt.timedelta(hours=3))
    )
    assert (earliest.weekday(), earliest.hour, earliest.minute) == (open_day, 9, 0)
    assert "09:00" in body["promise"]["text"]


async def test_request_lifecycle_starts_scheduled_with_status_and_events(
    client: Client, db: asyncpg.Connection
) -> None:
    await put_site(client)
    created = await ask(client, page_url="https://shop.example/p/1", utm={"source": "ya"}, visitor_id="v-1")
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "scheduled"
    status = await client.get(f"/v1/callbacks/{body['id']}", headers={"X-Status-Token": body["status_token"]})
    assert status.status_code == 200
    assert status.json()["status"] == "scheduled"
    # Nobody is signed in: the promise is the schedule's next shift (the test site's starts at midnight).
    assert status.json()["text"] == "We'll call you tomorrow at 00:00 your time"
    # Wrong or missing token: indistinguishable from a missing request.
    assert_error(await client.get(f"/v1/callbacks/{body['id']}?token=wrong"), 404, "callback_not_found")
    assert_error(await client.get(f"/v1/callbacks/{uuid.uuid4()}?token=x"), 404, "callback_not_found")
    # The phone is encrypted at rest; only a masked form is readable.
    row = await db.fetchrow(
        "select phone_enc, phone_masked from callback.callbacks where id = $1", uuid.UUID(body["id"])
    )
    assert row is not None
    assert b"79123456789" not in row["phone_enc"]
    assert row["phone_masked"] == "+7912*****89"
    subjects = [r["subject"] for r in await db.fetch("select subject from callback.outbox order by seq")]
    assert subjects == ["callback.requested", "callback.scheduled"]
    assert await db.fetchval("select count(*) from callback.promises") == 1


async def test_second_request_for_same_phone_joins_it_without_revealing_or_controlling_it(
    client: Client, db: asyncpg.Connection
) -> None:
    await put_site(client)
    first = (await ask(client, phone="+79123456789")).json()
    other = (await ask(client, phone="+79990001122")).json()
    again = await ask(client, phone="8 (912) 345-67-89")
    # The same answer as a fresh acceptance: 201, the same fields, an id of its own.
    assert again.status_code == 201, again.text
    joined = again.json()
    assert set(joined) == set(other) == {"id", "status_token", "status", "promise"}
    assert joined["status"] == "scheduled"
    assert joined["id"] not in (first["id"], other["id"])
    assert joined["promise"]["latest"] == first["promise"]["latest"], "the call keeps its first promise"
    original = f"/v1/callbacks/{first['id']}"
    mine = f"/v1/callbacks/{joined['id']}"
    # The second caller's token neither opens, cancels nor moves the original request.
    assert_error(await client.get(f"{original}?token={joined['status_token']}"), 404, "callback_not_found")
    refused = await client.post(f"{original}/cancel", headers={"X-Status-Token": joined["status_token"]})
    assert_error(refused, 404, "callback_not_found")
    moved = await client.post(
        f"{mine}/reschedule", json={"not_before": "20:00"}, headers={"X-Status-Token": joined["status_token"]}
    )
    assert_error(moved, 409, "not_reschedulable")
    # It follows the one call to that number and can withdraw only itself.
    assert (await client.get(f"{mine}?token={joined['status_token']}")).json()["status"] == "scheduled"
    withdrawn = await client.post(f"{mine}/cancel", headers={"X-Status-Token": joined["status_token"]})
    assert withdrawn.status_code == 200, withdrawn.text
    assert withdrawn.json()["status"] == "cancelled"
    assert withdrawn.json()["id"] == joined["id"]
    assert (await client.get(f"{original}?token={first['status_token']}")).json()["status"] == "scheduled"
    assert (
        await db.fetchval("select status from callback.callbacks where id = $1", uuid.UUID(first["id"]))
        == "scheduled"
    )
    # The join is recorded for the back office, and the repeat spent its form like any request.
    subjects = [r["subject"] for r in await db.fetch("select subject from callback.outbox order by seq")]
    assert subjects.count("callback.merged") == 1
    assert await db.fetchval("select count(*) from callback.spent_form_tokens") == 3
    order = [r["id"] for r in await db.fetch("select id from callback.callbacks order by requested_at")]
    assert order == [uuid.UUID(first["id"]), uuid.UUID(other["id"])], "original request time keeps the order"


async def test_a_repeat_for_a_pending_phone_spends_its_form_and_passes_the_budgets(client: Client) -> None:
    await put_site(client, abuse={"min_fill_ms": 0, "per_ip_10min": 2, "per_phone_day": 50, "daily_cap": 100})
    offer = (await client.get("/v1/sites/shop/offer")).json()
    body = {"phone": "+79123456789", "visitor_tz": "Europe/Moscow", "consent": True, "lang": "en"}
    form = {**body, "form_token": offer["form_token"]}
    assert (await client.post("/v1/sites/shop/callbacks", json=form)).status_code == 201
    # The same form again, now for the pending number: spent, not joined.
    assert_error(
        await client.post("/v1/sites/shop/callbacks", json=form),
        400,
        "form_token_spent",
        "form_token",
    )
    assert (await ask(client, phone="+79123456789")).status_code == 201
    # Repeats count towards the per-IP budget like new requests.
    assert_error(await ask(client, phone="+79123456789"), 429, "rate_limited")


async def test_idempotency_key_replays_and_conflicts(client: Client, db: asyncpg.Connection) -> None:
    await put_site(client)
    offer = (await client.get("/v1/sites/shop/offer")).json()
    body = {
        "phone": "+79123456789",
        "visitor_tz": "Europe/Moscow",
        "consent": True,
        "form_token": offer["form_token"],
    }
    first = await client.post("/v1/sites/shop/callbacks", json=body, headers={"Idempotency-Key": "k1"})
    replay = await client.post("/v1/sites/shop/callbacks", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == replay.status_code == 201
    assert first.json() == replay.json()
    assert await db.fetchval("select count(*) from callback.callbacks") == 1
    conflict = await client.post(
        "/v1/sites/shop/callbacks", json={**body, "lang": "en"}, headers={"Idempotency-Key": "k1"}
    )
    assert_error(conflict, 409, "idempotency_conflict")


async def test_bad_input_gets_clear_errors_and_writes_nothing(client: Client, db: asyncpg.Connection) -> None:
    await put_site(client, allowed_countries=["RU"])
    assert_error(await ask(client, phone="12345"), 400, "invalid_phone", "phone")
    assert_error(await ask(client, phone="+7 701 123 45 67"), 400, "unsupported_country", "phone")
    assert_error(await ask(client, consent=False), 400, "consent_required", "consent")
    assert_error(await ask(client, visitor_tz="Not/AZone"), 400, "invalid_request", "visitor_tz")
    assert_error(await ask(client, not_before="25:99"), 400, "invalid_request", "not_before")
    assert_error(await ask(client, slot_start="2030-01-01T09:00:00+03:00"), 400, "invalid_slot", "slot_start")
    assert_error(await ask(client, surprise=1), 400, "invalid_request")
    assert_error(await ask(client, form_token="forged.token"), 400, "form_token_invalid", "form_token")
    raw = await client.post(
        "/v1/sites/shop/callbacks", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(raw, 400, "invalid_request")
    huge = await client.post(
        "/v1/sites/shop/callbacks",
        content=b"{" + b" " * 200_000 + b"}",
        headers={"content-type": "application/json"},
    )
    assert_error(huge, 413, "body_too_large")
    assert await db.fetchval("select count(*) from callback.callbacks") == 0
    assert await db.fetchval("select count(*) from callback.outbox") == 0


async def test_bots_are_refused(client: Client, db: asyncpg.Connection) -> None:
    await put_site(client, abuse={"min_fill_ms": 60000})
    assert_error(await ask(client), 403, "bot_suspected", "form_token")
    await put_site(client, abuse={"min_fill_ms": 0})
    assert_error(await ask(client, website="http://spam"), 403, "bot_suspected", "website")
    # A spent form token cannot be replayed for another number.
    offer = (await client.get("/v1/sites/shop/offer")).json()
    body = {"visitor_tz": "Europe/Moscow", "consent": True, "form_token": offer["form_token"]}
    ok = await client.post("/v1/sites/shop/callbacks", json={**body, "phone": "+79123456789"})
    assert ok.status_code == 201
    replay = await client.post("/v1/sites/shop/callbacks", json={**body, "phone": "+79123450000"})
    assert_error(replay, 400, "form_token_spent", "form_token")
    assert await db.fetchval("select count(*) from callback.callbacks") == 1


async def test_proof_of_work_when_the_site_asks_for_it(client: Client) -> None:
    await put_site(client, abuse={"min_fill_ms": 0, "proof_of_work_bits": 8})
    offer = (await client.get("/v1/sites/shop/offer")).json()
    assert offer["pow"] == {"bits": 8}
    token = offer["form_token"]
    body = {"phone": "+79123456789", "visitor_tz": "Europe/Moscow", "consent": True, "form_token": token}
    assert_error(await client.post("/v1/sites/shop/callbacks", json=body), 403, "pow_required", "pow_nonce")
    nonce = next(str(n) for n in range(1_000_000) if hashlib.sha256(f"{token}:{n}".encode()).digest()[0] == 0)
    solved = await client.post("/v1/sites/shop/callbacks", json={**body, "pow_nonce": nonce})
    assert solved.status_code == 201, solved.text


async def test_budgets_answer_429_with_retry_after(client: Client, db: asyncpg.Connection) -> None:
    await put_site(client, abuse={"min_fill_ms": 0, "per_ip_10min": 2, "per_phone_day": 50, "daily_cap": 100})
    assert (await ask(client, phone="+79120000001")).status_code == 201
    assert (await ask(client, phone="+79120000002")).status_code == 201
    limited = await ask(client, phone="+79120000003")
    assert_error(limited, 429, "rate_limited")
    assert 0 < int(limited.headers["retry-after"]) <= 600

    await put_site(client, "phone-shop", abuse={"min_fill_ms": 0, "per_ip_10min": 100, "per_phone_day": 2})
    first = (await ask(client, "phone-shop", phone="+79120000010")).json()
    await client.post(f"/v1/callbacks/{first['id']}/cancel?token={first['status_token']}")
    second = (await ask(client, "phone-shop", phone="+79120000010")).json()
    await client.post(f"/v1/callbacks/{second['id']}/cancel?token={second['status_token']}")
    limited = await ask(client, "phone-shop", phone="+79120000010")
    assert_error(limited, 429, "rate_limited", "phone")
    assert int(limited.headers["retry-after"]) > 3600

    await put_site(client, "tiny-shop", abuse={"min_fill_ms": 0, "per_ip_10min": 100, "daily_cap": 1})
    assert (await ask(client, "tiny-shop", phone="+79120000020")).status_code == 201
    assert_error(await ask(client, "tiny-shop", phone="+79120000021"), 429, "rate_limited")
    refused = (await client.get("/metrics")).text
    assert 'abonent_callback_refused_total{reason="rate_limited"}' in refused
    # Refused attempts are not stored as requests.
    assert await db.fetchval("select count(*) from callback.callbacks where site_key = 'tiny-shop'") == 1


async def test_cors_only_for_the_sites_origins(client: Client) -> None:
    await put_site(client, allowed_origins=["https://shop.example"])
    allowed = await client.get("/v1/sites/shop/offer", headers={"Origin": "https://shop.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
    preflight = await client.options(
        "/v1/sites/shop/callbacks",
        headers={
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, idempotency-key",
        },
    )
    assert preflight.status_code == 204
    assert "idempotency-key" in preflight.headers["access-control-allow-headers"]
    denied = await client.get("/v1/sites/shop/offer", headers={"Origin": "https://evil.example"})
    assert_error(denied, 403, "origin_not_allowed")
    assert "access-control-allow-origin" not in denied.headers
    created = (await ask(client, headers={"Origin": "https://shop.example"})).json()
    status = await client.get(
        f"/v1/callbacks/{created['id']}?token={created['status_token']}",
        headers={"Origin": "https://evil.example"},
    )
    assert_error(status, 403, "origin_not_allowed")


async def test_cancel_and_reschedule(client: Client, db: asyncpg.Connection) -> None:
    await put_site(client)
    created = (await ask(client)).json()
    token = {"X-Status-Token": created["status_token"]}
    offer = (await client.get("/v1/sites/shop/offer")).json()
    slot = offered_slots(offer)[3]
    moved = await client.post(
        f"/v1/callbacks/{created['id']}/reschedule", json={"slot_start": slot["start"]}, headers=token
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["promise"]["kind"] == "scheduled"
    assert dt.datetime.fromisoformat(moved.json()["promise"]["earliest"]) == dt.datetime.fromisoformat(
        slot["start"]
    )
    requested_at = await db.fetchval("select requested_at from callback.callbacks")
    assert requested_at < dt.datetime.fromisoformat(slot["start"]), "keeps its original place"
    cancelled = await client.post(f"/v1/callbacks/{created['id']}/cancel", headers=token)
    assert cancelled.json()["status"] == "cancelled"
    assert_error(
        await client.post(f"/v1/callbacks/{created['id']}/cancel", headers=token), 409, "already_finished"
    )
    subjects = [r["subject"] for r in await db.fetch("select subject from callback.outbox order by seq")]
    assert subjects[-2:] == ["callback.scheduled", "callback.cancelled"]


async def test_status_stream_pushes_changes(settings: Settings, tmp_path: Path) -> None:
    """Over real HTTP: the in-process test client buffers whole responses, so SSE needs a real server."""
    async with (
        running_service(settings, "callback", tmp_path) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        await put_site(http)
        created = (await ask(http, phone="+79123456789")).json()
        seen: list[str] = []
        first_seen = asyncio.Event()

        async def read_stream() -> None:
            url = f"/v1/callbacks/{created['id']}/events?token={created['status_token']}"
            async with http.stream("GET", url) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        seen.append(json.loads(line[5:])["status"])
                        first_seen.set()
                        if seen[-1] == "cancelled":
                            return

        reader = asyncio.create_task(read_stream())
        await asyncio.wait_for(first_seen.wait(), 15)
        await http.post(f"/v1/callbacks/{created['id']}/cancel?token={created['status_token']}")
        await asyncio.wait_for(reader, 15)
        assert seen == ["scheduled", "cancelled"]


async def test_openapi_documents_every_endpoint(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    for path in (
        "/v1/sites/{site_key}/offer",
        "/v1/sites/{site_key}/callbacks",
        "/v1/sites/{site_key}/config",
        "/v1/callbacks/{callback_id}",
        "/v1/callbacks/{callback_id}/events",
        "/v1/callbacks/{callback_id}/cancel",
        "/v1/callbacks/{callback_id}/reschedule",
        "/v1/admin/sites/{site_key}",
        "/v1/admin/sites",
    ):
        assert path in schema["paths"], path
    create = schema["paths"]["/v1/sites/{site_key}/callbacks"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["examples"]
    assert create["responses"]["201"]["content"]["application/json"]["examples"]
    assert schema["paths"]["/v1/sites/{site_key}/offer"]["get"]["responses"]["200"]["content"][
        "application/json"
    ]["examples"]


@pytest.mark.parametrize(
    "payload", [b"[]", b"null", b'{"phone": 5}', b'{"phone": "", "visitor_tz": ""}', b"\xff"]
)
async def test_no_input_produces_a_500(client: Client, payload: bytes) -> None:
    await put_site(client)
    response = await client.post(
        "/v1/sites/shop/callbacks", content=payload, headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500
    assert "error" in response.json()
