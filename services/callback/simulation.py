"""Discrete-event simulations that check the promise engine's promises against what actually happens."""

from __future__ import annotations

import argparse
import bisect
import collections
import datetime as dt
import heapq
import math
import random
import statistics
import sys
from collections.abc import Sequence
from typing import Literal

import msgspec

from services.callback.domain.calendar import CalleeWindow, SiteCalendar, Slot, TimeRange
from services.callback.domain.promise import (
    QueueSnapshot,
    bookable_slots,
    estimate_wait,
    promise_callback_time,
)
from services.callback.domain.retry import Outcome, RetrySpacing, decide_retry
from services.callback.domain.staffing import Shift, StaffingSchedule

__all__ = ["ClassResult", "SimulationResult", "WeekResult", "main", "simulate_callbacks", "simulate_week"]


class SimulationResult(msgspec.Struct, frozen=True, kw_only=True):
    """Measured outcome over the requests after warm-up."""

    utilisation: float
    agents: int
    requests: int
    kept_pct: float  # share of requests whose phone rang no later than the promised `latest`
    queued_kept_pct: float  # the same among requests that had to queue: the calibration that matters
    median_padding: float  # median of promised latest / actual time until the phone rang
    p90_wait_s: float  # 90th percentile of the actual time until the phone rang
    median_wait_s: float
    immediate_pct: float  # share promised with Ready agents (no queueing)
    max_ahead: int


class _Request:
    """One simulated visitor: when they asked, what they were promised, when their phone rang."""

    __slots__ = ("arrival", "immediate", "latest_s", "ring_after_s")

    def __init__(self, arrival: float, immediate: bool) -> None:
        self.arrival = arrival
        self.immediate = immediate  # promised with Ready agents, no queueing
        self.latest_s = math.inf
        self.ring_after_s = math.nan


def _lognormal_parameters(mean: float, cv: float) -> tuple[float, float]:
    sigma_squared = math.log(1.0 + cv * cv)
    return math.log(mean) - sigma_squared / 2.0, math.sqrt(sigma_squared)


def simulate_callbacks(
    utilisation: float,
    agents: int,
    n_requests: int,
    seed: int,
    *,
    mean_handle_s: float = 180.0,
    handle_cv: float = 0.8,
    dial_overhead_range_s: tuple[float, float] = (10.0, 20.0),
    promised_dial_overhead_s: float = 20.0,
    history_size: int = 200,
    warmup_requests: int = 200,
    confidence: float = 0.95,
) -> SimulationResult:
    """Poisson arrivals into an N-agent FIFO queue with lognormal handle times.

    At each arrival the promise is computed from exactly what the service sees (Ready agents, elapsed
    time of each busy call, requests ahead, the last `history_size` completed handle times) and with a
    constant dial overhead, while the real overhead varies within `dial_overhead_range_s`. The first
    `warmup_requests` arrivals only fill the queue to steady state and are not measured.
    """
    if not 0.0 < utilisation < 1.0:
        raise ValueError("utilisation must be in (0, 1) for a stable queue")
    if agents <= 0 or n_requests <= 0:
        raise ValueError("agents and n_requests must be positive")
    rng = random.Random(seed)
    mu, sigma = _lognormal_parameters(mean_handle_s, handle_cv)
    arrival_rate = utilisation * agents / mean_handle_s

    busy_since: list[float | None] = [None] * agents  # dispatch time of each agent's current call
    completions: list[tuple[float, int]] = []  # heap of (finish time, agent)
    waiting: collections.deque[_Request] = collections.deque()
    history: collections.deque[float] = collections.deque(maxlen=history_size)
    measured: list[_Request] = []
    max_ahead = 0

    def dispatch(agent: int, request: _Request, at: float) -> None:
        busy_since[agent] = at
        heapq.heappush(completions, (at + rng.lognormvariate(mu, sigma), agent))
        request.ring_after_s = at - request.arrival + rng.uniform(*dial_overhead_range_s)

    total = warmup_requests + n_requests
    next_arrival = rng.expovariate(arrival_rate)
    arrivals = 0
    while arrivals < total or completions:
        if arrivals < total and (not completions or next_arrival < completions[0][0]):
            clock = next_arrival
            idle = [agent for agent, since in enumerate(busy_since) if since is None]
            snapshot = QueueSnapshot(
                ready_agents=len(idle),
                busy_elapsed_s=tuple(clock - since for since in busy_since if since is not None),
                ahead=len(waiting),
                handle_time_samples_s=tuple(history),
                default_handle_time_s=mean_handle_s,
                dial_overhead_s=promised_dial_overhead_s,
            )
            request = _Request(arrival=clock, immediate=snapshot.ready_agents > snapshot.ahead)
            if arrivals >= warmup_requests:  # warm-up promises are never measured: skip the estimate
                request.latest_s = estimate_wait(snapshot, confidence).latest_s
                measured.append(request)
                max_ahead = max(max_ahead, snapshot.ahead)
            if idle:
                dispatch(idle[0], request, clock)
            else:
                waiting.append(request)
            arrivals += 1
            next_arrival = clock + rng.expovariate(arrival_rate)
        else:
            clock, agent = heapq.heappop(completions)
            since = busy_since[agent]
            if since is not None:
                history.append(clock - since)
            busy_since[agent] = None
            if waiting:
                dispatch(agent, waiting.popleft(), clock)

    rings = sorted(request.ring_after_s for request in measured)
    queued = [request for request in measured if not request.immediate]
    return SimulationResult(
        utilisation=utilisation,
        agents=agents,
        requests=len(measured),
        kept_pct=_kept_pct(measured),
        queued_kept_pct=_kept_pct(queued),
        median_padding=statistics.median(request.latest_s / request.ring_after_s for request in measured),
        p90_wait_s=rings[min(len(rings) - 1, math.ceil(0.9 * len(rings)) - 1)],
        median_wait_s=statistics.median(rings),
        immediate_pct=100.0 * (len(measured) - len(queued)) / len(measured),
        max_ahead=max_ahead,
    )


