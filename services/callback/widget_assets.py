"""The embeddable widget's JavaScript and the demo shop page that embeds it.

`widget/src/widget.js` + `widget/src/widget.css` are built in memory on first request (the CSS becomes a
JS string literal inside the script; comment-only lines and indentation are dropped), so there is no build
step and no stale artefact. The build is redone when a source file changes, which makes editing the widget
against a running service painless. `/widget/v1/...` is immutable: the path changes with the contract.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any

import jinja2
from litestar import Request, Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.params import QueryParameter

__all__ = ["DEMO_CSP", "WIDGET_ROUTES", "WidgetBundle", "widget_bundle"]

WIDGET_DIR = Path(__file__).resolve().parents[2] / "widget"
_SOURCES = (WIDGET_DIR / "src" / "widget.js", WIDGET_DIR / "src" / "widget.css")
_CSS_PLACEHOLDER = "__ABONENT_CSS__"
_SITE_KEY = re.compile(r"^[a-z0-9][a-z0-9\-]{1,62}$")

IMMUTABLE = "public, max-age=31536000, immutable"
SHORT = "public, max-age=300"
# The demo page holds itself to the strictest policy a customer might have: no inline anything.
DEMO_CSP = "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'"


@dataclass(frozen=True, slots=True)
class WidgetBundle:
    body: bytes
    gzipped: bytes
    etag: str  # strong ETag of the identity body; the gzip variant gets a suffix


def _minify_css(css: str) -> str:
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.DOTALL)
    css = re.sub(r"\s+", " ", css)
    return re.sub(r"\s*([{};,>])\s*", r"\1", css).strip()


_TRAILING_COMMENT = re.compile(r"\s+// .*$")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _strip_line(line: str) -> str:
    line = line.strip()
    if line.startswith("//"):
        return ""
    match = _TRAILING_COMMENT.search(line)
    # A trailing " // comment" goes only when no string could still be open before it.
    if match and all(line[: match.start()].count(quote) % 2 == 0 for quote in "'\"`"):
        line = line[: match.start()]
    return line


def _strip_js(js: str) -> str:
    """Drop the header comment, `//` comments, blank lines and indentation. Safe for this source: it has
    no multi-line strings or template literals (the widget's tests run the stripped file)."""
    js = re.sub(r"\A/\*.*?\*/\s*", "", js, flags=re.DOTALL)
    return "\n".join(line for line in map(_strip_line, js.splitlines()) if line)


def _js_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\u{code:04x}" if code < 0x10000 else f"\\u{{{code:x}}}"


def build_widget(js_source: str, css_source: str) -> bytes:
    js = _strip_js(js_source)
    if js.count(_CSS_PLACEHOLDER) != 1:
        raise ValueError(f"widget.js must contain {_CSS_PLACEHOLDER} exactly once")
    # JSON is valid JS since ES2019 (U+2028/9 allowed in strings); ensure_ascii keeps the file ASCII.
    js = js.replace(_CSS_PLACEHOLDER, json.dumps(_minify_css(css_source)))
    # \uXXXX escapes (valid in strings, templates and regexes) keep the file ASCII, so it reads right even
    # if a proxy or an old page drops the charset.
    js = _NON_ASCII.sub(_js_escape, js)
    return f"/* Abonent callback widget v1 | Apache-2.0 */\n{js}\n".encode()


_cache: dict[tuple[int, ...], WidgetBundle] = {}


def widget_bundle() -> WidgetBundle:
    """The built widget, rebuilt only when a source file's mtime or size changes."""
    stats = [path.stat() for path in _SOURCES]
    stamp = tuple(value for st in stats for value in (st.st_mtime_ns, st.st_size))
    bundle = _cache.get(stamp)
    if bundle is None:
        js_source, css_source = (path.read_text(encoding="utf-8") for path in _SOURCES)
        body = build_widget(js_source, css_source)
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        bundle = WidgetBundle(body=body, gzipped=gzip.compress(body, 9, mtime=0), etag=etag)
        _cache.clear()
        _cache[stamp] = bundle
    return bundle


def _accepts_gzip(request: Request[Any, Any, Any]) -> bool:
    for part in request.headers.get("accept-encoding", "").split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def _serve_widget(request: Request[Any, Any, Any], cache_control: str) -> Response[bytes]:
    bundle = widget_bundle()
    gzipped = _accepts_gzip(request)
    etag = bundle.etag[:-1] + '-gz"' if gzipped else bundle.etag
    headers = {
        "Cache-Control": cache_control,
        "ETag": etag,
        "Vary": "Accept-Encoding",
        # Any site may embed the script; crossorigin="anonymous" + SRI and COEP pages work too.
        "Access-Control-Allow-Origin": "*",
        "Cross-Origin-Resource-Policy": "cross-origin",
        "X-Content-Type-Options": "nosniff",
    }
    if etag in {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}:
        return Response(b"", status_code=304, headers=headers, media_type="text/javascript")
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    return Response(
        bundle.gzipped if gzipped else bundle.body,
        headers=headers,
        media_type="text/javascript; charset=utf-8",
    )


@get("/widget/v1/widget.js", include_in_schema=False, sync_to_thread=False)
def widget_v1(request: Request[Any, Any, Any]) -> Response[bytes]:
    return _serve_widget(request, IMMUTABLE)


@get("/widget/widget.js", include_in_schema=False, sync_to_thread=False)
def widget_latest(request: Request[Any, Any, Any]) -> Response[bytes]:
    return _serve_widget(request, SHORT)


@cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("services.callback", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
    )


@get("/demo", include_in_schema=False, sync_to_thread=False)
def demo_page(
    site_key: Annotated[str | None, QueryParameter(name="site_key", required=False)] = None,
    lang: Annotated[str | None, QueryParameter(name="lang", required=False)] = None,
) -> Response[str]:
    """A small shop with the widget tag, served under a strict CSP (the widget must cope with it)."""
    key = site_key if site_key and _SITE_KEY.match(site_key) else "demo"
    page_lang = lang if lang in ("ru", "en") else "ru"
    html = _templates().get_template("demo.html").render(site_key=key, lang=page_lang)
    return Response(
        html,
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": DEMO_CSP,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "strict-origin-when-cross-origin",
        },
    )


@get("/demo/shop.css", include_in_schema=False, sync_to_thread=False)
def demo_css() -> Response[bytes]:
    return Response(
        (WIDGET_DIR / "demo" / "shop.css").read_bytes(),
        media_type="text/css; charset=utf-8",
        headers={"Cache-Control": SHORT},
    )


WIDGET_ROUTES: list[HTTPRouteHandler] = [widget_v1, widget_latest, demo_page, demo_css]
