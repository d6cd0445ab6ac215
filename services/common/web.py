"""The service app factory: lifespan (pool, bus, relay, consumers), health, metrics, errors, OpenAPI."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from litestar import Litestar, Request, Response, get
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.enums import RequestEncodingType, ScopeType
from litestar.exceptions import TooManyRequestsException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Schema
from litestar.params import BodyKwarg
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from litestar.typing import FieldDefinition
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from services.common import auth, db, retention
from services.common import bus as busmod
from services.common.auth_guard import provide_principal
from services.common.auth_pages import AUTH_ROUTES
from services.common.clock import Clock
from services.common.consumers import ConsumerRunner, ConsumerSpec
from services.common.errors import EXCEPTION_HANDLERS, error_responses, handle_exception
from services.common.logging import request_id_var
from services.common.outbox import OutboxRelay
from services.common.retention import RetentionRule
from services.common.rotation import EncryptedColumn
from services.common.scheduler import JobHandler, Recurring, Scheduler
from services.common.settings import ServiceName, Settings, SettingsSection
from services.common.text_guard import reject_control_characters

log = logging.getLogger(__name__)
access_log = logging.getLogger("abonent.access")

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


# A route that touches neither PostgreSQL nor NATS: it never answers 503, and its schema says so.
STATELESS = "stateless"


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


def request_id_middleware(app: ASGIApp, service: str) -> ASGIApp:
    """Take X-Request-ID from the caller or make one; log lines and the response carry it.

    Writes the access log: one line per request with the route's path template, never the raw path or
    query string, which carry status tokens, phones and site keys.
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        started = time.perf_counter()
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
            method = scope.get("method", "")
            # Set by the router once a route matched; unmatched paths (404/405) are logged without one.
            route = scope.get("path_template") or None
            # No response started: the client went away or the server failed before answering.
            status = status_holder[0] or 500
            duration_ms = round((time.perf_counter() - started) * 1000, 1)
            access_log.info(
                "%s %s %s %.1fms",
                method,
                route or "(no route)",
                status,
                duration_ms,
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": duration_ms,
                    "service": service,
                },
            )
            request_id_var.reset(token)
            HTTP_REQUESTS.labels(service, method, str(status_holder[0])).inc()

    return middleware


RATE_LIMITED = "rate_limited"


# Per-IP windows kept before the expired ones are swept out (a sweep is one pass over the table).
_WINDOWS_SWEPT_AT = 4096


