"""Key rotation over real callback data, encrypted idempotency replays and write-only webhook secrets."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import uuid
from typing import Any

import asyncpg
import msgspec
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from litestar.testing import AsyncTestClient
from support.callback_api import ADMIN, put_site, site_body
from support.harness import REPO, migrate_service, settings_env

from services.callback.app import create_app
from services.callback.store import sites as site_store
from services.callback.usecases.common import PHONE_CONTEXT
from services.common import db as dbmod
from services.common.crypto import CannotDecrypt, DataProtector, key_prefix, new_key
from services.common.settings import Settings
from services.common.webhooks import Endpoint

K1, K2, LEGACY = new_key(), new_key(), new_key()
SECRET = "whsec-do-not-leak-7f3a"
PHONES = ("+79123456781", "+79123456782", "+79123456783")


def with_keys(settings: Settings, data_keys: str, active: str = "", legacy: str = "") -> Settings:
    return msgspec.structs.replace(settings, data_keys=data_keys, data_key_id=active, data_key=legacy)


@pytest.fixture
async def app_client(settings: Settings) -> Any:
    await migrate_service(settings, "callback")

    async def open_client(keys: Settings) -> AsyncTestClient[Any]:
        return AsyncTestClient(app=create_app(keys))

    return open_client


def legacy_encrypt(master_b64: str, plaintext: str, context: str) -> bytes:
    """The single-key format from before the keyring: nonce || ciphertext, AD = the context alone."""
    master = base64.urlsafe_b64decode(master_b64)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"abonent/encrypt/v1").derive(master)
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext.encode(), context.encode())


async def run_cli(env: dict[str, str], *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, output.decode()
    return output.decode()


async def submit(client: AsyncTestClient[Any], phone: str) -> dict[str, Any]:
    """A widget request body with a fresh form token, kept so a retry can resend it byte for byte."""
    offer = (await client.get("/v1/sites/shop/offer", params={"tz": "Europe/Moscow"})).json()
    return {"phone": phone, "visitor_tz": "Europe/Moscow", "consent": True, "form_token": offer["form_token"]}


async def target_of(settings: Settings, site_key: str) -> Endpoint:
    conn = await dbmod.connect(settings.database_url, "callback")
    try:
        endpoint = await site_store.crm_webhook_endpoint(
            conn, DataProtector.from_settings(settings), site_key
        )
        assert endpoint is not None
        return endpoint
    finally:
        await conn.close()


async def test_rotate_moves_everything_onto_the_new_key_and_the_old_one_can_go(
    settings: Settings, db: asyncpg.Connection, app_client: Any
) -> None:
    under_k1 = with_keys(settings, f"k1:{K1}", legacy=LEGACY)
    created: list[dict[str, Any]] = []
    bodies: list[dict[str, Any]] = []
    async with await app_client(under_k1) as client:
        await put_site(client, crm_webhook_url="https://crm.example/hooks", crm_webhook_secret=SECRET)
        for i, phone in enumerate(PHONES):
            bodies.append(await submit(client, phone))
            response = await client.post(
                "/v1/sites/shop/callbacks", json=bodies[i], headers={"Idempotency-Key": f"idem-{i}"}
            )
            assert response.status_code == 201, response.text
            created.append(response.json())
    ids = [uuid.UUID(c["id"]) for c in created]
    # One row as a `./dev up` folder from before the keyring holds it: legacy format under ABONENT_DATA_KEY.
    await db.execute(
        "update callback.callbacks set phone_enc = $2 where id = $1",
        ids[0],
        legacy_encrypt(LEGACY, PHONES[0], PHONE_CONTEXT),
    )

    # k2 becomes active; k1 and the legacy key stay readable until the rotation is done.
    rotating = with_keys(settings, f"k2:{K2},k1:{K1}", "k2", legacy=LEGACY)
    env = settings_env(rotating)
    output = await run_cli(env, "keys", "rotate", "--service", "callback", "--batch", "2")
    assert "callback callbacks.phone_enc: 3 re-encrypted under k2, 0 failed, 0 not under k2" in output
    assert "callback sites.crm_webhook_secret_enc: 1 re-encrypted under k2" in output
    assert "callback idempotency_keys.status_token_enc: 3 re-encrypted under k2" in output
    again = await run_cli(env, "keys", "rotate", "--service", "callback")
    assert "callback callbacks.phone_enc: 0 re-encrypted under k2, 0 failed, 0 not under k2" in again

    prefix = key_prefix("k2")
    for table, column in (
        ("callbacks", "phone_enc"),
        ("sites", "crm_webhook_secret_enc"),
        ("idempotency_keys", "status_token_enc"),
    ):
        values = [r[0] for r in await db.fetch(f"select {column} from callback.{table}")]
        assert values, table
        assert all(bytes(v).startswith(prefix) for v in values), f"{table}.{column} not all under k2"

    # k1 and the legacy key leave the ring: everything still decrypts.
    only_k2 = with_keys(settings, f"k2:{K2}")
    protector = DataProtector.from_settings(only_k2)
    rows = {
        r["id"]: bytes(r["phone_enc"]) for r in await db.fetch("select id, phone_enc from callback.callbacks")
    }
    assert [protector.decrypt(rows[i], PHONE_CONTEXT, i) for i in ids] == list(PHONES)
    assert (await target_of(only_k2, "shop")).secret == SECRET
    async with await app_client(only_k2) as client:
        for i in range(len(PHONES)):
            replay = await client.post(
                "/v1/sites/shop/callbacks", json=bodies[i], headers={"Idempotency-Key": f"idem-{i}"}
            )
            assert replay.status_code == 201, replay.text
            assert replay.json()["status_token"] == created[i]["status_token"]

    # A ciphertext copied onto another row does not decrypt there.
    await db.execute(
        "update callback.callbacks set phone_enc = (select phone_enc from callback.callbacks where id = $1)"
        " where id = $2",
        ids[0],
        ids[1],
    )
    moved = await db.fetchval("select phone_enc from callback.callbacks where id = $1", ids[1])
    with pytest.raises(CannotDecrypt):
        protector.decrypt(bytes(moved), PHONE_CONTEXT, ids[1])


async def test_an_idempotent_replay_returns_the_token_that_the_database_does_not_show(
    settings: Settings, db: asyncpg.Connection, app_client: Any
) -> None:
    async with await app_client(settings) as client:
        await put_site(client)
        body = await submit(client, "+79123456789")
        retry = {"Idempotency-Key": "retry-me"}
        first = await client.post("/v1/sites/shop/callbacks", json=body, headers=retry)
        assert first.status_code == 201
        token = first.json()["status_token"]
        dump = await db.fetchval("select json_agg(i)::text from callback.idempotency_keys i")
        assert token not in dump
        assert "status_token" not in dump.replace("status_token_enc", "")
        replay = await client.post("/v1/sites/shop/callbacks", json=body, headers=retry)
        assert replay.status_code == 201
        assert replay.json() == first.json()
        status = await client.get(f"/v1/callbacks/{first.json()['id']}", headers={"X-Status-Token": token})
        assert status.status_code == 200


async def test_the_webhook_secret_is_write_only_and_encrypted(
    settings: Settings, db: asyncpg.Connection, app_client: Any
) -> None:
    async with await app_client(settings) as client:
        created = await put_site(
            client, crm_webhook_url="https://crm.example/hooks", crm_webhook_secret=SECRET
        )
        assert created["crm_webhook_secret_set"] is True
        assert "crm_webhook_secret" not in created["settings"]
        for path in ("/v1/admin/sites/shop", "/v1/admin/sites"):
            response = await client.get(path, headers=ADMIN)
            assert response.status_code == 200
            assert SECRET not in response.text
            assert '"crm_webhook_secret"' not in response.text
            assert '"crm_webhook_secret_set":true' in response.text
        row = await db.fetchrow("select settings::text as s, crm_webhook_secret_enc from callback.sites")
        assert row is not None
        assert SECRET not in row["s"]
        assert SECRET.encode() not in bytes(row["crm_webhook_secret_enc"])
        assert await target_of(settings, "shop") == Endpoint(url="https://crm.example/hooks", secret=SECRET)

        # Leaving the field out keeps the secret (a GET → edit → PUT cannot wipe it); a new value replaces it.
        await put_site(client, crm_webhook_url="https://crm.example/v2")
        assert (await target_of(settings, "shop")).secret == SECRET
        await put_site(client, crm_webhook_url="https://crm.example/v2", crm_webhook_secret="rotated-secret")
        assert (await target_of(settings, "shop")).secret == "rotated-secret"
        cleared = await put_site(client, crm_webhook_url="https://crm.example/v2", crm_webhook_secret="")
        assert cleared["crm_webhook_secret_set"] is False
        assert await target_of(settings, "shop") == Endpoint(url="https://crm.example/v2", secret="")


async def test_plaintext_secrets_from_before_are_sealed_when_the_service_starts(
    settings: Settings, db: asyncpg.Connection, app_client: Any
) -> None:
    await migrate_service(settings, "callback")
    legacy_settings = {
        **site_body(),
        "crm_webhook_url": "https://crm.example/h",
        "crm_webhook_secret": SECRET,
    }
    await db.execute(
        "insert into callback.sites (site_key, settings) values ('old', $1::jsonb)",
        json.dumps(legacy_settings),
    )
    async with await app_client(settings) as client:
        response = await client.get("/v1/admin/sites/old", headers=ADMIN)
        assert SECRET not in response.text
        assert response.json()["crm_webhook_secret_set"] is True
    assert SECRET not in await db.fetchval("select settings::text from callback.sites where site_key = 'old'")
    assert (await target_of(settings, "old")).secret == SECRET
