"""The registry adapter over HTTP (the sandbox registry's protocol; see sandbox_registry/app.py)."""

from __future__ import annotations

import uuid

import httpx
import msgspec

from services.verification.corporate.registry.base import (
    RegistryRefused,
    RegistryUnavailable,
    Status,
    Submission,
)

_encoder = msgspec.json.Encoder()


class HttpRegistry:
    """POST /submissions (idempotent by submission_id) and GET /submissions/{id}."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, *, timeout_s: float = 10.0) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._timeout = timeout_s

    async def submit(self, submission: Submission) -> Status:
        return await self._call(
            "POST",
            f"{self._base}/submissions",
            content=_encoder.encode(submission),
            headers={"content-type": "application/json", "idempotency-key": str(submission.submission_id)},
        )

    async def status(self, submission_id: uuid.UUID) -> Status:
        return await self._call("GET", f"{self._base}/submissions/{submission_id}")

    async def _call(
        self, method: str, url: str, *, content: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Status:
        try:
            response = await self._http.request(
                method, url, content=content, headers=headers, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            # Timeouts included: the registry may have taken the record; the same id is resent later.
            raise RegistryUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise RegistryUnavailable(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            code, message = _error(response)
            raise RegistryRefused(code, message)
        try:
            return msgspec.json.decode(response.content, type=Status)
        except msgspec.ValidationError as exc:
            raise RegistryUnavailable(f"unreadable answer: {exc}") from exc


def _error(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
        error = body.get("error", {}) if isinstance(body, dict) else {}
        return str(error.get("code") or f"http_{response.status_code}"), str(error.get("message") or "")
    except ValueError:
        return f"http_{response.status_code}", response.text[:200]
