"""The back office's case API: open, list, read, cancel, extend, re-issue; billing command deliveries."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from litestar import Response, get, post
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body, FromPath, HeaderParameter, JSONBody, QueryParameter

from services.common import db
from services.common.auth_guard import CurrentPrincipal, requires
from services.common.errors import ErrorResponse
from services.common.openapi import PageOffset
from services.common.webhooks import DeliveryStatus, WebhookDelivery
from services.verification.deps import Service
from services.verification.domain.policy import CaseReason
from services.verification.schemas import (
    CASE_EXAMPLE,
    CASE_VIEW_EXAMPLE,
    CaseCancel,
    CaseDetail,
    CaseExtend,
    CaseOpen,
    CaseStatus,
    CaseView,
    LinkReissue,
)
from services.verification.usecases import BILLING, BILLING_SUBSCRIBER

CASES_SCOPE = "verification:cases"
ADMIN_SCOPE = "verification:admin"
cases_guard = requires(CASES_SCOPE)
admin_guard = requires(ADMIN_SCOPE)

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
    offset: PageOffset = 0,
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


@post(
    "/v1/cases/{case_id:uuid}/link",
    guards=[cases_guard],
    tags=["cases"],
    summary="Send the subscriber a fresh link (the previous one stops working; audited)",
    description="For a lost or expired SMS: the case keeps its deadline; `verification.link_issued` is "
    "emitted again with the new link, which the answer also carries.",
    status_code=200,
    responses={
        200: ResponseSpec(CaseView, examples=[Example(summary="New link", value=CASE_VIEW_EXAMPLE)]),
        404: ResponseSpec(ErrorResponse, description="No such case"),
        409: ResponseSpec(ErrorResponse, description="The case is closed"),
    },
)
async def reissue_link(
    case_id: FromPath[uuid.UUID],
    data: Annotated[
        LinkReissue, Body(examples=[Example(summary="SMS lost", value={"reason": "SMS never arrived"})])
    ],
    service: Service,
    principal: CurrentPrincipal,
) -> CaseView:
    return await service.reissue_link(case_id, principal.who, data.reason)


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


ROUTES = [
    open_case,
    list_cases,
    read_case,
    cancel_case,
    extend_case,
    reissue_link,
    billing_deliveries,
    retry_billing,
]
