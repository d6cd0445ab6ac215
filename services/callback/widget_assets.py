"""The embeddable widget's JavaScript and the demo shop page that embeds it.

`widget/src/widget.js` + `widget/src/widget.css` are built in memory on first request (the CSS becomes a
JS string literal inside the script; comment-only lines and indentation are dropped), so there is no build
step and no stale artefact. The build is redone when a source file changes, which makes editing the widget
against a running service painless. Embeds load `/widget/v1/widget.js`, a short-lived loader that adds
`/widget/v1/widget.<content hash>.js`, which is immutable; both are served pre-compressed.

An installed wheel has no `widget/` beside `services/`: the wheel build (setup_hooks.py) copies the same
files into this package as `widget_dist/`, read through importlib.resources and built once per process.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any

import brotli
import jinja2
from litestar import Request, Response, get
from litestar.exceptions import NotFoundException
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, QueryParameter

__all__ = ["DEMO_CSP", "WIDGET_ROUTES", "Asset", "WidgetBundle", "build_loader", "widget_bundle"]


def _widget_dir() -> tuple[Traversable, bool]:
    """Where the widget's sources are, and whether they may change under a running process."""
    packaged = resources.files("services.callback") / "widget_dist"
    if packaged.is_dir():
        return packaged, False
    # A checkout (or an editable install of one): the front-end project beside services/.
    return Path(__file__).resolve().parents[2] / "widget", True


WIDGET_DIR, _LIVE = _widget_dir()
_SOURCES = (WIDGET_DIR / "src" / "widget.js", WIDGET_DIR / "src" / "widget.css")
_CSS_PLACEHOLDER = "__ABONENT_CSS__"
_SITE_KEY = re.compile(r"^[a-z0-9][a-z0-9\-]{1,62}$")

# The demo page holds itself to the strictest policy a customer might have: no inline anything.
DEMO_CSP = "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'"


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


# The loader is what embeds point at (`/widget/v1/widget.js`): small, cached for minutes and revalidated
# with its ETag, it adds the content-hashed script, which never changes and is cached for a year. Its data-*
# attributes, nonce and crossorigin go to the new tag, where the widget reads them as document.currentScript.
# Pages that enforce Trusted Types allow the policy name "abonent-widget" (it only ever admits that URL).
_LOADER = """/* Abonent callback widget v1 loader | Apache-2.0 */
(function () {
  var me = document.currentScript || document.querySelector('script[data-site-key]');
  if (!me || window.Abonent) return;
  var url = new URL(__PATH__, me.src).href;
  var s = document.createElement('script');
  for (var i = 0; i < me.attributes.length; i++) {
    var a = me.attributes[i];
    if (/^(data-|crossorigin$|referrerpolicy$)/.test(a.name)) s.setAttribute(a.name, a.value);
  }
  if (me.nonce) s.nonce = me.nonce;
  s.async = true;
  var src = url;
  try {
    src = window.trustedTypes.createPolicy('abonent-widget', {
      createScriptURL: function (u) { if (u !== url) throw new TypeError(u); return u; }
    }).createScriptURL(url);
  } catch (e) { /* no Trusted Types, or the page does not allow the policy: a plain URL may still do */ }
  try { s.src = src; } catch (e) {
    console.warn('Abonent: the Trusted Types policy of this page blocks the widget; allow "abonent-widget"');
    return;
  }
  (document.head || document.documentElement).appendChild(s);
})();
"""
_HASHED = re.compile(r"^widget\.([0-9a-f]{16})\.js$")

IMMUTABLE = "public, max-age=31536000, immutable"
SHORT = "public, max-age=300"
# A hash this replica does not have (another replica is on a newer or older build during a rollout): the
# current script still works, but must not be cached under that name.
REVALIDATE = "no-cache"


@dataclass(frozen=True, slots=True)
class Asset:
    """One file as served: the identity body, its pre-compressed forms and a strong ETag per form."""

    body: bytes
    encoded: dict[str, bytes]  # content-coding → body
    etag: str

    @classmethod
    def of(cls, body: bytes) -> Asset:
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        encoded = {"gzip": gzip.compress(body, 9, mtime=0), "br": brotli.compress(body, quality=11)}
        return cls(body=body, encoded=encoded, etag=etag)


