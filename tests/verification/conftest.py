"""Fixtures for verification tests: the real app in process on this test's database and NATS namespace."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fakes.asgi import serve_asgi
from fakes.fake_billing import FakeBilling
from litestar import Litestar
from litestar.testing import AsyncTestClient
from support.harness import TEST_ADMIN_TOKEN, migrate_service

from services.common.clock import ManualClock
from services.common.settings import Settings
from services.verification.app import create_app
from services.verification.settings import VerificationSettings

AUTH = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}
LINK_BASE = "https://mf.ru/v"

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
        billing_webhook_url=billing[1] + "/billing",
        billing_webhook_secret="billing-secret",
    )


def make_app(settings: Settings, own: VerificationSettings, clock: ManualClock) -> Litestar:
    return create_app(settings, own=own, clock=clock)


@pytest.fixture
async def client(
    settings: Settings, own: VerificationSettings, clock: ManualClock
) -> AsyncIterator[AsyncTestClient[Any]]:
    await migrate_service(settings, "verification")
    async with AsyncTestClient(app=make_app(settings, own, clock)) as test_client:
        yield test_client
