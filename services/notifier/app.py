"""Notifier app factory and wiring: consumers, timers, webhooks (routes: api, back_office, dev_inbox)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from litestar import Litestar

from services.common import db
from services.common.clock import Clock
from services.common.consumers import CATALOGUE, ConsumerSpec, TransientError
from services.common.crypto import DataProtector
from services.common.events import AnyEvent, Event
from services.common.rotation import EncryptedColumn
from services.common.scheduler import JobHandler, Recurring
from services.common.settings import Settings, get_settings
from services.common.web import Runtime, ServiceSpec, build_app
from services.notifier import store
from services.notifier.api import bind_link, get_recipient, list_messages, lookup_recipient, put_opt_out
from services.notifier.back_office import recipient_page
from services.notifier.channels import max as max_channel
from services.notifier.channels import sms_http, telegram
from services.notifier.channels.base import Channel, DeliveryReceipt, InboundUpdate
from services.notifier.channels.config import build_channels
from services.notifier.channels.sandbox import SandboxChannel
from services.notifier.channels.smpp import SmppChannel
from services.notifier.context import NOTIFIER_ADMIN, NOTIFIER_READ, NotifierContext
from services.notifier.dev_inbox import dev_bind, dev_inbox, dev_receipt, dev_stop
from services.notifier.engine import FALLBACK_JOB, RELEASE_JOB, SWEEP_JOB, ChannelRegistry, Notifier, Sender
from services.notifier.routing import Router, RoutingError, load_router
from services.notifier.settings import NotifierSettings, get_notifier_settings

log = logging.getLogger(__name__)

# Re-exported: tests and tools reach the context through the app module.
__all__ = ["SPEC", "NotifierContext", "create_app", "make_spec"]


ENCRYPTED_COLUMNS = (
    EncryptedColumn(table="recipients", id_column="id", column="phone_enc", context=store.PHONE_CONTEXT),
)


def _events_of(router: Router, stream_prefix: str) -> list[type[Event]]:
    return [CATALOGUE[tag] for tag in router.event_tags if tag.startswith(stream_prefix)]


def _subject_of(event: AnyEvent) -> str:
    """Whom an event is about: its callback or verification case (else itself)."""
    for name in ("callback_id", "case_id"):
        value = getattr(event, name, None)
        if value is not None:
            return f"{name}:{value}"
    return f"event:{event.event_id}"


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
            batch=settings.notify_send_batch,
        )
        runtime.extras["notifier_context"] = context
        return context

    async def handle(conn: db.Connection, event: Event) -> None:
        if context.notifier is None:
            raise TransientError("the notifier is starting")
        await context.notifier.on_event(conn, event)

    async def handle_many(conn: db.Connection, events: Sequence[AnyEvent]) -> None:
        if context.notifier is None:
            raise TransientError("the notifier is starting")
        await context.notifier.on_events(conn, events)

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
                        # One callback's or one case's events one after another (supersede and edit
                        # compare them); different people's side by side.
                        concurrency=4,
                        partition_key=_subject_of,
                        # Lanes of up to 16: planning a lane is a handful of statements for all of it.
                        batch=64,
                        # A batch commits once per lane (the bench's profile: per-message commits and
                        # round trips were most of the cost); recipients are the only rows lanes share.
                        batch_transaction=True,
                        batch_handler=handle_many,
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
        retention=settings.retention_rules(),
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
