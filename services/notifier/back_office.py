"""Back-office pages: a recipient's messages and their timelines."""

from __future__ import annotations

import uuid

from litestar import Response, get
from litestar.params import FromPath

from services.common.auth_guard import requires
from services.notifier.api import TenantQuery, recipient_view
from services.notifier.context import NOTIFIER_READ, PoolDependency, page


@get(
    "/back-office/recipients/{recipient_id:uuid}",
    guards=[requires(NOTIFIER_READ)],
    tags=["back office"],
    summary="A recipient's page: every message's timeline (queued, deferred, sent, delivered, ...) and cost",
    include_in_schema=False,
)
async def recipient_page(
    recipient_id: FromPath[uuid.UUID], pool: PoolDependency, tenant: TenantQuery = None
) -> Response[str]:
    async with pool.acquire() as conn:
        view = await recipient_view(conn, recipient_id, tenant=tenant)
    return page("recipient.html", r=view, tenant=tenant)


# --- the dev inbox (sandbox channel only) -----------------------------------------------------------------
