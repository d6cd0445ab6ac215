"""Callback service app factory: thin routes over the use cases in usecases/."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import msgspec
from litestar import Litestar, MediaType, Request, Response, get, post, put
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body, FromPath, HeaderParameter, JSONBody, PathParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.response.base import ASGIResponse

from services.callback.attempts import AttemptTracker
from services.callback.call_events import DurableNotices, JetStreamCallEvents, call_event_consumer_spec
from services.callback.console import CONSOLE_ROUTES, admin_routes
from services.callback.cors import per_site_cors
from services.callback.dispatcher import Dispatcher
from services.callback.domain.guard import FORM_TOKEN_MAX_AGE
from services.callback.live import StatusFeed
from services.callback.offers import OfferResponder
from services.callback.organisations import (
    OrgQuery,
    TenancyDependency,
    organisation_routes,
    provide_tenancy,
)
from services.callback.schemas import (
    SITE_KEY_PATTERN,
    ZONE_ENUM,
    CallbackCreate,
    CallbackCreated,
    CallbackStatus,
    Lang,
    Offer,
    Reschedule,
    Site,
    SiteSettings,
    WidgetConfig,
    check_zone,
)
from services.callback.seed import seed_demo
from services.callback.settings import CallbackSettings, get_callback_settings
from services.callback.store import idempotency
from services.callback.store import sites as site_store
from services.callback.telephony import MangoOfficeAdapter, build_adapter
from services.callback.usecases.common import PHONE_CONTEXT, periodically
from services.callback.usecases.intake import Intake
from services.callback.usecases.orgs import Organisations
from services.callback.usecases.presence import Presence, PresenceAgents
from services.callback.usecases.queues import QueueCache
from services.callback.usecases.repromise import Repromiser
from services.callback.usecases.requests import Requests
from services.callback.usecases.sites import SiteAdmin, SiteDirectory
from services.callback.webhooks import CRM_WEBHOOKS, crm_endpoints, webhook_consumer_spec, webhook_routes
from services.callback.widget_assets import WIDGET_ROUTES
from services.common.auth_guard import requires
from services.common.crypto import DataProtector
from services.common.errors import ApiError, ErrorResponse, error_responses
from services.common.middleware import RATE_LIMITED, rate_limit_per_ip
from services.common.retention import RetentionRule
from services.common.rotation import EncryptedColumn
from services.common.settings import Settings, get_settings
from services.common.web import Runtime, ServiceSpec, build_app, runtime_extra
from services.common.webhook_sender import WebhookSender

TokenQuery = Annotated[str | None, QueryParameter(name="token", required=False, description="Status token")]
TokenHeader = Annotated[
    str | None,
    HeaderParameter(name="X-Status-Token", required=False, description="Status token (or ?token=)"),
]
IntakeDependency = NamedDependency[Intake]
OffersDependency = NamedDependency[OfferResponder]
RequestsDependency = NamedDependency[Requests]
SiteAdminDependency = NamedDependency[SiteAdmin]

log = logging.getLogger(__name__)

_PROMISE_EXAMPLE = {
    "kind": "asap",
    "earliest": "2026-11-23T09:00:20Z",
    "latest": "2026-11-23T09:00:40Z",
    "text": "We'll call you within 40 seconds",
}
CREATE_EXAMPLE = Example(
    summary="A visitor asks for a call as soon as possible",
    value={
        "phone": "+7 912 345-67-89",
        "visitor_tz": "Asia/Novosibirsk",
        "lang": "en",
        "consent": True,
        "not_before": "10:00",
        "page_url": "https://shop.example/p/42",
        "utm": {"source": "ya"},
        "visitor_id": "v-7f3a",
        "form_token": "<from the offer>",
        "website": "",
    },
)
CREATED_EXAMPLE = Example(
    summary="Accepted with a promise",
    value={
        "id": "0f8b1c8e-3c1d-4a53-9a3f-0d1b2c3d4e5f",
        "status_token": "<secret>",
        "status": "scheduled",
        "promise": _PROMISE_EXAMPLE,
    },
)
OFFER_EXAMPLE = Example(
    summary="Agents are free",
    value={
        "open_now": True,
        "promise": _PROMISE_EXAMPLE,
        "slot_minutes": 30,
        "slot_ranges": [
            {"start": "2026-11-23T09:30:00Z", "end": "2026-11-23T15:00:00Z"},
            {"start": "2026-11-24T02:00:00Z", "end": "2026-11-24T11:00:00Z"},
        ],
        "form_token": "<opaque>",
        "pow": None,
    },
)
STATUS_EXAMPLE = Example(
    summary="Retrying after no answer",
    value={
        "id": "0f8b1c8e-3c1d-4a53-9a3f-0d1b2c3d4e5f",
        "status": "scheduled",
        "text": "We'll call you within 9 minutes",
        "promise": _PROMISE_EXAMPLE,
        "attempts": 1,
        "max_attempts": 3,
        "retry_plan": {
            "attempts_left": 2,
            "next_attempt_at": "2026-11-23T09:10:40Z",
            "last_attempt_by": "2026-11-23T09:20:40Z",
        },
        "outcome": "visitor_no_answer",
        "updated_at": "2026-11-23T09:00:55Z",
    },
)
ERROR_EXAMPLE = Example(
    summary="One error shape for every 4xx",
    value={
        "error": {"code": "invalid_phone", "message": "This is not a valid phone number", "field": "phone"}
    },
)
# As a path parameter (Litestar documents a path parameter's pattern only from PathParameter).
NewSiteKey = Annotated[str, PathParameter(pattern=SITE_KEY_PATTERN, examples=[Example(value="shop-42")])]
# The widget API answers a browser from an origin its site does not allow with a 403.
CROSS_ORIGIN = error_responses(403)
Feed = NamedDependency[StatusFeed]
LangQuery = Annotated[Lang | None, QueryParameter(name="lang", required=False)]


def intake_of(state: State) -> Intake:
    return runtime_extra(state, "intake", Intake)


def offers_of(state: State) -> OfferResponder:
    return runtime_extra(state, "offers", OfferResponder)


def requests_of(state: State) -> Requests:
    return runtime_extra(state, "requests", Requests)


def site_admin_of(state: State) -> SiteAdmin:
    return runtime_extra(state, "site_admin", SiteAdmin)


def presence_of(state: State) -> Presence:
    return runtime_extra(state, "presence", Presence)


def feed_of(state: State) -> StatusFeed:
    return runtime_extra(state, "feed", StatusFeed)


def organisations_of(state: State) -> Organisations:
    return runtime_extra(state, "organisations", Organisations)


# Sites, agents, webhook deliveries and punctuality: a token or a staff session with callback:admin.
CALLBACK_ADMIN = "callback:admin"
admin_only = requires(CALLBACK_ADMIN)


# --- back office ----------------------------------------------------------------------------------------


@put(
    "/v1/admin/sites/{site_key:str}",
    guards=[admin_only],
    tags=["admin"],
    summary="Create or replace a site",
    # 404: `?org=` names no organisation (or not the caller's); 409: the key belongs to another one.
    responses={201: ResponseSpec(Site, description="Created"), **error_responses(404, 409)},
)
async def put_site(
    site_key: NewSiteKey,
    data: JSONBody[SiteSettings],
    site_admin: SiteAdminDependency,
    tenancy: TenancyDependency,
    org: OrgQuery = None,
) -> Response[Site]:
    """`crm_webhook_secret` is write-only: absent keeps the current one, "" clears it. The site belongs to
    the caller's organisation (a platform admin names it with `?org=`) and never changes organisation."""
    site, created = await site_admin.put(site_key, data, tenancy, org)
    return Response(site, status_code=201 if created else 200)


