"""CRM webhooks: callback events queued per site, phones masked, on the common engine; admin routes."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import Annotated, Any

import msgspec
from litestar import get, post
from litestar.di import NamedDependency
from litestar.handlers.http_handlers import HTTPRouteHandler
from litestar.params import FromPath, QueryParameter
from litestar.types import Guard

from services.callback.store import sites as site_store
from services.callback.usecases.orgs import Organisations, Tenancy
from services.callback.usecases.sites import require_site
from services.common import db
from services.common.consumers import ConsumerSpec
from services.common.crypto import DataProtector
from services.common.errors import error_responses
from services.common.events import AnyEvent, CallbackEvent, encode_event
from services.common.phone import mask_phone
from services.common.webhooks import DeliveryStatus, Endpoint, Resolver, WebhookChannel, WebhookDelivery

# Deliveries of this channel belong to a site (subscriber = site key); each attempt asks the site's
# current URL and secret, so a fixed URL or a rotated secret applies to what is still queued.
CRM_WEBHOOKS = WebhookChannel(name="crm", disabled_reason="webhook turned off for the site")


def crm_endpoints(protector: DataProtector) -> Resolver:
    """The sender's resolver: the site's URL and its secret, opened with the service's keyring."""

    def resolve(conn: db.Connection, site_key: str) -> Awaitable[Endpoint | None]:
        return site_store.crm_webhook_endpoint(conn, protector, site_key)

    return resolve


# Personal data in event payloads. The CRM gets the callback id and can fetch details through an
# authenticated API; a webhook body travels to and is stored by a third party, so it carries only the
# masked form (enough to match by eye).
_PHONE_FIELDS = frozenset({"phone"})


def webhook_payload(event: CallbackEvent) -> bytes:
    """The event as JSON, as the catalogue encodes it, with personal data masked."""
    document: dict[str, Any] = msgspec.json.decode(encode_event(event))
    for name in _PHONE_FIELDS & document.keys():
        if isinstance(document[name], str):
            document[name] = mask_phone(document[name])
    return msgspec.json.encode(document)


# --- consumer -------------------------------------------------------------------------------------------


async def enqueue_webhook(conn: db.Connection, event: AnyEvent) -> None:
    """Queue a delivery of a callback event for its site's CRM; no-op without a webhook URL.

    Runs in the consumer's inbox transaction: the row commits with the inbox mark, so exactly once.
    """
    if not isinstance(event, CallbackEvent):
        return
    if not await site_store.crm_webhook_url(conn, event.site_key):
        return  # the site has no CRM webhook (or no longer exists): nothing to queue
    await CRM_WEBHOOKS.enqueue(
        conn,
        subscriber=event.site_key,
        event_id=event.event_id,
        event_type=str(event.__struct_config__.tag),
        payload=webhook_payload(event),
    )


def webhook_consumer_spec() -> ConsumerSpec:
    return ConsumerSpec(
        name="crm_webhooks", stream="CALLBACK", subjects=["callback.>"], handler=enqueue_webhook
    )


# --- admin routes ---------------------------------------------------------------------------------------


StatusQuery = Annotated[
    DeliveryStatus | None, QueryParameter(name="status", required=False, description="Only this status")
]
LimitQuery = Annotated[int, QueryParameter(name="limit", ge=1, le=500, description="Newest first")]
PoolDependency = NamedDependency[db.Pool]
TenancyDependency = NamedDependency[Tenancy]
OrganisationsDependency = NamedDependency[Organisations]


async def list_webhook_deliveries(
    site_key: FromPath[str],
    pool: PoolDependency,
    tenancy: TenancyDependency,
    status: StatusQuery = None,
    limit: LimitQuery = 50,
) -> list[WebhookDelivery]:
    async with pool.acquire() as conn:
        await require_site(conn, site_key, tenancy)
        return await CRM_WEBHOOKS.list_deliveries(conn, site_key, status=status, limit=limit)


async def retry_webhook_delivery(
    delivery_id: FromPath[uuid.UUID],
    pool: PoolDependency,
    tenancy: TenancyDependency,
    organisations: OrganisationsDependency,
) -> WebhookDelivery:
    # Another organisation's delivery is answered exactly as a missing one.
    await organisations.require_delivery(tenancy, CRM_WEBHOOKS.name, delivery_id)
    async with db.transaction(pool) as conn:
        return await CRM_WEBHOOKS.requeue(conn, delivery_id)


def webhook_routes(guard: Guard) -> list[HTTPRouteHandler]:
    """The back-office routes behind `guard` (the admin guard, passed in: app.py imports this module)."""
    return [
        get(
            "/v1/admin/sites/{site_key:str}/webhook-deliveries",
            guards=[guard],
            tags=["admin"],
            summary="CRM webhook deliveries of a site, newest first",
        )(list_webhook_deliveries),
        post(
            "/v1/admin/webhook-deliveries/{delivery_id:uuid}/retry",
            guards=[guard],
            tags=["admin"],
            summary="Queue a failed CRM webhook delivery again",
            status_code=202,
            responses=error_responses(409),  # only a failed delivery can be queued again
        )(retry_webhook_delivery),
    ]
