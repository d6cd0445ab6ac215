"""HTTP contracts of the callback service: request and response bodies as msgspec Structs."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Literal
from zoneinfo import available_timezones

import msgspec
import phonenumbers

Lang = Literal["ru", "en"]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")

SITE_KEY_PATTERN = r"^[a-z0-9][a-z0-9\-]{1,62}$"
SiteKey = Annotated[str, msgspec.Meta(pattern=SITE_KEY_PATTERN, examples=["shop-42"])]
ClockTime = Annotated[str, msgspec.Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["10:00"])]
# Every IANA zone name this installation knows. The schema lists them as an enum and check_zone accepts
# exactly these, so a client that follows the schema is never refused (`tz=00` used to be "any string").
ZONE_NAMES = tuple(sorted(available_timezones()))
_ZONES = frozenset(ZONE_NAMES)
# "extra" is how Litestar carries msgspec's extra_json_schema into the OpenAPI schema.
ZONE_ENUM = {"enum": list(ZONE_NAMES)}
TimeZoneName = Annotated[
    str,
    msgspec.Meta(max_length=64, examples=["Asia/Novosibirsk"], extra_json_schema={"extra": ZONE_ENUM}),
]


def check_zone(name: str, field: str) -> str:
    if name not in _ZONES:
        raise ValueError(f"{field}: unknown time zone {name!r}")
    return name


class CallingWindow(msgspec.Struct, kw_only=True, frozen=True):
    """When callees may be called, in THEIR local time."""

    start: ClockTime = "09:00"
    end: Annotated[str, msgspec.Meta(examples=["21:00"])] = "21:00"

    def __post_init__(self) -> None:
        if not _HHMM.match(self.end) or self.end <= self.start:
            raise ValueError("calling_window.end: must be HH:MM after start")


class ConsentSettings(msgspec.Struct, kw_only=True, frozen=True):
    required: bool = True
    text: dict[str, str] = msgspec.field(
        default_factory=lambda: {
            "ru": "Я согласен на обработку номера телефона для обратного звонка",
            "en": "I agree to the processing of my phone number for this callback",
        }
    )
    version: Annotated[str, msgspec.Meta(max_length=40)] = "1"


class ThemeSettings(msgspec.Struct, kw_only=True, frozen=True):
    color: str = "#0a66ff"
    position: Literal["bottom-right", "bottom-left"] = "bottom-right"

    def __post_init__(self) -> None:
        if not _COLOR.match(self.color):
            raise ValueError("theme.color: must be #rrggbb")


class RetryPolicy(msgspec.Struct, kw_only=True, frozen=True):
    """How often a visitor is redialed: bounded attempts, spacing by outcome, never outside their window."""

    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=5)] = 3
    busy_retry_s: Annotated[int, msgspec.Meta(ge=30, le=86400)] = 120
    no_answer_retry_s: Annotated[int, msgspec.Meta(ge=60, le=86400)] = 600
    failed_retry_s: Annotated[int, msgspec.Meta(ge=10, le=86400)] = 60


class AbuseSettings(msgspec.Struct, kw_only=True, frozen=True):
    per_ip_10min: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 5
    per_phone_day: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    daily_cap: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 2000
    # Bots submit forms faster than people can type a phone number.
    min_fill_ms: Annotated[int, msgspec.Meta(ge=0, le=60000)] = 1500
    # 0 = off; 16 ≈ 65k SHA-256 hashes in the visitor's browser (well under a second).
    proof_of_work_bits: Annotated[int, msgspec.Meta(ge=0, le=24)] = 0


class WidgetFields(msgspec.Struct, kw_only=True, frozen=True):
    """Optional parts of the form a site can switch off."""

    slot_picker: bool = True
    not_before: bool = True


_DAY_RANGE = re.compile(r"^(mon|tue|wed|thu|fri|sat|sun)(?:-(mon|tue|wed|thu|fri|sat|sun))?$")


def weekdays_of(days: list[str]) -> frozenset[int]:
    """Weekday numbers (0=Monday) of day names and ranges: ["mon-fri", "sun"]; ranges may wrap: "sat-mon"."""
    found: set[int] = set()
    for token in days:
        match = _DAY_RANGE.match(token)
        if match is None:
            raise ValueError(f"{token!r} is not a weekday (mon..sun) or a range of them (mon-fri)")
        first = WEEKDAYS.index(match.group(1))
        last = WEEKDAYS.index(match.group(2) or match.group(1))
        found.update((first + step) % 7 for step in range((last - first) % 7 + 1))
    return frozenset(found)


class StaffingShift(msgspec.Struct, kw_only=True, frozen=True):
    """`agents` people work from `start` to `end` (site-local time) on `days`; overlapping shifts add up."""

    days: Annotated[list[str], msgspec.Meta(min_length=1, max_length=7, examples=[["mon-fri"]])]
    start: ClockTime
    end: Annotated[str, msgspec.Meta(examples=["18:00"])]
    agents: Annotated[int, msgspec.Meta(ge=0, le=1000)]

    def __post_init__(self) -> None:
        try:
            weekdays_of(self.days)
        except ValueError as exc:
            raise ValueError(f"staffing.days: {exc}") from None
        if not _HHMM.match(self.end) or self.end <= self.start:
            raise ValueError("staffing.end: must be HH:MM (or 24:00) after start")


def _default_hours() -> dict[str, list[list[str]]]:
    return {day: [["09:00", "18:00"]] for day in WEEKDAYS[:5]}


# A call still connected this long after bridging is taken for lost (its hangup never reached us).
DEFAULT_MAX_TALK_S = 7_200


class SiteSettings(msgspec.Struct, kw_only=True, frozen=True):
    """A site (tenant) as the operator's back office configures it."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200, examples=["Demo shop"])]
    allowed_origins: Annotated[list[str], msgspec.Meta(examples=[["https://shop.example"]])]
    timezone: TimeZoneName = "Europe/Moscow"
    # Site-local working hours per weekday: {"mon": [["09:00", "18:00"]], ...}; missing days are closed.
    working_hours: dict[str, list[list[str]]] = msgspec.field(default_factory=_default_hours)
    holidays: list[dt.date] = msgspec.field(default_factory=list)
    # "RU": the official production calendar closes the site on public holidays and transferred days off,
    # and opens it on weekend days worked by decree (with the hours of the weekday they stand in for).
    production_calendar: Literal["RU"] | None = None
    allowed_countries: list[str] = msgspec.field(default_factory=lambda: ["RU"])
    calling_window: CallingWindow = msgspec.field(default_factory=CallingWindow)
    queue: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_\-]{1,40}$")] = "default"
    # Who is expected at work when, in the site's zone and calendar: the promise for any later time
    # (an opening, a slot, when nobody is at work now) comes from here; now, from presence. Empty: only
    # agents at work right now are promised, and no slots are offered.
    staffing: Annotated[list[StaffingShift], msgspec.Meta(max_length=50)] = msgspec.field(
        default_factory=list
    )
    dial_order: Literal["agent_first", "customer_first"] = "agent_first"
    # A call still 'connected' after this long lost its hangup (e.g. died with its process): it is closed
    # and the agent freed, so one lost event cannot hold an agent forever.
    max_talk_s: Annotated[int, msgspec.Meta(ge=60, le=86_400)] = DEFAULT_MAX_TALK_S
    default_lang: Lang = "ru"
    # Overrides of the widget's texts per language: {"en": {"title": "Call me back"}}.
    texts: dict[str, dict[str, str]] = msgspec.field(default_factory=dict)
    consent: ConsentSettings = msgspec.field(default_factory=ConsentSettings)
    theme: ThemeSettings = msgspec.field(default_factory=ThemeSettings)
    retry_policy: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    abuse: AbuseSettings = msgspec.field(default_factory=AbuseSettings)
    widget_fields: WidgetFields = msgspec.field(default_factory=WidgetFields)
    # CRM webhooks: every callback.* event is POSTed here, signed with HMAC-SHA256 (see README).
    crm_webhook_url: Annotated[str, msgspec.Meta(max_length=2000, pattern=r"^(https?://.+)?$")] = ""
    # Write-only: set it with a string, clear it with "", leave it out to keep the current one. Stored
    # encrypted, never part of any response (Site.crm_webhook_secret_set says whether one is set).
    crm_webhook_secret: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=200,
                description='Write-only: a value sets it, "" clears it, absent keeps it; never returned',
            ),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET

    def __post_init__(self) -> None:
        check_zone(self.timezone, "timezone")
        for origin in self.allowed_origins:
            if not _ORIGIN.match(origin):
                raise ValueError(f"allowed_origins: {origin!r} is not scheme://host[:port]")
        for day, ranges in self.working_hours.items():
            if day not in WEEKDAYS:
                raise ValueError(f"working_hours: {day!r} is not one of {', '.join(WEEKDAYS)}")
            for pair in ranges:
                if len(pair) != 2 or not all(_HHMM.match(t) for t in pair) or pair[1] <= pair[0]:
                    raise ValueError(
                        f"working_hours.{day}: {pair!r} must be [HH:MM, HH:MM] with end after start"
                    )
        supported = phonenumbers.SUPPORTED_REGIONS
        for country in self.allowed_countries:
            if country not in supported:
                raise ValueError(f"allowed_countries: {country!r} is not an ISO 3166 region code")