def _kept_pct(requests: list[_Request]) -> float:
    """Share of requests whose phone rang by the promised latest; 100 when there are none."""
    if not requests:
        return 100.0
    return 100.0 * sum(request.ring_after_s <= request.latest_s for request in requests) / len(requests)


# --- a working week: opening hours, off-hours arrivals, chosen slots, retries, breaks -------------------

ArrivalClass = Literal["asap", "off_hours", "scheduled"]
CLASSES: tuple[ArrivalClass, ...] = ("asap", "off_hours", "scheduled")
_EPOCH = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)  # a Monday; the simulated site and visitors use UTC


class ClassResult(msgspec.Struct, frozen=True, kw_only=True):
    """Promises of one kind of arrival: ASAP (someone at work, promised "within"), off-hours (promised
    for a later opening or shift) and scheduled (the visitor chose a slot)."""

    requests: int
    kept_pct: float  # first dial no later than the promised latest (what punctuality measures)
    median_padding: float  # median of (promised latest - request time) / (first dial - request time)
    p90_wait_s: float  # 90th percentile of the time from request to first dial


class WeekResult(msgspec.Struct, frozen=True, kw_only=True):
    utilisation: float  # offered work / agent time at work (shift minus breaks)
    agents: int
    days: int
    refused: int  # arrivals that got no promise (none should)
    by_class: dict[str, ClassResult]


class _Visitor:
    __slots__ = ("arrival", "attempts", "cls", "due", "first_dial", "latest")

    def __init__(self, arrival: float, cls: ArrivalClass, due: float, latest: float) -> None:
        self.arrival = arrival
        self.cls = cls
        self.due = due
        self.latest = latest
        self.first_dial = math.nan
        self.attempts = 0


class _Agent:
    __slots__ = ("break_due", "busy_since", "off_until")

    def __init__(self) -> None:
        self.busy_since: float | None = None
        self.off_until = 0.0  # on break (or off shift) until then
        self.break_due = 0.0


def _at(seconds: float) -> dt.datetime:
    return _EPOCH + dt.timedelta(seconds=seconds)


