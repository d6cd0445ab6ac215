"""Notifier service app factory: consumers and timers of the engine, the message log, the dev inbox."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import msgspec
from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Litestar, Response, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, JSONBody, QueryParameter
from litestar.response import Redirect

from services.common import db
from services.common.auth_guard import requires
from services.common.clock import Clock
from services.common.consumers import CATALOGUE, ConsumerSpec, TransientError
from services.common.crypto import DataProtector
from services.common.errors import ApiError
from services.common.events import Event
from services.common.rotation import EncryptedColumn
from services.common.scheduler import JobHandler, Recurring
from services.common.settings import Settings, get_settings
from services.common.web import Runtime, ServiceSpec, build_app, runtime_extra
from services.notifier import store
from services.notifier.channels import max as max_channel
from services.notifier.channels import sms_http, telegram
from services.notifier.channels.base import Channel, DeliveryReceipt, InboundUpdate
from services.notifier.channels.config import build_channels
from services.notifier.channels.sandbox import SANDBOX_CHAT, SandboxChannel, sandbox_chat_id
from services.notifier.channels.smpp import SmppChannel
from services.notifier.engine import (
    FALLBACK_JOB,
    RELEASE_JOB,
    SWEEP_JOB,
    ChannelRegistry,
    Notifier,
    Sender,
)
from services.notifier.routing import Router, RoutingError, load_router
from services.notifier.settings import NotifierSettings, get_notifier_settings

log = logging.getLogger(__name__)

NOTIFIER_READ = "notifier:read"
NOTIFIER_ADMIN = "notifier:admin"
_pages = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates" / "pages"),
    autoescape=select_autoescape(["html"]),
)
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}


class NotifierContext:
    """What the app's parts share once the lifespan has built it (consumers start before hooks run)."""

    def __init__(self, router: Router, own: NotifierSettings, sandbox: bool) -> None:
        self.router = router
        self.own = own
        self.sandbox = sandbox
        # HTTP pool for webhook sinks; worker pool for what arrives on provider sessions (SMPP receipts).
        self.pool: db.Pool | None = None
        self.worker_pool: db.Pool | None = None
        self.http: httpx.AsyncClient | None = None
        self.notifier: Notifier | None = None
        self.sender: Sender | None = None
        self.registry: ChannelRegistry | None = None

    def require(self) -> Notifier:
        if self.notifier is None:
            raise ApiError(503, "starting", "The notifier is starting; try again")
        return self.notifier


def _context(state: State) -> NotifierContext:
    return runtime_extra(state, "notifier_context", NotifierContext)


# --- the message log API ---------------------------------------------------------------------------------


class AttemptView(msgspec.Struct, kw_only=True):
    channel: str
    kind: str
    state: str
    fallback: bool
    edited_in_place: bool
    provider_message_id: str | None
    segments: int
    cost_minor: int
    sent_at: dt.datetime | None
    delivered_at: dt.datetime | None
    error: str | None


class TimelineView(msgspec.Struct, kw_only=True):
    at: dt.datetime
    what: str
    channel: str
    detail: str


