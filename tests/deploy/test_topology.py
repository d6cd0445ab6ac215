"""The production topology without containers: three clustered JetStream servers, streams at R3, the
callback service as a process, a steady stream of callback requests while NATS nodes are SIGKILLed and
restarted one after another. Afterwards every accepted request is completed and no event was published twice.

The short form runs in `./dev test`; `ABONENT_TOPOLOGY_LONG=1` runs the long form (more requests, every
node killed twice) instead of skipping it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import nats.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from support.callback_api import ADMIN, ask, put_site
from support.harness import make_settings, running_service
from support.nats_cluster import ClusterNode, NatsCluster
from support.polling import until

from services.common import bus as busmod

pytestmark = pytest.mark.slow

AGENTS = ("anna", "boris", "vera", "gleb")
# The simulated PBX at 1/20 speed: a call (agent rings, visitor rings, 20 s talk) lasts about a second.
SIM_TIME_SCALE = "0.05"


@dataclass(frozen=True)
class Form:
    """How hard a run pushes: requests per second, for how long, and how many node kills."""

    rate_per_s: float
    kills: int
    settle_s: float  # load kept up while a node is down, and again after it is back
    notifier: bool  # the notifier runs too, consuming callback events and publishing its own


SHORT = Form(rate_per_s=1.0, kills=2, settle_s=3.0, notifier=False)
LONG = Form(rate_per_s=3.0, kills=6, settle_s=8.0, notifier=True)


@dataclass
class Audit:
    """What a consumer of our own saw on the CALLBACK stream: stream sequences and deliveries per event."""

    sequences: dict[str, set[int]] = field(default_factory=lambda: collections.defaultdict(set))
    deliveries: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def duplicated(self) -> list[str]:
        """Events stored twice (two stream messages): a publish the stream did not deduplicate."""
        return [event_id for event_id, seqs in self.sequences.items() if len(seqs) > 1]

    @property
    def redelivered(self) -> int:
        """Deliveries beyond the first (an ack lost in a failover): expected, the inbox absorbs them."""
        return sum(self.deliveries.values()) - len(self.deliveries)


def _event_id(msg: Any) -> str:
    header = (msg.headers or {}).get("Nats-Msg-Id")
    if header:
        return str(header)
    return str(msgspec.json.decode(msg.data)["event_id"])


AUDIT_CONSUMER = "topology-audit"


async def add_audit_consumer(bus: busmod.Bus, stream: str) -> None:
    config = ConsumerConfig(
        durable_name=AUDIT_CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=10,
    )
    await bus.js.add_consumer(stream, config)


async def audit_stream(bus: busmod.Bus, stream: str, audit: Audit, stop: asyncio.Event) -> None:
    """A durable pull consumer through the whole run (failovers included), acking what it counts."""
    sub: Any = None
    seen_reconnects = bus.reconnects
    while not stop.is_set():
        try:
            # A pull subscription may stop after its server goes away (nats.py #504): bind anew after each
            # reconnect and after any error.
            if sub is None or bus.reconnects != seen_reconnects:
                seen_reconnects = bus.reconnects
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                sub = await bus.js.pull_subscribe_bind(AUDIT_CONSUMER, stream=stream)
            messages = await sub.fetch(100, timeout=1)
        except nats.errors.TimeoutError:
            continue
        except Exception:
            sub = None
            await asyncio.sleep(0.5)
            continue
        for msg in messages:
            event_id = _event_id(msg)
            audit.sequences[event_id].add(msg.metadata.sequence.stream)
            audit.deliveries[event_id] += 1
            with contextlib.suppress(Exception):
                await msg.ack_sync(timeout=5)  # unacked: delivered again and counted as a redelivery
    if sub is not None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def agent_session(base: str, login: str, ready: asyncio.Event, stop: asyncio.Event) -> None:
    """An agent's console: registered, signed in, Ready, and heartbeating as an open tab does."""
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
                await http.post("/agent/api/heartbeat")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 3)


@dataclass
class Load:
    accepted: list[str] = field(default_factory=list)
    refused: collections.Counter[int] = field(default_factory=collections.Counter)


