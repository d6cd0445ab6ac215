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
from litestar.testing import AsyncTestClient
from support.esia_sandbox import CLIENT_ID, GostClient, Sandbox, new_gost_client
from support.harness import migrate_service
from support.verification import LINK_BASE, PUBLIC_URL, make_app

from services.common.clock import ManualClock
from services.common.settings import Settings
from services.verification.identity.config import IdentitySettings
from services.verification.identity.gost_keys import to_pem
from services.verification.sandbox_idp.app import create_sandbox_app
from services.verification.settings import VerificationSettings


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


@pytest.fixture
async def client(
    settings: Settings, own: VerificationSettings, identity: IdentitySettings, clock: ManualClock
) -> AsyncIterator[AsyncTestClient[Any]]:
    await migrate_service(settings, "verification")
    app = make_app(settings, own, identity, clock)
    async with AsyncTestClient(app=app, base_url=PUBLIC_URL) as test_client:
        yield test_client
