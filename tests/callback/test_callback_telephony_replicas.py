"""Telephony that survives crashes, database blinks and several replicas (issue 9 §5, §7b, §9), end to end
against the ARI and Mango fakes: real PostgreSQL, NATS JetStream and callback processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fakes.fake_ari import EndpointScript, FakeAri, serve_fake_ari
from fakes.fake_mango import FakeMango, MangoScript, serve_fake_mango
from litestar.testing import AsyncTestClient
from support.callback_api import ADMIN, ask, put_site
from support.harness import make_settings, migrate_service, running_service
from support.polling import until

from services.callback.app import create_app
from services.callback.settings import CallbackSettings
from services.common.embedded import EmbeddedNats, EmbeddedPostgres
from services.common.settings import Settings

VISITOR = "+79123456789"
VISITOR_ENDPOINT = "PJSIP/79123456789@trunk"


@pytest.fixture
async def fake() -> AsyncIterator[FakeAri]:
    async with serve_fake_ari() as server:
        yield server


def ari_section(fake: FakeAri, replica: str) -> CallbackSettings:
    return CallbackSettings(
        telephony="asterisk",
        ari_url=fake.base_url,
        ari_user=fake.username,
        ari_password=fake.password,
        ari_replica=replica,
        placing_lease_s=2.0,
    )


def ari_env(fake: FakeAri, **extra: str) -> dict[str, str]:
    return {
        "ABONENT_TELEPHONY": "asterisk",
        "ABONENT_ARI_URL": fake.base_url,
        "ABONENT_ARI_USER": fake.username,
        "ABONENT_ARI_PASSWORD": fake.password,
        "ABONENT_PLACING_LEASE_S": "2",
        **extra,
    }


async def register_agent(http: Any, login: str, endpoint: str) -> None:
    body = {"name": login.title(), "password": "correct horse", "queues": ["default"], "endpoint": endpoint}
    response = await http.put(f"/v1/admin/agents/{login}", json=body, headers=ADMIN)
    assert response.status_code in (200, 201), response.text


async def sign_in(http: Any, login: str, *, ready: bool = True) -> None:
    signed_in = await http.post(
        "/agent/login", data={"login": login, "password": "correct horse"}, follow_redirects=False
    )
    assert signed_in.status_code == 303, signed_in.text
    if ready:
        assert (await http.post("/agent/api/presence", json={"status": "ready"})).status_code == 200


async def event_streams_open(fake: FakeAri, count: int) -> None:
    """Wait for `count` ARI event streams: until one is open the adapter refuses to dial (and the request
    backs off), which on a loaded machine can outlast a test's patience."""

    async def opened() -> bool:
        return fake.websocket_connects >= count

    await until(opened, timeout=60)


def originates_of(fake: FakeAri, attempt_hex: str) -> list[str]:
    return [
        r.query["channelId"]
        for r in fake.requests_to("POST", "/channels")
        if r.query.get("channelId", "").startswith(f"abonent-{attempt_hex}-")
    ]


