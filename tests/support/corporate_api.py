"""A company on the corporate SIM API as its developer meets it: onboarded by the back office, then an
access token by OAuth client credentials (HTTP Basic)."""

from __future__ import annotations

import base64
import json
from typing import Any

from litestar.testing import AsyncTestClient
from support.verification import AUTH

# Real companies' published identifiers (their control digits hold).
SBER = {"name": "ПАО Сбербанк", "inn": "7707083893", "ogrn": "1027700132195"}
GAZPROM = {"name": "ПАО Газпром", "inn": "7736050003", "ogrn": "1027700070518"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def onboard(
    client: AsyncTestClient[Any], company: dict[str, str], numbers: list[str], scopes: list[str] | None = None
) -> tuple[str, str, str]:
    """(company id, client id, secret)."""
    created = await client.post("/v1/companies", json=company, headers=AUTH)
    assert created.status_code == 201, created.text
    company_id = created.json()["id"]
    added = await client.post(f"/v1/companies/{company_id}/numbers", json={"numbers": numbers}, headers=AUTH)
    assert added.status_code == 200, added.text
    body = {"name": "HR"} if scopes is None else {"name": "HR", "scopes": scopes}
    made = await client.post(f"/v1/companies/{company_id}/clients", json=body, headers=AUTH)
    assert made.status_code == 201, made.text
    return company_id, made.json()["client_id"], made.json()["client_secret"]


async def get_token(client: AsyncTestClient[Any], client_id: str, secret: str, **form: str) -> dict[str, Any]:
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    response = await client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", **form},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def jwt_part(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))
