"""Two organisations on one installation: visitors, agents, client cards, dashboards and the admin API never
cross between them (real PostgreSQL and NATS, the app in process, a manual simulated PBX)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient
from support.callback_api import ADMIN, ask, site_body
from support.harness import migrate_service
from support.polling import until

from services.callback.app import create_app
from services.callback.console import SESSION_COOKIE
from services.callback.dispatcher import Dispatcher
from services.callback.settings import CallbackSettings
from services.callback.telephony import SimConfig, SimulatedPbx
from services.callback.usecases.sites import SiteDirectory
from services.common import db as dbmod
from services.common.crypto import DataProtector, token_hash
from services.common.migrate import discover, migrate
from services.common.settings import Settings

Client = AsyncTestClient[Any]
MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "callback" / "migrations"
PHONE = "+79123456789"
DIGITS = PHONE.removeprefix("+")


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    """The app with a simulated PBX in manual mode: calls stay ringing, so cards can be read."""
    await migrate_service(settings, "callback")
    app = create_app(settings, CallbackSettings(sim_manual=True, sim_time_scale=0.01))
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


async def admin_put(client: Client, path: str, body: dict[str, Any], headers: dict[str, str] = ADMIN) -> Any:
    response = await client.put(path, json=body, headers=headers)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def two_organisations(client: Client, *, agents: bool = True) -> None:
    """Org A with shop-a and agent alice, org B with shop-b and agent bob; both queues are `default`."""
    for org in ("org-a", "org-b"):
        created = await admin_put(client, f"/v1/admin/organisations/{org}", {"name": org.upper()})
        assert created["org_id"] == org
        letter = org[-1]
        site = await admin_put(
            client, f"/v1/admin/sites/shop-{letter}?org={org}", site_body(name=f"Shop {letter}")
        )
        assert (site["org_id"], site["settings"]["queue"]) == (org, "default")
        if agents:
            await add_agent(client, org)


async def add_agent(client: Client, org: str) -> None:
    """Org A's agent is alice, org B's is bob, each on their organisation's queue `default`."""
    login = {"org-a": "alice", "org-b": "bob"}[org]
    agent = await admin_put(
        client,
        f"/v1/admin/agents/{login}?org={org}",
        {"name": login.title(), "password": "correct horse", "queues": ["default"]},
    )
    assert agent["org_id"] == org


class Browser:
    """One agent's browser: the shared test client with that agent's console session cookie.

    The test client serves the app on its own event loop, so a second client cannot share it; the agent
    session is sent explicitly instead of through the (shared) cookie jar."""

    def __init__(self, client: Client, cookie: str) -> None:
        self.client = client
        self.headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"}

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.post(path, headers=self.headers, **kwargs)

    async def get(self, path: str) -> httpx.Response:
        return await self.client.get(path, headers=self.headers)


async def console_of(client: Client, login: str) -> Browser:
    """Sign `login` in through the console form; their session rides on their own Browser."""
    signed_in = await client.post(
        "/agent/login", data={"login": login, "password": "correct horse"}, follow_redirects=False
    )
    assert signed_in.status_code == 303, signed_in.text
    cookie = signed_in.cookies[SESSION_COOKIE]
    client.cookies.clear()
    return Browser(client, cookie)


async def ready(browser: Browser) -> None:
    state = await browser.post("/agent/api/presence", json={"status": "ready"})
    assert state.json()["status"] == "ready", state.text


async def status_of(client: Client, created: dict[str, Any]) -> str:
    response = await client.get(f"/v1/callbacks/{created['id']}?token={created['status_token']}")
    return str(response.json()["status"])


@pytest.fixture
async def own_dispatcher(client: Client, settings: Settings) -> AsyncIterator[Dispatcher]:
    """A second dispatcher on the same database (as another replica would run), driven by the test."""
    pool = await dbmod.create_pool(settings.database_url, "callback")
    pbx = SimulatedPbx(SimConfig(manual=True), time_scale=0.01)
    try:
        yield Dispatcher(pool, DataProtector.from_settings(settings), SiteDirectory(pool), pbx)
    finally:
        await pool.close()


