"""ASGI middleware every service shares: request ids with the access log, and per-IP rate limits."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.exceptions import TooManyRequestsException
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


# Per-IP windows kept before the expired ones are swept out (a sweep is one pass over the table).
_WINDOWS_SWEPT_AT = 4096


def rate_limit_per_ip(name: str, per_minute: int) -> Callable[[ASGIApp], ASGIApp]:
    """A fixed one-minute window per client IP, for routes that carry `opt={"rate_limited": name}`.

    Counts live in process memory: each replica counts on its own. `name` keeps separately limited routes
    from sharing counts. Answers 429 in the one error shape with Retry-After, and every limited answer
    carries the RateLimit-* headers (as Litestar's RateLimitMiddleware does, whose windows these are).
    Ours because Litestar's re-encodes the window's whole history as JSON and takes an anyio lock on every
    request: on the offer, the widget's hottest route, that cost more than the offer itself.
    """
    # (count, reset at) per client address; the address is the one uvicorn puts on the scope (after its
    # trusted-proxy handling), as Litestar's get_remote_address reads it.
    windows: dict[str, tuple[int, int]] = {}
    policy = f"{per_minute}; w=60".encode()
    limit = str(per_minute).encode()

    def count(client: str, now: int) -> tuple[int, int]:
        seen, reset = windows.get(client, (0, 0))
        if reset <= now:
            if len(windows) >= _WINDOWS_SWEPT_AT:
                for stale in [k for k, (_, at) in windows.items() if at <= now]:
                    del windows[stale]
            seen, reset = 0, now + 60
        if seen < per_minute:
            windows[client] = (seen + 1, reset)
        return seen, reset

    def headers(seen: int, reset: int, now: int) -> list[tuple[bytes, bytes]]:
        remaining = max(per_minute - seen - 1, 0) if seen < per_minute else 0
        return [
            (b"ratelimit-policy", policy),
            (b"ratelimit-limit", limit),
            (b"ratelimit-remaining", str(remaining).encode()),
            (b"ratelimit-reset", str(reset - now).encode()),
        ]

    def middleware(app: ASGIApp) -> ASGIApp:
        async def answer_here(scope: Scope, receive: Receive, send: Send) -> None:
            handler = scope.get("route_handler")
            if scope["type"] != ScopeType.HTTP or handler is None or handler.opt.get(RATE_LIMITED) != name:
                await app(scope, receive, send)
                return
            client = scope.get("client")
            now = int(time.time())
            seen, reset = count(client[0] if client else "127.0.0.1", now)
            extra = headers(seen, reset, now)
            if seen >= per_minute:
                # Answered here with the route's error shape, inside the route's middleware (CORS), so a
                # browser widget can read the 429 and its Retry-After.
                exc = TooManyRequestsException(headers={k.decode(): v.decode() for k, v in extra})
                litestar_app: Litestar = scope["litestar_app"]
                request = litestar_app.request_class(scope)
                response = handle_exception(request, exc)
                await response.to_asgi_response(None, request)(scope, receive, send)
                return

            async def send_with_limits(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", ()), *extra]
                await send(message)

            await app(scope, receive, send_with_limits)

        return answer_here

    return middleware
