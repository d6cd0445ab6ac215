"""Every SMS template, rendered with worst-case values, fits the segment budget routing.toml declares."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec
import pytest

from services.common.consumers import CATALOGUE
from services.common.events import Event
from services.notifier.domain.segments import count_segments
from services.notifier.engine import MAX_LINK_CHARS, short_link
from services.notifier.routing import LANGS, Route, load_router, template_context

# Two-digit days and hours everywhere: the longest dates a template can show.
WORST_TIME = dt.datetime(2026, 12, 31, 20, 59, tzinfo=dt.UTC)
LONGEST_LINK = "https://verify.example.ru/v/" + "x" * (MAX_LINK_CHARS - 28)
ROUTER = load_router()


def worst_event(route: Route) -> Event:
    """An event of the route's type with the longest values its fields can carry into a message."""
    cls = CATALOGUE[route.event]
    values: dict[str, object] = {
        "callback_id": uuid.uuid4(),
        "case_id": uuid.uuid4(),
        "site_key": "shop",
        "phone": "+79161234567",
        "msisdn": "+79161234567",
        "visitor_tz": "Asia/Kamchatka",
        "lang": "ru",
        "promised_earliest": WORST_TIME,
        "promised_latest": WORST_TIME,
        "promise_kind": "scheduled",
        "due_at": WORST_TIME,
        "deadline": WORST_TIME,
        "link": LONGEST_LINK,
        "days_left": 99,
        "reason": "outdated_data" if route.event.startswith("verification") else "rescheduled",
        "attempt": 9,
        "attempts": 9,
        "outcome": "no_answer",
    }
    fields = {f.name for f in msgspec.structs.fields(cls)}
    state = "failed" if "callback" in route.event else "open"
    return cls(state=state, **{k: v for k, v in values.items() if k in fields})  # type: ignore[call-arg]


@pytest.mark.parametrize("route", ROUTER.routes, ids=lambda r: r.purpose)
@pytest.mark.parametrize("lang", LANGS)
def test_worst_case_rendering_fits_the_declared_segment_budget(route: Route, lang: str) -> None:
    extra = {"rebook_url": short_link("https://shop.example.ru/" + "very-long-page/" * 20)}
    assert len(str(extra["rebook_url"])) <= MAX_LINK_CHARS
    text = ROUTER.render(
        route.template, lang, template_context(worst_event(route), "Asia/Kamchatka", extra)
    ).text
    budget = ROUTER.templates[route.template].sms_segments
    counted = count_segments(text)
    assert counted.segments <= budget, f"{route.template}.{lang}: {counted} > {budget} segment(s): {text!r}"


def test_a_long_rebooking_page_is_shortened_to_its_site() -> None:
    assert short_link("https://shop.example/contact") == "https://shop.example/contact"
    assert short_link("https://shop.example/" + "x" * 80) == "https://shop.example"
