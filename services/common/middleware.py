"""ASGI middleware every service shares: request ids with the access log, and per-IP rate limits."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from litestar import Litestar, Request
from litestar.enums import ScopeType
from litestar.exceptions import TooManyRequestsException
from litestar.middleware.rate_limit import RateLimitConfig, RateLimitMiddleware, get_remote_address
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter

from services.common.errors import handle_exception
from services.common.logging import request_id_var

__all__ = ["HTTP_REQUESTS", "RATE_LIMITED", "rate_limit_per_ip", "request_id_middleware"]

access_log = logging.getLogger("abonent.access")

HTTP_REQUESTS = Counter("abonent_http_requests_total", "HTTP requests", ["service", "method", "status"])

# A route handler's `opt` key naming the limiter that counts it (see rate_limit_per_ip).
RATE_LIMITED = "rate_limited"


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


def rate_limit_per_ip(name: str, per_minute: int) -> Callable[[ASGIApp], ASGIApp]:
    """Litestar's built-in rate limiting, per client IP, for routes that carry `opt={"rate_limited": name}`.

    Counts live in the app's "rate_limit" store (process memory unless the app registers another):
    each replica counts on its own. `name` keeps separately limited routes from sharing counts.
    Answers 429 in the one error shape with Retry-After.
    """

    # A coroutine on purpose: Litestar runs a plain function given here in a worker thread, a thread hop
    # for every request of every route just to read a route option.
    async def limited(request: Request[Any, Any, Any]) -> bool:
        return bool(request.route_handler.opt.get(RATE_LIMITED) == name)

    def identifier(request: Request[Any, Any, Any]) -> str:
        return f"{name}:{get_remote_address(request)}"

    config = RateLimitConfig(
        rate_limit=("minute", per_minute),
        check_throttle_handler=limited,
        identifier_for_request=identifier,
    )

    def middleware(app: ASGIApp) -> ASGIApp:
        limiter = RateLimitMiddleware(app, config)

        async def answer_here(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                await limiter(scope, receive, send)
            except TooManyRequestsException as exc:
                # Route handlers' own errors never get here (Litestar answers them inside). Left to
                # propagate, the limiter's 429 would be answered outside every route middleware, without
                # the CORS headers that let a browser widget read it and its Retry-After.
                litestar_app: Litestar = scope["litestar_app"]
                request = litestar_app.request_class(scope)
                response = handle_exception(request, exc)
                await response.to_asgi_response(None, request)(scope, receive, send)

        return answer_here

    return middleware
