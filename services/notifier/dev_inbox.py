"""The dev inbox: the sandbox channel's pretend phones, receipts, binding and stop (sandbox only).

Behind the same staff sign-in as the other back-office pages (`abonent up` prints the login): the page
needs notifier:read, its buttons notifier:admin. A browser that is not signed in is sent to the sign-in
page, which brings it back here.
"""

from __future__ import annotations

import urllib.parse
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect

from services.common import db
from services.common.auth_guard import authenticate, requires
from services.common.auth_pages import SIGN_IN_PATH
from services.common.errors import ApiError
from services.notifier import store
from services.notifier.channels.base import DeliveryReceipt, InboundUpdate
from services.notifier.channels.sandbox import SANDBOX_CHAT, sandbox_chat_id
from services.notifier.context import (
    NOTIFIER_ADMIN,
    NOTIFIER_READ,
    NotifierContext,
    PoolDependency,
    notifier_context,
    page,
)


def _sandbox_only(state: State) -> NotifierContext:
    context = notifier_context(state)
    if not context.sandbox:
        raise ApiError(404, "not_found", "The dev inbox exists only with the sandbox channel")
    return context


@get("/dev/inbox", tags=["dev"], include_in_schema=False)
async def dev_inbox(
    request: Request[Any, Any, Any], pool: PoolDependency, state: State
) -> Response[str] | Redirect:
    _sandbox_only(state)
    try:
        principal = await authenticate(request)
    except ApiError as exc:
        if exc.status_code != 401:
            raise
        # A person with a browser: the sign-in page, then back here (like `requires`, but a page).
        return Redirect(f"{SIGN_IN_PATH}?{urllib.parse.urlencode({'next': '/dev/inbox'})}", status_code=303)
    if NOTIFIER_READ not in principal.scopes:
        raise ApiError(403, "insufficient_scope", f"This needs the scope {NOTIFIER_READ}")
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


@post("/dev/inbox/receipts", tags=["dev"], include_in_schema=False, guards=[requires(NOTIFIER_ADMIN)])
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


@post("/dev/inbox/bind", tags=["dev"], include_in_schema=False, guards=[requires(NOTIFIER_ADMIN)])
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


@post("/dev/inbox/stop", tags=["dev"], include_in_schema=False, guards=[requires(NOTIFIER_ADMIN)])
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
