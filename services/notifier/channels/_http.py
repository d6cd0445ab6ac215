"""One guarded HTTP call for the provider adapters: network trouble and garbage become our error classes."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from litestar import Request, post
from litestar.exceptions import SerializationException
from litestar.handlers.http_handlers import HTTPRouteHandler

from services.common.errors import ApiError
from services.notifier.channels.base import InboundUpdate, TransientChannelError, UpdateSink

# A provider that answers 5xx or garbage is retried later; this is how long we suggest waiting.
DEFAULT_RETRY_S = 30.0


async def call_json(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    provider: str,
    data: Mapping[str, str] | None = None,
    json: Any = None,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float,
) -> tuple[int, Any]:
    """(HTTP status, decoded JSON body). Raises TransientChannelError on timeouts, connection errors,
    5xx and bodies that are not JSON; every other status is returned for the adapter to classify."""
    try:
        response = await http.request(
            method, url, data=data, json=json, params=params, headers=headers, timeout=timeout_s
        )
    except httpx.TimeoutException as exc:
        # The request may have reached the provider: the caller's idempotency rules decide what a retry does.
        raise TransientChannelError(f"{provider}: timeout ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise TransientChannelError(f"{provider}: {type(exc).__name__}: {exc}") from exc
    if response.status_code >= 500:
        raise TransientChannelError(
            f"{provider}: HTTP {response.status_code}", retry_after_s=retry_after_of(response)
        )
    try:
        body = response.json()
    except ValueError:
        raise TransientChannelError(
            f"{provider}: HTTP {response.status_code} with a body that is not JSON",
            retry_after_s=DEFAULT_RETRY_S,
        ) from None
    return response.status_code, body


def retry_after_of(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


def as_object(value: object) -> Mapping[str, Any]:
    """A member a platform documents as an object; anything else (a number, a list, null) reads as empty,
    so an update of an unexpected shape is an "other" update rather than a 500 the platform retries."""
    return value if isinstance(value, dict) else {}


def messenger_webhook(
    path: str,
    secret_header: str,
    secret: str,
    sink: UpdateSink,
    parse: Callable[[dict[str, Any]], InboundUpdate],
) -> HTTPRouteHandler:
    """A bot platform's update webhook: the secret we registered must come back in `secret_header`
    (compared in constant time; anything else is 401 and reaches nothing), the body must be a JSON object,
    and the parsed update goes to `sink`."""

    @post(path, status_code=200, include_in_schema=False)
    async def webhook(request: Request[Any, Any, Any]) -> dict[str, bool]:
        given = request.headers.get(secret_header, "")
        if not secret or not hmac.compare_digest(given.encode(), secret.encode()):
            raise ApiError(401, "unauthorized", "The webhook secret is not valid")
        try:
            body = await request.json()
        except (ValueError, SerializationException):  # Litestar's own, for malformed JSON: not a 500
            raise ApiError(400, "invalid_request", "The update is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_request", "The update is not a JSON object")
        await sink(parse(body))
        return {"ok": True}

    return webhook
