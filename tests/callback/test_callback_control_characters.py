"""A NUL (or any other control character) in any text is a 400 naming the field, and nothing is written."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient
from support.callback_api import ADMIN, ask, put_site, site_body

Client = AsyncTestClient[Any]


def refused_field(response: Any) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_characters"
    return str(error["field"])


async def test_admin_site_name_with_nul_is_refused_and_not_stored(client: Client) -> None:
    response = await client.put("/v1/admin/sites/shop", json=site_body(name="a\u0000b"), headers=ADMIN)
    assert refused_field(response) == "name"
    assert (await client.get("/v1/admin/sites", headers=ADMIN)).json() == []


async def test_nested_fields_name_their_json_path(client: Client) -> None:
    body = site_body(texts={"en": {"title": "Call\u0007 me"}})
    response = await client.put("/v1/admin/sites/shop", json=body, headers=ADMIN)
    assert refused_field(response) == "texts.en.title"


async def test_public_intake_with_nul_referrer_is_refused_and_nothing_is_queued(client: Client) -> None:
    await put_site(client)
    response = await ask(client, referrer="\u0000")
    assert refused_field(response) == "referrer"
    # Line breaks and tabs in free text are fine; the same request without the NUL is accepted.
    accepted = await ask(client, referrer="https://shop.example/\tpage")
    assert accepted.status_code == 201, accepted.text


async def test_path_and_query_control_characters_are_refused(client: Client) -> None:
    await put_site(client)
    assert refused_field(await client.get("/v1/sites/sh%00op/offer")) == "path"
    assert refused_field(await client.get("/v1/sites/shop/offer?tz=Europe%2FMoscow&lang=%00")) == "lang"