class Site(msgspec.Struct, kw_only=True):
    site_key: str
    org_id: str  # the organisation the site belongs to; it never moves to another
    settings: SiteSettings
    updated_at: dt.datetime
    crm_webhook_secret_set: bool = False


class PromiseView(msgspec.Struct, kw_only=True):
    kind: Literal["asap", "scheduled"]
    earliest: dt.datetime
    latest: dt.datetime
    text: str


class SlotRange(msgspec.Struct, kw_only=True):
    """Back-to-back bookable slots: every `slot_minutes` from `start` until `end` (the last one's end)."""

    start: dt.datetime
    end: dt.datetime


class PowChallenge(msgspec.Struct, kw_only=True):
    bits: int


class Offer(msgspec.Struct, kw_only=True):
    """What we would promise right now, plus slots for later: the first few days with a free slot, as
    ranges of back-to-back slots (the widget labels them on the visitor's clock)."""

    open_now: bool
    promise: PromiseView | None
    slot_minutes: int
    slot_ranges: list[SlotRange]
    form_token: str
    pow: PowChallenge | None = None


class CountryView(msgspec.Struct, kw_only=True):
    """A country the site calls, for the widget's country picker."""

    code: Annotated[str, msgspec.Meta(examples=["DE"])]  # ISO 3166 alpha-2
    name: Annotated[str, msgspec.Meta(examples=["Germany"])]  # in the requested language
    calling_code: Annotated[int, msgspec.Meta(examples=[49])]


