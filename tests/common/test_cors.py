"""CORS per client: origins come from the service's resolver, per request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from litestar import Litestar, get
from litestar.params import FromPath
from litestar.testing import AsyncTestClient
from litestar.types import Scope

from services.common.cors import CorsPolicy, per_client_cors
from services.common.errors import EXCEPTION_HANDLERS

ORIGINS = {"acme": ["https://acme.example"], "globex": ["https://globex.example"]}


async def origins_for(scope: Scope) -> Sequence[str] | None:
    """Clients are the first path segment under /clients/; anything else is not per-client."""
    parts = scope["path"].split("/")
    return ORIGINS.get(parts[2]) if len(parts) > 2 and parts[1] == "clients" else None


@get("/clients/{client:str}/ping")
async def ping(client: FromPath[str]) -> dict[str, str]:
    return {"client": client}


@get("/open")
async def open_route() -> dict[str, str]:
    return {"ok": "yes"}


def app() -> Litestar:
    policy = CorsPolicy(allow_headers=("content-type", "x-client-key"))
    return Litestar(
        [ping, open_route],
        middleware=[per_client_cors(origins_for, policy)],
        exception_handlers=EXCEPTION_HANDLERS,
    )


async def test_each_client_allows_only_its_own_origins() -> None:
    async with AsyncTestClient(app=app()) as client:
        own = await client.get("/clients/acme/ping", headers={"Origin": "https://acme.example"})
        assert own.status_code == 200
        assert own.headers["access-control-allow-origin"] == "https://acme.example"
        assert own.headers["vary"] == "Origin"
        assert "retry-after" in own.headers["access-control-expose-headers"]

        other: Any = await client.get("/clients/globex/ping", headers={"Origin": "https://acme.example"})
        assert other.status_code == 403
        assert other.json()["error"]["code"] == "origin_not_allowed"

        preflight = await client.options(
            "/clients/acme/ping",
            headers={"Origin": "https://acme.example", "Access-Control-Request-Method": "GET"},
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-headers"] == "content-type, x-client-key"

        # No Origin (a server) or a route the resolver does not claim: passes untouched.
        assert (await client.get("/clients/globex/ping")).status_code == 200
        free = await client.get("/open", headers={"Origin": "https://evil.example"})
        assert free.status_code == 200
        assert "access-control-allow-origin" not in free.headers
