"""Callback service app factory."""

from __future__ import annotations

from pathlib import Path

from litestar import Litestar

from services.common.settings import Settings, get_settings
from services.common.web import ServiceSpec, build_app

SPEC = ServiceSpec(
    name="callback",
    title="Abonent callback",
    description="Visitors ask for a callback and see an honest promised time; agents are dialed and bridged.",
    route_handlers=[],
    migrations_dir=Path(__file__).parent / "migrations",
)


def create_app(settings: Settings | None = None) -> Litestar:
    return build_app(SPEC, settings or get_settings())
