"""Notifier service app factory (routes and consumers arrive with the notifier issues)."""

from __future__ import annotations

from pathlib import Path

from litestar import Litestar

from services.common.settings import Settings, get_settings
from services.common.web import ServiceSpec, build_app

SPEC = ServiceSpec(
    name="notifier",
    title="Abonent notifier",
    description="Turns events into messenger messages and SMS, respecting quiet hours, never twice.",
    route_handlers=[],
    migrations_dir=Path(__file__).parent / "migrations",
    scopes={"notifier:read": "read notifications and their delivery state"},
)


def create_app(settings: Settings | None = None) -> Litestar:
    return build_app(SPEC, settings or get_settings())
