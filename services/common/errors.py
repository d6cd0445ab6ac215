"""The API's one error shape: {"error": {"code", "message", "field"}} for every 4xx, and no 500 leaks."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap, HTTPResponseBodyEvent, HTTPResponseStartEvent, Send

from services.common.db import PoolTimeout
from services.common.domain_errors import DomainError, ErrorKind

log = logging.getLogger(__name__)

_CODES_BY_STATUS = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    410: "gone",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    503: "unavailable",
}


class ErrorBody(msgspec.Struct, kw_only=True):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(msgspec.Struct, kw_only=True):
    """What every error looks like on the wire."""

    error: ErrorBody


# What each status means in our API, for the OpenAPI schema (every one of them has the shape above).
_DESCRIPTIONS = {
    400: "Invalid input: a field breaks a rule or holds control characters (`field` names it)",
    401: "No valid bearer token or staff session (see WWW-Authenticate)",
    403: "Not allowed: a missing scope, a failed CSRF or origin check, or a refused request",
    404: "Nothing with this key or id (or not yours to see)",
    409: "The current state does not allow this",
    410: "It existed and is over",
    413: "The body is larger than the service accepts",
    422: "Well-formed, but it cannot be processed",
    429: "A budget or rate limit is spent; Retry-After says when to come back",
    503: "Busy or a dependency is down; Retry-After says when to come back",
}


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI responses in the one error shape, for a route's `responses=`, each described."""
    return {
        status: ResponseSpec(
            ErrorResponse,
            description=_DESCRIPTIONS[status],
            generate_examples=False,
            examples=[
                Example(
                    summary=_CODES_BY_STATUS[status],
                    value={"error": {"code": _CODES_BY_STATUS[status], "message": _DESCRIPTIONS[status]}},
                )
            ],
        )
        for status in statuses
    }


class ApiError(HTTPException):
    """Raise from handlers: a stable machine-readable code, a human message, and the offending field."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code
        self.field = field


def _field_of_validation(exc: ValidationException) -> str | None:
    """The offending field: from msgspec's `$.path`, a `field: ` prefix, or a query/path parameter name."""
    extra = exc.extra
    if not (isinstance(extra, list) and extra and isinstance(extra[0], dict)):
        return None
    message = str(extra[0].get("message", ""))
    if unknown := re.search(r"unknown field `([^`]+)`", message):
        # msgspec names the field, and the object holding it only when that is not the body itself.
        parent = re.search(r"at `\$\.([\w.\[\]]+)`", message)
        return f"{parent.group(1)}.{unknown.group(1)}" if parent else unknown.group(1)
    match = (
        re.search(r"at `\$\.([\w.\[\]]+)`", message)
        # msgspec names a missing top-level field only in the message itself.
        or re.search(r"missing required field `([\w.]+)`", message)
        or re.match(r"^([a-z_][\w.]*): ", message)
    )
    if match:
        return match.group(1)
    key = extra[0].get("key")
    return str(key) if key and key != "data" else None


def _validation_message(exc: ValidationException) -> str:
    extra = exc.extra
    if isinstance(extra, list) and extra and isinstance(extra[0], dict) and extra[0].get("message"):
        return str(extra[0]["message"]).split(" - at ")[0]
    return "The request is not valid"


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> Response[Any]:
    return Response(
        content=ErrorResponse(error=ErrorBody(code=code, message=message, field=field)),
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def with_retry_after(status: int, headers: dict[str, str] | None) -> dict[str, str] | None:
    """Every 429 says when to come back; Litestar's rate limiter only sends its RateLimit-Reset seconds."""
    if status != 429 or any(name.lower() == "retry-after" for name in headers or {}):
        return headers
    reset = next((v for k, v in (headers or {}).items() if k.lower() == "ratelimit-reset"), "1")
    return {**(headers or {}), "Retry-After": str(max(int(reset), 1)) if reset.isdigit() else "1"}


STATUS_OF_KIND: dict[ErrorKind, int] = {
    "invalid": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "gone": 410,
    "too_many": 429,
    "unavailable": 503,
}


# What a request meets while PostgreSQL is down or restarting: refused or reset connections, "the database
# system is starting up" (57P03) and connections cut by its shutdown or crash (57P01, 57P02; class 08).
DATABASE_AWAY: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    ConnectionError,
)


def database_away(exc: BaseException) -> bool:
    """The error, or one it was raised while handling, says PostgreSQL went away (not a bug of ours)."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is short; never loop on a cycle
        if seen is None:
            return False
        if isinstance(seen, DATABASE_AWAY):
            return True
        # asyncpg closing a transaction on a connection the server dropped mid-request.
        if isinstance(seen, asyncpg.InterfaceError) and "connection is closed" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, DomainError):
        status = STATUS_OF_KIND[exc.kind]
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
        return error_response(status, exc.code, exc.message, exc.field, with_retry_after(status, headers))
    if isinstance(exc, ApiError):
        return error_response(exc.status_code, exc.code, exc.detail, exc.field, exc.headers)
    if isinstance(exc, PoolTimeout):
        # Saturated, not broken: say when to come back instead of letting the caller hang or see a 500.
        log.warning("http 503: %s on %s %s", exc, request.method, request.url.path)
        return error_response(
            503,
            "unavailable",
            "The service is busy; please retry shortly",
            headers={"Retry-After": str(exc.retry_after_s)},
        )
    if database_away(exc):
        # PostgreSQL restarting or unreachable: a dependency is down (as /health/ready says), not a bug.
        log.warning("http 503: database unavailable (%r) on %s %s", exc, request.method, request.url.path)
        return error_response(
            503,
            "unavailable",
            "A service we depend on is unavailable; please retry shortly",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, ValidationException):
        return error_response(400, "invalid_request", _validation_message(exc), _field_of_validation(exc))
    if isinstance(exc, HTTPException):
        status = exc.status_code
        if status >= 500:
            log.error("http %s: %s", status, exc.detail)
        code = _CODES_BY_STATUS.get(status, "error")
        return error_response(status, code, exc.detail, headers=with_retry_after(status, exc.headers))
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, "internal", "Something went wrong on our side")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {Exception: handle_exception}


# --- raw ASGI answers, for middleware that refuses a request before the app runs -------------------


async def send_raw(send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """One complete response straight on the ASGI channel."""
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
    }
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)


async def send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """The one error shape, sent by middleware (no Litestar response object exists there)."""
    body = msgspec.json.encode(ErrorResponse(error=ErrorBody(code=code, message=message, field=field)))
    await send_raw(send, status, body, [(b"content-type", b"application/json"), *headers])