async def test_a_visitor_is_only_bridged_to_their_own_organisations_agent(
    client: Client, db: asyncpg.Connection, own_dispatcher: Dispatcher
) -> None:
    await two_organisations(client, agents=False)
    # The same person asked org A's shop and org B's shop before (both cancelled).
    for site_key in ("shop-a", "shop-b"):
        asked = await ask(client, site_key, phone=PHONE, page_url=f"https://{site_key}.example/old")
        assert asked.status_code == 201, asked.text
        earlier = asked.json()
        cancelled = await client.post(f"/v1/callbacks/{earlier['id']}/cancel?token={earlier['status_token']}")
        assert cancelled.status_code == 200, cancelled.text
    created = (await ask(client, "shop-b", phone=PHONE, page_url="https://shop-b.example/p/1")).json()
    for org in ("org-a", "org-b"):
        await add_agent(client, org)
    alice = await console_of(client, "alice")
    bob = await console_of(client, "bob")

    # Only A's agent is Ready: B's request waits, however often the dispatcher runs.
    await ready(alice)
    assert await own_dispatcher.dispatch_once() == 0
    assert await own_dispatcher.dispatch_once() == 0
    assert await status_of(client, created) == "scheduled"
    alice_state = await alice.post("/agent/api/heartbeat")
    assert alice_state.json()["call"] is None
    assert DIGITS not in alice_state.text
    assert await db.fetchval("select count(*) from callback.dial_attempts") == 0

    # B's agent comes: the request goes to them, with a card that knows only org B's history.
    await ready(bob)

    async def bobs_call() -> Any:
        state = (await bob.post("/agent/api/heartbeat")).json()
        return state["call"]

    call = await until(bobs_call)
    card = call["card"]
    assert (card["callback_id"], card["phone"], card["site_key"]) == (created["id"], PHONE, "shop-b")
    assert [(e["site_key"], e["status"]) for e in card["earlier"]] == [("shop-b", "cancelled")]
    assert await status_of(client, created) == "dialing"
    alice_state = await alice.post("/agent/api/heartbeat")
    assert alice_state.json()["call"] is None
    assert DIGITS not in alice_state.text

    # Each agent's dashboard lists their own organisation's sites only.
    alice_board = (await alice.get("/agent/dashboard")).text
    bob_board = (await bob.get("/agent/dashboard")).text
    assert "shop-a" in alice_board
    assert "shop-b" not in alice_board
    assert "shop-b" in bob_board
    assert "shop-a" not in bob_board


async def org_admin_token(client: Client, db: asyncpg.Connection, org: str) -> dict[str, str]:
    """A callback:admin bearer token (as `abonent tokens create` makes it) bound to one organisation."""
    token_id, token = uuid.uuid4(), f"abt_{uuid.uuid4().hex}{uuid.uuid4().hex}"
    await db.execute(
        "insert into callback.auth_tokens (id, name, token_hash, scopes) values ($1, $2, $3, $4)",
        token_id,
        f"{org}-admin",
        token_hash(token),
        ["callback:admin"],
    )
    bound = await client.put(f"/v1/admin/organisations/{org}/admins/{token_id}", headers=ADMIN)
    assert bound.status_code == 204, bound.text
    return {"Authorization": f"Bearer {token}"}


async def failed_delivery(db: asyncpg.Connection, site_key: str) -> uuid.UUID:
    delivery_id = uuid.uuid4()
    await db.execute(
        "insert into callback.outbound_webhooks (id, channel, subscriber, event_id, event_type, payload,"
        " status, attempts, next_attempt_at) values ($1, 'crm', $2, $3, 'callback.requested.v1', '\\x7b7d',"
        " 'failed', 12, null)",
        delivery_id,
        site_key,
        uuid.uuid4(),
    )
    return delivery_id


