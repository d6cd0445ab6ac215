"""The subscriber's path end to end over HTTP (page → sandbox ESIA → callback → outcome) and the timers
driven by a manual clock across two replicas and a restart: reminders, suspension, late confirmation."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import urllib.parse
from typing import Any

import asyncpg
from fakes.fake_billing import FakeBilling
from litestar.testing import AsyncTestClient
from support.esia_sandbox import Sandbox
from support.harness import migrate_service
from support.polling import until
from support.verification import AUTH, MATCH_CASE, make_app

from services.common.clock import ManualClock
from services.common.settings import Settings
from services.verification.identity.base import SignInStart
from services.verification.identity.config import IdentitySettings
from services.verification.settings import VerificationSettings

IVANOV, PETROVA, SIDOROV, SMITH = "1000000001", "1000000002", "1000000003", "1000000004"
PETROVA_CASE = {
    **MATCH_CASE,
    "msisdn": "+79161234568",
    "last_name": "Петрова",
    "first_name": "Анна",
    "middle_name": "Сергеевна",
    "birth_date": "1990-01-31",
    "passport_series": "4511",
    "passport_number": "654321",
    "passport_issue_date": "2015-03-03",
    "passport_issuer_code": "770-002",
    "lang": "en",
}


def token_of(link: str) -> str:
    return link.rsplit("/", 1)[1]


async def sign_in(
    client: AsyncTestClient[Any], sandbox: Sandbox, token: str, oid: str, decision: str = "allow"
) -> tuple[int, str, str]:
    """Press the button, sign in at the sandbox as `oid`, come back; (status, final path, page text)."""
    started = await client.get(f"/v/{token}/start", follow_redirects=False)
    assert started.status_code == 303, started.text
    query = await sandbox.sign_in(
        SignInStart(authorization_url=started.headers["location"], state=""), oid, decision
    )
    back = await client.get("/v/callback?" + urllib.parse.urlencode(query), follow_redirects=False)
    if back.status_code != 303:
        return back.status_code, "/v/callback", back.text
    result = await client.get(back.headers["location"])
    return result.status_code, back.headers["location"], result.text


async def open_case(client: AsyncTestClient[Any], body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/v1/cases", json=body, headers=AUTH)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_page_then_each_sign_in_outcome(
    client: AsyncTestClient[Any], sandbox: Sandbox, db: asyncpg.Connection
) -> None:
    case = await open_case(client, MATCH_CASE)
    token = token_of(case["link"])
    page = await client.get(f"/v/{token}")
    assert page.status_code == 200
    assert "+7 916 ***-**-67" in page.text
    assert "23:59, 15 декабря" in page.text
    assert "Подтвердить через Госуслуги" in page.text
    assert "script" not in page.text.lower()
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    english = await client.get(f"/v/{token}?lang=en")
    assert "Confirm via Gosuslugi" in english.text

    # Refusing consent keeps the case open and offers to try again.
    status, _path, text = await sign_in(client, sandbox, token, IVANOV, decision="deny")
    assert status == 200
    assert "Вы не дали согласие" in text
    # Another person's account is not confirmed: said plainly.
    status, _path, text = await sign_in(client, sandbox, token, SIDOROV)
    assert "не подтверждена" in text
    # The holder signs in: confirmed; the link is then spent.
    status, _path, text = await sign_in(client, sandbox, token, IVANOV)
    assert "Данные подтверждены" in text, text
    reused = await client.get(f"/v/{token}")
    assert reused.status_code == 410
    assert "уже использована" in reused.text
    # A replayed callback (the same state) is refused with a clear page and audited.
    detail = (await client.get(f"/v1/cases/{case['id']}", headers=AUTH)).json()
    assert detail["case"]["status"] == "confirmed"
    kinds = [e["kind"] for e in detail["timeline"]]
    assert "sign_in_consent_denied" in kinds
    assert "sign_in_account_not_confirmed" in kinds
    assert "sign_in_confirmed" in kinds
    subjects = [r["subject"] for r in await db.fetch("select subject from verification.outbox order by seq")]
    assert subjects == [
        "verification.link_issued",
        "verification.consent_denied",
        "verification.account_not_confirmed",
        "verification.confirmed",
    ]
    # Tokens are never stored: sign-in rows keep only the state and the outcome.
    assert (
        await db.fetchval(
            "select count(*) from verification.sign_ins where code_verifier <> '' or nonce <> ''"
        )
        == 0
    )

    mismatch = await open_case(client, PETROVA_CASE)
    status, _path, text = await sign_in(client, sandbox, token_of(mismatch["link"]), PETROVA)
    assert "The data did not match" in text
    assert "passport series and number" in text
    assert "654322" not in text
    assert "654321" not in text
    read = (await client.get(f"/v1/cases/{mismatch['id']}", headers=AUTH)).json()["case"]
    assert read["status"] == "mismatch"
    assert read["mismatch_fields"] == ["passport_number"]


async def test_forged_replayed_and_cross_browser_returns_are_clear_pages(
    client: AsyncTestClient[Any], sandbox: Sandbox, own: VerificationSettings
) -> None:
    case = await open_case(client, MATCH_CASE)
    token = token_of(case["link"])
    forged = await client.get(f"/v/{token[:-2]}zz")
    assert forged.status_code == 404
    assert "Ссылка не работает" in forged.text
    unknown_state = await client.get("/v/callback?state=nope&code=x")
    assert unknown_state.status_code == 400
    assert "Вход не завершён" in unknown_state.text
    garbage = await client.get("/v/callback?state=&error=server_error&error_description=%00%00")
    assert garbage.status_code in (400, 200)
    started = await client.get(f"/v/{token}/start", follow_redirects=False)
    query = await sandbox.sign_in(
        SignInStart(authorization_url=started.headers["location"], state=""), IVANOV
    )
    # The callback arrives in a browser without our cookie: refused, and the state is spent.
    client.cookies.clear()
    other = await client.get("/v/callback?" + urllib.parse.urlencode(query))
    assert other.status_code == 400
    replay = await client.get("/v/callback?" + urllib.parse.urlencode(query))
    assert replay.status_code == 400
    detail = (await client.get(f"/v1/cases/{case['id']}", headers=AUTH)).json()
    refusals = [e["detail"].get("why") for e in detail["timeline"] if e["kind"] == "sign_in_refused"]
    assert refusals == ["other_browser", "state_replayed"]
    assert detail["case"]["status"] == "open"


async def test_timers_across_two_replicas_and_a_restart_and_a_late_confirmation(  # noqa: PLR0917
    settings: Settings,
    own: VerificationSettings,
    identity: IdentitySettings,
    clock: ManualClock,
    sandbox: Sandbox,
    billing: tuple[FakeBilling, str],
    db: asyncpg.Connection,
) -> None:
    await migrate_service(settings, "verification")
    fake, _url = billing
    replica_a = AsyncTestClient(
        app=make_app(settings, own, identity, clock), base_url=own.verification_public_url
    )
    replica_b = AsyncTestClient(
        app=make_app(settings, own, identity, clock), base_url=own.verification_public_url
    )
    async with replica_a as a:
        async with replica_b as b:
            case = await open_case(a, MATCH_CASE)

            async def timeline_kinds() -> list[str]:
                rows = await db.fetch(
                    "select kind from verification.case_timeline where case_id = $1 order by id", case["id"]
                )
                return [r["kind"] for r in rows]

            def wake() -> None:
                for client in (a, b):
                    client.app.state.runtime.scheduler.wake()

            # 9 Dec 00:00 Moscow is night: the 7-day reminder waits for 09:00 (06:00 UTC).
            clock.set(dt.datetime(2026, 12, 9, 5, 59, tzinfo=dt.UTC))
            wake()
            job = await db.fetchval(
                "select due_at from verification.scheduled_jobs where kind = 'verification.reminder'"
                " and key = $1",
                f"{case['id']}:7",
            )
            assert job == dt.datetime(2026, 12, 9, 6, 0, tzinfo=dt.UTC)
            clock.set(dt.datetime(2026, 12, 9, 6, 0, 30, tzinfo=dt.UTC))
            wake()
            await until(lambda: _count(timeline_kinds, "reminder_due", 1))
        # Replica B restarts (a new process would do the same: timers live in PostgreSQL).
        replica_b = AsyncTestClient(
            app=make_app(settings, own, identity, clock), base_url=own.verification_public_url
        )
        async with replica_b as b:
            clock.set(dt.datetime(2026, 12, 15, 21, 0, 1, tzinfo=dt.UTC))  # just after the deadline
            for client in (a, b):
                client.app.state.runtime.scheduler.wake()
            await until(lambda: _count(timeline_kinds, "billing_suspend", 1))
            await until(lambda: _has(fake, "suspend"))
            kinds = await timeline_kinds()
            assert kinds.count("reminder_due") == 3  # 7, 3 and 1 days before, each once
            assert kinds.count("expired") == 1
            # (The outbox itself is pruned by retention on the same manual clock, so count the timeline.)
            [command] = fake.received
            body = command["raw"]
            timestamp, signature = (
                part.split("=", 1)[1] for part in command["headers"]["x-abonent-signature"].split(",")
            )
            expected = hmac.new(
                b"billing-secret", f"{timestamp}.".encode() + body, hashlib.sha256
            ).hexdigest()
            assert hmac.compare_digest(signature, expected)
            assert command["body"]["msisdn"] == "+79161234567"

            # The page now says the number is suspended; confirming restores it.
            token = token_of(case["link"])
            page = await b.get(f"/v/{token}")
            assert "заблокирован" in page.text
            _status, _path, text = await sign_in(b, sandbox, token, IVANOV)
            assert "Номер снова работает" in text
            await until(lambda: _has(fake, "restore"))
            assert fake.commands() == [("suspend", case["id"]), ("restore", case["id"])]
            status = await db.fetchval("select status from verification.cases where id = $1", case["id"])
            assert status == "restored"
            # Purge after the retention period leaves the outcome and the timeline.
            clock.set(dt.datetime(2027, 3, 20, 12, 0, tzinfo=dt.UTC))
            b.app.state.runtime.scheduler.wake()
            await until(lambda: _count(timeline_kinds, "personal_data_purged", 1))
            row = await db.fetchrow("select * from verification.cases where id = $1", case["id"])
            assert row["holder_enc"] is None
            assert row["msisdn_enc"] is None
            assert row["status"] == "restored"


async def _count(kinds: Any, kind: str, at_least: int) -> bool:
    return bool((await kinds()).count(kind) >= at_least)


async def _has(fake: FakeBilling, command: str) -> bool:
    return any(c == command for c, _ in fake.commands())
