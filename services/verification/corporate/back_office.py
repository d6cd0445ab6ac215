"""Back office for corporate SIMs: the overview page (companies, overdue SIMs, people over the limit) and a
company's webhook endpoint. Staff sign in at /auth/sign-in like on every back-office page."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from jinja2 import Environment, PackageLoader, select_autoescape
from litestar import Response, get, put
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody

from services.common.auth_guard import CurrentPrincipal, requires
from services.common.domain_errors import Invalid, NotFound
from services.common.errors import error_responses
from services.common.web import runtime_extra
from services.verification.case_api import ADMIN_SCOPE
from services.verification.corporate import flow_store, store
from services.verification.corporate.domain.sim import COUNTED_STATUSES
from services.verification.corporate.lifecycle import CorporateFlow
from services.verification.deps import Service
from services.verification.pages import PAGE_HEADERS

# The 20-number limit (303-FZ): corporate SIMs given to a person count toward it.
PERSON_LIMIT = 20
PAGE_ROWS = 200

_templates = Environment(
    loader=PackageLoader("services.verification", "templates"), autoescape=select_autoescape(["html"])
)


class CompanyWebhookIn(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    secret: str


class CompanyWebhookOut(msgspec.Struct, frozen=True, kw_only=True):
    company_id: uuid.UUID
    url: str


def _flow(state: State) -> CorporateFlow:
    return runtime_extra(state, "corporate_flow", CorporateFlow)


@get(
    "/back-office/corporate",
    guards=[requires(ADMIN_SCOPE)],
    include_in_schema=False,
)
async def corporate_page(service: Service, principal: CurrentPrincipal) -> Response[str]:
    """Companies with their counts, SIMs past their deadline, people over the 20-number limit (masked)."""
    now = service.clock.now()
    async with service.pool.acquire() as conn, conn.transaction():
        companies = await flow_store.company_overview(conn, now=now, limit=PAGE_ROWS)
        overdue = await flow_store.overdue_sims(conn, now=now, limit=PAGE_ROWS)
        over = await store.people_over_limit(
            conn, sorted(COUNTED_STATUSES), PERSON_LIMIT, page_size=PAGE_ROWS, offset=0
        )
        # Reading who holds which numbers across companies is itself audited (152-FZ).
        await flow_store.add_audit(
            conn,
            None,
            at=now,
            kind="overview_read",
            actor=principal.who,
            detail={"people_over_limit": len(over)},
        )
    html = _templates.get_template("corporate.html").render(
        companies=companies, overdue=overdue, over=over, limit=PERSON_LIMIT, now=now
    )
    return Response(html, media_type="text/html", headers=PAGE_HEADERS)


@put(
    "/v1/admin/companies/{company_id:uuid}/webhook",
    guards=[requires(ADMIN_SCOPE)],
    tags=["corporate back office"],
    summary="Set where a company's signed status webhooks go (URL and signing secret)",
    description="The company verifies `X-Abonent-Signature` with the secret (docs/webhooks.md). Bodies: "
    "`corpsim.bound|unbound|status_changed|suspension_due|restored|reminder` with the SIM id and number.",
    # A PUT whose path names a company it does not create: an unknown (or malformed) id is a 404.
    responses=error_responses(404),
)
async def put_company_webhook(
    company_id: FromPath[uuid.UUID],
    data: JSONBody[CompanyWebhookIn],
    service: Service,
    principal: CurrentPrincipal,
    state: State,
) -> CompanyWebhookOut:

    if not data.url.startswith(("https://", "http://")):
        raise Invalid("invalid_url", "url must be an http(s) URL", field="url")
    if len(data.secret) < 16:
        raise Invalid("weak_secret", "secret must have at least 16 characters", field="secret")
    flow = _flow(state)
    async with service.pool.acquire() as conn, conn.transaction():
        if await store.get_company(conn, company_id) is None:
            raise NotFound("company_not_found", "no such company", field="company_id")
        await flow.set_webhook(
            conn, company_id, data.url, data.secret, actor=principal.who, now=service.clock.now()
        )
    return CompanyWebhookOut(company_id=company_id, url=data.url)


ROUTES: list[Any] = [corporate_page, put_company_webhook]
