"""CORS per client: the allowed origins are resolved for each request by a resolver the service supplies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
)

from services.common.errors import send_error, send_raw

# The origins allowed to call what this request addresses, or None when the request is not subject to
# per-client CORS (not a client's API, or an unknown client: the handler answers 404).
OriginResolver = Callable[[Scope], Awaitable[Sequence[str] | None]]


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """What an allowed origin may do; the origins themselves come from the resolver."""

    allow_methods: Sequence[str] = ("GET", "POST", "OPTIONS")
    allow_headers: Sequence[str] = ("content-type", "x-request-id")
    # Date lets a browser client correct a visitor's wrong device clock.
    expose_headers: Sequence[str] = ("retry-after", "x-request-id", "date")
    max_age_s: int = 600


def per_client_cors(
    resolve: OriginResolver, policy: CorsPolicy | None = None
) -> Callable[[ASGIApp], ASGIApp]:
    """ASGI middleware factory. Requests without Origin (servers, curl) pass: CORS guards browsers only.

    A disallowed origin gets 403 in the one error shape (not just a missing header), so the refusal is
    visible in logs and to the client's developers; an allowed one gets its own origin echoed, never `*`.
    """
    policy = policy or CorsPolicy()
    allow_methods = ", ".join(policy.allow_methods).encode()
    allow_headers = ", ".join(policy.allow_headers).encode()
    expose_headers = ", ".join(policy.expose_headers).encode()
    max_age = str(policy.max_age_s).encode()

    def middleware(app: ASGIApp) -> ASGIApp:
        async def handle(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            headers = dict(scope["headers"])
            origin = headers.get(b"origin", b"").decode("latin-1")
            allowed = await resolve(scope) if origin else None
            if allowed is None:
                await app(scope, receive, send)
                return
            preflight = scope["method"] == "OPTIONS" and b"access-control-request-method" in headers
            if origin not in allowed:
                await send_error(
                    send,
                    403,
                    "origin_not_allowed",
                    f"{origin} may not call this API",
                    headers=[(b"vary", b"Origin")],
                )
                return
            cors_headers = [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]
            if preflight:
                await send_raw(
                    send,
                    204,
                    b"",
                    [
                        *cors_headers,
                        (b"access-control-allow-methods", allow_methods),
                        (b"access-control-allow-headers", allow_headers),
                        (b"access-control-max-age", max_age),
                    ],
                )
                return

            async def send_with_cors(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [
                        *message.get("headers", []),
                        *cors_headers,
                        (b"access-control-expose-headers", expose_headers),
                    ]
                await send(message)

            await app(scope, receive, send_with_cors)

        return handle

    return middleware
