"""The load of a fault run: visitors asking for callbacks (merges, replayed Idempotency-Keys, clients that
lose answers and retry with the same key), the back office opening verification cases, agents at their
consoles. Every request is retried with the same key and body until it gets a final answer, as a careful
client does; what was answered 2xx is what the audit holds the system to."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from support.callback_api import ADMIN
from support.verification import AUTH, MATCH_CASE

# A client gives up on one request after this long without a final answer (it is then "unanswered": not
# counted as accepted, and the audit does not hold the system to it).
GIVE_UP_S = 90.0
# Statuses a client retries (the service is restarting or its database is away).
RETRIED = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass
class Ledger:
    """What the clients saw: ids answered 2xx, refusals, retries and lost answers."""

    callbacks: dict[str, str] = field(default_factory=dict)  # request id -> the phone it was for
    cases: dict[str, str] = field(default_factory=dict)  # case id -> msisdn
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    retries: int = 0
    retried: collections.Counter[str] = field(default_factory=collections.Counter)  # why, per path
    # 5xx other than 503 on any path (a dependency down is 503 with Retry-After; anything else is a bug).
    server_errors: collections.Counter[str] = field(default_factory=collections.Counter)

    # The same while PostgreSQL was being killed: a request whose connection dies mid-statement may still
    # surface an asyncpg protocol error as 500 (printed, not held against the run).
    server_errors_in_outage: collections.Counter[str] = field(default_factory=collections.Counter)
    in_outage: bool = False

    def saw(self, what: str, response: httpx.Response | None) -> None:
        if response is not None and response.status_code >= 500 and response.status_code != 503:
            errors = self.server_errors_in_outage if self.in_outage else self.server_errors
            errors[f"{what} {response.status_code}"] += 1

    lost_answers: int = 0  # answers the client dropped on purpose (then asked again with the same key)
    replays: int = 0  # a 2xx request sent again with its key: the same id must come back
    replay_mismatches: list[str] = field(default_factory=list)
    unanswered: int = 0
    merges_tried: int = 0


async def _until_answered(
    http: httpx.AsyncClient,
    ledger: Ledger,
    method: str,
    url: str,
    *,
    body: dict[str, Any],
    headers: dict[str, str],
    drop_first_answer: bool,
) -> httpx.Response | None:
    """Send until a final answer: errors, timeouts and 5xx/429 are retried with the same key and body."""
    deadline = time.monotonic() + GIVE_UP_S
    delay = 0.3
    first = True
    while time.monotonic() < deadline:
        try:
            if first and drop_first_answer:
                # The request goes out and the answer is never read: a client on a flaky mobile link.
                with contextlib.suppress(httpx.HTTPError):
                    await http.request(method, url, json=body, headers=headers, timeout=0.02)
                ledger.lost_answers += 1
                first = False
                continue
            first = False
            response = await http.request(method, url, json=body, headers=headers)
        except httpx.HTTPError:
            response = None
        ledger.saw(f"{method} {url}", response)
        if response is not None and response.status_code not in RETRIED:
            return response
        ledger.retries += 1
        ledger.retried[f"{url.rsplit('/', 1)[-1]} {response.status_code if response else 'no answer'}"] += 1
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 2.0)
    ledger.unanswered += 1
    return None


class CallbackVisitors:
    """Visitors at a steady rate: new numbers, some twice (a merge), some answers lost, some replayed."""

    def __init__(self, base: str, ledger: Ledger, rate_per_s: float, seed: int = 7) -> None:
        self.base = base
        self.ledger = ledger
        self.rate_per_s = rate_per_s
        self.rng = random.Random(seed)
        self.phones = (f"+7912{n:07d}" for n in itertools.count(1000001))
        self.recent: collections.deque[str] = collections.deque(maxlen=20)

    async def run(self, stop: asyncio.Event) -> None:
        tasks: set[asyncio.Task[None]] = set()
        in_flight = asyncio.Semaphore(12)
        async with httpx.AsyncClient(base_url=self.base, timeout=10) as http:
            next_at = time.monotonic()
            while not stop.is_set():
                await in_flight.acquire()
                task = asyncio.create_task(self._one(http, in_flight))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += 1 / self.rate_per_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, http: httpx.AsyncClient, in_flight: asyncio.Semaphore) -> None:
        try:
            roll = self.rng.random()
            if roll < 0.15 and self.recent:
                phone = self.rng.choice(self.recent)  # the same number again: joins the pending request
                self.ledger.merges_tried += 1
            else:
                phone = next(self.phones)
                self.recent.append(phone)
            token = await self._form_token(http)
            if token is None:
                self.ledger.unanswered += 1
                return
            body = {"phone": phone, "visitor_tz": "Europe/Moscow", "consent": True, "form_token": token,
                    "lang": "en"}  # fmt: skip
            headers = {"Idempotency-Key": str(uuid.uuid4())}
            url = "/v1/sites/shop/callbacks"
            response = await _until_answered(
                http, self.ledger, "POST", url, body=body, headers=headers, drop_first_answer=roll > 0.93
            )
            if response is None:
                return
            if response.status_code not in (200, 201):
                self.ledger.refused[f"callback {response.status_code}"] += 1
                return
            request_id = str(response.json()["id"])
            self.ledger.callbacks[request_id] = phone
            if self.rng.random() < 0.1:
                # The same key and body again (a double-clicked submit, a retried job): the same answer.
                self.ledger.replays += 1
                again = await _until_answered(
                    http, self.ledger, "POST", url, body=body, headers=headers, drop_first_answer=False
                )
                if again is None or again.status_code not in (200, 201) or again.json()["id"] != request_id:
                    self.ledger.replay_mismatches.append(
                        f"{request_id}: {again.status_code if again else 'no answer'}"
                    )
        finally:
            in_flight.release()

    async def _form_token(self, http: httpx.AsyncClient) -> str | None:
        deadline = time.monotonic() + GIVE_UP_S
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                offer = await http.get("/v1/sites/shop/offer", params={"tz": "Europe/Moscow"})
                self.ledger.saw("GET offer", offer)
                if offer.status_code == 200:
                    return str(offer.json()["form_token"])
            await asyncio.sleep(0.5)
        return None


class CaseOpeners:
    """The back office opening verification cases for new numbers, retrying with the same key."""

    def __init__(self, base: str, ledger: Ledger, rate_per_s: float, seed: int = 11) -> None:
        self.base = base
        self.ledger = ledger
        self.rate_per_s = rate_per_s
        self.rng = random.Random(seed)
        self.numbers = (f"+7916{n:07d}" for n in itertools.count(2000001))

    async def run(self, stop: asyncio.Event) -> None:
        tasks: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(base_url=self.base, timeout=10, headers=AUTH) as http:
            next_at = time.monotonic()
            while not stop.is_set():
                task = asyncio.create_task(self._one(http, next(self.numbers)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += 1 / self.rate_per_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, http: httpx.AsyncClient, msisdn: str) -> None:
        body = {**MATCH_CASE, "msisdn": msisdn}
        headers = {"Idempotency-Key": str(uuid.uuid4()), "X-Audit-Reason": "fault test"}
        response = await _until_answered(
            http, self.ledger, "POST", "/v1/cases", body=body, headers=headers,
            drop_first_answer=self.rng.random() < 0.08,
        )  # fmt: skip
        if response is None:
            return
        if response.status_code not in (200, 201):
            self.ledger.refused[f"case {response.status_code}"] += 1
            return
        self.ledger.cases[str(response.json()["id"])] = msisdn


async def agent_console(
    base: str, login: str, ready: asyncio.Event, stop: asyncio.Event, ledger: Ledger
) -> None:
    """An agent's open console: registered, signed in, Ready, heartbeating through restarts and outages."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        body = {"name": login.title(), "password": "correct horse", "queues": ["default"], "endpoint": "sim"}
        registered = await http.put(f"/v1/admin/agents/{login}", json=body, headers=ADMIN)
        assert registered.status_code in (200, 201), registered.text
        signed_in = await http.post(
            "/agent/login", data={"login": login, "password": "correct horse"}, follow_redirects=False
        )
        assert signed_in.status_code == 303, signed_in.text
        state = await http.post("/agent/api/presence", json={"status": "ready"})
        assert state.status_code == 200, state.text
        ready.set()
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                ledger.saw("POST heartbeat", await http.post("/agent/api/heartbeat"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2)