def simulate_week(
    utilisation: float,
    agents: int,
    days: int,
    seed: int,
    *,
    open_hours: tuple[int, int] = (8, 20),
    night_share: float = 0.15,
    slot_share: float = 0.15,
    unanswered_share: float = 0.2,
    mean_handle_s: float = 180.0,
    handle_cv: float = 0.8,
    break_every_s: tuple[float, float] = (5400.0, 9000.0),
    break_s: float = 900.0,
    warmup_days: int = 1,
) -> WeekResult:
    """`days` days (after `warmup_days`) of a site open `open_hours` every day with `agents` agents
    scheduled for exactly those hours, promised by the service's own functions (`promise_callback_time`,
    `bookable_slots`) from what the service would see: present agents (not on break), their calls'
    elapsed time, everyone waiting or due later, the last 200 attempts' hold times and retry rate.

    - Arrivals are Poisson; `night_share` of them come while the site is closed, `slot_share` of the
      daytime ones choose a bookable slot (one of the first eight offered).
    - `unanswered_share` of attempts are busy or not answered (the agent held 20-40 s) and retried per
      the default retry policy (busy after 2 min, no answer after 10 min, 3 attempts).
    - Each agent takes a `break_s` break every `break_every_s` (uniform), after their current call.
    - `utilisation` sets the arrival rate: offered work (retries included) / agent time at work.
    """
    if not 0.0 < utilisation < 1.0:
        raise ValueError("utilisation must be in (0, 1)")
    rng = random.Random(seed)
    mu, sigma = _lognormal_parameters(mean_handle_s, handle_cv)
    opening, closing = open_hours
    hours = TimeRange(start=dt.time(opening), end=dt.time(closing))
    site = SiteCalendar(tz="UTC", weekly={day: [hours] for day in range(7)})
    callee = CalleeWindow(tz="UTC", window=TimeRange.parse("00:00", "24:00"))
    total_days = warmup_days + days
    staffing = StaffingSchedule(
        tz="UTC", shifts=(Shift(days=frozenset(range(7)), hours=hours, agents=agents),)
    ).timeline(_EPOCH, _EPOCH + dt.timedelta(days=total_days + 16))
    spacing = RetrySpacing(max_attempts=3, busy_retry_s=120, no_answer_retry_s=600, failed_retry_s=60)

    # Arrival rate from the work one request brings: attempts x mean hold, retries included.
    unanswered_hold_s = 30.0
    attempt_work = (1 - unanswered_share) * mean_handle_s + unanswered_share * unanswered_hold_s
    attempts_per_request = sum(unanswered_share**k for k in range(spacing.max_attempts))
    open_s = (closing - opening) * 3600.0
    break_fraction = break_s / (sum(break_every_s) / 2 + break_s)
    agent_time_per_day = agents * open_s * (1 - break_fraction)
    per_day = utilisation * agent_time_per_day / (attempt_work * attempts_per_request)
    day_rate = per_day * (1 - night_share) / open_s
    night_rate = per_day * night_share / (86400.0 - open_s)

    staff = [_Agent() for _ in range(agents)]
    events: list[tuple[float, int, str, int]] = []  # (time, sequence, kind, agent or -1)
    sequence = 0

    def push(at: float, kind: str, agent: int = -1) -> None:
        nonlocal sequence
        sequence += 1
        heapq.heappush(events, (at, sequence, kind, agent))

    waiting: list[_Visitor] = []  # FIFO by request time, due or not
    history: collections.deque[tuple[float, int]] = collections.deque(maxlen=200)  # (hold s, attempt no)
    measured: list[_Visitor] = []
    refused = 0
    at_work_s = 0.0
    worked_s = 0.0

    def present(agent: _Agent, now: float) -> bool:
        return site.is_open_at(_at(now)) and agent.off_until <= now

    def snapshot(now: float) -> QueueSnapshot:
        firsts = sum(1 for _, number in history if number == 1)
        extra = min((len(history) - firsts) / firsts, 4.0) if firsts >= 20 else 0.0
        return QueueSnapshot(
            ready_agents=sum(1 for a in staff if a.busy_since is None and present(a, now)),
            busy_elapsed_s=tuple(now - a.busy_since for a in staff if a.busy_since is not None),
            ahead=sum(1 for v in waiting if v.due <= now),
            later_due_s=tuple(sorted(v.due - now for v in waiting if v.due > now)),
            handle_time_samples_s=tuple(hold for hold, _ in history),
            default_handle_time_s=mean_handle_s,
            extra_attempts=extra,
            break_share=break_fraction,
        )

    def dispatch(now: float) -> None:
        for index, agent in enumerate(staff):
            if agent.busy_since is not None or not present(agent, now):
                continue
            # Earliest promise deadline first (EDF), as the service's due_callbacks orders them.
            visitor = min((v for v in waiting if v.due <= now), key=lambda v: v.latest, default=None)
            if visitor is None:
                return
            waiting.remove(visitor)
            visitor.attempts += 1
            ring = now + rng.uniform(10.0, 20.0)
            if math.isnan(visitor.first_dial):
                visitor.first_dial = ring
            agent.busy_since = now
            answered = rng.random() >= unanswered_share
            hold = rng.lognormvariate(mu, sigma) if answered else rng.uniform(20.0, 40.0)
            history.append((hold, visitor.attempts))
            push(now + hold, "end", index)
            if not answered:
                outcome: Outcome = "busy" if rng.random() < 0.5 else "visitor_no_answer"
                decision = decide_retry(
                    outcome, visitor.attempts, spacing, now=_at(now + hold), site=site, callee=callee
                )
                if decision.next_at is not None:
                    visitor.due = (decision.next_at - _EPOCH).total_seconds()
                    bisect.insort(waiting, visitor, key=lambda v: v.arrival)
                    push(visitor.due, "due")

    def arrive(now: float) -> None:
        nonlocal refused
        state = snapshot(now)
        chosen: Slot | None = None
        if site.is_open_at(_at(now)) and rng.random() < slot_share:
            slots = bookable_slots(_at(now), state, site, callee, staffing, days=2)[:8]
            chosen = rng.choice(slots) if slots else None
        promise = promise_callback_time(_at(now), state, site, callee, chosen, staffing=staffing)
        if promise is None:
            refused += 1
            return
        cls: ArrivalClass = (
            "scheduled" if chosen is not None else "asap" if promise.kind == "asap" else "off_hours"
        )
        due = now if promise.kind == "asap" else (promise.earliest - _EPOCH).total_seconds()
        visitor = _Visitor(now, cls, due, (promise.latest - _EPOCH).total_seconds())
        waiting.append(visitor)  # the newest request: last in line
        if due > now:
            push(due, "due")
        if now >= warmup_days * 86400.0:
            measured.append(visitor)

    # Night arrivals of the last day are served the morning after, so that shift starts too: without it the
    # agents kept the previous day's overdue breaks and all left together right after the first calls.
    for day in range(total_days + 1):
        start = day * 86400.0
        push(start + opening * 3600.0, "shift")
    end_of_arrivals = total_days * 86400.0
    clock = 0.0
    while clock < end_of_arrivals:
        rate = day_rate if site.is_open_at(_at(clock)) else night_rate
        step = rng.expovariate(rate)
        # The rate changes at opening and closing: restart the draw there (memoryless).
        boundary = (clock // 3600.0 + 1) * 3600.0
        if clock + step >= boundary:
            clock = boundary
            continue
        clock += step
        push(clock, "arrival")

    while events:
        now, _, kind, index = heapq.heappop(events)
        if kind == "arrival":
            arrive(now)
        elif kind == "shift":
            for agent in staff:
                agent.off_until = now
                agent.break_due = now + rng.uniform(*break_every_s)
            if now < end_of_arrivals:  # the last morning only drains the night: utilisation as before
                at_work_s += agents * open_s
        elif kind == "end":
            agent = staff[index]
            assert agent.busy_since is not None
            worked_s += now - agent.busy_since
            agent.busy_since = None
            if now >= agent.break_due and site.is_open_at(_at(now)):
                agent.off_until = now + break_s
                agent.break_due = agent.off_until + rng.uniform(*break_every_s)
                at_work_s -= break_s
                push(agent.off_until, "back", index)
        dispatch(now)

    by_class: dict[str, ClassResult] = {}
    for cls in CLASSES:
        group = [v for v in measured if v.cls == cls and not math.isnan(v.first_dial)]
        waits = sorted(v.first_dial - v.arrival for v in group)
        by_class[cls] = ClassResult(
            requests=len(group),
            kept_pct=100.0 * sum(v.first_dial <= v.latest for v in group) / len(group) if group else 100.0,
            median_padding=statistics.median(
                (v.latest - v.arrival) / max(v.first_dial - v.arrival, 1.0) for v in group
            )
            if group
            else 1.0,
            p90_wait_s=waits[min(len(waits) - 1, math.ceil(0.9 * len(waits)) - 1)] if waits else 0.0,
        )
    return WeekResult(
        utilisation=worked_s / at_work_s if at_work_s else 0.0,
        agents=agents,
        days=days,
        refused=refused,
        by_class=by_class,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`abonent simulate-callbacks`: how well promises hold, per kind of arrival, over simulated days."""
    parser = argparse.ArgumentParser(
        prog="abonent simulate-callbacks", description="Check callback promises against a simulated site."
    )
    parser.add_argument("--agents", type=int, default=5, help="agents scheduled for the opening hours")
    parser.add_argument("--days", type=int, default=3, help="measured days (after one warm-up day)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--utilisation", type=float, nargs="+", default=[0.5, 0.85], help="offered load / agent time at work"
    )
    args = parser.parse_args(None if argv is None else list(argv))
    print(
        f"{args.agents} agents scheduled 08:00-20:00 daily with 15-minute breaks every 1.5-2.5 h; handle time"
        " lognormal mean 180 s CV 0.8; 15% of arrivals at night, 15% of daytime ones choose a slot; 20% of"
        f" attempts unanswered and retried per the retry policy; seed {args.seed}, one warm-up day."
    )
    print(
        "padding = (promised latest - request time) / (first dial - request time);"
        " kept = first dial <= promised latest"
    )
    print(
        f"{'utilisation':>11}  {'arrivals':>9}  {'requests':>8}  {'kept %':>6}  {'median padding':>14}  "
        f"{'p90 wait s':>10}"
    )
    for utilisation in args.utilisation:
        result = simulate_week(utilisation, args.agents, args.days, args.seed)
        for cls in CLASSES:
            figures = result.by_class[cls]
            print(
                f"{result.utilisation:>11.0%}  {cls:>9}  {figures.requests:>8}  {figures.kept_pct:>6.1f}  "
                f"{figures.median_padding:>14.2f}  {figures.p90_wait_s:>10.0f}"
            )
    sys.stdout.flush()
    return 0
