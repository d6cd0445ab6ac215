"""Foreign numbers through the public API: the site's allowed countries, refusals by name, the config."""

from __future__ import annotations

from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient
from support.callback_api import ask, put_site

Client = AsyncTestClient[Any]


async def test_unsupported_country_is_refused_in_the_visitors_language(
    client: Client, db: asyncpg.Connection
) -> None:
    await put_site(client, allowed_countries=["RU"])
    for lang, message in (
        ("en", "We don't call numbers in Germany"),
        ("ru", "Мы не звоним на номера в Германии"),
    ):
        refused = await ask(client, phone="+49 30 12345678", lang=lang)
        assert refused.status_code == 400, refused.text
        assert refused.json() == {
            "error": {"code": "unsupported_country", "message": message, "field": "phone"}
        }
    # Nothing was scheduled for a stranger's +7 (493) … number.
    assert await db.fetchval("select count(*) from callback.callbacks") == 0


async def test_allowed_foreign_number_is_accepted_as_itself(client: Client, db: asyncpg.Connection) -> None:
    await put_site(client, allowed_countries=["RU", "US"])
    created = await ask(client, phone="+1 202 555 0123")
    assert created.status_code == 201, created.text
    assert await db.fetchval("select count(*) from callback.callbacks") == 1
    refused = await ask(client, phone="+49 30 12345678")
    assert refused.json()["error"]["code"] == "unsupported_country"


async def test_config_lists_allowed_countries_with_names_and_calling_codes(client: Client) -> None:
    await put_site(client, allowed_countries=["DE", "RU", "US"])
    config = (await client.get("/v1/sites/shop/config", params={"lang": "ru"})).json()
    assert config["allowed_countries"] == ["DE", "RU", "US"]
    assert config["default_country"] == "DE"
    assert config["countries"] == [
        {"code": "DE", "name": "Германия", "calling_code": 49},
        {"code": "RU", "name": "Россия", "calling_code": 7},
        {"code": "US", "name": "США", "calling_code": 1},
    ]
    english = (await client.get("/v1/sites/shop/config", params={"lang": "en"})).json()
    assert [c["name"] for c in english["countries"]] == ["Germany", "Russia", "United States"]


async def test_national_format_is_read_as_the_sites_first_country(client: Client) -> None:
    await put_site(client, allowed_countries=["DE"])
    created = await ask(client, phone="030 12345678")
    assert created.status_code == 201, created.text
