"""The subscriber's pages: the link, the sign-in start, the IdP's return and the outcome."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Any

from litestar import Request, Response, get
from litestar.datastructures import Cookie
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect

from services.verification import pages
from services.verification.deps import Service
from services.verification.usecases import VerificationService

BROWSER_COOKIE = "abonent_vf"
STATIC = Path(__file__).parent / "static"

LangQuery = Annotated[str | None, QueryParameter(name="lang", required=False, max_length=5)]


def _browser_cookie(request: Request[Any, Any, Any], secure: bool) -> tuple[str, Cookie | None]:
    """The random value that binds a sign-in to this browser (a callback from another one is refused)."""
    current = request.cookies.get(BROWSER_COOKIE, "")
    if 20 <= len(current) <= 64:
        return current, None
    value = secrets.token_urlsafe(24)
    cookie = Cookie(
        key=BROWSER_COOKIE,
        value=value,
        path="/v",
        httponly=True,
        secure=secure,
        samesite="lax",
        max_age=86400,
    )
    return value, cookie


def _link_page(service: VerificationService, found: Any, lang_query: str | None) -> Response[str]:
    operator = service.own.verification_operator_name
    case = found.case
    lang = pages.pick_lang(lang_query, case.lang if case is not None else "ru")
    if found.kind == "active" and case is not None:
        page = pages.active_page(
            lang=lang,
            token=found.token,
            operator=operator,
            msisdn=found.msisdn,
            reason=case.reason,
            deadline=case.deadline,
            tz=case.tz,
            suspended=case.status == "suspended",
        )
        return pages.render(page)
    page = pages.refused_page(
        lang=lang, kind=found.kind, operator=operator, token=found.token, outcome=found.outcome
    )
    return pages.render(page, status_code=404 if found.kind == "forged" else 410)


@get("/v/static/page.css", include_in_schema=False, media_type="text/css")
async def page_css() -> Response[bytes]:
    return Response(
        (STATIC / "page.css").read_bytes(),
        media_type="text/css",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@get("/v/callback", include_in_schema=False)
async def sign_in_return(
    *,
    request: Request[Any, Any, Any],
    service: Service,
    oauth_state: Annotated[str, QueryParameter(name="state", required=False, max_length=100)] = "",
    code: Annotated[str, QueryParameter(required=False, max_length=4096)] = "",
    error: Annotated[str, QueryParameter(required=False, max_length=200)] = "",
    error_description: Annotated[str, QueryParameter(required=False, max_length=1000)] = "",
) -> Response[Any]:
    """Where the IdP sends the browser back (`redirect_uri`); then on to the outcome page (reload-safe)."""
    result = await service.finish_sign_in(
        state=oauth_state,
        code=code,
        error=error,
        error_description=error_description,
        browser_secret=request.cookies.get(BROWSER_COOKIE, ""),
    )
    if result.kind == "outcome" and result.token:
        return Redirect(
            f"/v/{result.token}/result?lang={result.lang}", status_code=303, headers=pages.PAGE_HEADERS
        )
    lang = pages.pick_lang(None, result.lang)
    page = pages.refused_page(
        lang=lang, kind=result.kind, operator=service.own.verification_operator_name, token=result.token
    )
    return pages.render(page, status_code=400)


@get("/v/{token:str}", include_in_schema=False)
async def link_page(token: FromPath[str], service: Service, lang: LangQuery = None) -> Response[str]:
    return _link_page(service, await service.open_link(token[:64]), lang)


@get("/v/{token:str}/start", include_in_schema=False)
async def start_sign_in(
    request: Request[Any, Any, Any], token: FromPath[str], service: Service, lang: LangQuery = None
) -> Response[Any]:
    browser, cookie = _browser_cookie(request, service.public_url.startswith("https://"))
    found, url = await service.start_sign_in(token[:64], browser)
    if url is None:
        return _link_page(service, found, lang)
    return Redirect(url, status_code=303, cookies=[cookie] if cookie else None, headers=pages.PAGE_HEADERS)


@get("/v/{token:str}/result", include_in_schema=False)
async def sign_in_result(token: FromPath[str], service: Service, lang: LangQuery = None) -> Response[str]:
    result = await service.result(token[:64])
    if result is None:
        return _link_page(service, await service.open_link(token[:64]), lang)
    case, outcome, can_retry = result
    page = pages.outcome_page(
        lang=pages.pick_lang(lang, case.lang),
        token=token,
        outcome=outcome,
        operator=service.own.verification_operator_name,
        fields=case.mismatch_fields,
        restored=case.status == "restored",
        can_retry=can_retry,
    )
    return pages.render(page)


ROUTES = [page_css, sign_in_return, link_page, start_sign_in, sign_in_result]
