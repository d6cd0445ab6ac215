"""Verification service app factory: thin routes over usecases.py (case API, the subscriber's pages)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import httpx
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import Cookie, State
from litestar.di import NamedDependency, Provide
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body, FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import Redirect

from services.common import db
from services.common.auth_guard import CurrentPrincipal, requires
from services.common.clock import Clock, SystemClock
from services.common.crypto import DataProtector
from services.common.errors import ErrorResponse
from services.common.retention import RetentionRule
from services.common.rotation import EncryptedColumn
from services.common.scheduler import JobHandler
from services.common.settings import Settings, get_section, get_settings
from services.common.web import Runtime, ServiceSpec, build_app, runtime_extra
from services.common.webhook_sender import WebhookSender
from services.common.webhooks import DeliveryStatus, WebhookDelivery
from services.verification import pages, store
from services.verification.domain.policy import CaseReason, validate_policies
from services.verification.identity.base import IdentityProvider
from services.verification.identity.config import IdentitySettings, build_identity_provider
from services.verification.schemas import (
    CASE_EXAMPLE,
    CASE_VIEW_EXAMPLE,
    CaseCancel,
    CaseDetail,
    CaseExtend,
    CaseOpen,
    CaseStatus,
    CaseView,
)
from services.verification.settings import VerificationSettings, get_verification_settings
from services.verification.usecases import (
    BILLING,
    BILLING_SUBSCRIBER,
    JOB_DEADLINE,
    JOB_PURGE,
    JOB_REMINDER,
    VerificationService,
    billing_endpoint,
)

CASES_SCOPE = "verification:cases"
ADMIN_SCOPE = "verification:admin"
cases_guard = requires(CASES_SCOPE)
admin_guard = requires(ADMIN_SCOPE)
BROWSER_COOKIE = "abonent_vf"
STATIC = Path(__file__).parent / "static"

Service = NamedDependency[VerificationService]
WhyHeader = Annotated[
    str,
    HeaderParameter(
        name="X-Audit-Reason", required=False, max_length=200, description="Why you read it (audit log)"
    ),
]
ERROR_EXAMPLE = Example(
    summary="One error shape, naming the field",
    value={
        "error": {
            "code": "invalid_request",
            "message": "Expected `str` matching regex '^\\d{4}$'",
            "field": "passport_series",
        }
    },
)


def service_of(state: State) -> VerificationService:
    return runtime_extra(state, "verification", VerificationService)


# --- case API -------------------------------------------------------------------------------------------


@post(
    "/v1/cases",
    guards=[cases_guard],
    tags=["cases"],
    summary="Open a case for a number (or get its open one)",
    description="Idempotent: a number with an active case gets that case back (200); `Idempotency-Key` "
    "with a different body is 409. The subscriber's link is issued as `verification.link_issued`.",
    responses={
        201: ResponseSpec(CaseView, examples=[Example(summary="Opened", value=CASE_VIEW_EXAMPLE)]),
        200: ResponseSpec(CaseView, description="The number's active case, returned again"),
        400: ResponseSpec(ErrorResponse, examples=[ERROR_EXAMPLE], description="A field is invalid"),
        409: ResponseSpec(ErrorResponse, description="Idempotency-Key reused with another body"),
    },
    status_code=201,
)
async def open_case(
    data: Annotated[CaseOpen, Body(examples=[Example(summary="Regulator request", value=CASE_EXAMPLE)])],
    service: Service,
    principal: CurrentPrincipal,
    idempotency_key: Annotated[
        str | None, HeaderParameter(name="Idempotency-Key", required=False, max_length=100)
    ] = None,
) -> Response[CaseView]:
    view, created = await service.open_case(data, principal.who, idempotency_key)
    return Response(view, status_code=201 if created else 200)


@get(
    "/v1/cases",
    guards=[cases_guard],
    tags=["cases"],
    summary="List and filter cases (masked; each listed case records the read)",
    responses={200: ResponseSpec(list[CaseView], examples=[Example(value=[CASE_VIEW_EXAMPLE])])},
)
async def list_cases(
    *,
    service: Service,
    principal: CurrentPrincipal,
    status: Annotated[CaseStatus | None, QueryParameter(required=False)] = None,
    reason: Annotated[CaseReason | None, QueryParameter(required=False)] = None,
    deadline_from: Annotated[dt.datetime | None, QueryParameter(required=False)] = None,
    deadline_to: Annotated[dt.datetime | None, QueryParameter(required=False)] = None,
    msisdn: Annotated[str | None, QueryParameter(required=False, max_length=32)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    offset: Annotated[int, QueryParameter(ge=0)] = 0,
    why: WhyHeader = "",
) -> list[CaseView]:
    return await service.list_cases(
        principal.who,
        why,
        status=status,
        reason=reason,
        deadline_from=deadline_from,
        deadline_to=deadline_to,
        msisdn=msisdn,
        limit=limit,
        offset=offset,
    )


@get(
    "/v1/cases/{case_id:uuid}",
    guards=[cases_guard],
    tags=["cases"],
    summary="Read a case with its whole timeline (the read itself is recorded)",
    responses={404: ResponseSpec(ErrorResponse, description="No such case")},
)
async def read_case(
    case_id: FromPath[uuid.UUID], service: Service, principal: CurrentPrincipal, why: WhyHeader = ""
) -> CaseDetail:
    return await service.read_case(case_id, principal.who, why)


@post(
    "/v1/cases/{case_id:uuid}/cancel",
    guards=[admin_guard],
    tags=["cases"],
    summary="Cancel an active case (audited; a suspended number is restored)",
    status_code=200,
    responses={409: ResponseSpec(ErrorResponse, description="Already closed")},
)
async def cancel_case(
    case_id: FromPath[uuid.UUID], data: JSONBody[CaseCancel], service: Service, principal: CurrentPrincipal
) -> CaseView:
    return await service.cancel(case_id, principal.who, data.reason)


@post(
    "/v1/cases/{case_id:uuid}/extend",
    guards=[admin_guard],
    tags=["cases"],
    summary="Move the deadline later (audited; reminders re-planned)",
    status_code=200,
    responses={409: ResponseSpec(ErrorResponse, description="Not open (closed or already suspended)")},
)
async def extend_case(
    case_id: FromPath[uuid.UUID], data: JSONBody[CaseExtend], service: Service, principal: CurrentPrincipal
) -> CaseView:
    return await service.extend(case_id, data.days, principal.who, data.reason)


@get(
    "/v1/admin/billing-deliveries",
    guards=[admin_guard],
    tags=["billing"],
    summary="Suspend/restore commands sent to billing, newest first",
)
async def billing_deliveries(
    service: Service,
    status: Annotated[DeliveryStatus | None, QueryParameter(required=False)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
) -> list[WebhookDelivery]:
    async with service.pool.acquire() as conn:
        return await BILLING.list_deliveries(conn, BILLING_SUBSCRIBER, status=status, limit=limit)


@post(
    "/v1/admin/billing-deliveries/{delivery_id:uuid}/retry",
    guards=[admin_guard],
    tags=["billing"],
    summary="Queue a failed billing command again (same command id)",
    status_code=200,
)
async def retry_billing(delivery_id: FromPath[uuid.UUID], service: Service) -> WebhookDelivery:
    async with db.transaction(service.pool) as conn:
        return await BILLING.requeue(conn, delivery_id, subscriber=BILLING_SUBSCRIBER)


# --- the subscriber's pages -----------------------------------------------------------------------------

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


# --- wiring ---------------------------------------------------------------------------------------------


def _encrypted_columns() -> tuple[EncryptedColumn, ...]:
    return (
        EncryptedColumn(table="cases", id_column="id", column="msisdn_enc", context=store.MSISDN_CONTEXT),
        EncryptedColumn(table="cases", id_column="id", column="holder_enc", context=store.HOLDER_CONTEXT),
    )


ENCRYPTED_COLUMNS = _encrypted_columns()


def make_spec(
    own: VerificationSettings | None = None,
    identity: IdentitySettings | None = None,
    clock: Clock | None = None,
) -> ServiceSpec:
    """`own`/`identity` None: this process's ABONENT_* environment, read when the app starts."""
    policies = validate_policies()

    async def start(runtime: Runtime) -> None:
        section = own or get_verification_settings()
        identity_section = identity or get_section(IdentitySettings)
        settings = runtime.settings
        protector = DataProtector.from_settings(settings)
        http = httpx.AsyncClient(follow_redirects=False)
        provider: IdentityProvider = build_identity_provider(identity_section, http)
        public = section.public_url(settings.host, settings.verification_port)
        link_base = section.link_base(settings.host, settings.verification_port)
        the_clock = clock or SystemClock()
        web = VerificationService(
            pool=runtime.pool,
            protector=protector,
            own=section,
            policies=policies,
            clock=the_clock,
            public_url=public,
            link_base=link_base,
            provider=provider,
        )
        runtime.extras["verification"] = web
        # Timers run on the worker pool: a flood of page views cannot delay a suspension.
        runtime.extras["verification_jobs"] = dataclasses.replace(web, pool=runtime.worker_pool)
        billing = WebhookSender(runtime.worker_pool, http, BILLING, billing_endpoint(section))
        await billing.start()
        runtime.extras.update(billing=billing, http=http, provider=provider)

    async def finish(runtime: Runtime) -> None:
        await runtime.extras["billing"].stop()
        await runtime.extras["provider"].close()
        await runtime.extras["http"].aclose()

    def jobs(runtime: Runtime) -> Mapping[str, JobHandler]:
        worker: VerificationService = runtime.extras["verification_jobs"]
        return {
            JOB_REMINDER: worker.on_reminder,
            JOB_DEADLINE: worker.on_deadline,
            JOB_PURGE: worker.on_purge,
        }

    from services.verification.seed import seed_demo

    return ServiceSpec(
        name="verification",
        title="Abonent verification",
        description="Subscribers confirm their passport data through an ESIA-style sign-in by a deadline; "
        "back office opens and watches cases. Every 4xx has the shape "
        '{"error": {"code", "message", "field"}}.',
        route_handlers=[
            open_case,
            list_cases,
            read_case,
            cancel_case,
            extend_case,
            billing_deliveries,
            retry_billing,
            page_css,
            sign_in_return,
            link_page,
            start_sign_in,
            sign_in_result,
        ],
        migrations_dir=Path(__file__).parent / "migrations",
        on_startup=[start],
        on_shutdown=[finish],
        jobs=jobs,
        retention=[RetentionRule("idempotency_keys", "created_at", "retention_idempotency_keys_hours")],
        dependencies={"service": Provide(service_of, sync_to_thread=False)},
        settings_section=VerificationSettings,
        encrypted_columns=ENCRYPTED_COLUMNS,
        links=[],
        dev_seed=seed_demo,
        scopes={
            CASES_SCOPE: "open, list and read subscriber verification cases",
            ADMIN_SCOPE: "cancel and extend cases; billing command deliveries",
        },
    )


SPEC = make_spec()


def create_app(
    settings: Settings | None = None,
    own: VerificationSettings | None = None,
    identity: IdentitySettings | None = None,
    clock: Clock | None = None,
) -> Litestar:
    """The verification app; each settings section defaults to this process's environment."""
    return build_app(make_spec(own, identity, clock), settings or get_settings(), clock=clock)
