"""The widget script and demo page as the service serves them (no browser, no database)."""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from services.callback.widget_assets import DEMO_CSP, WIDGET_DIR, WIDGET_ROUTES, build_widget

SIZE_BUDGET = 15 * 1024


@pytest.fixture
def client() -> Iterator[TestClient[Any]]:
    with TestClient(app=Litestar(route_handlers=WIDGET_ROUTES)) as test_client:
        yield test_client


def script_path(client: TestClient[Any]) -> str:
    """The content-hashed script the loader adds."""
    loader = client.get("/widget/v1/widget.js").text
    found = re.search(r'"(/widget/v1/widget\.[0-9a-f]{16}\.js)"', loader)
    assert found, loader
    return found.group(1)


def test_widget_gzipped_size_within_budget(client: TestClient[Any]) -> None:
    path = script_path(client)
    served = client.get(path, headers={"Accept-Encoding": "identity"})
    assert served.status_code == 200
    size = len(gzip.compress(served.content, 9))
    assert size <= SIZE_BUDGET, f"widget.js is {size} bytes gzipped; the budget is {SIZE_BUDGET}"
    # What goes over the wire to a browser that accepts gzip is that small too.
    raw = client.get(path, headers={"Accept-Encoding": "gzip"})
    assert raw.headers["content-encoding"] == "gzip"
    assert int(raw.headers["content-length"]) <= SIZE_BUDGET
    assert raw.content == served.content  # httpx decoded it
    # The loader every embed points at stays tiny.
    loader = client.get("/widget/v1/widget.js", headers={"Accept-Encoding": "gzip"})
    assert int(loader.headers["content-length"]) <= 1024


def test_widget_loader_is_short_lived_and_revalidates(client: TestClient[Any]) -> None:
    first = client.get("/widget/v1/widget.js", headers={"Accept-Encoding": "identity"})
    assert first.status_code == 200
    assert first.headers["cache-control"] == "public, max-age=300"
    # One charset, not "text/javascript; charset=utf-8; charset=utf-8".
    assert first.headers["content-type"] == "text/javascript; charset=utf-8"
    assert first.headers["vary"] == "Accept-Encoding"
    assert "content-encoding" not in first.headers
    etag = first.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
    again = client.get("/widget/v1/widget.js", headers={"If-None-Match": etag, "Accept-Encoding": "identity"})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    weak = client.get("/widget/v1/widget.js", headers={"If-None-Match": f"W/{etag}", "Accept-Encoding": ""})
    assert weak.status_code == 304
    gz = client.get("/widget/v1/widget.js", headers={"Accept-Encoding": "gzip"})
    assert gz.headers["content-encoding"] == "gzip"
    assert gz.headers["etag"] != etag  # another representation, another strong ETag
    stale = client.get("/widget/v1/widget.js", headers={"If-None-Match": '"0123"', "Accept-Encoding": "gzip"})
    assert stale.status_code == 200


def test_widget_script_is_content_hashed_and_immutable(client: TestClient[Any]) -> None:
    path = script_path(client)
    script = client.get(path, headers={"Accept-Encoding": "identity"})
    assert script.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert hashlib.sha256(script.content).hexdigest()[:16] in path
    assert script.content.startswith(b"/* Abonent callback widget v1 | Apache-2.0 */")
    revalidated = client.get(path, headers={"If-None-Match": script.headers["etag"], "Accept-Encoding": ""})
    assert revalidated.status_code == 304
    # Brotli is on offer beside gzip and is smaller, so a browser accepting both gets brotli.
    br = client.get(path, headers={"Accept-Encoding": "gzip, deflate, br"})
    assert br.headers["content-encoding"] == "br"
    assert br.content == script.content  # httpx decoded it: the same bytes
    assert int(br.headers["content-length"]) < len(gzip.compress(script.content, 9))
    gz_only = client.get(path, headers={"Accept-Encoding": "gzip, br;q=0"})
    assert gz_only.headers["content-encoding"] == "gzip"
    refused = client.get(path, headers={"Accept-Encoding": "gzip;q=0, *;q=0"})
    assert "content-encoding" not in refused.headers
    # A hash this replica does not have (mid-rollout) still gets a working script, but it is not cached.
    other = client.get("/widget/v1/widget.0123456789abcdef.js")
    assert other.status_code == 200
    assert other.headers["cache-control"] == "no-cache"
    assert client.get("/widget/v1/widget.nothex.js").status_code == 404


def test_widget_unversioned_path_is_short_lived(client: TestClient[Any]) -> None:
    latest = client.get("/widget/widget.js")
    assert latest.headers["cache-control"] == "public, max-age=300"
    assert latest.content == client.get("/widget/v1/widget.js").content


def test_widget_source_stays_csp_safe() -> None:
    """No eval, no HTML strings, no inline styles: the widget must run under script/style-src 'self'."""
    body = build_widget(
        (WIDGET_DIR / "src" / "widget.js").read_text(), (WIDGET_DIR / "src" / "widget.css").read_text()
    ).decode()
    forbidden = ("eval(", "new Function", "innerHTML", "outerHTML", "insertAdjacentHTML", ".style.")
    for pattern in forbidden:
        assert pattern not in body, pattern
    assert "__ABONENT_CSS__" not in body
    assert "adoptedStyleSheets" in body
    assert body.isascii()


def test_widget_demo_page_under_strict_csp(client: TestClient[Any]) -> None:
    page = client.get("/demo", params={"site_key": "shop-7", "lang": "en"})
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == DEMO_CSP
    html = page.text
    assert '<html lang="en">' in html
    assert '<script src="/widget/v1/widget.js" data-site-key="shop-7" async></script>' in html
    assert '<link rel="stylesheet" href="/demo/shop.css">' in html
    # Nothing inline that the CSP would block.
    assert re.search(r"<script(?![^>]*\bsrc=)", html) is None
    assert "<style" not in html
    assert " style=" not in html
    assert client.get("/demo/shop.css").headers["content-type"].startswith("text/css")


def test_widget_demo_page_defaults_and_rejects_odd_keys(client: TestClient[Any]) -> None:
    html = client.get("/demo", params={"site_key": '"><script>alert(1)</script>'}).text
    assert 'data-site-key="demo"' in html
    assert "alert(1)" not in html
    assert '<html lang="ru">' in html