async def steady_requests(base: str, rate_per_s: float, load: Load, stop: asyncio.Event) -> None:
    """Visitors asking for a callback at a steady rate, each with a number of their own; a few at a time
    in flight, so a slow answer does not slow the rate (unless the service falls far behind). Returns
    once every request sent has its answer."""
    phones = (f"+7912{n:07d}" for n in itertools.count(1000001))
    in_flight = asyncio.Semaphore(8)
    tasks: set[asyncio.Task[None]] = set()

    async def one(http: httpx.AsyncClient, phone: str) -> None:
        try:
            response = await ask(http, phone=phone)
        except httpx.HTTPError:
            load.refused[0] += 1
        else:
            if response.status_code == 201:
                load.accepted.append(response.json()["id"])
            else:
                load.refused[response.status_code] += 1
        finally:
            in_flight.release()

    async with httpx.AsyncClient(base_url=base, timeout=15) as http:
        next_at = time.monotonic()
        while not stop.is_set():
            await in_flight.acquire()
            task = asyncio.create_task(one(http, next(phones)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += 1 / rate_per_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*tasks)


async def connected_node(cluster: NatsCluster, client_name: str) -> ClusterNode | None:
    """The node a client (by connection name) is connected to, from the servers' own /connz."""
    async with httpx.AsyncClient(timeout=2) as http:
        for node in cluster.nodes:
            with contextlib.suppress(httpx.HTTPError):
                connz = (await http.get(f"http://127.0.0.1:{node.http_port}/connz")).json()
                if any(conn.get("name") == client_name for conn in connz.get("connections") or []):
                    return node
    return None


class Timeline:
    """When each phase ended, printed with the figures (where a slow run spent its time)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.marks: list[str] = []

    def mark(self, label: str) -> None:
        self.marks.append(f"{label} {time.monotonic() - self.started:.0f}s")


async def run_topology(form: Form, database_url: str, namespace: str, tmp_path: Path) -> None:
    timeline = Timeline()
    cluster = await asyncio.to_thread(NatsCluster(tmp_path / "nats").start)
    timeline.mark("cluster")
    try:
        settings = make_settings(database_url, cluster.urls, namespace, stream_replicas=3)
        env = {"ABONENT_SIM_TIME_SCALE": SIM_TIME_SCALE, "ABONENT_OFFER_RATE_LIMIT_PER_MINUTE": "100000"}
        async with contextlib.AsyncExitStack() as services:
            base = await services.enter_async_context(running_service(settings, "callback", tmp_path, **env))
            if form.notifier:
                await services.enter_async_context(running_service(settings, "notifier", tmp_path))
            timeline.mark("services")
            await chaos_run(
                form, cluster, database_url=database_url, namespace=namespace, base=base, timeline=timeline
            )
    finally:
        await asyncio.to_thread(cluster.stop)


@dataclass
class Publisher:
    """A service whose outbox feeds a stream: every outbox row must be on the stream exactly once."""

    schema: str
    stream: str
    audit: Audit = field(default_factory=Audit)
    outbox: set[str] = field(default_factory=set)

    @property
    def unpublished(self) -> set[str]:
        return self.outbox - self.audit.sequences.keys()


async def chaos_run(
    form: Form, cluster: NatsCluster, *, database_url: str, namespace: str, base: str, timeline: Timeline
) -> None:
    bus = await busmod.connect(cluster.urls, "topology-audit", namespace, replicas=3)
    db = await asyncpg.connect(database_url)
    stop_load, stop_agents, stop_audit = asyncio.Event(), asyncio.Event(), asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    publishers = [Publisher("callback", bus.ns.stream("CALLBACK"))]
    if form.notifier:
        publishers.append(Publisher("notifier", bus.ns.stream("NOTIFIER")))
    try:
        for publisher in publishers:
            info = await bus.js.stream_info(publisher.stream)
            # The services declared their streams at R3 (ABONENT_STREAM_REPLICAS) across the three servers.
            assert info.config.num_replicas == 3
            assert info.cluster is not None
            assert len(info.cluster.replicas or []) == 2
            await add_audit_consumer(bus, publisher.stream)

        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            await put_site(http, abuse={"min_fill_ms": 0, "per_ip_10min": 10000})
        ready = [asyncio.Event() for _ in AGENTS]
        tasks += [
            asyncio.create_task(agent_session(base, login, flag, stop_agents))
            for login, flag in zip(AGENTS, ready, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(flag.wait() for flag in ready)), 60)
        timeline.mark("agents")
        load = Load()
        tasks += [
            asyncio.create_task(audit_stream(bus, publisher.stream, publisher.audit, stop_audit))
            for publisher in publishers
        ]
        requests = asyncio.create_task(steady_requests(base, form.rate_per_s, load, stop_load))
        tasks.append(requests)
        kills = await kill_and_restart(form, cluster, bus, publishers[0].stream, timeline)
        stop_load.set()
        await requests  # every request sent has its answer: `accepted` is complete
        timeline.mark("load stopped")
        accepted = set(load.accepted)
        assert accepted, f"no request was accepted (refused: {dict(load.refused)})"

        async def all_final() -> bool:
            rows = await db.fetch(
                "select status from callback.callbacks where id = any($1::uuid[])", list(accepted)
            )
            return len(rows) == len(accepted) and all(row["status"] == "completed" for row in rows)

        with contextlib.suppress(AssertionError):
            await until(all_final, timeout=120, interval=0.5)
        timeline.mark("all final")
        statuses = collections.Counter(
            row["status"]
            for row in await db.fetch(
                "select status from callback.callbacks where id = any($1::uuid[])", list(accepted)
            )
        )
        if form.notifier:
            await notifier_caught_up(bus)
        for publisher in publishers:
            await audit_outbox(db, publisher)
        stop_audit.set()
        timeline.mark("audited")
        dead_letters = {
            publisher.schema: await db.fetchval(f"select count(*) from {publisher.schema}.dead_letters")
            for publisher in publishers
        }
        waits = await db.fetchrow(
            "select percentile_disc(0.5) within group (order by dial) as dial_p50, max(dial) as dial_max,"
            " max(done) as done_max from (select extract(epoch from first_dial_at - requested_at) as dial,"
            " extract(epoch from ended_at - requested_at) as done"
            " from callback.callbacks where id = any($1::uuid[])) as waits",
            list(accepted),
        )
        completed = statuses.get("completed", 0)
        unfinished = len(accepted) - completed
        unpublished = sum(len(publisher.unpublished) for publisher in publishers)
        duplicated = [event_id for publisher in publishers for event_id in publisher.audit.duplicated]
        print(
            f"\ntopology: kills {' '.join(kills)}; accepted {len(accepted)}, completed {completed}, "
            f"lost {unfinished + unpublished} (unfinished {unfinished}, events never on a stream "
            f"{unpublished}), duplicated {len(duplicated)}; refused {dict(load.refused)}"
        )
        print(
            "topology details: "
            + "; ".join(
                f"{p.schema}: {len(p.outbox)} outbox events, {len(p.audit.sequences)} on its stream,"
                f" {p.audit.redelivered} redelivered to the audit consumer"
                for p in publishers
            )
            + f"; dead letters {dead_letters}; statuses {dict(statuses)}"
        )
        print(
            f"topology timeline: {', '.join(timeline.marks)}; request to first dial p50"
            f" {waits['dial_p50'] or 0:.1f}s max {waits['dial_max'] or 0:.1f}s, to hang-up max"
            f" {waits['done_max'] or 0:.1f}s"
        )
        assert len(kills) == form.kills
        assert unfinished == 0, dict(statuses)
        assert unpublished == 0, [sorted(p.unpublished)[:5] for p in publishers]
        assert not duplicated, duplicated[:5]
        assert not any(dead_letters.values()), dead_letters
    finally:
        stop_load.set()
        stop_agents.set()
        stop_audit.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await db.close()
        await bus.close()


async def kill_and_restart(
    form: Form, cluster: NatsCluster, bus: busmod.Bus, stream: str, timeline: Timeline
) -> list[str]:
    """SIGKILL a node, keep the load on, restart it, wait until it is current; `form.kills` times."""
    kills: list[str] = []
    for round_no in range(form.kills):
        await asyncio.sleep(form.settle_s)
        # Even rounds take the node the callback service talks to, odd ones the CALLBACK stream's leader.
        victim: ClusterNode | None
        if round_no % 2 == 0:
            victim = await connected_node(cluster, "abonent-callback")
        else:
            placement = (await bus.js.stream_info(stream)).cluster
            victim = cluster.node(placement.leader) if placement and placement.leader else None
        victim = victim or cluster.nodes[round_no % len(cluster.nodes)]
        victim.kill()
        kills.append(victim.name)
        timeline.mark(f"kill {victim.name}")
        await asyncio.sleep(form.settle_s)
        await asyncio.to_thread(victim.start)
        # The next kill waits for this node to be current again: a 3-node group survives one loss.
        await asyncio.to_thread(victim.wait_healthy, 120)
        timeline.mark(f"{victim.name} back")
    await asyncio.sleep(form.settle_s)
    return kills


async def notifier_caught_up(bus: busmod.Bus) -> None:
    """The notifier's consumer of callback events has applied and acked everything on the stream."""

    async def idle() -> bool:
        info = await bus.js.consumer_info(bus.ns.stream("CALLBACK"), "notifier_callback")
        return info.num_pending == 0 and info.num_ack_pending == 0

    with contextlib.suppress(AssertionError):
        await until(idle, timeout=60, interval=0.5)


async def audit_outbox(db: asyncpg.Connection, publisher: Publisher) -> None:
    """Wait until the service's outbox is published and our consumer has seen every row of it."""

    async def drained() -> bool:
        pending = await db.fetchval(
            f"select count(*) from {publisher.schema}.outbox where published_at is null"
        )
        return not pending

    with contextlib.suppress(AssertionError):
        await until(drained, timeout=60, interval=0.5)
    publisher.outbox = {
        row["id"] for row in await db.fetch(f"select id::text from {publisher.schema}.outbox")
    }

    async def audited() -> bool:
        return not publisher.unpublished

    with contextlib.suppress(AssertionError):
        await until(audited, timeout=60, interval=0.5)


@pytest.mark.timeout(300)
async def test_production_topology_survives_nats_node_kills(
    database_url: str, nats_namespace: str, tmp_path: Path
) -> None:
    await run_topology(SHORT, database_url, nats_namespace, tmp_path)


@pytest.mark.skipif(
    not os.environ.get("ABONENT_TOPOLOGY_LONG"), reason="long form: set ABONENT_TOPOLOGY_LONG=1 (minutes)"
)
@pytest.mark.timeout(1200)
async def test_production_topology_long_form(database_url: str, nats_namespace: str, tmp_path: Path) -> None:
    await run_topology(LONG, database_url, nats_namespace, tmp_path)
