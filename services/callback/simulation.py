"""Discrete-event simulation that checks the promise engine's ASAP bounds against what actually happens."""

from __future__ import annotations

import argparse
import collections
import heapq
import math
import random
import statistics
import sys
from collections.abc import Sequence

import msgspec

from services.callback.domain.promise import QueueSnapshot, estimate_wait

__all__ = ["SimulationResult", "main", "simulate_callbacks"]


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


def main(argv: Sequence[str] | None = None) -> int:
    """`abonent simulate-callbacks`: print how well ASAP promises hold at several utilisations."""
    parser = argparse.ArgumentParser(
        prog="abonent simulate-callbacks", description="Check callback promises against a simulated queue."
    )
    parser.add_argument("--agents", type=int, default=5, help="agents serving the queue (default 5)")
    parser.add_argument("--requests", type=int, default=4000, help="measured requests per utilisation")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--warmup", type=int, default=200, help="unmeasured requests that fill the queue first"
    )
    parser.add_argument(
        "--utilisation", type=float, nargs="+", default=[0.5, 0.85, 0.95], help="agent utilisations to run"
    )
    args = parser.parse_args(None if argv is None else list(argv))
    print(
        f"{args.agents} agents, handle time lognormal mean 180 s CV 0.8, dial overhead 10-20 s "
        f"(promised as 20 s), 95% confidence, seed {args.seed}, {args.warmup} warm-up requests"
    )
    print(
        f"{'utilisation':>11}  {'requests':>8}  {'kept %':>6}  {'kept % queued':>13}  "
        f"{'median padding':>14}  {'p90 wait s':>10}"
    )
    for utilisation in args.utilisation:
        result = simulate_callbacks(
            utilisation, args.agents, args.requests, args.seed, warmup_requests=args.warmup
        )
        print(
            f"{utilisation:>11.0%}  {result.requests:>8}  {result.kept_pct:>6.1f}  "
            f"{result.queued_kept_pct:>13.1f}  {result.median_padding:>14.2f}  {result.p90_wait_s:>10.0f}"
        )
    sys.stdout.flush()
    return 0