class MessageView(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    recipient_id: uuid.UUID
    tenant: str
    event_type: str
    event_id: uuid.UUID
    purpose: str
    template: str
    template_version: int
    template_id: str
    lang: str
    text: str
    state: str
    urgent: bool
    legally_required: bool
    send_at: dt.datetime
    expires_at: dt.datetime | None
    deadline: dt.datetime | None
    timing_rule: str
    segments: int
    cost_minor: int
    attempts: list[AttemptView]
    timeline: list[TimelineView]
    created_at: dt.datetime


class RecipientView(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    phone: str  # masked
    lang: str
    tz: str
    tz_rule: str
    phone_invalid: bool
    bindings: dict[str, str]
    opt_outs: list[str]
    binding_log: list[dict[str, Any]]
    cost_minor: int
    messages: list[MessageView]


async def message_views(conn: db.Connection, messages: list[store.MessageRow]) -> list[MessageView]:
    views = []
    for m in messages:
        attempts = await store.attempts_of(conn, m.id)
        timeline = await store.timeline_of(conn, m.id)
        views.append(
            MessageView(
                id=m.id,
                recipient_id=m.recipient_id,
                tenant=m.tenant,
                event_type=m.event_type,
                event_id=m.event_id,
                purpose=m.purpose,
                template=m.template,
                template_version=m.template_version,
                template_id=m.template_id,
                lang=m.lang,
                text=m.body,
                state=m.state,
                urgent=m.urgent,
                legally_required=m.legally_required,
                send_at=m.send_at,
                expires_at=m.expires_at,
                deadline=m.deadline,
                timing_rule=m.timing_rule,
                segments=sum(a.segments for a in attempts if a.kind == "sms"),
                cost_minor=sum(a.cost_minor for a in attempts),
                attempts=[
                    AttemptView(
                        channel=a.channel,
                        kind=a.kind,
                        state=a.state,
                        fallback=a.is_fallback,
                        edited_in_place=bool(a.edit_of),
                        provider_message_id=a.provider_message_id,
                        segments=a.segments,
                        cost_minor=a.cost_minor,
                        sent_at=a.sent_at,
                        delivered_at=a.delivered_at,
                        error=a.error,
                    )
                    for a in attempts
                ],
                timeline=[
                    TimelineView(at=t.at, what=t.what, channel=t.channel, detail=t.detail) for t in timeline
                ],
                created_at=m.created_at,
            )
        )
    return views


async def recipient_view(conn: db.Connection, recipient_id: uuid.UUID, limit: int = 200) -> RecipientView:
    recipient = await store.get_recipient(conn, recipient_id)
    if recipient is None:
        raise ApiError(404, "recipient_not_found", "No such recipient", "recipient_id")
    messages = await message_views(conn, await store.messages_of(conn, recipient_id, limit))
    return RecipientView(
        id=recipient.id,
        phone=recipient.phone_masked,
        lang=recipient.lang,
        tz=recipient.tz,
        tz_rule=recipient.tz_rule,
        phone_invalid=recipient.phone_invalid_at is not None,
        bindings=await store.bindings_of(conn, recipient_id),
        opt_outs=await store.opt_outs_of(conn, recipient_id),
        binding_log=await store.binding_log_of(conn, recipient_id),
        cost_minor=sum(m.cost_minor for m in messages),
        messages=messages,
    )


PoolDependency = NamedDependency[db.Pool]
LimitQuery = Annotated[int, QueryParameter(ge=1, le=500, description="Newest first")]
RecipientQuery = Annotated[uuid.UUID | None, QueryParameter(name="recipient_id", required=False)]


@get(
    "/v1/messages",
    guards=[requires(NOTIFIER_READ)],
    tags=["messages"],
    summary="The message log: newest first, with attempts (segments, cost) and each message's timeline",
)
async def list_messages(
    pool: PoolDependency, recipient_id: RecipientQuery = None, limit: LimitQuery = 50
) -> list[MessageView]:
    async with pool.acquire() as conn:
        return await message_views(conn, await store.messages_of(conn, recipient_id, limit))


@get(
    "/v1/recipients/{recipient_id:uuid}",
    guards=[requires(NOTIFIER_READ)],
    tags=["recipients"],
    summary="One recipient: zone and why, bindings, opt-outs, every message with its timeline and cost",
)
async def get_recipient(recipient_id: FromPath[uuid.UUID], pool: PoolDependency) -> RecipientView:
    async with pool.acquire() as conn:
        return await recipient_view(conn, recipient_id)


class PhoneLookup(msgspec.Struct, kw_only=True):
    phone: str


class RecipientRef(msgspec.Struct, kw_only=True):
    id: uuid.UUID


@post(
    "/v1/recipients/lookup",
    guards=[requires(NOTIFIER_READ)],
    tags=["recipients"],
    summary="Find a recipient by phone (in the body: phones never go into URLs)",
    status_code=200,
)
async def lookup_recipient(data: JSONBody[PhoneLookup], pool: PoolDependency, state: State) -> RecipientRef:
    notifier = _context(state).require()
    async with pool.acquire() as conn:
        found = await store.recipient_by_hash(conn, notifier.phone_hash(data.phone.strip()))
    if found is None:
        raise ApiError(404, "recipient_not_found", "No messages were ever sent to this number", "phone")
    return RecipientRef(id=found.id)


class OptOut(msgspec.Struct, kw_only=True):
    opted_out: bool


@put(
    "/v1/recipients/{recipient_id:uuid}/opt-outs/{category:str}",
    guards=[requires(NOTIFIER_ADMIN)],
    tags=["recipients"],
    summary="Opt a recipient out of (or back into) a category; legally required notices still go",
)
async def put_opt_out(
    recipient_id: FromPath[uuid.UUID],
    category: FromPath[str],
    data: JSONBody[OptOut],
    pool: PoolDependency,
    state: State,
) -> OptOut:
    categories = {route.category for route in _context(state).router.routes}
    if category not in categories:
        raise ApiError(400, "unknown_category", f"Categories: {', '.join(sorted(categories))}", "category")
    async with db.transaction(pool) as conn:
        if await store.get_recipient(conn, recipient_id) is None:
            raise ApiError(404, "recipient_not_found", "No such recipient", "recipient_id")
        await store.set_opt_out(conn, recipient_id, category, data.opted_out)
    return data


class BindRequest(msgspec.Struct, kw_only=True):
    channel: Literal["telegram", "max", "sandbox_chat"]


class BindLink(msgspec.Struct, kw_only=True):
    link: str


@post(
    "/v1/recipients/{recipient_id:uuid}/bind-links",
    guards=[requires(NOTIFIER_ADMIN)],
    tags=["recipients"],
    summary="A signed deep link that binds a messenger once the chat shares a contact with this phone",
    status_code=200,
)
async def bind_link(
    recipient_id: FromPath[uuid.UUID], data: JSONBody[BindRequest], pool: PoolDependency, state: State
) -> BindLink:
    notifier = _context(state).require()
    async with pool.acquire() as conn:
        if await store.get_recipient(conn, recipient_id) is None:
            raise ApiError(404, "recipient_not_found", "No such recipient", "recipient_id")
    return BindLink(link=notifier.binding_link(recipient_id, data.channel))


def page(template: str, **context: Any) -> Response[str]:
    return Response(
        _pages.get_template(template).render(**context), media_type="text/html", headers=PAGE_HEADERS
    )


@get(
    "/back-office/recipients/{recipient_id:uuid}",
    guards=[requires(NOTIFIER_READ)],
    tags=["back office"],
    summary="A recipient's page: every message's timeline (queued, deferred, sent, delivered, ...) and cost",
    include_in_schema=False,
)
async def recipient_page(recipient_id: FromPath[uuid.UUID], pool: PoolDependency) -> Response[str]:
    async with pool.acquire() as conn:
        view = await recipient_view(conn, recipient_id)
    return page("recipient.html", r=view)


# --- the dev inbox (sandbox channel only) -----------------------------------------------------------------


def _sandbox_only(state: State) -> NotifierContext:
    context = _context(state)
    if not context.sandbox:
        raise ApiError(404, "not_found", "The dev inbox exists only with the sandbox channel")
    return context


@get("/dev/inbox", tags=["dev"], include_in_schema=False)
async def dev_inbox(pool: PoolDependency, state: State) -> Response[str]:
    _sandbox_only(state)
    async with pool.acquire() as conn:
        rows = await store.sandbox_messages(conn)
    phones: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        phone = row["address"].removeprefix("chat:")
        phones.setdefault(phone, []).append(row)
    return page("dev_inbox.html", phones=phones, chat=SANDBOX_CHAT)


class ReceiptForm(msgspec.Struct, kw_only=True):
    provider_message_id: str
    status: Literal["delivered", "failed"]


@post("/dev/inbox/receipts", tags=["dev"], include_in_schema=False)
async def dev_receipt(
    data: Annotated[ReceiptForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    pool: PoolDependency,
    state: State,
) -> Redirect:
    notifier = _sandbox_only(state).require()
    async with db.transaction(pool) as conn:
        channel = await store.sandbox_set_status(conn, data.provider_message_id, data.status)
        if channel is None:
            raise ApiError(404, "not_found", "No such sandbox message", "provider_message_id")
        await notifier.on_receipt(
            conn,
            DeliveryReceipt(
                channel=channel,
                provider_message_id=data.provider_message_id,
                status=data.status,
                at=notifier.clock.now(),
                reason="" if data.status == "delivered" else "marked failed in the dev inbox",
            ),
        )
    return Redirect("/dev/inbox", status_code=303)


class BindForm(msgspec.Struct, kw_only=True):
    phone: str


@post("/dev/inbox/bind", tags=["dev"], include_in_schema=False)
async def dev_bind(
    data: Annotated[BindForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    pool: PoolDependency,
    state: State,
) -> Redirect:
    """What a person does in a messenger: open the deep link (/start <token>), then share their contact."""
    notifier = _sandbox_only(state).require()
    chat_id = sandbox_chat_id(data.phone)
    async with db.transaction(pool) as conn:
        recipient = await store.recipient_by_hash(conn, notifier.phone_hash(data.phone))
        if recipient is None:
            raise ApiError(404, "recipient_not_found", "No messages were ever sent to this number", "phone")
        token = notifier.binding_token(recipient.id, SANDBOX_CHAT)
        await notifier.on_update(
            conn, InboundUpdate(channel=SANDBOX_CHAT, kind="start", chat_id=chat_id, token=token)
        )
        await notifier.on_update(
            conn, InboundUpdate(channel=SANDBOX_CHAT, kind="contact", chat_id=chat_id, phone=data.phone)
        )
    return Redirect("/dev/inbox", status_code=303)


@post("/dev/inbox/stop", tags=["dev"], include_in_schema=False)
async def dev_stop(
    data: Annotated[BindForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    pool: PoolDependency,
    state: State,
) -> Redirect:
    """The person sends "stop" in the pretend messenger: the chat is unbound."""
    notifier = _sandbox_only(state).require()
    async with db.transaction(pool) as conn:
        await notifier.on_update(
            conn, InboundUpdate(channel=SANDBOX_CHAT, kind="stop", chat_id=sandbox_chat_id(data.phone))
        )
    return Redirect("/dev/inbox", status_code=303)


# --- wiring ---------------------------------------------------------------------------------------------


ENCRYPTED_COLUMNS = (
    EncryptedColumn(table="recipients", id_column="id", column="phone_enc", context=store.PHONE_CONTEXT),
)


def _events_of(router: Router, stream_prefix: str) -> list[type[Event]]:
    return [CATALOGUE[tag] for tag in router.event_tags if tag.startswith(stream_prefix)]


def make_spec(own: NotifierSettings | None = None, channels: list[Channel] | None = None) -> ServiceSpec:
    """`own` None: this process's ABONENT_* environment (read now: webhook routes need their secrets).
    `channels`: adapters to use instead of the configured providers (tests pass their own); the sandbox's
    two pretend phones (SMS and chat) join them when ABONENT_NOTIFY_CHANNELS lists "sandbox"."""
    try:
        router = load_router()
    except RoutingError as exc:
        raise SystemExit(f"notifier routing: {exc}") from None
    settings = own or get_notifier_settings()
    enabled = settings.enabled()
    context = NotifierContext(router, settings, "sandbox" in enabled)

    async def apply_receipt(pool: db.Pool | None, receipt: DeliveryReceipt) -> None:
        notifier = context.require()
        assert pool is not None
        async with db.transaction(pool) as conn:
            await notifier.on_receipt(conn, receipt)

    async def on_receipt(receipt: DeliveryReceipt) -> None:
        """Receipt webhooks: on the HTTP pool, like every request."""
        await apply_receipt(context.pool, receipt)

    async def on_session_receipt(receipt: DeliveryReceipt) -> None:
        """SMPP deliver_sm receipts arrive on the channel's own session: background work."""
        await apply_receipt(context.worker_pool, receipt)

    async def on_update(update: InboundUpdate) -> None:
        notifier = context.require()
        assert context.pool is not None
        async with db.transaction(context.pool) as conn:
            outcome = await notifier.on_update(conn, update)
        log.info(
            "messenger update", extra={"channel": update.channel, "kind": update.kind, "outcome": outcome}
        )

    def build(runtime: Runtime) -> NotifierContext:
        if context.notifier is not None:  # consumers, jobs and start-up hooks all ask; build once
            return context
        context.pool = runtime.pool
        context.worker_pool = runtime.worker_pool
        context.http = httpx.AsyncClient(follow_redirects=False)
        adapters: list[Channel] = (
            list(channels)
            if channels is not None
            else build_channels(settings, context.http, on_session_receipt)
        )
        if context.sandbox:
            adapters += [
                SandboxChannel(runtime.worker_pool, "messenger"),
                SandboxChannel(runtime.worker_pool, "sms"),
            ]
        registry = ChannelRegistry(adapters)
        try:
            load_router(available_slots=registry.slots())
        except RoutingError as exc:
            raise SystemExit(f"notifier routing: {exc}") from None
        clock: Clock = runtime.scheduler.clock
        notifier = Notifier(router, registry, DataProtector.from_settings(runtime.settings), settings, clock)
        context.registry = registry
        context.notifier = notifier
        context.sender = Sender(
            runtime.worker_pool,
            notifier,
            runtime.service,
            runtime.settings.database_url,
            poll_interval_s=runtime.settings.scheduler_poll_interval_s,
        )
        runtime.extras["notifier_context"] = context
        return context

    async def handle(conn: db.Connection, event: Event) -> None:
        if context.notifier is None:
            raise TransientError("the notifier is starting")
        await context.notifier.on_event(conn, event)

    def consumers(runtime: Runtime) -> list[ConsumerSpec]:
        build(runtime)
        specs = []
        for stream, prefix in (("CALLBACK", "callback."), ("VERIFICATION", "verification.")):
            handles = _events_of(router, prefix)
            if handles:
                specs.append(
                    ConsumerSpec(
                        name=f"notifier_{stream.lower()}",
                        stream=stream,
                        subjects=[f"{prefix}>"],
                        handler=handle,
                        handles=handles,
                    )
                )
        return specs

    def jobs(runtime: Runtime) -> Mapping[str, JobHandler]:
        notifier = build(runtime).require()
        return {
            RELEASE_JOB: notifier.release_job,
            FALLBACK_JOB: notifier.fallback_job,
            SWEEP_JOB: notifier.sweep_job,
        }

    async def start(runtime: Runtime) -> None:
        built = build(runtime)
        assert built.sender is not None
        assert built.registry is not None
        for channel in built.registry.by_name.values():
            if isinstance(channel, SmppChannel):
                await channel.start()  # binds in the background, reconnecting for ever
        await built.sender.start()

    async def finish(runtime: Runtime) -> None:
        if context.sender is not None:
            await context.sender.stop()
        if context.registry is not None:
            await context.registry.close()
        if context.http is not None:
            await context.http.aclose()

    webhooks: list[Any] = []
    if "telegram" in enabled:
        webhooks += telegram.webhook_routes(on_update, settings.telegram_webhook_secret)
    if "max" in enabled:
        webhooks += max_channel.webhook_routes(on_update, settings.max_webhook_secret)
    if {"sms_ru", "smsc"} & set(enabled):
        webhooks += sms_http.receipt_routes(on_receipt, settings.sms_receipt_secret)

    return ServiceSpec(
        name="notifier",
        title="Abonent notifier",
        description="Turns events into messenger messages and SMS, respecting quiet hours, never twice.",
        route_handlers=[
            list_messages,
            get_recipient,
            lookup_recipient,
            put_opt_out,
            bind_link,
            recipient_page,
            dev_inbox,
            dev_receipt,
            dev_bind,
            dev_stop,
            *webhooks,
        ],
        migrations_dir=Path(__file__).parent / "migrations",
        consumers=consumers,
        on_startup=[start],
        on_shutdown=[finish],
        jobs=jobs,
        recurring=[Recurring(SWEEP_JOB, dt.timedelta(seconds=15))],
        links=[("dev inbox", "/dev/inbox")] if context.sandbox else [],
        settings_section=NotifierSettings,
        encrypted_columns=ENCRYPTED_COLUMNS,
        scopes={
            NOTIFIER_READ: "read notifications, recipients and their delivery state",
            NOTIFIER_ADMIN: "opt recipients out of categories and issue messenger binding links",
        },
    )


SPEC = make_spec()


def create_app(
    settings: Settings | None = None,
    notifier_settings: NotifierSettings | None = None,
    *,
    channels: list[Channel] | None = None,
    clock: Clock | None = None,
) -> Litestar:
    """The notifier app; settings default to this process's environment."""
    return build_app(make_spec(notifier_settings, channels), settings or get_settings(), clock=clock)