@get("/v1/admin/sites/{site_key:str}", guards=[admin_only], tags=["admin"], summary="Read a site")
async def get_site(
    site_key: FromPath[str], site_admin: SiteAdminDependency, tenancy: TenancyDependency
) -> Site:
    return await site_admin.get(site_key, tenancy)


@get("/v1/admin/sites", guards=[admin_only], tags=["admin"], summary="List sites")
async def list_sites(site_admin: SiteAdminDependency, tenancy: TenancyDependency) -> list[Site]:
    return await site_admin.list_sites(tenancy)


# --- widget API -----------------------------------------------------------------------------------------

# Seconds a browser may reuse an offer without asking; the widget revalidates (ETag) instead.
OFFER_MAX_AGE_S = 5
OFFER_CACHE_CONTROL = f"private, max-age={OFFER_MAX_AGE_S}"


@get(
    "/v1/sites/{site_key:str}/config",
    tags=["widget"],
    summary="What the widget shows for this site",
    cache_control=None,
    responses=CROSS_ORIGIN,
)
async def widget_config(
    site_key: FromPath[str], intake: IntakeDependency, lang: LangQuery = None
) -> Response[WidgetConfig]:
    config = await intake.widget_config(site_key, lang)
    return Response(config, headers={"Cache-Control": "public, max-age=300"})


