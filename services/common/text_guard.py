"""Control characters never reach a handler: a 400 naming the field, before anything is read or written.

PostgreSQL text and jsonb cannot hold NUL (a NUL anywhere used to surface as a 500), and no field of ours
has a use for the other C0 controls except tab and line breaks in free text. Checking once at the edge
covers every text field of every API: JSON bodies, query parameters and the path (HTML form pages
answer people themselves).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import msgspec
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from services.common.errors import send_error

# In free text (JSON strings, form values) tab, LF and CR are fine; in paths and query strings nothing is.
_FORBIDDEN_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FORBIDDEN_IN_URL = re.compile(r"[\x00-\x1f\x7f]")
# A JSON escape of a forbidden character; raw control bytes are already invalid JSON.
_JSON_CONTROL_ESCAPE = re.compile(rb"\\u00(?:0[0-8bBcCeEfF]|1[0-9a-fA-F]|7[fF])")
# Bodies past this are not buffered here; the app's own body limit refuses them.
_MAX_SCANNED_BODY = 1024 * 1024


def _first_bad_path(value: Any, path: str = "") -> str | None:
    """The JSON path (`settings.name`, `items[2]`) of the first string holding a forbidden character."""
    if isinstance(value, str):
        return path or "body" if _FORBIDDEN_IN_TEXT.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if _FORBIDDEN_IN_TEXT.search(str(key)):
                return child
            found = _first_bad_path(item, child)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _first_bad_path(item, f"{path}[{index}]")
            if found:
                return found
    return None


def _bad_query_field(query: str) -> str | None:
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if _FORBIDDEN_IN_URL.search(name) or _FORBIDDEN_IN_URL.search(value):
            return name if not _FORBIDDEN_IN_URL.search(name) else "query"
    return None


def _bad_json_field(body: bytes) -> str | None:
    if not _JSON_CONTROL_ESCAPE.search(body):
        return None
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None  # not JSON after all: the handler's own decoding answers 400
    return _first_bad_path(document)


async def _refuse(send: Send, field: str) -> None:
    message = "Control characters (such as NUL) are not allowed in text"
    await send_error(send, 400, "invalid_characters", message, field=field)


def reject_control_characters(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: refuse control characters in the path, query and JSON bodies with a 400."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        if _FORBIDDEN_IN_URL.search(scope.get("path", "")):
            await _refuse(send, "path")
            return
        field = _bad_query_field(scope.get("query_string", b"").decode("latin-1"))
        if field is not None:
            await _refuse(send, field)
            return
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        # HTML forms (the sign-in page) answer people with a page of their own, not this JSON error.
        if scope.get("method") in ("GET", "HEAD", "OPTIONS") or "json" not in content_type:
            await app(scope, receive, send)
            return
        # Buffer the body (bounded), check it, then hand the same bytes to the app.
        chunks: list[bytes] = []
        size = 0
        more = True
        messages: list[ReceiveMessage] = []
        while more:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
            if size > _MAX_SCANNED_BODY:
                break
        if not more and size <= _MAX_SCANNED_BODY:
            field = _bad_json_field(b"".join(chunks))
            if field is not None:
                await _refuse(send, field)
                return

        async def replay() -> ReceiveMessage:
            if messages:
                return messages.pop(0)
            return await receive()

        await app(scope, replay, send)

    return middleware
