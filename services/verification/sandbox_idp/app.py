"""The sandbox ESIA's app factory: v2/ac, v3/te and /rs/prns as ESIA answers them (oauth.py, people.py)."""

from __future__ import annotations

import html
from typing import Any

from joserfc.jwk import RSAKey
from litestar import Litestar, Request, Response, get
from litestar.datastructures import State

from services.verification.identity.gost_keys import from_pem
from services.verification.sandbox_idp import faults, oauth, people
from services.verification.sandbox_idp.oauth import jwks
from services.verification.sandbox_idp.persons import PERSONS
from services.verification.sandbox_idp.state import (
    ISSUER,
    RestError,
    SandboxState,
    html_page,
    rest_error,
    sandbox_of,
)


@get("/health/ready")
async def ready() -> dict[str, str]:
    """The same probe the services answer, so `abonent up` waits for the sandbox like for them."""
    return {"status": "ok"}


@get("/")
async def index(request: Request[Any, Any, Any]) -> Response[str]:
    rows = "".join(
        f"<li>{html.escape(p.display_name)}, {p.birth_date:%d.%m.%Y}, {html.escape(p.mobile)} — "
        f"{html.escape(p.note)}</li>"
        for p in PERSONS
    )
    body = (
        f"<p>Тестовые лица · Test persons:</p><ul>{rows}</ul>"
        f"<p class=note>Registered systems: {html.escape(', '.join(sandbox_of(request).clients))}</p>"
    )
    return html_page("ESIA sandbox", body)


def load_certificate(data: bytes) -> bytes:
    """DER of a PEM or DER certificate file."""
    return from_pem(data, "CERTIFICATE") if data.lstrip().startswith(b"-----") else data


def create_sandbox_app(
    clients: dict[str, bytes], *, key: RSAKey | None = None, issuer: str = ISSUER
) -> Litestar:
    """The sandbox for these registered systems (client_id -> certificate, PEM or DER)."""
    signing_key = key or RSAKey.generate_key(2048, parameters={"kid": "sandbox-1", "use": "sig"})
    sandbox = SandboxState(
        clients={client_id: load_certificate(cert) for client_id, cert in clients.items()},
        key=signing_key,
        issuer=issuer,
    )
    return Litestar(
        route_handlers=[*oauth.ROUTES, *people.ROUTES, jwks, *faults.ROUTES, ready, index],
        state=State({"sandbox": sandbox}),
        exception_handlers={RestError: rest_error},
        openapi_config=None,
    )
