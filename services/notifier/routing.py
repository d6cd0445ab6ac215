"""Routing as data: routing.toml (event → purpose, template, audience, urgency, TTL, channels), templates."""

from __future__ import annotations

import datetime as dt
import fnmatch
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal

import jinja2
import msgspec

from services.common.calendar import as_utc, zone
from services.common.consumers import CATALOGUE
from services.common.events import Event

ROUTING_FILE = Path(__file__).parent / "routing.toml"
TEMPLATES_DIR = Path(__file__).parent / "templates" / "messages"
LANGS = ("ru", "en")
# Channel slots a route may name: a bound messenger chat, or SMS to the phone.
CHANNEL_SLOTS = ("messenger", "sms")
Audience = Literal["callback_visitor", "subscriber"]


class RoutingError(ValueError):
    """The routing table or a template is wrong: the process must not start with it."""


class TemplateSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    version: int
    # The operator's registered template id (gateways that need one get it with the message).
    template_id: str = ""
    # The most SMS segments a worst-case rendering may take (checked by the template segment test).
    sms_segments: int = 1


class Route(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    event: str
    purpose: str
    category: str
    template: str
    audience: Audience
    channels: list[str]
    urgent: bool = False
    ttl_s: int = 0
    legally_required: bool = False
    deadline_field: str = ""
    edit_in_place: bool = False
    when: dict[str, list[str]] = {}

    def matches(self, event: Event) -> bool:
        return all(
            any(fnmatch.fnmatchcase(str(getattr(event, name)), pattern) for pattern in patterns)
            for name, patterns in self.when.items()
        )

    def deadline_of(self, event: Event) -> dt.datetime | None:
        if not self.deadline_field:
            return None
        value = getattr(event, self.deadline_field)
        return value if isinstance(value, dt.datetime) else None

    def expires_at(self, event: Event) -> dt.datetime | None:
        return None if self.ttl_s <= 0 else event.occurred_at + dt.timedelta(seconds=self.ttl_s)


class _RoutingFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    templates: dict[str, TemplateSpec]
    route: list[Route]


class Rendered(msgspec.Struct, frozen=True, kw_only=True):
    template: str
    version: int
    template_id: str
    lang: str
    text: str


class Router:
    """The loaded table: routes by event tag, and the templates they render."""

    def __init__(self, templates: Mapping[str, TemplateSpec], routes: list[Route], env: jinja2.Environment):
        self.templates = dict(templates)
        self.routes = list(routes)
        self._by_event: dict[str, list[Route]] = {}
        for route in routes:
            self._by_event.setdefault(route.event, []).append(route)
        self._env = env

    @property
    def event_tags(self) -> list[str]:
        return sorted(self._by_event)

    def routes_for(self, event: Event) -> list[Route]:
        tag = str(type(event).__struct_config__.tag)
        return [route for route in self._by_event.get(tag, []) if route.matches(event)]

    def channel_slots(self) -> set[str]:
        return {slot for route in self.routes for slot in route.channels}

    def render(self, name: str, lang: str, context: Mapping[str, Any]) -> Rendered:
        spec = self.templates[name]
        lang = lang if lang in LANGS else LANGS[0]
        text = self._env.get_template(template_file(name, spec.version, lang)).render(**context)
        return Rendered(
            template=name, version=spec.version, template_id=spec.template_id, lang=lang, text=text.strip()
        )


def template_file(name: str, version: int, lang: str) -> str:
    return f"{name}.v{version}.{lang}.j2"


def load_router(
    path: Path = ROUTING_FILE,
    templates_dir: Path = TEMPLATES_DIR,
    available_slots: Collection[str] | None = None,
) -> Router:
    """Read and check the table; RoutingError names the route and what is wrong with it.

    `available_slots`: the channel slots the configured channels fill ("messenger", "sms"); a route
    naming one no configured channel fills stops the process too.
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        table = msgspec.convert(raw, _RoutingFile)
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise RoutingError(f"{path.name}: {exc}") from None
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - plain text for SMS and chats; never rendered into HTML unescaped
        keep_trailing_newline=False,
        # Templates ship with the code: no stat() of the file on every render.
        auto_reload=False,
    )
    for name, spec in table.templates.items():
        for lang in LANGS:
            file = template_file(name, spec.version, lang)
            try:
                env.get_template(file)
            except jinja2.TemplateNotFound:
                raise RoutingError(f"template {name!r} v{spec.version} has no {lang} file {file}") from None
            except jinja2.TemplateSyntaxError as exc:
                raise RoutingError(f"template {file}: {exc}") from None
    seen: set[tuple[str, str]] = set()
    for index, route in enumerate(table.route):
        where = f"route #{index + 1} ({route.event} → {route.purpose})"
        cls = CATALOGUE.get(route.event)
        if cls is None:
            raise RoutingError(f"{where}: unknown event {route.event!r}")
        if route.template not in table.templates:
            raise RoutingError(f"{where}: unknown template {route.template!r}")
        if not route.channels:
            raise RoutingError(f"{where}: no channels")
        for slot in route.channels:
            if slot not in CHANNEL_SLOTS:
                raise RoutingError(f"{where}: unknown channel {slot!r} (known: {', '.join(CHANNEL_SLOTS)})")
            if available_slots is not None and slot not in available_slots:
                raise RoutingError(f"{where}: no configured channel delivers {slot!r}")
        fields = {f.name for f in msgspec.structs.fields(cls)}
        for name in [route.deadline_field, *route.when]:
            if name and name not in fields:
                raise RoutingError(f"{where}: {route.event} has no field {name!r}")
        if route.audience == "subscriber" and "msisdn" not in fields:
            raise RoutingError(f"{where}: {route.event} carries no msisdn for audience 'subscriber'")
        if route.audience == "callback_visitor" and "callback_id" not in fields:
            raise RoutingError(f"{where}: {route.event} is not a callback event")
        if route.urgent and route.ttl_s <= 0:
            raise RoutingError(f"{where}: an urgent route needs a ttl_s")
        if (route.event, route.purpose) in seen:
            raise RoutingError(f"{where}: declared twice")
        seen.add((route.event, route.purpose))
    return Router(table.templates, table.route, env)


def _local(value: dt.datetime, tz: str, fmt: str) -> str:
    return as_utc(value).astimezone(zone(tz)).strftime(fmt)


def template_context(event: Event, tz: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The event's fields, each time also as `<field>_local` ("25.11 10:00"), `_time`, `_date` and
    `_last_day` (the last local day it leaves whole), in `tz`."""
    context: dict[str, Any] = {}
    for name, value in msgspec.structs.asdict(event).items():
        context[name] = value
        if isinstance(value, dt.datetime):
            context[f"{name}_local"] = _local(value, tz, "%d.%m %H:%M")
            context[f"{name}_time"] = _local(value, tz, "%H:%M")
            context[f"{name}_date"] = _local(value, tz, "%d.%m.%Y")
            # A deadline at local midnight ends the day before: "by 15.12" would promise a day too many.
            context[f"{name}_last_day"] = _local(value - dt.timedelta(microseconds=1), tz, "%d.%m.%Y")
    context.update(extra or {})
    return context
