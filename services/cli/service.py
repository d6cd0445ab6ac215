"""`abonent run` and `abonent migrate`, and what every command reads from the services' specs."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Sequence
from typing import cast

from services.common.logging import configure_logging
from services.common.migrate import discover, migrate
from services.common.settings import (
    SERVICE_NAMES,
    ServiceName,
    Settings,
    get_section,
    get_settings,
)
from services.common.web import ServiceSpec


def service_spec(name: ServiceName) -> ServiceSpec:
    module = importlib.import_module(f"services.{name}.app")
    return cast(ServiceSpec, module.SPEC)


async def migrate_all(
    settings: Settings, names: Sequence[ServiceName] = SERVICE_NAMES
) -> dict[str, list[str]]:
    applied: dict[str, list[str]] = {}
    for name in names:
        spec = service_spec(name)
        applied[name] = await migrate(settings.database_url, name, discover(spec.migrations_dir))
    return applied


def validate_sections(names: Sequence[ServiceName]) -> None:
    """Read each named service's own settings section now: a bad value stops us before anything starts."""
    for name in names:
        section = service_spec(name).settings_section
        if section is not None:
            get_section(section)


def scope_catalogue() -> dict[str, str]:
    """Every back-office scope the services declare, with what it allows."""
    return {scope: text for name in SERVICE_NAMES for scope, text in service_spec(name).scopes.items()}


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = get_settings()
    if not settings.database_url:
        print("ABONENT_DATABASE_URL is not set", file=sys.stderr)
        return 2
    for name, versions in asyncio.run(migrate_all(settings, args.services or SERVICE_NAMES)).items():
        print(f"{name}: {len(versions)} applied" + (f" ({', '.join(versions)})" if versions else ""))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import uvicorn

    settings = get_settings()
    name: ServiceName = args.service
    validate_sections([name])
    configure_logging(name, settings.log_level, settings.log_format)
    if args.migrate:
        asyncio.run(migrate_all(settings, [name]))
    module = importlib.import_module(f"services.{name}.app")
    app = module.create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port_of(name),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=15,
        # Client address and scheme from X-Forwarded-* only when the peer is a trusted proxy: the per-IP
        # budgets and rate limits read the address uvicorn puts on the request.
        proxy_headers=True,
        forwarded_allow_ips=settings.trusted_proxy_list(),
    )
    return 0
