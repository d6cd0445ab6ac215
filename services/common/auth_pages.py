"""The staff sign-in and sign-out pages every service serves at /auth/..., plain HTML without scripts."""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from jinja2 import Environment, PackageLoader, select_autoescape
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.params import Body, QueryParameter
from litestar.response import Redirect

from services.common.auth import SignInRefused, end_session, sign_in
from services.common.auth_guard import (
    CurrentPrincipal,
    check_csrf,
    current_session,
    own_origin,
    request_origin,
    requires,
    runtime_of,
    session_cookie_name,
)
from services.common.errors import ApiError

SIGN_IN_PATH = "/auth/sign-in"
_LOCAL_PATH = re.compile(r"/[\x21-\x5b\x5d-\x7e]*")
# No scripts, no third-party anything; inline styles only; forms post only to ourselves.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}

_templates = Environment(loader=PackageLoader("services.common", "templates"), autoescape=select_autoescape())


def safe_next(target: str) -> str:
    """Only a path on this service: an open redirect would lend our sign-in page to phishing."""
    # A path only: no scheme-relative "//host", no backslashes browsers read as slashes, no whitespace
    # or control characters that could split the Location header.
    if _LOCAL_PATH.fullmatch(target) and not target.startswith("//"):
        return target
    return SIGN_IN_PATH


def render(request: Request[Any, Any, Any], status: int = 200, **context: Any) -> Response[str]:
    values: dict[str, Any] = {
        "service": runtime_of(request).service,
        "principal": None,
        "csrf_token": "",
        "error": None,
        "message": None,
        "login": "",
        "next": "",
    }
    values.update(context)
    html = _templates.get_template("sign_in.html").render(**values)
    return Response(html, status_code=status, media_type="text/html", headers=PAGE_HEADERS)


@get(SIGN_IN_PATH, include_in_schema=False)
async def sign_in_page(
    request: Request[Any, Any, Any], next_path: Annotated[str, QueryParameter(name="next")] = ""
) -> Response[str]:
    _session_id, session = await current_session(request)
    if session is not None:
        return render(request, principal=session[0], csrf_token=session[1])
    return render(request, next=safe_next(next_path) if next_path else "")


class SignInForm(msgspec.Struct, kw_only=True):
    login: str = ""
    password: str = ""
    next: str = ""


@post(SIGN_IN_PATH, include_in_schema=False, status_code=303)
async def sign_in_submit(
    request: Request[Any, Any, Any],
    data: Annotated[SignInForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[str]:
    # Login CSRF: another site must not sign a visitor into an account of its choosing.
    origin = request_origin(request)
    if origin is not None and origin != own_origin(request):
        raise ApiError(403, "csrf_failed", "Sign in from this service's own sign-in page")
    runtime = runtime_of(request)
    client = request.client.host if request.client else "unknown"
    result = await sign_in(runtime.pool, runtime.settings, data.login, data.password, client)
    keep = {"login": data.login[:64], "next": safe_next(data.next) if data.next else ""}
    if isinstance(result, SignInRefused):
        if result.reason == "rate_limited":
            minutes = -(-result.retry_after_s // 60)
            wait = f"{minutes} minute{'s' if minutes > 1 else ''}"
            response = render(request, 429, error=f"Too many sign-in attempts. Try again in {wait}.", **keep)
            response.headers["Retry-After"] = str(result.retry_after_s)
            return response
        return render(request, 401, error="Wrong login or password.", **keep)
    redirect = Redirect(safe_next(data.next) if data.next else SIGN_IN_PATH, status_code=303)
    redirect.cookies.append(
        Cookie(
            key=session_cookie_name(runtime.service),
            value=result.session_id,
            path="/",
            httponly=True,
            # Lax: a link from elsewhere opens the back office signed in; unsafe methods still need
            # the CSRF check in the guard.
            samesite="lax",
            secure=request.url.scheme == "https",
            max_age=runtime.settings.session_max_age_s,
        )
    )
    return redirect


class SignOutForm(msgspec.Struct, kw_only=True):
    csrf_token: str = ""


@post("/auth/sign-out", include_in_schema=False, status_code=303)
async def sign_out(
    request: Request[Any, Any, Any],
    data: Annotated[SignOutForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[str]:
    runtime = runtime_of(request)
    session_id, found = await current_session(request)
    if session_id:
        if found is not None:
            check_csrf(request, found[1], data.csrf_token)
        async with runtime.pool.acquire() as conn:
            await end_session(conn, session_id)
    redirect = Redirect(SIGN_IN_PATH, status_code=303)
    redirect.delete_cookie(session_cookie_name(runtime.service), path="/")
    return redirect


class WhoAmI(msgspec.Struct, kw_only=True):
    kind: str
    name: str
    scopes: list[str]


@get(
    "/auth/whoami",
    guards=[requires()],
    tags=["auth"],
    summary="Whose bearer token or staff session this is, and its scopes",
)
async def whoami(principal: CurrentPrincipal) -> WhoAmI:
    return WhoAmI(kind=principal.kind, name=principal.name, scopes=list(principal.scopes))


AUTH_ROUTES = [sign_in_page, sign_in_submit, sign_out, whoami]
