"""Fixtures for verification tests: the real app in process on this test's database and NATS namespace."""

from __future__ import annotations

import asyncio
import datetime as dt
import queue
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes.asgi import serve_asgi
from fakes.fake_billing import FakeBilling
from litestar import Litestar
from litestar.testing import AsyncTestClient
from support.esia_sandbox import CLIENT_ID, REDIRECT_URI, GostClient, Sandbox, new_gost_client
from support.harness import TEST_ADMIN_TOKEN, migrate_service

from services.common.clock import ManualClock
from services.common.settings import Settings
from services.verification.app import create_app
from services.verification.identity.config import IdentitySettings
from services.verification.identity.gost_keys import to_pem
from services.verification.sandbox_idp.app import create_sandbox_app
from services.verification.settings import VerificationSettings

AUTH = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}
LINK_BASE = "https://mf.ru/v"
# What the sandbox redirects back to (its helper expects this redirect_uri).
PUBLIC_URL = REDIRECT_URI.removesuffix("/v/callback")

MATCH_CASE: dict[str, Any] = {
    "msisdn": "+79161234567",
    "reason": "regulator_request",
    "last_name": "Иванов",
    "first_name": "Иван",
    "middle_name": "Иванович",
    "birth_date": "1985-04-12",
    "passport_series": "4510",
    "passport_number": "123456",
    "passport_issue_date": "2010-05-20",
    "passport_issuer_code": "770-001",
    "lang": "ru",
    "tz": "Europe/Moscow",
}


@pytest.fixture
def clock() -> ManualClock:
    # A Monday morning in Moscow; the suite moves it on by hand.
    return ManualClock(dt.datetime(2026, 11, 30, 7, 0, tzinfo=dt.UTC))


@pytest.fixture
async def billing() -> AsyncIterator[tuple[FakeBilling, str]]:
    fake = FakeBilling()
    async with serve_asgi(fake) as url:
        yield fake, url


@pytest.fixture
def own(billing: tuple[FakeBilling, str]) -> VerificationSettings:
    return VerificationSettings(
        verification_link_base=LINK_BASE,
        verification_public_url=PUBLIC_URL,
        billing_webhook_url=billing[1] + "/billing",
        billing_webhook_secret="billing-secret",
    )


@pytest.fixture(scope="session")
def gost_client() -> GostClient:
    return new_gost_client()


@pytest.fixture
async def sandbox(gost_client: GostClient) -> AsyncIterator[Sandbox]:
    """The sandbox ESIA (verify-idp's stand-in) on a real port, knowing our test system's certificate.

    Served from its own thread and event loop: Litestar's test client runs the app through a blocking
    portal, so a server on the test's own loop could not answer the app's token request meanwhile."""
    ready: queue.Queue[str] = queue.Queue()
    stop = threading.Event()

    async def serve() -> None:
        async with serve_asgi(create_sandbox_app({CLIENT_ID: gost_client.certificate_der})) as url:
            ready.put(url)
            while not stop.is_set():
                await asyncio.sleep(0.05)

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    url = await asyncio.to_thread(ready.get, timeout=30)
    try:
        async with httpx.AsyncClient() as http:
            yield Sandbox(url=url, http=http)
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 10)


@pytest.fixture
def identity(sandbox: Sandbox, gost_client: GostClient, tmp_path: Path) -> IdentitySettings:
    key_path = tmp_path / "client-key.pem"
    key_path.write_text(gost_client.key.to_pem())
    return IdentitySettings(
        identity_mode="esia",
        esia_base_url=sandbox.url,
        esia_client_id=CLIENT_ID,
        esia_signer="gost",
        esia_private_key_path=str(key_path),
        esia_certificate_pem=to_pem("CERTIFICATE", gost_client.certificate_der),
        esia_jwks_url=f"{sandbox.url}/jwks",
        identity_retry_base_delay_s=0.05,
    )


def make_app(
    settings: Settings, own: VerificationSettings, identity: IdentitySettings, clock: ManualClock
) -> Litestar:
    return create_app(settings, own=own, identity=identity, clock=clock)


@pytest.fixture
async def client(
    settings: Settings, own: VerificationSettings, identity: IdentitySettings, clock: ManualClock
) -> AsyncIterator[AsyncTestClient[Any]]:
    await migrate_service(settings, "verification")
    app = make_app(settings, own, identity, clock)
    async with AsyncTestClient(app=app, base_url=PUBLIC_URL) as test_client:
        yield test_client