class WidgetConfig(msgspec.Struct, kw_only=True):
    site_key: str
    name: str
    lang: Lang
    texts: dict[str, str]
    consent: ConsentSettings
    theme: ThemeSettings
    allowed_countries: list[str]
    default_country: str
    fields: WidgetFields
    countries: list[CountryView] = msgspec.field(default_factory=list)


class CallbackCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A visitor's request to be called back."""

    phone: Annotated[str, msgspec.Meta(min_length=1, max_length=40, examples=["+7 912 345-67-89"])]
    visitor_tz: TimeZoneName
    form_token: Annotated[str, msgspec.Meta(max_length=400)]
    lang: Lang = "ru"
    slot_start: dt.datetime | None = None
    not_before: ClockTime | None = None
    consent: bool = False
    page_url: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    referrer: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    utm: Annotated[dict[str, Annotated[str, msgspec.Meta(max_length=200)]], msgspec.Meta(max_length=10)] = (
        msgspec.field(default_factory=dict)
    )
    visitor_id: Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[A-Za-z0-9_\-]*$")] | None = None
    pow_nonce: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    # Honeypot: hidden from people; bots fill every field.
    website: Annotated[str, msgspec.Meta(max_length=200)] = ""

    def __post_init__(self) -> None:
        check_zone(self.visitor_tz, "visitor_tz")
        if self.slot_start is not None and self.slot_start.tzinfo is None:
            raise ValueError("slot_start: must carry a UTC offset")


class CallbackCreated(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    status_token: str
    status: str
    promise: PromiseView


class RetryPlan(msgspec.Struct, kw_only=True):
    attempts_left: int
    next_attempt_at: dt.datetime | None
    last_attempt_by: dt.datetime | None


class CallbackStatus(msgspec.Struct, kw_only=True):
    """What the visitor sees about their request."""

    id: uuid.UUID
    status: str
    text: str
    promise: PromiseView
    attempts: int
    max_attempts: int
    retry_plan: RetryPlan | None
    outcome: str | None
    updated_at: dt.datetime


class Reschedule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    slot_start: dt.datetime | None = None
    not_before: ClockTime | None = None

    def __post_init__(self) -> None:
        if self.slot_start is None and self.not_before is None:
            raise ValueError("slot_start: give slot_start or not_before")
        if self.slot_start is not None and self.slot_start.tzinfo is None:
            raise ValueError("slot_start: must carry a UTC offset")
