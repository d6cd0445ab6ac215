"""The message log and recipients API (opt-outs, messenger binding links)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

import msgspec
from litestar import get, post, put
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter

from services.common import db
from services.common.auth_guard import requires
from services.common.errors import ApiError, ErrorResponse
from services.notifier import store
from services.notifier.context import NOTIFIER_ADMIN, NOTIFIER_READ, PoolDependency, notifier_context


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


async def recipient_view(
    conn: db.Connection, recipient_id: uuid.UUID, limit: int = 200, *, tenant: str | None = None
) -> RecipientView:
    """`tenant`: only that owner's messages (and cost); a recipient it never messaged is not found."""
    recipient = await store.get_recipient(conn, recipient_id)
    if recipient is None or (
        tenant is not None and not await store.has_messages_of(conn, recipient_id, tenant)
    ):
        raise ApiError(404, "recipient_not_found", "No such recipient", "recipient_id")
    messages = await message_views(conn, await store.messages_of(conn, recipient_id, limit, tenant=tenant))
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


LimitQuery = Annotated[int, QueryParameter(ge=1, le=500, description="Newest first")]
RecipientQuery = Annotated[uuid.UUID | None, QueryParameter(name="recipient_id", required=False)]
# Whose messages: the callback site (its site key) or 'verification'. The notifier knows no organisations
# (they live in the callback service) and its principals carry none, so this narrows a view; the scopes
# decide who may read at all.
TenantQuery = Annotated[
    str | None,
    QueryParameter(
        name="tenant",
        required=False,
        min_length=1,
        max_length=100,
        description="Only this owner's messages: a callback site key, or 'verification'",
    ),
]


@get(
    "/v1/messages",
    guards=[requires(NOTIFIER_READ)],
    tags=["messages"],
    summary="The message log: newest first, with attempts (segments, cost) and each message's timeline",
)
async def list_messages(
    pool: PoolDependency,
    recipient_id: RecipientQuery = None,
    tenant: TenantQuery = None,
    limit: LimitQuery = 50,
) -> list[MessageView]:
    async with pool.acquire() as conn:
        return await message_views(conn, await store.messages_of(conn, recipient_id, limit, tenant=tenant))


@get(
    "/v1/recipients/{recipient_id:uuid}",
    guards=[requires(NOTIFIER_READ)],
    tags=["recipients"],
    summary="One recipient: zone and why, bindings, opt-outs, every message with its timeline and cost",
)
async def get_recipient(
    recipient_id: FromPath[uuid.UUID], pool: PoolDependency, tenant: TenantQuery = None
) -> RecipientView:
    async with pool.acquire() as conn:
        return await recipient_view(conn, recipient_id, tenant=tenant)


class PhoneLookup(msgspec.Struct, kw_only=True):
    phone: str
    # Only a recipient this owner messaged (a site key, or 'verification').
    tenant: str | None = None


class RecipientRef(msgspec.Struct, kw_only=True):
    id: uuid.UUID


@post(
    "/v1/recipients/lookup",
    guards=[requires(NOTIFIER_READ)],
    tags=["recipients"],
    summary="Find a recipient by phone (in the body: phones never go into URLs)",
    status_code=200,
    responses={404: ResponseSpec(ErrorResponse, description="No messages were ever sent to this number")},
)
async def lookup_recipient(data: JSONBody[PhoneLookup], pool: PoolDependency, state: State) -> RecipientRef:
    notifier = notifier_context(state).require()
    async with pool.acquire() as conn:
        found = await store.recipient_by_hash(conn, notifier.phone_hash(data.phone.strip()))
        if found is not None and data.tenant is not None:
            found = found if await store.has_messages_of(conn, found.id, data.tenant) else None
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
    categories = {route.category for route in notifier_context(state).router.routes}
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
    notifier = notifier_context(state).require()
    async with pool.acquire() as conn:
        if await store.get_recipient(conn, recipient_id) is None:
            raise ApiError(404, "recipient_not_found", "No such recipient", "recipient_id")
    return BindLink(link=notifier.binding_link(recipient_id, data.channel))
