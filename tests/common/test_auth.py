"""Back-office auth on a real service app against real PostgreSQL: tokens, scopes, sessions, CSRF, budget."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar import get, post
from litestar.testing import AsyncTestClient
from support.harness import TEST_ADMIN_TOKEN, make_settings, migrate_service

from services.common import auth, auth_admin
from services.common.auth_guard import CurrentPrincipal, requires
from services.common.settings import Settings
from services.common.web import ServiceSpec, build_app

Client = AsyncTestClient[Any]
OWN = "http://testserver.local"
COOKIE = "abonent_staff_notifier"
PASSWORD = "correct horse battery"


@get("/probe", guards=[requires("notifier:read")])
async def probe_read(principal: CurrentPrincipal) -> dict[str, str]:
    return {"who": principal.who}


@post("/probe", guards=[requires("notifier:read")], status_code=200)
async def probe_write(principal: CurrentPrincipal) -> dict[str, str]:
    return {"who": principal.who}


@get("/probe/admin", guards=[requires("notifier:admin")])
async def probe_admin(principal: CurrentPrincipal) -> dict[str, str]:
    return {"who": principal.who}


def probe_spec() -> ServiceSpec:
    """A service shaped like the real ones (the notifier's schema), with routes behind scopes."""
    return ServiceSpec(
        name="notifier",
        title="probe",
        description="probe",
        route_handlers=[probe_read, probe_write, probe_admin],
        migrations_dir=Path(__file__).resolve().parents[2] / "services" / "notifier" / "migrations",
        scopes={"notifier:read": "read", "notifier:admin": "everything"},
    )


@pytest.fixture
def auth_settings(database_url: str, nats_url: str, nats_namespace: str) -> Settings:
    return make_settings(database_url, nats_url, nats_namespace, sign_in_max_failures=3)


@pytest.fixture
async def client(auth_settings: Settings) -> AsyncIterator[Client]:
    await migrate_service(auth_settings, "notifier")
    async with AsyncTestClient(app=build_app(probe_spec(), auth_settings)) as test_client:
        yield test_client


@pytest.fixture
async def notifier_db(auth_settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(auth_settings.database_url, server_settings={"search_path": "notifier"})
    yield conn
    await conn.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def make_token(settings: Settings, name: str, *scopes: str) -> str:
    _, token = await auth_admin.create_token(
        settings.database_url, name=name, scopes=list(scopes), expires_days=None
    )
    return token


async def add_staff(settings: Settings, login: str, *scopes: str) -> None:
    await auth_admin.add_staff(
        settings.database_url,
        login=login,
        scopes=list(scopes),
        password=PASSWORD,
        services=["notifier"],
    )


async def sign_in(client: Client, login: str, password: str = PASSWORD, **headers: str) -> Any:
    return await client.post(
        "/auth/sign-in",
        data={"login": login, "password": password, "next": "/probe"},
        headers={"Origin": OWN, **headers},
        follow_redirects=False,
    )


# --- tokens ---------------------------------------------------------------------------------------------


async def test_a_token_passes_with_its_scope_and_gets_403_without(
    client: Client, auth_settings: Settings, notifier_db: asyncpg.Connection
) -> None:
    token = await make_token(auth_settings, "crm-sync", "notifier:read")
    assert token.startswith("abt_")

    allowed = await client.get("/probe", headers=bearer(token))
    assert allowed.status_code == 200, allowed.text
    assert allowed.json() == {"who": "token:crm-sync"}
    assert await notifier_db.fetchval("select last_used_at from auth_tokens where name = 'crm-sync'")
    # Only the hash is stored.
    stored = await notifier_db.fetchval("select token_hash from auth_tokens where name = 'crm-sync'")
    assert token.encode() not in stored

    refused = await client.get("/probe/admin", headers=bearer(token))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"
    challenge = refused.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="insufficient_scope"' in challenge
    assert 'error_description="requires scope notifier:admin"' in challenge


async def test_missing_unknown_and_malformed_credentials_get_401_with_a_bearer_challenge(
    client: Client,
) -> None:
    anonymous = await client.get("/probe")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthorized"
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="abonent"'

    unknown = await client.get("/probe", headers=bearer("abt_" + "x" * 43))
    assert unknown.status_code == 401
    assert 'error="invalid_token"' in unknown.headers["www-authenticate"]

    basic = await client.get("/probe", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401
    assert 'error="invalid_request"' in basic.headers["www-authenticate"]


async def test_expired_and_revoked_tokens_are_refused(
    client: Client, auth_settings: Settings, notifier_db: asyncpg.Connection
) -> None:
    expired = auth.new_token()
    await auth.insert_token(
        notifier_db,
        token_id=uuid.uuid4(),
        name="old",
        token=expired,
        scopes=["notifier:read"],
        expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1),
    )
    assert (await client.get("/probe", headers=bearer(expired))).status_code == 401

    soon = await make_token(auth_settings, "soon", "notifier:read")
    assert (await client.get("/probe", headers=bearer(soon))).status_code == 200
    assert await auth_admin.revoke_tokens(auth_settings.database_url, "soon", ["notifier"]) == 1
    revoked = await client.get("/probe", headers=bearer(soon))
    assert revoked.status_code == 401
    assert 'error="invalid_token"' in revoked.headers["www-authenticate"]
    with pytest.raises(auth_admin.AuthAdminError):
        await auth_admin.revoke_tokens(auth_settings.database_url, "soon", ["notifier"])


async def test_the_environment_token_is_the_bootstrap_token_with_every_scope(
    client: Client, notifier_db: asyncpg.Connection
) -> None:
    both = await client.get("/probe/admin", headers=bearer(TEST_ADMIN_TOKEN))
    assert both.status_code == 200, both.text
    assert both.json() == {"who": "token:bootstrap"}
    row = await notifier_db.fetchrow("select scopes, bootstrap from auth_tokens where name = 'bootstrap'")
    assert row is not None
    assert (sorted(row["scopes"]), row["bootstrap"]) == (["notifier:admin", "notifier:read"], True)


async def test_changing_the_environment_token_revokes_the_old_one_and_a_revoked_one_stays_revoked(
    auth_settings: Settings, nats_url: str, nats_namespace: str
) -> None:
    await migrate_service(auth_settings, "notifier")
    rotated = make_settings(auth_settings.database_url, nats_url, nats_namespace, admin_token="rotated-token")
    async with AsyncTestClient(app=build_app(probe_spec(), rotated)) as client:
        assert (await client.get("/probe", headers=bearer("rotated-token"))).status_code == 200
        assert (await client.get("/probe", headers=bearer(TEST_ADMIN_TOKEN))).status_code == 401
        await auth_admin.revoke_tokens(auth_settings.database_url, "bootstrap", ["notifier"])
        assert (await client.get("/probe", headers=bearer("rotated-token"))).status_code == 401
    async with AsyncTestClient(app=build_app(probe_spec(), rotated)) as client:
        assert (await client.get("/probe", headers=bearer("rotated-token"))).status_code == 401


# --- staff sessions -------------------------------------------------------------------------------------


async def test_sign_in_page_is_plain_html_without_third_party_resources(client: Client) -> None:
    page = await client.get("/auth/sign-in")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<form method="post" action="/auth/sign-in">' in html
    assert 'autocomplete="current-password"' in html
    assert '<label for="login">' in html
    assert "<script" not in html
    assert "http://" not in html
    assert "https://" not in html
    assert "default-src 'none'" in page.headers["content-security-policy"]


async def test_staff_sign_in_session_and_sign_out(
    client: Client, auth_settings: Settings, notifier_db: asyncpg.Connection
) -> None:
    await add_staff(auth_settings, "Olga", "notifier:read")
    signed_in = await sign_in(client, "olga")
    assert signed_in.status_code == 303, signed_in.text
    assert signed_in.headers["location"] == "/probe"
    set_cookie = signed_in.headers["set-cookie"]
    assert set_cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in set_cookie
    assert "SameSite=lax" in set_cookie or "SameSite=Lax" in set_cookie
    assert "Secure" not in set_cookie  # plain http here; see the https test
    cookie_value = client.cookies[COOKIE]
    # The database keeps the session id's hash, never the id.
    hashes = [r["id_hash"] for r in await notifier_db.fetch("select id_hash from staff_sessions")]
    assert hashes == [auth.token_hash(cookie_value)]

    me = await client.get("/probe")
    assert (me.status_code, me.json()) == (200, {"who": "staff:olga"})
    whoami = await client.get("/auth/whoami")
    assert whoami.json() == {"kind": "staff", "name": "olga", "scopes": ["notifier:read"]}
    no_scope = await client.get("/probe/admin")
    assert (no_scope.status_code, no_scope.json()["error"]["code"]) == (403, "insufficient_scope")

    account = await client.get("/auth/sign-in")
    assert "Signed in as <strong>olga</strong>" in account.text
    csrf_token = re.search(r'name="csrf_token" value="([^"]+)"', account.text)
    assert csrf_token is not None
    signed_out = await client.post(
        "/auth/sign-out", data={"csrf_token": csrf_token.group(1)}, follow_redirects=False
    )
    assert signed_out.status_code == 303
    assert await notifier_db.fetchval("select count(*) from staff_sessions") == 0
    assert COOKIE not in client.cookies
    # The old cookie is dead on the server too, not only forgotten by this browser.
    replayed = await client.get("/probe", headers={"Cookie": f"{COOKIE}={cookie_value}"})
    assert replayed.status_code == 401


async def test_cookie_authenticated_unsafe_requests_need_our_origin_or_the_csrf_token(
    client: Client, auth_settings: Settings
) -> None:
    await add_staff(auth_settings, "olga", "notifier:read")
    assert (await sign_in(client, "olga")).status_code == 303

    bare = await client.post("/probe")
    assert (bare.status_code, bare.json()["error"]["code"]) == (403, "csrf_failed")
    foreign = await client.post("/probe", headers={"Origin": "https://evil.example"})
    assert (foreign.status_code, foreign.json()["error"]["code"]) == (403, "csrf_failed")
    foreign_referer = await client.post("/probe", headers={"Referer": "https://evil.example/page"})
    assert foreign_referer.status_code == 403

    assert (await client.post("/probe", headers={"Origin": OWN})).status_code == 200
    assert (await client.post("/probe", headers={"Referer": f"{OWN}/auth/sign-in"})).status_code == 200
    csrf_token = re.search(r'name="csrf_token" value="([^"]+)"', (await client.get("/auth/sign-in")).text)
    assert csrf_token is not None
    with_token = await client.post("/probe", headers={"X-CSRF-Token": csrf_token.group(1)})
    assert with_token.status_code == 200
    # Safe methods need no proof; bearer tokens are never sent by browsers on their own, so no CSRF check.
    assert (await client.get("/probe", headers={"Origin": "https://evil.example"})).status_code == 200


async def test_sessions_end_after_idle_time_and_at_the_absolute_limit(
    client: Client, auth_settings: Settings, notifier_db: asyncpg.Connection
) -> None:
    await add_staff(auth_settings, "olga", "notifier:read")
    assert (await sign_in(client, "olga")).status_code == 303
    assert (await client.get("/probe")).status_code == 200

    idle = auth_settings.session_idle_timeout_s + 1
    await notifier_db.execute(
        "update staff_sessions set last_seen_at = now() - make_interval(secs => $1)", float(idle)
    )
    assert (await client.get("/probe")).status_code == 401

    assert (await sign_in(client, "olga")).status_code == 303
    assert (await client.get("/probe")).status_code == 200
    await notifier_db.execute("update staff_sessions set expires_at = now() - interval '1 second'")
    assert (await client.get("/probe")).status_code == 401


async def test_a_new_password_ends_sessions_and_removed_staff_cannot_continue(
    client: Client, auth_settings: Settings
) -> None:
    await add_staff(auth_settings, "olga", "notifier:read")
    assert (await sign_in(client, "olga")).status_code == 303
    await auth_admin.add_staff(
        auth_settings.database_url,
        login="olga",
        scopes=["notifier:read"],
        password="another password",
        services=["notifier"],
    )
    assert (await client.get("/probe")).status_code == 401
    assert (await sign_in(client, "olga", "another password")).status_code == 303
    await auth_admin.remove_staff(auth_settings.database_url, "olga", ["notifier"])
    assert (await client.get("/probe")).status_code == 401


async def test_wrong_login_and_wrong_password_look_the_same(client: Client, auth_settings: Settings) -> None:
    await add_staff(auth_settings, "olga", "notifier:read")
    wrong_password = await sign_in(client, "olga", "not the password")
    unknown_login = await sign_in(client, "nobody", PASSWORD)
    for response in (wrong_password, unknown_login):
        assert response.status_code == 401
        assert "set-cookie" not in response.headers
        assert 'role="alert">Wrong login or password.</p>' in response.text
    # A login that cannot exist (here with a NUL, which PostgreSQL text cannot hold) is just wrong too.
    impossible = await sign_in(client, "ol\x00ga")
    assert impossible.status_code == 401
    assert 'role="alert">Wrong login or password.</p>' in impossible.text
    # The pages differ only in the login typed, echoed back into the form.
    assert wrong_password.text.replace('value="olga"', 'value="nobody"') == unknown_login.text


async def test_sign_in_is_rate_limited_per_login_and_address(
    client: Client, auth_settings: Settings, notifier_db: asyncpg.Connection
) -> None:
    await add_staff(auth_settings, "olga", "notifier:read")
    await add_staff(auth_settings, "ivan", "notifier:read")
    for _ in range(auth_settings.sign_in_max_failures):
        assert (await sign_in(client, "olga", "guess")).status_code == 401
    limited = await sign_in(client, "olga", "guess")
    assert limited.status_code == 429
    assert 0 < int(limited.headers["retry-after"]) <= auth_settings.sign_in_window_s
    assert "Too many sign-in attempts" in limited.text
    # Even the right password waits: the budget is spent before the password is looked at.
    assert (await sign_in(client, "olga")).status_code == 429
    # Another login from the same address has its own budget.
    assert (await sign_in(client, "ivan")).status_code == 303

    await notifier_db.execute(
        "update sign_in_budget set window_started_at = now() - make_interval(secs => $1)",
        float(auth_settings.sign_in_window_s),
    )
    assert (await sign_in(client, "olga")).status_code == 303
    assert await notifier_db.fetchval("select count(*) from sign_in_budget") == 0


async def test_sign_in_refuses_foreign_origins_and_foreign_redirects(
    client: Client, auth_settings: Settings
) -> None:
    await add_staff(auth_settings, "olga", "notifier:read")
    forged = await sign_in(client, "olga", Origin="https://evil.example")
    assert (forged.status_code, forged.json()["error"]["code"]) == (403, "csrf_failed")
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "/x\r\nSet-Cookie: a=b"):
        redirected = await client.post(
            "/auth/sign-in",
            data={"login": "olga", "password": PASSWORD, "next": target},
            headers={"Origin": OWN},
            follow_redirects=False,
        )
        assert redirected.status_code == 303
        assert redirected.headers["location"] == "/auth/sign-in"


async def test_the_session_cookie_is_secure_over_https(auth_settings: Settings) -> None:
    await migrate_service(auth_settings, "notifier")
    await add_staff(auth_settings, "olga", "notifier:read")
    app = build_app(probe_spec(), auth_settings)
    async with AsyncTestClient(app=app, base_url="https://testserver.local") as client:
        signed_in = await sign_in(client, "olga", Origin="https://testserver.local")
        assert signed_in.status_code == 303, signed_in.text
        assert "Secure" in signed_in.headers["set-cookie"]
        assert (await client.get("/probe")).status_code == 200


def test_scopes_are_named_after_their_service() -> None:
    with pytest.raises(ValueError, match="notifier:"):
        auth.check_declared_scopes("notifier", ["callback:admin"])
    with pytest.raises(ValueError, match="unknown scope"):
        auth.parse_scopes("notifier:read,notifier:nope", {"notifier:read": ""})
    assert auth.parse_scopes(" notifier:read , notifier:read", {"notifier:read": ""}) == ["notifier:read"]
