"""Promise engine: an honest, calibrated "we'll call you within / at" from live queue state and calendars.

Wait model (see `estimate_wait`). Requests are served FIFO by N agents; a request starts when the
(ahead + 1)-th agent becomes free, counting Ready agents as free now. Given the live state, that start
time is a random variable we can sample exactly: each busy agent's remaining time is drawn from the
recent handle times *conditioned on exceeding what it has already spent on the call* (a call 5 minutes
in is likely a long one), and every request ahead of ours then takes a fresh handle time. Later arrivals
never overtake, so nothing else matters. A seeded Monte-Carlo of that N-server FIFO gives the wait
distribution; `latest` is its `confidence` quantile and `earliest` its 10% quantile, both plus the dial
overhead (dispatch + ringing). With fewer than 20 handle-time samples the handle time is assumed
exponential with the configured default mean: that is Erlang C (M/M/N), where remaining times are
memoryless. `latest` is then rounded up to a display granularity; rounding only ever widens the window.

Why not a closed-form Erlang-C quantile: it ignores how long each busy call has already lasted and how
many requests are ahead, which is exactly the information that makes the bound tight for this visitor.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
import statistics
from collections import OrderedDict
from typing import Literal
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import numpy.typing as npt

from services.callback.domain.calendar import (
    CalleeWindow,
    Interval,
    SiteCalendar,
    Slot,
    as_utc,
    blocking_constraints,
    callable_intervals,
    offer_slots,
)
from services.callback.domain.staffing import StaffingTimeline
from services.common.calendar import intersect_intervals

__all__ = [
    "PROMISE_HORIZON_DAYS",
    "SLOT_SAFETY_FACTOR",
    "WORK",
    "EstimateWork",
    "Promise",
    "PromiseReason",
    "QueueSnapshot",
    "WaitEstimate",
    "bookable_slots",
    "estimate_wait",
    "mean_handle_time",
    "promise_callback_time",
    "render_promise_text",
    "round_up_for_display",
]

PromiseReason = Literal[
    "agents_available",
    "queue",
    "outside_hours",
    "callee_window",
    "not_before",
    "chosen_slot",
    "staffing",  # callable now, but nobody is at work until the schedule's next shift begins
]
WaitModel = Literal["immediate", "empirical", "exponential", "no_agents"]

# 600 runs put the 95% quantile's own sampling error at about +-1 percentile point; simulated side by side
# with numpy, a queue state costs one array op per request ahead, shared by every `ahead` of that state.
_MONTE_CARLO_RUNS = 600
_EARLIEST_QUANTILE = 0.10
# Below this many completed calls an empirical distribution is noise; fall back to Erlang C.
_MIN_HANDLE_TIME_SAMPLES = 20
PROMISE_HORIZON_DAYS = 14
_TICK = dt.timedelta(microseconds=1)

_Floats = npt.NDArray[np.float64]
_NO_SAMPLES: _Floats = np.empty(0)


class QueueSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """What the service knows about one queue at the moment a request arrives."""

    ready_agents: int
    busy_elapsed_s: tuple[float, ...] = ()
    ahead: int
    handle_time_samples_s: tuple[float, ...] = ()
    default_handle_time_s: float = 180.0
    dial_overhead_s: float = 20.0
    # Seconds from now at which pending requests not yet due become due (retries, slots, openings),
    # ascending. All were asked for before the visitor, so once due they go first (FIFO by request time).
    later_due_s: tuple[float, ...] = ()
    # Attempts beyond the first that a request takes on average (no answer, busy -> retry), from history.
    extra_attempts: float = 0.0
    # Share of agents' working time spent on breaks (workforce planners' "shrinkage").
    break_share: float = 0.0

    def __post_init__(self) -> None:
        if self.ready_agents < 0 or self.ahead < 0:
            raise ValueError("ready_agents and ahead cannot be negative")
        if any(elapsed < 0 for elapsed in self.busy_elapsed_s):
            raise ValueError("busy_elapsed_s cannot be negative")
        if any(sample <= 0 for sample in self.handle_time_samples_s):
            raise ValueError("handle_time_samples_s must be positive")
        if not 0.0 <= self.break_share < 1.0:
            raise ValueError("break_share must be within [0, 1)")
        if not 0.0 <= self.extra_attempts <= 4.0:
            raise ValueError("extra_attempts must be within [0, 4]")
        if any(b < a for a, b in zip(self.later_due_s, self.later_due_s[1:], strict=False)):
            raise ValueError("later_due_s must be ascending")
        if self.default_handle_time_s <= 0 or self.dial_overhead_s < 0:
            raise ValueError("default_handle_time_s must be positive and dial_overhead_s non-negative")


class WaitEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """Seconds from now until the visitor's phone rings; `latest` holds with the requested confidence.

    Both are infinite (model "no_agents") when no agent is logged in: nothing honest can be promised.
    """

    earliest_s: float
    latest_s: float
    model: WaitModel


class Promise(msgspec.Struct, frozen=True, kw_only=True):
    """The callback time shown to the visitor: the phone rings within [earliest, latest] (UTC)."""

    kind: Literal["asap", "scheduled"]
    earliest: dt.datetime
    latest: dt.datetime
    reason: PromiseReason

    def __post_init__(self) -> None:
        if as_utc(self.latest) < as_utc(self.earliest):
            raise ValueError(f"promise latest {self.latest} is before its earliest {self.earliest}")


def round_up_for_display(seconds: float) -> float:
    """Round up to 10 s under 2 min, to 1 min under 1 h, to 5 min beyond; never decreases the value."""
    step = 10.0 if seconds <= 120 else 60.0 if seconds <= 3600 else 300.0
    return math.ceil(seconds / step) * step


class _HandleTimes:
    """Handle-time distribution: empirical from recent calls, or exponential (Erlang C) without history."""

    def __init__(self, samples: tuple[float, ...], default_mean_s: float) -> None:
        self.empirical = len(samples) >= _MIN_HANDLE_TIME_SAMPLES
        self.sorted_samples = (
            np.sort(np.asarray(samples, dtype=np.float64)) if self.empirical else _NO_SAMPLES
        )
        self.mean_s = statistics.fmean(samples) if self.empirical else default_mean_s

    def draw_fresh(self, uniforms: _Floats) -> _Floats:
        if self.empirical:
            samples = self.sorted_samples
            return samples[(uniforms * len(samples)).astype(np.intp)]
        return -self.mean_s * np.log1p(-uniforms)

    def draw_residuals(self, elapsed_s: float, uniforms: _Floats) -> _Floats:
        """Remaining time of a call already `elapsed_s` long: handle times conditioned on exceeding it."""
        if self.empirical:
            samples = self.sorted_samples
            first_longer = int(np.searchsorted(samples, elapsed_s, side="right"))
            longer = len(samples) - first_longer
            if longer > 0:
                return samples[first_longer + (uniforms * longer).astype(np.intp)] - elapsed_s
        # No history, or the call outlasted every recent call: assume a memoryless remainder.
        return -self.mean_s * np.log1p(-uniforms)


class _StartCurve:
    """Monte-Carlo start times of a visitor at every place in line, for one queue state (all but `ahead`).

    With every request ahead already waiting, no agent idles until the line is through, so each agent
    serves its own back-to-back sequence of fresh handle times (from when it is next free), and the
    visitor with k requests ahead starts at the k-th earliest start among all agents' sequences. Handle
    times are independent of which request an agent takes, so this is the N-server FIFO exactly, and it
    vectorises: per run and agent a cumulative sum, then one sort over all runs (numpy) instead of a heap
    step per request ahead. The sequences are drawn only as deep as asked and extended in a fixed draw
    order, so one simulation answers every `ahead` of the state and extending it never changes earlier
    points; per run start times never decrease with k, so estimates are monotonic in `ahead` run by run.
    """

    def __init__(self, snapshot: QueueSnapshot, handle_times: _HandleTimes, rng_seed: int) -> None:
        self.handle_times = handle_times
        self.rng = np.random.default_rng(rng_seed)
        runs = _MONTE_CARLO_RUNS
        rows = [np.zeros(runs)] * snapshot.ready_agents
        for elapsed in snapshot.busy_elapsed_s:
            rows.append(handle_times.draw_residuals(elapsed, self.rng.random(runs)))
        self.agents = len(rows)
        self.next_start = np.vstack(rows)  # agents x runs: when each agent's next undrawn request starts
        self.last_start = np.zeros_like(self.next_start)
        self.sorted_starts = np.empty((0, runs))  # every drawn start, ascending per run (column)
        self.exact_depth = 0  # rows of sorted_starts no undrawn start can precede
        whole, fraction = divmod(snapshot.extra_attempts, 1.0)
        self.extra_whole, self.extra_fraction = int(whole), fraction
        # Draws per request: its own handle time, whole extra attempts, a partial one and its coin.
        self.draws_per_request = 1 + self.extra_whole + (2 if fraction > 0 else 0)
        self.stretch = 1.0 / (1.0 - snapshot.break_share)
        self.quantiles: dict[tuple[int, float], tuple[float, float]] = {}
        WORK.curves += 1

    def _services(self, depth: int) -> _Floats:
        """Agent time of the next `depth` requests of every agent, per run (depth x agents x runs)."""
        handle_times = self.handle_times
        uniforms = self.rng.random((self.draws_per_request, depth, self.agents, _MONTE_CARLO_RUNS))
        services = handle_times.draw_fresh(uniforms[0])
        # Some requests ahead will not answer and come back as retries: their extra attempts take an agent
        # too (placed right after, which uses the same agent time as placing them later).
        for draw in range(1, 1 + self.extra_whole):
            services = services + handle_times.draw_fresh(uniforms[draw])
        if self.extra_fraction > 0:
            partial = handle_times.draw_fresh(uniforms[-2])
            services = services + np.where(uniforms[-1] < self.extra_fraction, partial, 0.0)
        # Agents spend a share of their time on breaks: a request ahead costs that much more of it.
        return services * self.stretch

    def _deepen(self, ahead: int) -> None:
        """Draw each agent's sequence deeper until the start with `ahead` requests before it is exact."""
        while self.exact_depth <= ahead:
            drawn = len(self.sorted_starts) // self.agents
            depth = max(4, (ahead + 1) // self.agents + 2 - drawn, drawn)  # at least doubling
            services = self._services(depth)
            ends = np.cumsum(services, axis=0) + self.next_start
            starts = np.concatenate((self.next_start[np.newaxis], ends[:-1]))
            self.next_start, self.last_start = ends[-1], starts[-1]
            merged = np.concatenate((self.sorted_starts, starts.reshape(-1, _MONTE_CARLO_RUNS)))
            self.sorted_starts = np.sort(merged, axis=0)
            # Undrawn starts come after every agent's last drawn one: the rows up to the earliest of
            # those, in every run, are final.
            horizon = self.last_start.min(axis=0)
            self.exact_depth = int((self.sorted_starts <= horizon).sum(axis=0).min())
            WORK.steps += depth * self.agents

    def quantile_pair(self, ahead: int, confidence: float) -> tuple[float, float]:
        """(earliest, latest) wait of a visitor with `ahead` requests before them, without dial overhead:
        the upper order statistic for `latest` (never optimistic), a lower one for `earliest`."""
        cached = self.quantiles.get((ahead, confidence))
        if cached is not None:
            return cached
        self._deepen(ahead)
        starts = self.sorted_starts[ahead]
        runs = len(starts)
        upper = min(runs - 1, math.ceil(confidence * runs) - 1)
        lower = int(_EARLIEST_QUANTILE * runs)
        ordered = np.partition(starts, (lower, upper))
        pair = (float(ordered[lower]), float(ordered[upper]))
        self.quantiles[(ahead, confidence)] = pair
        return pair


class EstimateWork(msgspec.Struct, kw_only=True):
    """Work the promise engine did in this process (what flat-cost tests and metrics count)."""

    curves: int = 0  # queue states simulated
    steps: int = 0  # requests simulated over all states and agents (each an element of an array op)


WORK = EstimateWork()
# Recently simulated queue states: every offer and request seeing the same queue state reuses its curve.
_CURVES: OrderedDict[tuple[object, ...], _StartCurve] = OrderedDict()
_CURVES_KEPT = 32


def _start_curve(snapshot: QueueSnapshot, rng_seed: int) -> _StartCurve:
    key = (
        snapshot.ready_agents,
        snapshot.busy_elapsed_s,
        snapshot.handle_time_samples_s,
        snapshot.default_handle_time_s,
        snapshot.extra_attempts,
        snapshot.break_share,
        rng_seed,
    )
    curve = _CURVES.get(key)
    if curve is None:
        handle_times = _HandleTimes(snapshot.handle_time_samples_s, snapshot.default_handle_time_s)
        curve = _CURVES[key] = _StartCurve(snapshot, handle_times, rng_seed)
        if len(_CURVES) > _CURVES_KEPT:
            _CURVES.popitem(last=False)
    else:
        _CURVES.move_to_end(key)
    return curve


def estimate_wait(snapshot: QueueSnapshot, confidence: float = 0.95, rng_seed: int = 0) -> WaitEstimate:
    """Seconds until the visitor's phone rings if dispatched ASAP; deterministic for a given seed."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    overhead = snapshot.dial_overhead_s
    if snapshot.ready_agents > snapshot.ahead:
        return WaitEstimate(
            earliest_s=float(math.floor(overhead)), latest_s=round_up_for_display(overhead), model="immediate"
        )
    if snapshot.ready_agents + len(snapshot.busy_elapsed_s) == 0:
        return WaitEstimate(earliest_s=math.inf, latest_s=math.inf, model="no_agents")
    curve = _start_curve(snapshot, rng_seed)
    earliest_wait, latest_wait = curve.quantile_pair(snapshot.ahead, confidence)
    return WaitEstimate(
        earliest_s=float(math.floor(earliest_wait + overhead)),
        latest_s=round_up_for_display(latest_wait + overhead),
        model="empirical" if curve.handle_times.empirical else "exponential",
    )


def mean_handle_time(snapshot: QueueSnapshot) -> float:
    """Mean handle time the engine assumes: from history once there is enough of it."""
    return _HandleTimes(snapshot.handle_time_samples_s, snapshot.default_handle_time_s).mean_s


def _due_by(snapshot: QueueSnapshot, offset_s: float) -> int:
    """Requests ahead of a new visitor that are due `offset_s` seconds from now."""
    # A millisecond of slack: instants turned into float seconds must not lose a request due exactly then.
    return snapshot.ahead + bisect.bisect_right(snapshot.later_due_s, offset_s + 1e-3)


# Each pass can only add requests ahead, so this converges; the bound keeps a pathological backlog cheap.
_AHEAD_PASSES = 8


def _wait_from(snapshot: QueueSnapshot, offset_s: float, confidence: float) -> WaitEstimate:
    """The wait of a visitor whose place in line starts `offset_s` from now (0 = now, or an opening).

    Everyone due before the visitor's phone would ring goes first: requests due now, and retries, slots
    and openings that fall due while the visitor waits. The requests counted depend on the wait, so the
    estimate is repeated until the count stops growing."""
    ahead = _due_by(snapshot, offset_s)
    wait = estimate_wait(msgspec.structs.replace(snapshot, ahead=ahead), confidence)
    for _ in range(_AHEAD_PASSES):
        if not math.isfinite(wait.latest_s):
            break
        grown = _due_by(snapshot, offset_s + max(wait.latest_s - snapshot.dial_overhead_s, 0.0))
        if grown <= ahead:
            break
        ahead = grown
        wait = estimate_wait(msgspec.structs.replace(snapshot, ahead=ahead), confidence)
    return wait


def _trusted_from(
    now: dt.datetime, snapshot: QueueSnapshot, staffing: StaffingTimeline
) -> dt.datetime | None:
    """From when the staffing schedule is believed. With someone at work now, from now; with nobody, only
    from the next shift start: a shift already under way whose people are not here says nothing."""
    if snapshot.ready_agents + len(snapshot.busy_elapsed_s) > 0:
        return now
    return staffing.next_shift_start(now)


def promise_callback_time(
    now: dt.datetime,
    snapshot: QueueSnapshot,
    site: SiteCalendar,
    callee: CalleeWindow,
    chosen_slot: Slot | None = None,
    *,
    confidence: float = 0.95,
    staffing: StaffingTimeline | None = None,
    intervals: list[Interval] | None = None,
) -> Promise | None:
    """What to promise a visitor at `now`; None when nobody will be at work to call within 14 days.

    Agents come from presence now (Ready and on a call) and from the staffing schedule later; never from
    a guess. `staffing` must cover the 14 days ahead (None: nobody is scheduled). `intervals`, when the
    caller has them already, are `callable_intervals(now, now + 14 days, site, callee)`.
    - A chosen slot (already validated against `bookable_slots` by the caller) is promised as is.
    - ASAP only when someone is at work, the callee is callable now and the whole window up to `latest`
      stays inside the current callable interval: a call that might ring after closing time or into the
      callee's night is not promised.
    - Otherwise the promise is for the first callable moment T when the schedule has someone at work (with
      nobody here now: not before the next shift starts): [T, T + wait], the wait estimated with the
      scheduled agents Ready at T and everyone due by then ahead. A T whose wait would run past the end of
      that callable, staffed stretch is skipped. The reason is the constraint that lifts at T (site hours
      before the callee's window before `not_before` when several lift together; "staffing" when only
      the shift begins).
    """
    now_utc = as_utc(now)
    if chosen_slot is not None:
        return Promise(
            kind="scheduled",
            earliest=as_utc(chosen_slot.start),
            latest=as_utc(chosen_slot.end),
            reason="chosen_slot",
        )
    horizon = now_utc + dt.timedelta(days=PROMISE_HORIZON_DAYS)
    if intervals is None:
        intervals = callable_intervals(now_utc, horizon, site, callee)
    if not intervals:
        return None
    present = snapshot.ready_agents + len(snapshot.busy_elapsed_s)
    later_than = now_utc
    if intervals[0][0] == now_utc and present > 0:
        wait = _wait_from(snapshot, 0.0, confidence)
        if math.isfinite(wait.latest_s) and now_utc + dt.timedelta(seconds=wait.latest_s) <= intervals[0][1]:
            return Promise(
                kind="asap",
                earliest=now_utc + dt.timedelta(seconds=wait.earliest_s),
                latest=now_utc + dt.timedelta(seconds=wait.latest_s),
                reason="agents_available" if wait.model == "immediate" else "queue",
            )
        later_than = intervals[0][1]  # this stretch cannot hold the wait: the next one
    if staffing is None:
        return None
    trusted = _trusted_from(now_utc, snapshot, staffing)
    if trusted is None:
        return None
    start = max(trusted, later_than)
    windows = intersect_intervals(intervals, staffing.staffed_intervals(start, horizon))
    opening_state = msgspec.structs.replace(snapshot, busy_elapsed_s=())
    for window_start, window_end in windows:
        agents = staffing.agents_at(window_start)
        offset_s = (window_start - now_utc).total_seconds()
        wait = _wait_from(msgspec.structs.replace(opening_state, ready_agents=agents), offset_s, confidence)
        if not math.isfinite(wait.latest_s):
            continue
        latest = window_start + dt.timedelta(seconds=wait.latest_s)
        if latest > window_end:
            continue
        lifted = blocking_constraints(window_start - _TICK, site, callee)
        reason: PromiseReason = lifted[0] if lifted else "staffing"
        return Promise(kind="scheduled", earliest=window_start, latest=latest, reason=reason)
    return None


# A slot is filled to this share of what its agents could handle on average: handle times vary, and a
# slot's requests must all be called inside it.
SLOT_SAFETY_FACTOR = 0.7


def bookable_slots(
    now: dt.datetime,
    snapshot: QueueSnapshot,
    site: SiteCalendar,
    callee: CalleeWindow,
    staffing: StaffingTimeline | None,
    *,
    days: int = 7,
    slot_minutes: int = 30,
    safety: float = SLOT_SAFETY_FACTOR,
) -> list[Slot]:
    """Slots a visitor may choose: callable (`offer_slots`), staffed by the schedule from when it is
    believed (the same source as the ASAP answer), and not full. A slot holds at most
    floor(fewest scheduled agents x slot length / mean handle time x safety) requests; every pending
    request falling due inside it (chosen slots, retries, openings) takes a place."""
    if staffing is None:
        return []
    now_utc = as_utc(now)
    trusted = _trusted_from(now_utc, snapshot, staffing)
    if trusted is None:
        return []
    mean_s = mean_handle_time(snapshot)
    length_s = slot_minutes * 60.0
    bookable: list[Slot] = []
    for slot in offer_slots(now_utc, site, callee, days=days, slot_minutes=slot_minutes):
        if slot.start < trusted:
            continue
        capacity = math.floor(staffing.fewest_agents(slot.start, slot.end) * length_s / mean_s * safety)
        offsets = ((slot.start - now_utc).total_seconds(), (slot.end - now_utc).total_seconds())
        taken = bisect.bisect_left(snapshot.later_due_s, offsets[1]) - bisect.bisect_left(
            snapshot.later_due_s, offsets[0]
        )
        if taken < capacity:
            bookable.append(slot)
    return bookable


_EN_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_EN_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Accusative after "в/во": "в понедельник", "во вторник".
_RU_WEEKDAYS = (
    "в понедельник",
    "во вторник",
    "в среду",
    "в четверг",
    "в пятницу",
    "в субботу",
    "в воскресенье",
)
_RU_MONTHS_GENITIVE = (
    "января",
    "февраля",
    "марта",
    "апреля",
    "мая",
    "июня",
    "июля",
    "августа",
    "сентября",
    "октября",
    "ноября",
    "декабря",
)


def _ru_genitive(count: int, singular: str, plural: str) -> str:
    """Noun after "в течение N": 1, 21, 31... take genitive singular, everything else genitive plural."""
    return singular if count % 10 == 1 and count % 100 != 11 else plural


def _en_plural(count: int, noun: str) -> str:
    return noun if count == 1 else f"{noun}s"


def _within_text(seconds: float, lang: Literal["ru", "en"]) -> str:
    if seconds < 120:
        count, en_unit, ru_one, ru_many = math.ceil(seconds), "second", "секунды", "секунд"
    elif seconds <= 7200:
        count, en_unit, ru_one, ru_many = math.ceil(seconds / 60), "minute", "минуты", "минут"
    else:
        count, en_unit, ru_one, ru_many = math.ceil(seconds / 3600), "hour", "часа", "часов"
    if lang == "en":
        return f"We'll call you within {count} {_en_plural(count, en_unit)}"
    return f"Перезвоним в течение {count} {_ru_genitive(count, ru_one, ru_many)}"


def _day_text(day: dt.date, today: dt.date, lang: Literal["ru", "en"]) -> str:
    days_ahead = (day - today).days
    if days_ahead == 0:
        return "today" if lang == "en" else "сегодня"
    if days_ahead == 1:
        return "tomorrow" if lang == "en" else "завтра"
    if lang == "en":
        year = f" {day.year}" if day.year != today.year else ""
        return f"on {_EN_WEEKDAYS[day.weekday()]} {day.day} {_EN_MONTHS[day.month - 1]}{year}"
    year = f" {day.year} г." if day.year != today.year else ""
    return f"{_RU_WEEKDAYS[day.weekday()]}, {day.day} {_RU_MONTHS_GENITIVE[day.month - 1]}{year},"


def render_promise_text(promise: Promise, now: dt.datetime, callee_tz: str, lang: Literal["ru", "en"]) -> str:
    """The sentence shown to the visitor, with times on the callee's own clock."""
    if promise.kind == "asap":
        return _within_text(max(1.0, (as_utc(promise.latest) - as_utc(now)).total_seconds()), lang)
    zone = ZoneInfo(callee_tz)
    start = as_utc(promise.earliest).astimezone(zone)
    day = _day_text(start.date(), as_utc(now).astimezone(zone).date(), lang)
    if promise.reason == "chosen_slot":
        end = as_utc(promise.latest).astimezone(zone)
        if lang == "en":
            return f"We'll call you {day} between {start:%H:%M} and {end:%H:%M} your time"
        return f"Перезвоним {day} с {start:%H:%M} до {end:%H:%M} по вашему времени"
    if lang == "en":
        return f"We'll call you {day} at {start:%H:%M} your time"
    return f"Перезвоним {day} в {start:%H:%M} по вашему времени"
