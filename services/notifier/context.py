"""What the notifier's route modules share: its context, scopes, the pool dependency, HTML pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Response
from litestar.datastructures import State
from litestar.di import NamedDependency

from services.common import db
from services.common.errors import ApiError
from services.common.web import runtime_extra
from services.notifier.engine import ChannelRegistry, Notifier, Sender
from services.notifier.routing import Router
from services.notifier.settings import NotifierSettings

NOTIFIER_READ = "notifier:read"
NOTIFIER_ADMIN = "notifier:admin"
_pages = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates" / "pages"),
    autoescape=select_autoescape(["html"]),
)
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}


class NotifierContext:
    """What the app's parts share once the lifespan has built it (consumers start before hooks run)."""

    def __init__(self, router: Router, own: NotifierSettings, sandbox: bool) -> None:
        self.router = router
        self.own = own
        self.sandbox = sandbox
        # HTTP pool for webhook sinks; worker pool for what arrives on provider sessions (SMPP receipts).
        self.pool: db.Pool | None = None
        self.worker_pool: db.Pool | None = None
        self.http: httpx.AsyncClient | None = None
        self.notifier: Notifier | None = None
        self.sender: Sender | None = None
        self.registry: ChannelRegistry | None = None

    def require(self) -> Notifier:
        if self.notifier is None:
            raise ApiError(503, "starting", "The notifier is starting; try again")
        return self.notifier


def notifier_context(state: State) -> NotifierContext:
    return runtime_extra(state, "notifier_context", NotifierContext)


PoolDependency = NamedDependency[db.Pool]


def page(template: str, **context: Any) -> Response[str]:
    return Response(
        _pages.get_template(template).render(**context), media_type="text/html", headers=PAGE_HEADERS
    )
