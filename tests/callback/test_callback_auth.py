"""The callback admin API behind the common auth: the env bootstrap token, CLI-made tokens, staff sessions."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
from litestar.testing import AsyncTestClient
from support.callback_api import ADMIN, site_body
from support.harness import REPO, TEST_ADMIN_TOKEN, migrate_service, settings_env

from services.callback.app import create_app
from services.cli.service import migrate_all
from services.cli.up import seed_back_office
from services.common import auth_admin
from services.common.settings import SERVICE_NAMES, Settings

Client = AsyncTestClient[Any]


async def abonent(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real `abonent` command in its own process, seeing this test's database."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli", *args],
        env=settings_env(settings, **env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_the_environment_admin_token_still_opens_the_admin_api(client: Client) -> None:
    assert (await client.get("/v1/admin/sites")).status_code == 401
    listed = await client.get("/v1/admin/sites", headers=ADMIN)
    assert listed.status_code == 200, listed.text
    whoami = await client.get("/auth/whoami", headers=ADMIN)
    assert whoami.json() == {"kind": "token", "name": "bootstrap", "scopes": ["callback:admin"]}


async def test_tokens_made_listed_and_revoked_with_the_cli(client: Client, settings: Settings) -> None:
    created = await abonent(settings, "tokens", "create", "--name", "crm", "--scopes", "callback:admin")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("abt_")
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await client.put("/v1/admin/sites/shop", json=site_body(), headers=bearer)).status_code == 201

    listed = await abonent(settings, "tokens", "list")
    assert listed.returncode == 0, listed.stderr
    assert "crm" in listed.stdout
    assert "callback:admin" in listed.stdout
    assert token not in listed.stdout

    revoked = await abonent(settings, "tokens", "revoke", "crm")
    assert (revoked.returncode, revoked.stdout.strip()) == (0, "revoked 1 token")
    assert (await client.get("/v1/admin/sites", headers=bearer)).status_code == 401
    assert (await client.get("/v1/admin/sites", headers=ADMIN)).status_code == 200

    unknown = await abonent(settings, "tokens", "create", "--name", "x", "--scopes", "callback:root")
    assert unknown.returncode == 2
    assert "unknown scope callback:root" in unknown.stderr


async def test_staff_added_with_the_cli_signs_in_and_uses_the_admin_api(
    client: Client, settings: Settings
) -> None:
    await migrate_service(settings, "notifier")
    added = await abonent(
        settings,
        "staff",
        "add",
        "--login",
        "Ann",
        "--scopes",
        "callback:admin,notifier:read",
        ABONENT_STAFF_PASSWORD="a long password",
    )
    assert added.returncode == 0, added.stderr
    assert "callback, notifier" in added.stdout
    listed = await abonent(settings, "staff", "list")
    assert "ann  callback:admin,notifier:read" in listed.stdout

    signed_in = await client.post(
        "/auth/sign-in",
        data={"login": "ann", "password": "a long password", "next": "/v1/admin/sites"},
        headers={"Origin": "http://testserver.local"},
        follow_redirects=False,
    )
    assert signed_in.status_code == 303, signed_in.text
    assert signed_in.headers["location"] == "/v1/admin/sites"
    assert (await client.get("/v1/admin/sites")).status_code == 200
    # A cookie alone does not change anything: a forged cross-site form would carry it too.
    forged = await client.put("/v1/admin/sites/shop", json=site_body())
    assert (forged.status_code, forged.json()["error"]["code"]) == (403, "csrf_failed")
    own = await client.put(
        "/v1/admin/sites/shop", json=site_body(), headers={"Origin": "http://testserver.local"}
    )
    assert own.status_code == 201, own.text

    removed = await abonent(settings, "staff", "remove", "--login", "ann")
    assert removed.returncode == 0, removed.stderr
    assert (await client.get("/v1/admin/sites")).status_code == 401


def test_abonent_up_seeds_a_printed_admin_token_and_staff_login_that_work(
    settings: Settings, tmp_path: Path
) -> None:
    asyncio.run(migrate_all(settings))
    without_env = msgspec.structs.replace(settings, admin_token="")
    token, password = seed_back_office(without_env, tmp_path)
    assert token.startswith("abt_")
    assert (tmp_path / "admin.token").stat().st_mode & 0o777 == 0o600
    # Kept across restarts; the environment's token wins when set.
    assert seed_back_office(without_env, tmp_path) == (token, password)
    assert seed_back_office(settings, tmp_path)[0] == TEST_ADMIN_TOKEN
    staff = asyncio.run(auth_admin.list_staff(settings.database_url, SERVICE_NAMES))
    assert [(s.login, s.services) for s in staff] == [("admin", list(SERVICE_NAMES))]

    async def use_them() -> None:
        # `abonent up` hands the token to the services as ABONENT_ADMIN_TOKEN.
        app = create_app(msgspec.structs.replace(settings, admin_token=token))
        async with AsyncTestClient(app=app) as client:
            headers = {"Authorization": f"Bearer {token}"}
            assert (await client.get("/v1/admin/sites", headers=headers)).status_code == 200
            signed_in = await client.post(
                "/auth/sign-in", data={"login": "admin", "password": password}, follow_redirects=False
            )
            assert signed_in.status_code == 303, signed_in.text
            assert (await client.get("/v1/admin/sites")).status_code == 200

    asyncio.run(use_them())
