"""CORS per site: only a site's allowed origins may call its widget API from a browser."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Sequence

from litestar.types import ASGIApp, Scope

from services.common.cors import CorsPolicy, per_client_cors

_SITE_PATH = re.compile(r"^/v1/sites/([^/]+)/")
_CALLBACK_PATH = re.compile(r"^/v1/callbacks/([0-9a-fA-F\-]{36})(/|$)")

WIDGET_CORS = CorsPolicy(
    allow_methods=("GET", "POST", "OPTIONS"),
    allow_headers=("content-type", "idempotency-key", "x-status-token", "x-request-id"),
    # Date lets the widget correct a visitor's wrong device clock for its countdown.
    expose_headers=("retry-after", "x-request-id", "date"),
)

# Allowed origins of a site, or None when the site does not exist (the handler answers 404).
OriginLookup = Callable[[str], Awaitable[list[str] | None]]
CallbackSiteLookup = Callable[[uuid.UUID], Awaitable[str | None]]


def per_site_cors(
    origins_of: OriginLookup, site_of_callback: CallbackSiteLookup
) -> Callable[[ASGIApp], ASGIApp]:
    """The common per-client CORS middleware, resolving a request to its site's allowed origins."""

    async def resolve(scope: Scope) -> Sequence[str] | None:
        site_key = await _site_for_path(scope["path"], site_of_callback)
        return None if site_key is None else await origins_of(site_key)

    return per_client_cors(resolve, WIDGET_CORS)


async def _site_for_path(path: str, site_of_callback: CallbackSiteLookup) -> str | None:
    if match := _SITE_PATH.match(path):
        return match.group(1)
    if match := _CALLBACK_PATH.match(path):
        try:
            return await site_of_callback(uuid.UUID(match.group(1)))
        except ValueError:
            return None
    return None