@get(
    "/v1/sites/{site_key:str}/offer",
    tags=["widget"],
    summary="The promise we would give now, and slots",
    responses={
        **CROSS_ORIGIN,
        200: ResponseSpec(Offer, examples=[OFFER_EXAMPLE], description="The offer"),
        304: ResponseSpec(
            None,
            generate_examples=False,
            description="Unchanged since the offer with this ETag (`If-None-Match`): reuse it, form token "
            "included, while that token is unspent",
        ),
        400: ResponseSpec(ErrorResponse, examples=[ERROR_EXAMPLE], description="Bad time zone"),
        429: ResponseSpec(ErrorResponse, description="Too many offers for this IP; see Retry-After"),
    },
    # Cheap now (the queue's estimate is shared), but still the widget API's most scrapable route.
    opt={RATE_LIMITED: "offer"},
)
async def offer(
    site_key: FromPath[str],
    offers: OffersDependency,
    *,
    tz: Annotated[
        str, QueryParameter(name="tz", description="Visitor's IANA time zone", schema_extra=ZONE_ENUM)
    ] = "Europe/Moscow",
    lang: Annotated[Lang, QueryParameter(name="lang")] = "ru",
    not_before: Annotated[
        str | None, QueryParameter(name="not_before", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    ] = None,
    if_none_match: Annotated[
        str | None, HeaderParameter(name="If-None-Match", required=False, max_length=200)
    ] = None,
) -> ASGIResponse:
    """Cacheable for a few seconds per site, zone, language and "not before" (the URL), in the visitor's
    browser only: the body carries a one-time form token, so shared caches must not hand it to others.
    The body comes pre-encoded (offers.py): it is documented as `Offer` above."""
    try:
        check_zone(tz, "tz")
    except ValueError as exc:
        raise ApiError(400, "invalid_timezone", str(exc).split(": ", 1)[1], "tz") from None
    body, etag = await offers.answer(site_key, tz, lang, not_before)
    headers = {"Cache-Control": OFFER_CACHE_CONTROL, "ETag": etag}
    # Sent as it is: the body is already JSON, so Litestar's Response (its encoding and header
    # normalising) would only repeat work on the widget's most frequent request.
    if if_none_match is not None and etag in {tag.strip() for tag in if_none_match.split(",")}:
        return ASGIResponse(status_code=304, headers=headers)
    return ASGIResponse(body=body, media_type=MediaType.JSON, headers=headers)


@post(
    "/v1/sites/{site_key:str}/callbacks",
    tags=["widget"],
    summary="Ask for a callback",
    status_code=201,
    responses={
        # 403 also for a suspected bot; 409 for an Idempotency-Key reused with another body.
        **error_responses(403, 409),
        201: ResponseSpec(CallbackCreated, examples=[CREATED_EXAMPLE], description="Accepted"),
        400: ResponseSpec(ErrorResponse, examples=[ERROR_EXAMPLE], description="Invalid input"),
        429: ResponseSpec(ErrorResponse, description="A budget is exhausted; see Retry-After"),
    },
)
async def create_callback(
    site_key: FromPath[str],
    data: Annotated[CallbackCreate, Body(examples=[CREATE_EXAMPLE])],
    request: Request[Any, Any, Any],
    intake: IntakeDependency,
    idempotency_key: Annotated[
        str | None, HeaderParameter(name="Idempotency-Key", required=False, max_length=100)
    ] = None,
) -> Response[CallbackCreated]:
    client_ip = request.client.host if request.client else "unknown"
    status_code, created = await intake.create(
        site_key, data, client_ip=client_ip, idempotency_key=idempotency_key
    )
    runtime: Runtime = request.app.state.runtime
    runtime.extras["dialer"].wake()  # a hot lead: try to dispatch now, not at the next tick
    return Response(created, status_code=status_code)


@get(
    "/v1/callbacks/{callback_id:uuid}",
    tags=["widget"],
    summary="Status of a callback request",
    responses={
        **CROSS_ORIGIN,
        200: ResponseSpec(CallbackStatus, examples=[STATUS_EXAMPLE], description="The status"),
    },
)
async def callback_status(
    callback_id: FromPath[uuid.UUID],
    requests: RequestsDependency,
    token: TokenQuery = None,
    header_token: TokenHeader = None,
) -> Response[CallbackStatus]:
    status = await requests.status(callback_id, header_token or token)
    return Response(status, headers={"Cache-Control": "no-store"})


@get(
    "/v1/callbacks/{callback_id:uuid}/events",
    tags=["widget"],
    summary="Live status (Server-Sent Events)",
    responses=CROSS_ORIGIN,
)
async def callback_events(
    callback_id: FromPath[uuid.UUID], requests: RequestsDependency, feed: Feed, token: TokenQuery = None
) -> ServerSentEvent:
    watched = await requests.watched_callback(callback_id, token)  # 404 before the stream opens

    async def stream() -> AsyncIterator[ServerSentEventMessage]:
        # Watch first, then read: a change between the two still wakes us. Every wake-up and every
        # keep-alive re-reads the row, so a missed notification costs at most one keep-alive period.
        async with feed.watch(watched) as wakeups:
            last: CallbackStatus | None = None
            while True:
                current = await requests.status(callback_id, token)
                if last is None or (current.status, current.updated_at) != (last.status, last.updated_at):
                    last = current
                    yield ServerSentEventMessage(event="status", data=msgspec.json.encode(current).decode())
                if current.status in ("completed", "failed", "cancelled", "expired"):
                    return
                try:
                    await asyncio.wait_for(wakeups.get(), timeout=15)
                except TimeoutError:
                    yield ServerSentEventMessage(comment="keep-alive")

    return ServerSentEvent(stream(), headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@post(
    "/v1/callbacks/{callback_id:uuid}/cancel",
    tags=["widget"],
    summary="Cancel a pending request",
    status_code=200,
    responses=error_responses(403, 409),
)
async def cancel_callback(
    callback_id: FromPath[uuid.UUID],
    requests: RequestsDependency,
    token: TokenQuery = None,
    header_token: TokenHeader = None,
) -> CallbackStatus:
    return await requests.cancel(callback_id, header_token or token)


@post(
    "/v1/callbacks/{callback_id:uuid}/reschedule",
    tags=["widget"],
    summary="Move a pending request",
    status_code=200,
    responses=error_responses(403, 409),
)
async def reschedule_callback(
    callback_id: FromPath[uuid.UUID],
    data: JSONBody[Reschedule],
    requests: RequestsDependency,
    token: TokenQuery = None,
    header_token: TokenHeader = None,
) -> CallbackStatus:
    return await requests.reschedule(callback_id, header_token or token, data)


@post(
    "/telephony/mango/{path:path}",
    tags=["telephony"],
    summary="Mango Office call-event webhooks",
    status_code=200,
    responses=error_responses(403, 503),
)
async def mango_webhook(path: FromPath[str], request: Request[Any, Any, Any]) -> dict[str, str]:
    """Mango signs every notification with sha256(api_key + json + salt); unsigned ones are refused. The
    notice is stored durably before 200 (any replica applies it); 503 when it cannot be, so Mango resends."""
    runtime: Runtime = request.app.state.runtime
    adapter = runtime.extras["dialer"].adapter
    if not isinstance(adapter, MangoOfficeAdapter):
        raise ApiError(404, "not_found", "Mango Office telephony is not configured")
    form = {key: str(value) for key, value in (await request.form()).items()}
    try:
        accepted = await adapter.handle_webhook(path, form)
    except Exception as exc:
        log.warning("Mango notification not stored; Mango will resend it: %r", exc)
        raise ApiError(503, "unavailable", "The notification could not be stored; send it again") from exc
    if not accepted:
        raise ApiError(403, "bad_signature", "The notification signature does not match")
    return {"result": "ok"}


# --- wiring ---------------------------------------------------------------------------------------------


def _started_tracker(runtime: Runtime) -> AttemptTracker | None:
    """This replica's attempt tracker once start() has built it (the consumers start before it)."""
    dialer = runtime.extras.get("dialer")
    return dialer.attempts if isinstance(dialer, Dispatcher) else None


class CallbackContext:
    """Components the CORS middleware needs before the lifespan has built them."""

    # A callback never changes site: remember the answer instead of querying on every status poll.
    SITE_CACHE_SIZE = 10_000

    def __init__(self) -> None:
        self.site_admin: SiteAdmin | None = None
        self._site_of: OrderedDict[uuid.UUID, str] = OrderedDict()

    async def origins_of(self, site_key: str) -> list[str] | None:
        if self.site_admin is None:
            return None
        site = await self.site_admin.directory.get(site_key)
        return None if site is None else site.settings.allowed_origins

    async def site_of_callback(self, callback_id: uuid.UUID) -> str | None:
        if self.site_admin is None:
            return None
        if (cached := self._site_of.get(callback_id)) is not None:
            self._site_of.move_to_end(callback_id)
            return cached
        site_key = await self.site_admin.site_of_callback(callback_id)
        if site_key is not None:
            self._site_of[callback_id] = site_key
            if len(self._site_of) > self.SITE_CACHE_SIZE:
                self._site_of.popitem(last=False)
        return site_key


# What `abonent keys rotate` re-encrypts: every DataProtector column, with the context and row id it uses.
ENCRYPTED_COLUMNS = (
    EncryptedColumn(table="callbacks", id_column="id", column="phone_enc", context=PHONE_CONTEXT),
    EncryptedColumn(
        table="sites",
        id_column="site_key",
        column="crm_webhook_secret_enc",
        context=site_store.WEBHOOK_SECRET_CONTEXT,
    ),
    EncryptedColumn(
        table="idempotency_keys",
        id_column="id",
        column="status_token_enc",
        context=idempotency.IDEMPOTENT_TOKEN_CONTEXT,
    ),
)


def make_spec(context: CallbackContext, section: CallbackSettings | None = None) -> ServiceSpec:
    """`section` None: this process's ABONENT_* environment, read when the app is built."""
    stop = asyncio.Event()

    def own_settings() -> CallbackSettings:
        return section or get_callback_settings()

    async def start(runtime: Runtime) -> None:
        protector = DataProtector.from_settings(runtime.settings)
        sites = SiteDirectory(runtime.pool)
        site_admin = SiteAdmin(runtime.pool, protector, sites)
        await site_admin.seal_plain_webhook_secrets()
        context.site_admin = site_admin
        agents = PresenceAgents()
        # One read of each queue state, shared by offers and requests; forgotten on any change we hear of.
        queues = QueueCache(agents, sites, ttl_s=own_settings().queue_cache_ttl_s)
        intake = Intake(runtime.pool, protector, sites, agents=agents, queues=queues)
        requests = Requests(runtime.pool, sites, agents=agents, on_queue_changed=queues.forget)
        repromiser = Repromiser(runtime.worker_pool, sites, agents)

        def queues_changed(org_id: str, names: list[str]) -> None:
            queues.forget(org_id, names)
            repromiser.notice_queues(org_id, names)

        presence = Presence(runtime.pool, protector, sites, on_queues_changed=queues_changed)
        organisations = Organisations(runtime.pool)
        # Background work runs on the worker pool: a flood of widget requests cannot stop dialing.
        background = Requests(runtime.worker_pool, sites, agents=agents, on_queue_changed=queues.forget)
        feed = StatusFeed(runtime.bus, listeners=[queues.notice_event, repromiser.notice_event])
        await feed.start()
        own = own_settings()
        adapter = build_adapter(own.telephony, own.telephony_config())
        # Call events travel through JetStream (call_events.py): durable while PostgreSQL blinks, and
        # applied by whichever replica's consumer gets them.
        call_events = JetStreamCallEvents(runtime.bus)
        if isinstance(adapter, MangoOfficeAdapter):
            # Its webhooks may reach any replica: notices are carried, call states kept in PostgreSQL.
            adapter.carry_notices(DurableNotices(runtime.worker_pool, call_events, adapter.name))
        dialer = Dispatcher(
            runtime.worker_pool,
            protector,
            sites,
            adapter,
            placing_lease_s=own.placing_lease_s,
            sink=call_events,
            database_url=runtime.settings.database_url,
            bus=runtime.bus,
        )
        await dialer.start()
        webhook_http = httpx.AsyncClient(follow_redirects=False)
        webhooks = WebhookSender(runtime.worker_pool, webhook_http, CRM_WEBHOOKS, crm_endpoints(protector))
        await webhooks.start()
        runtime.extras.update(
            intake=intake,
            offers=OfferResponder(intake),
            requests=requests,
            site_admin=site_admin,
            presence=presence,
            organisations=organisations,
            feed=feed,
            dialer=dialer,
            webhooks=webhooks,
            webhook_http=webhook_http,
            repromise=repromiser,
        )
        runtime.extras["sweeper"] = asyncio.create_task(periodically(60, background.expire_overdue, stop))
        runtime.extras["repromiser"] = asyncio.create_task(repromiser.run(stop))

    async def finish(runtime: Runtime) -> None:
        stop.set()
        await runtime.extras["dialer"].stop()
        await runtime.extras["webhooks"].stop()
        await runtime.extras["webhook_http"].aclose()
        await runtime.extras["feed"].stop()
        await runtime.extras["sweeper"]
        runtime.extras["repromise"].wake()
        await runtime.extras["repromiser"]

    def add_cors_and_limits(config: AppConfig) -> AppConfig:
        config.middleware.insert(0, per_site_cors(context.origins_of, context.site_of_callback))
        config.middleware.append(rate_limit_per_ip("offer", own_settings().offer_rate_limit_per_minute))
        return config

    return ServiceSpec(
        name="callback",
        title="Abonent callback",
        description="Visitors ask for a callback and see an honest promised time; agents are dialed and "
        'bridged. Every 4xx has the shape {"error": {"code", "message", "field"}}.',
        route_handlers=[
            put_site,
            get_site,
            list_sites,
            widget_config,
            offer,
            create_callback,
            callback_status,
            callback_events,
            cancel_callback,
            reschedule_callback,
            *admin_routes(admin_only),
            *organisation_routes(admin_only),
            *webhook_routes(admin_only),
            mango_webhook,
            *WIDGET_ROUTES,
            *CONSOLE_ROUTES,
        ],
        links=[
            ("demo shop", "/demo"),
            ("agent console", "/agent"),
            ("punctuality dashboard", "/agent/dashboard"),
        ],
        dev_seed=seed_demo,
        migrations_dir=Path(__file__).parent / "migrations",
        consumers=lambda runtime: [
            webhook_consumer_spec(),
            call_event_consumer_spec(lambda: _started_tracker(runtime)),
        ],
        on_startup=[start],
        on_shutdown=[finish],
        retention=[
            RetentionRule("idempotency_keys", "created_at", "retention_idempotency_keys_hours"),
            # A spent token pruned while it could still be presented would be accepted again.
            RetentionRule(
                "spent_form_tokens", "spent_at", "retention_form_tokens_hours", minimum=FORM_TOKEN_MAX_AGE
            ),
        ],
        dependencies={
            "intake": Provide(intake_of, sync_to_thread=False),
            "offers": Provide(offers_of, sync_to_thread=False),
            "requests": Provide(requests_of, sync_to_thread=False),
            "site_admin": Provide(site_admin_of, sync_to_thread=False),
            "presence": Provide(presence_of, sync_to_thread=False),
            "feed": Provide(feed_of, sync_to_thread=False),
            "organisations": Provide(organisations_of, sync_to_thread=False),
            "tenancy": Provide(provide_tenancy),
        },
        extra_config=add_cors_and_limits,
        settings_section=CallbackSettings,
        encrypted_columns=ENCRYPTED_COLUMNS,
        scopes={CALLBACK_ADMIN: "sites, agents, webhook deliveries and punctuality (the /v1/admin API)"},
    )


SPEC = make_spec(CallbackContext())


def create_app(
    settings: Settings | None = None, callback_settings: CallbackSettings | None = None
) -> Litestar:
    """The callback app; each settings section defaults to this process's environment."""
    return build_app(make_spec(CallbackContext(), callback_settings), settings or get_settings())
