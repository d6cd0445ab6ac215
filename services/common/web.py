"""The service app factory: lifespan (pool, bus, relay, consumers), health, metrics, errors, OpenAPI."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from litestar import Litestar, Response, get
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.common import auth, db, retention
from services.common import bus as busmod
from services.common.auth_guard import provide_principal
from services.common.auth_pages import AUTH_ROUTES
from services.common.clock import Clock
from services.common.consumers import ConsumerRunner, ConsumerSpec
from services.common.errors import EXCEPTION_HANDLERS
from services.common.middleware import request_id_middleware
from services.common.openapi import (
    STATELESS,
    StrictStructSchema,
    decode_json_body_strictly,
    document_error_answers,
)
from services.common.outbox import OutboxRelay
from services.common.retention import RetentionRule
from services.common.rotation import EncryptedColumn
from services.common.scheduler import JobHandler, Recurring, Scheduler
from services.common.settings import ServiceName, Settings, SettingsSection
from services.common.text_guard import reject_control_characters

log = logging.getLogger(__name__)

T = TypeVar("T")

# Background work waits longer than a visitor would (nobody is waiting on it), but not forever: a
# connection leak then shows up as errors in the log instead of a silent stall.
WORKER_ACQUIRE_TIMEOUT_S = 30.0


@dataclass(slots=True)
class Runtime:
    """What a running service holds; lives on app.state.runtime and reaches handlers through DI."""

    settings: Settings
    service: ServiceName
    # For HTTP handlers only.
    pool: db.Pool
    # For background work (relay, consumers, a service's dialers and timers): HTTP cannot starve it.
    worker_pool: db.Pool
    bus: busmod.Bus
    relay: OutboxRelay
    # Durable timers; its handlers come from ServiceSpec.jobs, and retention runs on it.
    scheduler: Scheduler
    consumers: list[ConsumerRunner] = field(default_factory=list)
    shutting_down: bool = False
    # A service's own long-lived components (its use-case objects, feeds, timers), set by its hooks.
    extras: dict[str, Any] = field(default_factory=dict)


Hook = Callable[[Runtime], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """How one service differs from the others; everything else is shared."""

    name: ServiceName
    title: str
    description: str
    route_handlers: Sequence[Any]
    migrations_dir: Path
    consumers: Callable[[Runtime], list[ConsumerSpec]] = lambda _rt: []
    # Started after the pool/bus are up and stopped (in reverse) before they close: dispatchers, timers.
    on_startup: Sequence[Hook] = ()
    on_shutdown: Sequence[Hook] = ()
    # Durable timers: job kind → handler (run in the job's transaction), built after on_startup so
    # handlers can use the service's own components; recurring jobs need a handler for their kind.
    jobs: Callable[[Runtime], Mapping[str, JobHandler]] = lambda _rt: {}
    recurring: Sequence[Recurring] = ()
    # The service's own tables to prune (the plumbing tables are always pruned).
    retention: Sequence[RetentionRule] = ()
    dependencies: dict[str, Provide] = field(default_factory=dict)
    # Pages for people, printed by `abonent up`: (label, path).
    links: Sequence[tuple[str, str]] = ()
    # `abonent up` only: create demo data; gets the settings and the service's base URL, returns
    # (label, value) lines to print (e.g. demo credentials).
    dev_seed: Callable[[Settings, str], Coroutine[Any, Any, list[tuple[str, str]]]] | None = None
    extra_config: Callable[[AppConfig], AppConfig] = lambda c: c
    # The service's own settings section (read from ABONENT_* like the shared one); `abonent run`/`up`
    # load it at start so a bad value stops the process before it serves anything.
    settings_section: type[SettingsSection] | None = None
    # Every column the service encrypts with DataProtector: `abonent keys rotate` re-encrypts these.
    encrypted_columns: Sequence[EncryptedColumn] = ()
    # The back-office scopes this service checks ("<name>:<what>" -> what it allows), for `requires()`,
    # `abonent tokens|staff` and the bootstrap token (ABONENT_ADMIN_TOKEN gets all of them).
    scopes: Mapping[str, str] = field(default_factory=dict)


class ReadinessBody(msgspec.Struct):
    status: str
    checks: dict[str, str]


@get(
    "/health/live",
    tags=["health"],
    summary="Liveness: the process answers",
    include_in_schema=True,
    opt={STATELESS: True},
)
async def live() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/health/ready",
    tags=["health"],
    summary="Readiness: PostgreSQL (both pools) and NATS connections work",
    responses={503: ResponseSpec(data_container=ReadinessBody, description="A dependency is down")},
)
async def ready(state: State) -> Response[ReadinessBody]:
    runtime: Runtime = state.runtime
    checks: dict[str, str] = {}
    for check, pool in (("postgres", runtime.pool), ("postgres_workers", runtime.worker_pool)):
        try:
            await db.ping(pool, timeout=2.0)
            checks[check] = "ok"
        except Exception as exc:
            checks[check] = f"unavailable: {type(exc).__name__}"
    checks["nats"] = "ok" if runtime.bus.connected else "unavailable: not connected"
    if runtime.shutting_down:
        checks["service"] = "shutting down"
    healthy = all(v == "ok" for v in checks.values())
    return Response(
        ReadinessBody("ok" if healthy else "unavailable", checks), status_code=200 if healthy else 503
    )


@get(
    "/metrics",
    tags=["health"],
    summary="Prometheus metrics",
    media_type="text/plain; version=0.0.4",
    opt={STATELESS: True},
)
async def metrics() -> Response[bytes]:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def runtime_extra(state: State, key: str, kind: type[T]) -> T:
    """A service's own component from app.state.runtime.extras, checked against the expected type."""
    runtime: Runtime = state.runtime
    value = runtime.extras[key]
    if not isinstance(value, kind):
        raise TypeError(f"runtime extra {key!r} is {type(value).__name__}, expected {kind.__name__}")
    return value