def rate_limit_per_ip(name: str, per_minute: int) -> Callable[[ASGIApp], ASGIApp]:
    """A fixed one-minute window per client IP, for routes that carry `opt={"rate_limited": name}`.

    Counts live in process memory: each replica counts on its own. `name` keeps separately limited routes
    from sharing counts. Answers 429 in the one error shape with Retry-After, and every limited answer
    carries the RateLimit-* headers (as Litestar's RateLimitMiddleware does, whose windows these are).
    Ours because Litestar's re-encodes the window's whole history as JSON and takes an anyio lock on every
    request: on the offer, the widget's hottest route, that cost more than the offer itself.
    """
    # (count, reset at) per client address; the address is the one uvicorn puts on the scope (after its
    # trusted-proxy handling), as Litestar's get_remote_address reads it.
    windows: dict[str, tuple[int, int]] = {}
    policy = f"{per_minute}; w=60".encode()
    limit = str(per_minute).encode()

    def count(client: str, now: int) -> tuple[int, int]:
        seen, reset = windows.get(client, (0, 0))
        if reset <= now:
            if len(windows) >= _WINDOWS_SWEPT_AT:
                for stale in [k for k, (_, at) in windows.items() if at <= now]:
                    del windows[stale]
            seen, reset = 0, now + 60
        if seen < per_minute:
            windows[client] = (seen + 1, reset)
        return seen, reset

    def headers(seen: int, reset: int, now: int) -> list[tuple[bytes, bytes]]:
        remaining = max(per_minute - seen - 1, 0) if seen < per_minute else 0
        return [
            (b"ratelimit-policy", policy),
            (b"ratelimit-limit", limit),
            (b"ratelimit-remaining", str(remaining).encode()),
            (b"ratelimit-reset", str(reset - now).encode()),
        ]

    def middleware(app: ASGIApp) -> ASGIApp:
        async def answer_here(scope: Scope, receive: Receive, send: Send) -> None:
            handler = scope.get("route_handler")
            if scope["type"] != ScopeType.HTTP or handler is None or handler.opt.get(RATE_LIMITED) != name:
                await app(scope, receive, send)
                return
            client = scope.get("client")
            now = int(time.time())
            seen, reset = count(client[0] if client else "127.0.0.1", now)
            extra = headers(seen, reset, now)
            if seen >= per_minute:
                # Answered here with the route's error shape, inside the route's middleware (CORS), so a
                # browser widget can read the 429 and its Retry-After.
                exc = TooManyRequestsException(headers={k.decode(): v.decode() for k, v in extra})
                litestar_app: Litestar = scope["litestar_app"]
                request = litestar_app.request_class(scope)
                response = handle_exception(request, exc)
                await response.to_asgi_response(None, request)(scope, receive, send)
                return

            async def send_with_limits(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", ()), *extra]
                await send(message)

            await app(scope, receive, send_with_limits)

        return answer_here

    return middleware


# --- the schema tells the truth ---------------------------------------------------------------------------


def error_statuses(route: HTTPRoute, handler: HTTPRouteHandler) -> list[int]:
    """The error statuses any route of ours can answer, from how it is built (a route declares the rest).

    400: a malformed value or control characters (services.common.text_guard), possible on every route.
    401/403: a guard. 404: a path parameter names something that may not exist (a PUT creates what it
    names). 413: a body. 429: the per-IP limiter.
    503: a pool acquire that times out, on every route that is not STATELESS.
    """
    statuses = [400]
    if handler.resolve_guards():
        statuses += [401, 403]
    if route.path_parameters and handler.http_methods != {"PUT"}:
        statuses.append(404)
    if handler.http_methods & {"POST", "PUT", "PATCH"}:
        statuses.append(413)
    if RATE_LIMITED in handler.opt:
        statuses.append(429)
    if not handler.opt.get(STATELESS):
        statuses.append(503)
    return statuses


def document_error_answers(app: Litestar) -> None:
    """Every operation documents the one error shape for the statuses it can answer.

    Litestar would document only a 400 with its own `{status_code, detail, extra}`, which we never send.
    A route's own `responses=` win (a specific example or description). The handlers here are the app's
    own copies (Litestar copies each handler it registers), so other apps built from the same handlers
    are not touched.
    """
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if handler.resolve_include_in_schema():
                derived = error_responses(*error_statuses(route, handler))
                handler.responses = {**derived, **(handler.responses or {})}


class StrictStructSchema(StructSchemaPlugin):
    """msgspec Structs as Litestar documents them, plus `additionalProperties: false` where the Struct
    forbids unknown fields: otherwise the schema invites fields the API then refuses.

    Litestar exports its Struct plugin only from a private module; tests/common/test_openapi_truth.py
    fails if an upgrade moves or changes it."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        if field_definition.type_.__struct_config__.forbid_unknown_fields:
            schema.additional_properties = False
        return schema


async def decode_json_body_strictly(request: Request[Any, Any, Any]) -> None:
    """Refuse a JSON body whose values only fit the schema after coercion (`0` for a bool, `"5"` for an int).

    Litestar converts request data leniently (fine for query strings, where everything is text); for a
    JSON body that accepts what the schema says is invalid. Runs after the guards, before the handler's
    own decoding, which then reads the same cached body.
    """
    data = request.route_handler.parsed_fn_signature.parameters.get("data")
    if data is None:
        return
    kwarg = data.kwarg_definition
    if isinstance(kwarg, BodyKwarg) and kwarg.media_type != RequestEncodingType.JSON:
        return  # forms and the like: their values are text, converted like query strings
    body = await request.body()
    try:
        msgspec.json.decode(body, type=data.annotation, strict=True)
    except msgspec.ValidationError as exc:
        raise ValidationException(extra=[{"message": str(exc), "key": "data", "source": "body"}]) from None
    except msgspec.DecodeError as exc:
        message = f"The body is not JSON: {exc}"
        raise ValidationException(extra=[{"message": message, "key": "data"}]) from None


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