async def test_a_crash_between_originate_and_the_placed_mark_never_rings_again(
    settings: Settings, db: asyncpg.Connection, fake: FakeAri, tmp_path: Path
) -> None:
    fake.script("PJSIP/101", EndpointScript(outcome="hold"))  # the agent's phone keeps ringing
    async with (
        running_service(
            settings, "callback", tmp_path, **ari_env(fake, ABONENT_FAILPOINTS="dialer.after_originate")
        ) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        await put_site(http)
        await register_agent(http, "olga", "PJSIP/101")
        await sign_in(http, "olga")
        await event_streams_open(fake, 1)
        assert (await ask(http, phone=VISITOR)).status_code == 201

        async def originated() -> bool:
            return bool(fake.requests_to("POST", "/channels"))

        await until(originated)
    # Killed (SIGKILL) right after Asterisk took the originate, before the "placed" mark.
    attempt = await db.fetchrow("select id, state, ordered_at from callback.dial_attempts")
    assert attempt is not None
    assert attempt["state"] == "placing"
    assert attempt["ordered_at"] is not None
    attempt_hex = attempt["id"].hex

    async with running_service(settings, "callback", tmp_path, **ari_env(fake)):

        async def settled() -> bool:
            state = await db.fetchval("select state from callback.dial_attempts where id = $1", attempt["id"])
            return state != "placing"

        await until(settled, timeout=40)
        # A few more recovery passes: none of them may send the order again.
        await asyncio.sleep(1.5)
    assert originates_of(fake, attempt_hex) == [f"abonent-{attempt_hex}-agent"]
    assert fake.rung.count("PJSIP/101") == 1
    assert await db.fetchval("select count(*) from callback.dial_attempts where id = $1", attempt["id"]) == 1


async def test_call_events_survive_a_postgres_restart_and_the_conversation_counts(
    nats_url: str, nats_namespace: str, fake: FakeAri, tmp_path: Path
) -> None:
    fake.script(VISITOR_ENDPOINT, EndpointScript(outcome="hold"))  # the test picks up and hangs up
    postgres = EmbeddedPostgres(tmp_path / "pg", fsync=False).start()
    try:
        settings = make_settings(postgres.url, nats_url, nats_namespace)
        await migrate_service(settings, "callback")
        async with AsyncTestClient(app=create_app(settings, ari_section(fake, "solo"))) as client:
            await put_site(client)
            await register_agent(client, "olga", "PJSIP/101")
            await sign_in(client, "olga")
            await event_streams_open(fake, 1)
            assert (await ask(client, phone=VISITOR)).status_code == 201
            visitor_channel = ""

            async def visitor_ringing() -> bool:
                nonlocal visitor_channel
                found = [c for c in fake.channels.values() if c.endpoint == VISITOR_ENDPOINT]
                visitor_channel = found[0].id if found and found[0].state == "Ringing" else ""
                return bool(visitor_channel)

            await until(visitor_ringing)

            await asyncio.to_thread(postgres.stop)
            # The visitor picks up, they talk, the visitor hangs up - all while PostgreSQL is away.
            await fake.answer_channel(visitor_channel)
            await fake.wait_until(lambda: bool(fake.bridges))
            await asyncio.sleep(1.0)
            await fake.hangup_channel(visitor_channel)
            await fake.wait_until(lambda: not fake.channels)
            await asyncio.sleep(1.5)
            await asyncio.to_thread(postgres.start)

            conn = await asyncpg.connect(postgres.url)
            try:

                async def completed() -> bool:
                    status = await conn.fetchval("select status from callback.callbacks")
                    return bool(status == "completed")

                await until(completed, timeout=60)
                attempts = await conn.fetch(
                    "select state, outcome, connected_at, ended_at from callback.dial_attempts"
                )
                assert len(attempts) == 1, "the visitor is not dialled again"
                (attempt,) = attempts
                assert (attempt["state"], attempt["outcome"]) == ("ended", "connected")
                assert (attempt["ended_at"] - attempt["connected_at"]).total_seconds() >= 0.9
                free = await conn.fetchval("select current_attempt is null from callback.agent_presence")
                assert free
            finally:
                await conn.close()
        assert fake.rung.count(VISITOR_ENDPOINT) == 1
    finally:
        postgres.stop()


async def test_two_replicas_each_follow_their_calls_and_hang_up_the_others(
    settings: Settings, db: asyncpg.Connection, fake: FakeAri, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        running_service(
            settings, "callback", tmp_path / "a", **ari_env(fake, ABONENT_ARI_REPLICA="a")
        ) as url_a,
        running_service(
            settings, "callback", tmp_path / "b", **ari_env(fake, ABONENT_ARI_REPLICA="b")
        ) as url_b,
        httpx.AsyncClient(base_url=url_a) as a,
        httpx.AsyncClient(base_url=url_b) as b,
    ):
        replicas = {"a": a, "b": b}
        await put_site(a)
        phones = {"olga": "+79120000001", "ivan": "+79120000002"}
        for login, endpoint in (("olga", "PJSIP/101"), ("ivan", "PJSIP/102")):
            await register_agent(a, login, endpoint)
        # Each agent's console session works on both replicas (a load balancer may send a click to either).
        sessions: dict[str, httpx.Cookies] = {}
        for login in phones:
            a.cookies = httpx.Cookies()
            await sign_in(a, login)
            sessions[login] = httpx.Cookies(a.cookies)
        a.cookies = httpx.Cookies()
        await event_streams_open(fake, 2)
        try:
            for phone in phones.values():
                assert (await ask(a, phone=phone)).status_code == 201

            async def both_talking() -> bool:
                states = await db.fetch("select state from callback.dial_attempts")
                return len(states) == 2 and all(s["state"] == "connected" for s in states)

            await until(both_talking, timeout=40)
            apps = {c.app for c in fake.channels.values()}
            assert apps <= {"abonent-callback-a", "abonent-callback-b"}
            # No replica hung up another's call as an orphan: every call is still up, bridged.
            assert len(fake.bridges) == 2
            rows = await db.fetch(
                "select a.id, g.login from callback.dial_attempts a"
                " join callback.agents g on g.id = a.agent_id"
            )
            for row in rows:
                owner = fake.channels[f"abonent-{row['id'].hex}-agent"].app.rsplit("-", 1)[1]
                other = "b" if owner == "a" else "a"
                console = replicas[other]
                console.cookies = sessions[row["login"]]
                hung = await console.post("/agent/api/call/hangup")
                assert hung.status_code == 200, hung.text

            async def all_done() -> bool:
                statuses = await db.fetch("select status from callback.callbacks")
                busy = await db.fetchval(
                    "select count(*) from callback.agent_presence where current_attempt is not null"
                )
                return all(s["status"] == "completed" for s in statuses) and busy == 0

            await until(all_done, timeout=40)
            await fake.wait_until(lambda: not fake.channels and not fake.bridges)
            outcomes = await db.fetch("select outcome from callback.dial_attempts")
            assert [o["outcome"] for o in outcomes] == ["connected", "connected"]
            for phone in phones.values():
                assert fake.rung.count(f"PJSIP/{phone[1:]}@trunk") == 1
        finally:
            a.cookies = httpx.Cookies()


def mango_env(fake: FakeMango) -> dict[str, str]:
    return {
        "ABONENT_TELEPHONY": "mango",
        "ABONENT_MANGO_API_KEY": fake.api_key,
        "ABONENT_MANGO_API_SALT": fake.api_salt,
        "ABONENT_MANGO_URL": fake.base_url + "/vpbx",
        "ABONENT_PLACING_LEASE_S": "5",
    }


def port_of_process(pid: int) -> str:
    """The HTTP port a callback process was started with (tests/support/harness.py passes it in its env)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (port,) = [v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"ABONENT_CALLBACK_PORT=")]
    return port


async def test_two_mango_replicas_complete_calls_whose_webhooks_reach_the_other_one(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    phones = {"olga": "+79120000001", "ivan": "+79120000002"}
    async with (
        serve_fake_mango() as fake,
        running_service(settings, "callback", tmp_path / "a", **mango_env(fake)) as url_a,
        running_service(settings, "callback", tmp_path / "b", **mango_env(fake)) as url_b,
        httpx.AsyncClient(base_url=url_a) as a,
        httpx.AsyncClient(base_url=url_b) as b,
    ):
        urls = {"a": url_a, "b": url_b}
        replicas = {"a": a, "b": b}
        placed_by: dict[str, str] = {}  # attempt hex -> the replica whose dispatcher sent the command
        lookup = await asyncpg.connect(settings.database_url)
        lock = asyncio.Lock()

        async def other_replica(command_id: str) -> str:
            """A load balancer that always picks the replica that did not place the call."""
            async with lock:
                if command_id not in placed_by:
                    holder = await lookup.fetchval(
                        "select placing_by from callback.dial_attempts where id = $1", uuid.UUID(command_id)
                    )
                    port = port_of_process(int(str(holder).split(":")[1]))
                    placed_by[command_id] = next(n for n, u in urls.items() if u.endswith(f":{port}"))
            other = "b" if placed_by[command_id] == "a" else "a"
            return urls[other] + "/telephony/mango"

        fake.webhook_url_for = other_replica
        for phone in phones.values():
            fake.script(phone[1:], MangoScript(talk_ms=600_000))  # they talk until the agent hangs up
        await put_site(a)
        for login, extension in (("olga", "101"), ("ivan", "102")):
            await register_agent(a, login, extension)
        sessions: dict[str, httpx.Cookies] = {}
        for login in phones:
            a.cookies = httpx.Cookies()
            await sign_in(a, login)
            sessions[login] = httpx.Cookies(a.cookies)
        a.cookies = httpx.Cookies()
        try:
            for phone in phones.values():
                assert (await ask(a, phone=phone)).status_code == 201

            async def both_talking() -> bool:
                states = await db.fetch("select state from callback.dial_attempts")
                return len(states) == 2 and all(s["state"] == "connected" for s in states)

            await until(both_talking, timeout=40)
            # Every notification went to the replica that did not place the call, and was taken.
            assert fake.webhooks
            assert all(w.status == 200 for w in fake.webhooks)
            for w in fake.webhooks:
                placer = placed_by[w.payload["command_id"]]
                assert not w.url.startswith(urls[placer])
            rows = await db.fetch(
                "select a.id, g.login, a.provider_state from callback.dial_attempts a"
                " join callback.agents g on g.id = a.agent_id"
            )
            for row in rows:
                assert row["provider_state"] is not None  # the call's state lives in PostgreSQL
                other = "b" if placed_by[row["id"].hex] == "a" else "a"
                console = replicas[other]
                console.cookies = sessions[row["login"]]
                hung = await console.post("/agent/api/call/hangup")
                assert hung.status_code == 200, hung.text

            async def all_done() -> bool:
                statuses = await db.fetch("select status from callback.callbacks")
                busy = await db.fetchval(
                    "select count(*) from callback.agent_presence where current_attempt is not null"
                )
                return all(s["status"] == "completed" for s in statuses) and busy == 0

            await until(all_done, timeout=40)
            outcomes = await db.fetch("select outcome from callback.dial_attempts")
            assert [o["outcome"] for o in outcomes] == ["connected", "connected"]
            # The hang-up reached Mango for each call, with a leg id only the state in PostgreSQL knew.
            hangups = [c for c in fake.commands if c.path == "/commands/call/hangup"]
            assert {c.result for c in hangups} >= {1000}
            hung_calls = {str(c.payload["call_id"]).split(":")[0] for c in hangups if c.payload}
            assert len(hung_calls) == 2
            for phone in phones.values():
                assert len(fake.callbacks_to(phone[1:])) == 1, "nobody is dialled twice"
        finally:
            a.cookies = httpx.Cookies()
            await lookup.close()


async def test_a_mango_notice_that_cannot_be_stored_is_refused_so_mango_resends_it(
    settings: Settings, tmp_path: Path
) -> None:
    nats = EmbeddedNats(tmp_path / "js").start()  # its own server: this test stops it
    try:
        own = make_settings(settings.database_url, nats.url, settings.nats_namespace)
        await migrate_service(own, "callback")
        fake = FakeMango()  # only signs the notifications here
        section = CallbackSettings(
            telephony="mango", mango_api_key=fake.api_key, mango_api_salt=fake.api_salt
        )
        command_id = uuid.uuid4().hex

        def notice(seq: int) -> dict[str, str]:
            payload = {
                "entry_id": "entry-1",
                "call_id": "1:agent",
                "seq": seq,
                "call_state": "Appeared",
                "to": {"extension": "101"},
                "command_id": command_id,
            }
            return fake.signed_form(payload)

        app = create_app(own, section)
        async with AsyncTestClient(app=app) as client:
            url = "/telephony/mango/events/call"
            assert (await client.post(url, data=notice(1))).status_code == 200
            await asyncio.to_thread(nats.stop)
            refused = await client.post(url, data=notice(2))
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "unavailable"
            nats.start()  # on this thread: the server dies with the thread that started it (PDEATHSIG)

            async def taken() -> bool:
                return (await client.post(url, data=notice(2))).status_code == 200

            await until(taken, timeout=60)

            async def bus_connected() -> bool:
                return bool(app.state.runtime.bus.connected)

            await until(bus_connected, timeout=30)  # a clean shutdown drains a connected client
    finally:
        nats.stop()


async def test_while_the_ari_event_stream_is_down_nobody_is_reserved_and_nothing_is_charged(
    settings: Settings, db: asyncpg.Connection, fake: FakeAri
) -> None:
    fake.refuse_websockets = True
    await migrate_service(settings, "callback")
    async with AsyncTestClient(app=create_app(settings, ari_section(fake, "down"))) as client:
        await put_site(client)
        await register_agent(client, "olga", "PJSIP/101")
        await sign_in(client, "olga")
        assert (await ask(client, phone=VISITOR)).status_code == 201
        # Several dispatcher passes (1 s apart) with the stream down: before, each due request became a
        # refused dial, a provider error and a minute's back-off.
        await asyncio.sleep(3)
        assert await db.fetchval("select count(*) from callback.dial_attempts") == 0
        assert await db.fetchval("select status from callback.callbacks") == "scheduled"
        assert fake.rung == []
        fake.refuse_websockets = False

        async def agent_rung() -> bool:
            return "PJSIP/101" in fake.rung

        await until(agent_rung, timeout=60)
