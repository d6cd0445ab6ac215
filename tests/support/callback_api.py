"""Driving the callback API as the widget and the back office do, in process or over real HTTP."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
from support.harness import TEST_ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}
ALL_WEEK = {day: [["00:00", "24:00"]] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


def site_body(**overrides: Any) -> dict[str, Any]:
    """An always-open site whose callees may be called at any hour: tests choose their own constraints."""
    body: dict[str, Any] = {
        "name": "Test shop",
        "allowed_origins": ["https://shop.example"],
        "timezone": "Europe/Moscow",
        "working_hours": ALL_WEEK,
        "calling_window": {"start": "00:00", "end": "24:00"},
        "allowed_countries": ["RU", "KZ"],
        # Two agents every day, all day; promises for now still need someone signed in and Ready.
        "staffing": [{"days": ["mon-sun"], "start": "00:00", "end": "24:00", "agents": 2}],
        "abuse": {"min_fill_ms": 0},
    }
    body.update(overrides)
    return body


async def put_site(client: httpx.AsyncClient, key: str = "shop", **overrides: Any) -> dict[str, Any]:
    response = await client.put(f"/v1/admin/sites/{key}", json=site_body(**overrides), headers=ADMIN)
    assert response.status_code in (200, 201), response.text
    result: dict[str, Any] = response.json()
    return result


async def ask(
    client: httpx.AsyncClient,
    key: str = "shop",
    phone: str = "+7 912 345-67-89",
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> Any:
    """Fetch an offer (for its form token) and submit a request, as the widget does."""
    offer = await client.get(
        f"/v1/sites/{key}/offer", params={"tz": fields.get("visitor_tz", "Europe/Moscow")}
    )
    token = offer.json()["form_token"] if offer.status_code == 200 else "x"
    body = {"phone": phone, "visitor_tz": "Europe/Moscow", "consent": True, "form_token": token, "lang": "en"}
    body.update(fields)
    return await client.post(f"/v1/sites/{key}/callbacks", json=body, headers=headers or {})


async def sign_in_agent(
    client: httpx.AsyncClient, login: str = "olga", queues: list[str] | None = None, *, ready: bool = True
) -> None:
    """Register an agent through the admin API, sign in through the console form, go Ready."""
    body = {
        "name": login.title(),
        "password": "correct horse",
        "queues": queues or ["default"],
        "endpoint": "sim",
    }
    registered = await client.put(f"/v1/admin/agents/{login}", json=body, headers=ADMIN)
    assert registered.status_code in (200, 201), registered.text
    signed_in = await client.post(
        "/agent/login", data={"login": login, "password": "correct horse"}, follow_redirects=False
    )
    assert signed_in.status_code == 303, signed_in.text
    if ready:
        state = await client.post("/agent/api/presence", json={"status": "ready"})
        assert state.json()["status"] == "ready"


def offered_slots(offer: dict[str, Any]) -> list[dict[str, str]]:
    """An offer's slots one by one ({start, end} as the API spells instants), as the widget expands its
    ranges of back-to-back slots."""
    step = dt.timedelta(minutes=offer["slot_minutes"])
    slots = []
    for slot_range in offer["slot_ranges"]:
        start = dt.datetime.fromisoformat(slot_range["start"])
        end = dt.datetime.fromisoformat(slot_range["end"])
        while start + step <= end:
            slots.append({"start": api_instant(start), "end": api_instant(start + step)})
            start += step
    return slots


def api_instant(value: dt.datetime) -> str:
    """An instant as the API writes it (msgspec: UTC with a Z)."""
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
