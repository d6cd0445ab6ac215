"""The service app factory: lifespan (pool, bus, relay, consumers), health, metrics, errors, OpenAPI."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from litestar import Litestar, Response, get
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from services.common import bus as busmod
from services.common import db
from services.common.errors import EXCEPTION_HANDLERS
from services.common.logging import request_id_var
from services.common.outbox import OutboxRelay
from services.common.settings import ServiceName, Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# Background work waits longer than a visitor would (nobody is waiting on it), but not forever: a
# connection leak then shows up as errors in the log instead of a silent stall.
WORKER_ACQUIRE_TIMEOUT_S = 30.0

HTTP_REQUESTS = Counter("abonent_http_requests_total", "HTTP requests", ["service", "method", "status"])


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
    consumers: list[busmod.ConsumerRunner] = field(default_factory=list)
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
    consumers: Callable[[Runtime], list[busmod.ConsumerSpec]] = lambda _rt: []
    # Started after the pool/bus are up and stopped (in reverse) before they close: dispatchers, timers.
    on_startup: Sequence[Hook] = ()
    on_shutdown: Sequence[Hook] = ()
    dependencies: dict[str, Provide] = field(default_factory=dict)
    # Pages for people, printed by `abonent up`: (label, path).
    links: Sequence[tuple[str, str]] = ()
    # `abonent up` only: create demo data; gets the settings and the service's base URL, returns
    # (label, value) lines to print (e.g. demo credentials).
    dev_seed: Callable[[Settings, str], Coroutine[Any, Any, list[tuple[str, str]]]] | None = None
    extra_config: Callable[[AppConfig], AppConfig] = lambda c: c


class ReadinessBody(msgspec.Struct):
    status: str
    checks: dict[str, str]


@get("/health/live", tags=["health"], summary="Liveness: the process answers", include_in_schema=True)
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


@get("/metrics", tags=["health"], summary="Prometheus metrics", media_type="text/plain; version=0.0.4")
async def metrics() -> Response[bytes]:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Take X-Request-ID from the caller or make one; log lines and the response carry it."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")[:64]
        request_id = incoming or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        status_holder = [0]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
            service = scope["app"].state.get("service_name", "?")
            HTTP_REQUESTS.labels(service, scope.get("method", ""), str(status_holder[0])).inc()

    return middleware


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


def build_app(spec: ServiceSpec, settings: Settings) -> Litestar:
    """One Litestar app per service, with the shared lifespan, routes, errors and OpenAPI."""

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
        bus = await busmod.connect(
            settings.nats_url, f"abonent-{spec.name}", settings.nats_namespace, settings.stream_replicas
        )
        await bus.ensure_streams()
        relay = OutboxRelay(
            worker_pool,
            bus,
            spec.name,
            settings.database_url,
            poll_interval_s=settings.outbox_poll_interval_s,
        )
        runtime = Runtime(
            settings=settings, service=spec.name, pool=pool, worker_pool=worker_pool, bus=bus, relay=relay
        )
        app.state.runtime = runtime
        await relay.start()
        for consumer_spec in spec.consumers(runtime):
            runner = busmod.ConsumerRunner(worker_pool, bus, consumer_spec)
            await runner.start()
            runtime.consumers.append(runner)
        for hook in spec.on_startup:
            await hook(runtime)
        log.info("service started", extra={"service": spec.name})
        try:
            yield
        finally:
            # Graceful: stop taking work, finish in-flight handlers, flush the relay, then close.
            runtime.shutting_down = True
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
        route_handlers=[live, ready, metrics, *spec.route_handlers],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        dependencies={
            "runtime": Provide(_provide_runtime, sync_to_thread=False),
            "pool": Provide(_provide_pool, sync_to_thread=False),
            "bus": Provide(_provide_bus, sync_to_thread=False),
            **spec.dependencies,
        },
        middleware=[request_id_middleware],
        openapi_config=OpenAPIConfig(
            title=spec.title,
            version="1.0.0",
            description=spec.description,
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
        ),
        state=State({"service_name": spec.name}),
        # Bodies past this are refused with 413 before a handler runs.
        request_max_body_size=64 * 1024,
        debug=False,
    )
    return Litestar.from_config(spec.extra_config(config))
