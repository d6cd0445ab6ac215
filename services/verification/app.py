"""Verification service app factory (routes arrive with the verification issues)."""

from __future__ import annotations

from pathlib import Path

from litestar import Litestar

from services.common.settings import Settings, get_settings
from services.common.web import ServiceSpec, build_app

SPEC = ServiceSpec(
    name="verification",
    title="Abonent verification",
    description="Subscribers confirm their passport data through an ESIA-style OAuth flow; "
    "companies register corporate SIMs.",
    route_handlers=[],
    migrations_dir=Path(__file__).parent / "migrations",
    scopes={"verification:cases": "read and decide subscriber verification cases"},
)


def create_app(settings: Settings | None = None) -> Litestar:
    return build_app(SPEC, settings or get_settings())