def _provide_runtime(state: State) -> Runtime:
    runtime: Runtime = state.runtime
    return runtime


def _provide_pool(state: State) -> db.Pool:
    return _provide_runtime(state).pool


def _provide_bus(state: State) -> busmod.Bus:
    return _provide_runtime(state).bus


def build_app(spec: ServiceSpec, settings: Settings, *, clock: Clock | None = None) -> Litestar:
    """One Litestar app per service, with the shared lifespan, routes, errors and OpenAPI.

    `clock` drives the scheduler (tests pass a ManualClock); the wall clock otherwise.
    """
    retention_rules = [*retention.PLUMBING_RULES, *spec.retention]
    # A bad retention setting stops the process now, naming the variable, not at the first prune.
    retention.validate(settings, retention_rules)
    auth.check_declared_scopes(spec.name, spec.scopes)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        pool = await db.create_pool(
            settings.database_url,
            spec.name,
            name="http",
            max_size=settings.db_pool_max,
            acquire_timeout_s=settings.db_acquire_timeout_s,
        )
        worker_pool = await db.create_pool(
            settings.database_url,
            spec.name,
            name="workers",
            max_size=settings.db_worker_pool_max,
            acquire_timeout_s=WORKER_ACQUIRE_TIMEOUT_S,
        )
        async with db.transaction(pool) as conn:
            await auth.register_bootstrap_token(conn, settings.admin_token, sorted(spec.scopes))
        bus = await busmod.connect(
            settings.nats_url,
            f"abonent-{spec.name}",
            settings.nats_namespace,
            settings.stream_replicas,
            stream_max_age_s=settings.stream_max_age_days * 86400.0,
        )
        await bus.ensure_streams()
        relay = OutboxRelay(
            worker_pool,
            bus,
            spec.name,
            settings.database_url,
            poll_interval_s=settings.outbox_poll_interval_s,
            lease_s=settings.outbox_lease_s,
        )
        scheduler = Scheduler(
            worker_pool,
            spec.name,
            settings.database_url,
            clock=clock,
            poll_interval_s=settings.scheduler_poll_interval_s,
        )
        runtime = Runtime(
            settings=settings,
            service=spec.name,
            pool=pool,
            worker_pool=worker_pool,
            bus=bus,
            relay=relay,
            scheduler=scheduler,
        )
        app.state.runtime = runtime
        await relay.start()
        for consumer_spec in spec.consumers(runtime):
            runner = ConsumerRunner(worker_pool, bus, consumer_spec)
            await runner.start()
            runtime.consumers.append(runner)
        for hook in spec.on_startup:
            await hook(runtime)
        for kind, handler in spec.jobs(runtime).items():
            scheduler.register(kind, handler)
        for job in spec.recurring:
            scheduler.every(job)
        retention.install(scheduler, settings, retention_rules)
        await scheduler.start()
        log.info("service started", extra={"service": spec.name})
        try:
            yield
        finally:
            # Graceful: stop taking work, finish in-flight handlers, flush the relay, then close.
            runtime.shutting_down = True
            await scheduler.stop()
            for hook in reversed(spec.on_shutdown):
                with contextlib.suppress(Exception):
                    await hook(runtime)
            for runner in runtime.consumers:
                await runner.stop()
            await relay.stop()
            await bus.close()
            await pool.close()
            await worker_pool.close()
            log.info("service stopped", extra={"service": spec.name})

    config = AppConfig(
        route_handlers=[live, ready, metrics, *AUTH_ROUTES, *spec.route_handlers],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        before_request=decode_json_body_strictly,
        # Before Litestar's own Struct plugin, which would otherwise take every Struct.
        plugins=[StrictStructSchema()],
        dependencies={
            "runtime": Provide(_provide_runtime, sync_to_thread=False),
            "pool": Provide(_provide_pool, sync_to_thread=False),
            "bus": Provide(_provide_bus, sync_to_thread=False),
            "principal": Provide(provide_principal, sync_to_thread=False),
            **spec.dependencies,
        },
        openapi_config=OpenAPIConfig(
            title=spec.title,
            version="1.0.0",
            description=spec.description,
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
        ),
        # Bodies past this are refused with 413 before a handler runs.
        request_max_body_size=64 * 1024,
        debug=False,
    )
    app = Litestar.from_config(spec.extra_config(config))
    document_error_answers(app)
    # Outside Litestar's router and exception handling rather than in `middleware` (which Litestar runs
    # per matched route): so unmatched paths, 405s and errors get a request id and an access-log line too.
    app.asgi_handler = request_id_middleware(reject_control_characters(app.asgi_handler), spec.name)
    return app
