"""CORS per site: only a site's allowed origins may call its widget API from a browser."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

import msgspec
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)

from services.common.errors import ErrorBody, ErrorResponse

_SITE_PATH = re.compile(r"^/v1/sites/([^/]+)/")
_CALLBACK_PATH = re.compile(r"^/v1/callbacks/([0-9a-fA-F\-]{36})(/|$)")

ALLOWED_HEADERS = "content-type, idempotency-key, x-status-token, x-request-id"
# Date lets the widget correct a visitor's wrong device clock for its countdown.
EXPOSED_HEADERS = "retry-after, x-request-id, date"

# Allowed origins of a site, or None when the site does not exist (the handler answers 404).
OriginLookup = Callable[[str], Awaitable[list[str] | None]]
CallbackSiteLookup = Callable[[uuid.UUID], Awaitable[str | None]]


def _forbidden(origin: str) -> bytes:
    body = ErrorResponse(
        error=ErrorBody(
            code="origin_not_allowed", message=f"{origin} may not call this site's API", field=None
        )
    )
    return msgspec.json.encode(body)


def per_site_cors(
    origins_of: OriginLookup, site_of_callback: CallbackSiteLookup
) -> Callable[[ASGIApp], ASGIApp]:
    """ASGI middleware factory. Requests without Origin (servers, curl) pass: CORS guards browsers only."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def handle(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            headers = dict(scope["headers"])
            origin = headers.get(b"origin", b"").decode("latin-1")
            site_key = await _site_for_path(scope["path"], site_of_callback)
            if not origin or site_key is None:
                await app(scope, receive, send)
                return
            allowed = await origins_of(site_key)
            if allowed is None:
                await app(scope, receive, send)
                return
            preflight = scope["method"] == "OPTIONS" and b"access-control-request-method" in headers
            if origin not in allowed:
                await _send(
                    send,
                    403,
                    _forbidden(origin),
                    [(b"content-type", b"application/json"), (b"vary", b"Origin")],
                )
                return
            cors_headers = [
                (b"access-control-allow-origin", origin.encode()),
                (b"vary", b"Origin"),
            ]
            if preflight:
                await _send(
                    send,
                    204,
                    b"",
                    [
                        *cors_headers,
                        (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                        (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
                        (b"access-control-max-age", b"600"),
                    ],
                )
                return

            async def send_with_cors(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [
                        *message.get("headers", []),
                        *cors_headers,
                        (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
                    ]
                await send(message)

            await app(scope, receive, send_with_cors)

        return handle

    return middleware


async def _site_for_path(path: str, site_of_callback: CallbackSiteLookup) -> str | None:
    if match := _SITE_PATH.match(path):
        return match.group(1)
    if match := _CALLBACK_PATH.match(path):
        try:
            return await site_of_callback(uuid.UUID(match.group(1)))
        except ValueError:
            return None
    return None


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
    }
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)
