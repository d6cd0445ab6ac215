"""Shared verification test data: the back-office header, the demo case that matches the sandbox person,
and the app factory (importable from tests, unlike conftest)."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from support.esia_sandbox import REDIRECT_URI
from support.harness import TEST_ADMIN_TOKEN

from services.common.clock import ManualClock
from services.common.settings import Settings
from services.verification.app import create_app
from services.verification.identity.config import IdentitySettings
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


def make_app(
    settings: Settings, own: VerificationSettings, identity: IdentitySettings, clock: ManualClock
) -> Litestar:
    return create_app(settings, own=own, identity=identity, clock=clock)