async def test_an_organisation_admin_sees_and_touches_only_their_organisation(
    client: Client, db: asyncpg.Connection
) -> None:
    await two_organisations(client)
    a_admin = await org_admin_token(client, db, "org-a")
    b_delivery = await failed_delivery(db, "shop-b")

    async def same_as_missing(theirs_path: str, theirs: str, missing: str, method: str = "GET") -> None:
        """B's thing answers exactly as a thing that does not exist at all (but for its name)."""
        answer = await client.request(method, theirs_path, headers=a_admin)
        nothing = await client.request(method, theirs_path.replace(theirs, missing), headers=a_admin)
        assert answer.status_code == nothing.status_code == 404, (answer.text, nothing.text)
        assert answer.text == nothing.text.replace(missing, theirs)

    listed = (await client.get("/v1/admin/sites", headers=a_admin)).json()
    assert [s["site_key"] for s in listed] == ["shop-a"]
    assert [s["site_key"] for s in (await client.get("/v1/admin/sites", headers=ADMIN)).json()] == [
        "shop-a",
        "shop-b",
    ]
    await same_as_missing("/v1/admin/sites/shop-b", "shop-b", "shop-x")
    await same_as_missing("/v1/admin/sites/shop-b/punctuality", "shop-b", "shop-x")
    await same_as_missing("/v1/admin/sites/shop-b/webhook-deliveries", "shop-b", "shop-x")
    await same_as_missing(
        f"/v1/admin/webhook-deliveries/{b_delivery}/retry", str(b_delivery), str(uuid.uuid4()), "POST"
    )
    assert (
        await db.fetchval("select status from callback.outbound_webhooks where id = $1", b_delivery)
        == "failed"
    )
    await same_as_missing("/v1/admin/agents/bob/release", "bob", "nobody", "POST")

    # Creating goes into their own organisation; another's keys, logins and organisation are not theirs.
    mine = await admin_put(client, "/v1/admin/sites/shop-a2", site_body(), headers=a_admin)
    assert mine["org_id"] == "org-a"
    taken = await client.put("/v1/admin/sites/shop-b", json=site_body(name="Hijacked"), headers=a_admin)
    assert (taken.status_code, taken.json()["error"]["code"]) == (409, "site_key_taken")
    assert (await client.get("/v1/admin/sites/shop-b", headers=ADMIN)).json()["settings"]["name"] == "Shop b"
    elsewhere = await client.put("/v1/admin/sites/shop-a3?org=org-b", json=site_body(), headers=a_admin)
    assert (elsewhere.status_code, elsewhere.json()["error"]["code"]) == (404, "org_not_found")
    agent_body = {"name": "Bob", "password": "another horse", "queues": ["default"]}
    stolen = await client.put("/v1/admin/agents/bob", json=agent_body, headers=a_admin)
    assert (stolen.status_code, stolen.json()["error"]["code"]) == (409, "login_taken")
    assert await db.fetchval("select org_id from callback.agents where login = 'bob'") == "org-b"

    # Organisations: they see their own; making organisations or admins is the platform's.
    assert [o["org_id"] for o in (await client.get("/v1/admin/organisations", headers=a_admin)).json()] == [
        "org-a"
    ]
    assert (await client.get("/v1/admin/organisations/org-b", headers=a_admin)).status_code == 404
    made = await client.put("/v1/admin/organisations/org-c", json={"name": "C"}, headers=a_admin)
    assert (made.status_code, made.json()["error"]["code"]) == (403, "platform_admin_only")
    all_orgs = [o["org_id"] for o in (await client.get("/v1/admin/organisations", headers=ADMIN)).json()]
    assert all_orgs == ["default", "org-a", "org-b"]

    # The platform admin still acts across organisations.
    requeued = await client.post(f"/v1/admin/webhook-deliveries/{b_delivery}/retry", headers=ADMIN)
    assert requeued.status_code == 202, requeued.text


async def test_an_upgrade_puts_everything_that_existed_into_the_default_organisation(
    settings: Settings, db: asyncpg.Connection
) -> None:
    before = [m for m in discover(MIGRATIONS) if m.version < "service/0013"]
    await migrate(settings.database_url, "callback", before)
    await db.execute(
        "insert into callback.sites (site_key, settings) values ('old', $1::jsonb)",
        json.dumps(site_body()),
    )
    await db.execute(
        "insert into callback.agents (id, login, name, password_hash, endpoint)"
        " values ($1, 'olga', 'Olga', 'x', 'sim')",
        uuid.uuid4(),
    )
    await db.execute(
        "insert into callback.callbacks (id, site_key, queue, phone_enc, phone_hash, phone_masked,"
        " visitor_tz, lang, status, requested_at, due_at, promise_kind, promised_earliest,"
        " promised_latest, max_attempts)"
        " values ($1, 'old', 'default', '\\x00', '\\x01', '+7 *** ***-**-89', 'Europe/Moscow', 'ru',"
        " 'scheduled', now(), now(), 'asap', now(), now(), 3)",
        uuid.uuid4(),
    )

    await migrate_service(settings, "callback")

    for table in ("sites", "agents", "callbacks"):
        orgs = await db.fetchval(f"select array_agg(distinct org_id) from callback.{table}")
        assert orgs == ["default"], table
    assert await db.fetchval("select name from callback.organisations") == "Default organisation"