@dataclass(frozen=True, slots=True)
class WidgetBundle:
    script: Asset
    digest: str  # the first 16 hex digits of the script's SHA-256: its file name
    loader: Asset

    @staticmethod
    def path_of(digest: str) -> str:
        return f"/widget/v1/widget.{digest}.js"


def build_loader(script_path: str) -> bytes:
    return _LOADER.replace("__PATH__", json.dumps(script_path)).encode()


_cache: dict[tuple[int, ...], WidgetBundle] = {}


def _stamp() -> tuple[int, ...]:
    if not _LIVE:
        return ()  # package data never changes under a running process
    stats = [Path(str(path)).stat() for path in _SOURCES]
    return tuple(value for st in stats for value in (st.st_mtime_ns, st.st_size))


def widget_bundle() -> WidgetBundle:
    """The built widget and its loader, rebuilt only when a checkout's source file changes."""
    stamp = _stamp()
    bundle = _cache.get(stamp)
    if bundle is None:
        js_source, css_source = (path.read_text(encoding="utf-8") for path in _SOURCES)
        script = Asset.of(build_widget(js_source, css_source))
        digest = script.etag[1:17]  # the ETag is the SHA-256's first 32 hex digits, quoted
        loader = build_loader(WidgetBundle.path_of(digest))
        bundle = WidgetBundle(script=script, digest=digest, loader=Asset.of(loader))
        _cache.clear()
        _cache[stamp] = bundle
    return bundle


def _accepted_encodings(request: Request[Any, Any, Any]) -> dict[str, float]:
    """Accept-Encoding as {coding: q}; a missing q is 1."""
    accepted: dict[str, float] = {}
    for part in request.headers.get("accept-encoding", "").split(","):
        name, *params = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if name:
            accepted[name.lower()] = quality
    return accepted


def _pick_encoding(asset: Asset, request: Request[Any, Any, Any]) -> str | None:
    accepted = _accepted_encodings(request)
    wildcard = accepted.get("*", 0.0)
    # Smallest first: brotli beats gzip whenever both are on offer.
    for coding in sorted(asset.encoded, key=lambda name: len(asset.encoded[name])):
        if accepted.get(coding, wildcard) > 0:
            return coding
    return None


def _serve(request: Request[Any, Any, Any], asset: Asset, cache_control: str) -> Response[bytes]:
    coding = _pick_encoding(asset, request)
    etag = asset.etag[:-1] + f'-{coding}"' if coding else asset.etag
    headers = {
        "Cache-Control": cache_control,
        "ETag": etag,
        "Vary": "Accept-Encoding",
        # Any site may embed the script; crossorigin="anonymous" + SRI and COEP pages work too.
        "Access-Control-Allow-Origin": "*",
        "Cross-Origin-Resource-Policy": "cross-origin",
        "X-Content-Type-Options": "nosniff",
    }
    # Weak comparison (RFC 9110 13.1.2): a proxy that re-compresses may have weakened our tag.
    offered = {tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(",")}
    if etag in offered or "*" in offered:
        return Response(b"", status_code=304, headers=headers, media_type="text/javascript")
    if coding:
        headers["Content-Encoding"] = coding
    # Litestar adds "; charset=utf-8" to text/* itself; naming it here as well doubled it.
    return Response(
        asset.encoded[coding] if coding else asset.body, headers=headers, media_type="text/javascript"
    )


@get(["/widget/v1/widget.js", "/widget/widget.js"], include_in_schema=False, sync_to_thread=False)
def widget_loader(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The loader every embed points at."""
    return _serve(request, widget_bundle().loader, SHORT)


@get("/widget/v1/{name:str}", include_in_schema=False, sync_to_thread=False)
def widget_hashed(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
    """The widget itself under its content hash."""
    match = _HASHED.match(name)
    if match is None:
        raise NotFoundException()
    bundle = widget_bundle()
    return _serve(request, bundle.script, IMMUTABLE if match.group(1) == bundle.digest else REVALIDATE)


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


WIDGET_ROUTES: list[HTTPRouteHandler] = [widget_loader, widget_hashed, demo_page, demo_css]
