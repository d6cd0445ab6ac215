"""The back-office guard: `requires(scope)` by bearer token or staff session cookie, CSRF for cookies."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler

from services.common import db
from services.common.auth import SCOPE_PATTERN, Principal, session_principal, token_principal
from services.common.errors import ApiError
from services.common.settings import Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REALM = "abonent"

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]


class AuthRuntime(Protocol):
    """What the guard needs from app.state.runtime (services/common/web.py's Runtime)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def service(self) -> str: ...
    @property
    def pool(self) -> db.Pool: ...


def runtime_of(connection: ASGIConnection[Any, Any, Any, Any]) -> AuthRuntime:
    return cast(AuthRuntime, connection.app.state.runtime)


def session_cookie_name(service: str) -> str:
    # Cookies ignore ports: services on one host need distinct names or they overwrite each other's.
    return f"abonent_staff_{service}"


def own_origin(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """scheme://host[:port] this request was sent to (the scheme as uvicorn's proxy headers set it)."""
    return f"{connection.url.scheme}://{connection.headers.get('host', '')}"


def request_origin(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The Origin header, or the origin of the Referer when a browser sent no Origin."""
    origin = connection.headers.get("origin")
    if origin is None and (referer := connection.headers.get("referer")):
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    return origin


def check_csrf(connection: ASGIConnection[Any, Any, Any, Any], csrf_token: str, given: str | None) -> None:
    """A cookie rides along on cross-site requests; an unsafe one must prove it came from our own page:
    the session's CSRF token, or else an Origin (Referer) equal to this service's own origin."""
    if given and hmac.compare_digest(given.encode(), csrf_token.encode()):
        return
    if request_origin(connection) == own_origin(connection):
        return
    raise ApiError(
        403,
        "csrf_failed",
        "A request signed in by cookie must come from this service's own pages (or send X-CSRF-Token)",
    )


def _unauthorized(message: str, error: str | None = None) -> ApiError:
    challenge = f'Bearer realm="{REALM}"' + (f', error="{error}"' if error else "")
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


async def authenticate(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """A bearer token if the request sends one, else the staff session cookie; 401 when neither holds."""
    runtime = runtime_of(connection)
    authorization = connection.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("Send the token as `Authorization: Bearer <token>`", "invalid_request")
        async with runtime.pool.acquire() as conn:
            principal = await token_principal(conn, token.strip())
        if principal is None:
            raise _unauthorized("The bearer token is unknown, expired or revoked", "invalid_token")
        return principal
    session_id, found = await current_session(connection)
    if session_id:
        if found is None:
            raise _unauthorized("Your session has ended; sign in again at /auth/sign-in")
        principal, csrf_token = found
        if connection.scope.get("method") not in SAFE_METHODS:
            check_csrf(connection, csrf_token, connection.headers.get("x-csrf-token"))
        return principal
    raise _unauthorized("Send `Authorization: Bearer <token>` or sign in at /auth/sign-in")


async def current_session(
    connection: ASGIConnection[Any, Any, Any, Any],
) -> tuple[str | None, tuple[Principal, str] | None]:
    """The staff session cookie's id (None without one) and, while it lives, its principal and CSRF token."""
    runtime = runtime_of(connection)
    session_id = connection.cookies.get(session_cookie_name(runtime.service))
    if not session_id:
        return None, None
    async with runtime.pool.acquire() as conn:
        found = await session_principal(conn, session_id, runtime.settings.session_idle_timeout_s)
    return session_id, found


def requires(*scopes: str) -> Guard:
    """A route guard: the caller must be authenticated and hold every scope named here.

    The principal is then at `request.state.principal` (and the `principal` dependency) for audit."""
    for scope in scopes:
        if not SCOPE_PATTERN.fullmatch(scope):
            raise ValueError(f"not a scope: {scope!r}")

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = await authenticate(connection)
        missing = [scope for scope in scopes if scope not in principal.scopes]
        if missing:
            needed = " ".join(missing)
            raise ApiError(
                403,
                "insufficient_scope",
                f"This needs the scope {needed}",
                headers={
                    "WWW-Authenticate": f'Bearer realm="{REALM}", error="insufficient_scope",'
                    f' scope="{" ".join(scopes)}", error_description="requires scope {needed}"'
                },
            )
        connection.state.principal = principal

    return guard


def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    """Dependency `principal`: who passed this route's `requires(...)` guard."""
    principal = request.state.get("principal")
    if not isinstance(principal, Principal):
        raise _unauthorized("This route has no authentication guard")
    return principal


# For handlers: `async def handler(principal: CurrentPrincipal) -> ...` behind a `requires(...)` guard.
CurrentPrincipal = NamedDependency[Principal]
