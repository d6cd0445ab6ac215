"""A fault run: bring the whole system up under a Supervisor, put load on it, kill its parts in turn (each
service several times, at named failpoints too, one NATS server of three, PostgreSQL once), then audit.

`SHORT` runs in `./dev test`; `LONG` (three clustered NATS servers, R3 streams, more kills, longer load)
runs from `bench/faults.py` or with ABONENT_FAULTS_LONG=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import httpx
from fakes.fake_sms_ru import FakeSmsRu, running_sms_ru
from fakes.fake_telegram import FakeTelegram, running_telegram
from support.callback_api import put_site
from support.harness import make_settings, settings_env
from support.nats_cluster import NatsCluster
from support.supervisor import Child, NatsChild, PostgresChild, Supervisor, service_child

from faults.audit import DialTap, Findings, audit, events_not_delivered, unsettled
from faults.load import CallbackVisitors, CaseOpeners, Ledger, agent_console
from services.common.embedded import free_port
from services.common.settings import Settings
from services.verification.sandbox_idp.dev import dev_sandbox
from services.verification.sandbox_registry.dev import dev_registry

SERVICES = ("callback", "verification", "notifier")
AGENTS = ("anna", "boris", "vera", "gleb", "dina", "egor")


@dataclass(frozen=True)
class Fault:
    """One step: `kill` a child, `arm` a service at a failpoint (it dies there once), or take PostgreSQL
    `down` for a while (services must say not-ready and come back by themselves)."""

    action: str  # kill | arm | down
    target: str
    failpoint: str = ""

    def __str__(self) -> str:
        return f"{self.action} {self.target}" + (f"@{self.failpoint}" if self.failpoint else "")


@dataclass(frozen=True)
class Form:
    name: str
    nats_nodes: int
    callbacks_per_s: float
    cases_per_s: float
    settle_s: float  # load kept up after each fault once everything is ready again
    faults: tuple[Fault, ...]
    agents: int = 4  # Ready at the console; each holds one call at a time
    # After the load stops: the longest the backlog may take to drain (while it keeps shrinking).
    drain_s: float = 900.0


SHORT = Form(
    name="short",
    nats_nodes=1,
    callbacks_per_s=1.0,
    cases_per_s=0.5,
    settle_s=2.0,
    agents=6,
    # Arming restarts the service with a SIGKILL, then the failpoint kills it again: two kills each.
    faults=(
        Fault("arm", "callback", "dialer.after_originate"),
        Fault("arm", "notifier", "notifier.send.after_provider"),
        Fault("arm", "verification", "relay.after_publish"),
        Fault("down", "postgres"),
    ),
)

LONG = Form(
    name="long",
    nats_nodes=3,
    # Restarts every half minute keep the dialer away a good part of the time: a rate it can keep up with.
    callbacks_per_s=1.0,
    cases_per_s=0.5,
    settle_s=3.0,  # 16 faults: keeps `./dev bench` (every bench) within its 10 minutes
    agents=6,
    faults=(
        Fault("kill", "callback"),
        Fault("arm", "notifier", "notifier.send.after_provider"),
        Fault("arm", "callback", "dialer.after_originate"),
        Fault("kill", "nats-1"),
        Fault("kill", "verification"),
        Fault("arm", "callback", "dialer.after_reserve"),
        Fault("arm", "notifier", "consumer.notifier_callback.before_commit"),
        Fault("kill", "notifier"),
        Fault("arm", "callback", "consumer.telephony_events.before_ack"),
        Fault("arm", "verification", "relay.after_publish"),
        Fault("kill", "nats-2"),
        Fault("arm", "notifier", "consumer.notifier_verification.before_ack"),
        Fault("arm", "callback", "relay.after_publish"),
        Fault("kill", "callback"),
        Fault("down", "postgres"),
        Fault("kill", "notifier"),
    ),
)

# How long PostgreSQL stays down: long enough for every service to notice and say so.
POSTGRES_DOWN_S = 3.0
# After the load stops: the backlog must shrink at least once in this long, or what is left is stuck.
STALL_S = 90.0
# An armed failpoint that the load has not reached by then is left armed (it fires later, or never).
ARMED_WAIT_S = 20.0


@dataclass
class Run:
    form: Form
    root: Path
    supervisor: Supervisor = field(default_factory=Supervisor)
    urls: dict[str, str] = field(default_factory=dict)
    settings: Settings | None = None
    fired: list[str] = field(default_factory=list)  # failpoints that killed their process
    not_ready_seen: dict[str, bool] = field(default_factory=dict)
    restarted_during_outage: list[str] = field(default_factory=list)
    marks: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def mark(self, what: str) -> None:
        self.marks.append(f"{what} {time.monotonic() - self.started:.0f}s")
        print(f"faults: {self.marks[-1]}", flush=True)  # progress, seen with -s


def build(run: Run, sms_url: str, telegram_url: str) -> Settings:
    """Every child of the system, added to the supervisor in start order."""
    sup, root = run.supervisor, run.root
    postgres = PostgresChild("postgres", root / "pg" / "data")
    sup.add(postgres)
    if run.form.nats_nodes == 1:
        nats_children = [NatsChild("nats-1", root / "nats" / "n1")]
    else:
        cluster = NatsCluster(root / "nats", size=run.form.nats_nodes)
        nats_children = [
            NatsChild(f"nats-{i + 1}", node.data_dir, node) for i, node in enumerate(cluster.nodes)
        ]
    for child in nats_children:
        sup.add(child)
    nats_urls = ",".join(child.url for child in nats_children)
    settings = make_settings(
        postgres.url, nats_urls, f"f{uuid.uuid4().hex[:8]}", stream_replicas=run.form.nats_nodes,
        scheduler_poll_interval_s=0.5,
    )  # fmt: skip
    esia = dev_sandbox(root / "esia-sandbox", "127.0.0.1", free_port())
    registry = dev_registry("127.0.0.1", free_port(), 0.0)
    base_env = settings_env(settings)
    # Every recipient here lives in Moscow (visitor_tz, +7 91x numbers): quiet half a day from now there.
    quiet = dt.datetime.now(ZoneInfo("Europe/Moscow")) + dt.timedelta(hours=12)
    sup.add(Child("esia-sandbox", esia.command, base_env, root / "esia-sandbox.log", f"{esia.url}/jwks"))
    sup.add(Child("registry-sandbox", registry.command, base_env, root / "registry-sandbox.log"))
    env = settings_env(
        settings,
        **esia.env,
        **registry.env,
        # The simulated PBX at 1/30 speed: a call (two rings, 20 s talk) takes under a second.
        ABONENT_SIM_TIME_SCALE="0.033",
        ABONENT_OFFER_RATE_LIMIT_PER_MINUTE="100000",
        # A dialer killed mid-order is settled by its successor after this lease, not 30 s later.
        ABONENT_PLACING_LEASE_S="3",
        ABONENT_OUTBOX_LEASE_S="3",
        # Messenger first (nobody binds a chat here, so every message falls through to SMS at once).
        ABONENT_NOTIFY_CHANNELS="telegram,sms_ru",
        ABONENT_TELEGRAM_API_URL=telegram_url,
        ABONENT_TELEGRAM_BOT_TOKEN=FakeTelegram().token,
        ABONENT_TELEGRAM_WEBHOOK_SECRET="fault-run-webhook",
        ABONENT_SMS_RU_URL=sms_url,
        ABONENT_SMS_RU_API_ID=FakeSmsRu().api_id,
        ABONENT_SMS_RECEIPT_SECRET="fault-run-receipts",
        ABONENT_NOTIFY_SEND_LEASE_S="5",
        ABONENT_NOTIFY_SMS_DAILY_BUDGET="100",
        # Quiet hours of one minute, half a day away: the run may happen at any hour, its messages go now.
        ABONENT_NOTIFY_QUIET_START=f"{quiet:%H:%M}",
        ABONENT_NOTIFY_QUIET_END=f"{quiet + dt.timedelta(minutes=1):%H:%M}",
    )
    for service in SERVICES:
        port = free_port()
        run.urls[service] = f"http://127.0.0.1:{port}"
        sup.add(service_child(service, service, env, root / f"{service}.log", port))
    run.settings = settings
    return settings


async def bring_up(run: Run) -> None:
    sup = run.supervisor
    servers = [name for name in sup.children if name == "postgres" or name.startswith("nats-")]
    # PostgreSQL first (it blocks until it accepts connections), the NATS servers together.
    await sup.start(["postgres"])
    for name in servers[1:]:
        await asyncio.to_thread(sup[name].start)
    await sup.wait_ready(servers)
    sandboxes = ["esia-sandbox", "registry-sandbox"]
    for name in [*sandboxes, *SERVICES]:
        await asyncio.to_thread(sup[name].start)
    await sup.wait_ready([*sandboxes, *SERVICES], timeout=180)
    run.mark("up")


async def all_ready(run: Run, timeout: float = 180) -> None:
    sup = run.supervisor
    await sup.wait_ready(list(sup.children), timeout=timeout)


async def postgres_outage(run: Run) -> None:
    """PostgreSQL SIGKILLed and kept down: every service must answer not-ready on /health/ready, then
    come back by itself (no service restarted) once PostgreSQL is back."""
    sup = run.supervisor
    starts = {name: sup[name].starts for name in SERVICES}
    sup.kill("postgres", down_for_s=3600)
    run.not_ready_seen = dict.fromkeys(SERVICES, False)
    deadline = time.monotonic() + max(POSTGRES_DOWN_S, 60)
    async with httpx.AsyncClient(timeout=5) as http:
        while not all(run.not_ready_seen.values()) and time.monotonic() < deadline:
            for name in SERVICES:
                with contextlib.suppress(httpx.HTTPError):
                    response = await http.get(f"{run.urls[name]}/health/ready")
                    if response.status_code == 503:
                        run.not_ready_seen[name] = True
            await asyncio.sleep(0.2)
    await asyncio.sleep(POSTGRES_DOWN_S)
    sup["postgres"].hold_until = 0.0  # the supervisor brings it back now
    await all_ready(run)
    run.restarted_during_outage = [name for name in SERVICES if sup[name].starts != starts[name]]


async def apply(run: Run, fault: Fault, ledger: Ledger) -> None:
    sup = run.supervisor
    if fault.action == "kill":
        sup.kill(fault.target)
    elif fault.action == "arm":
        child = sup[fault.target]
        crashes = child.crashes
        sup.arm(fault.target, fault.failpoint)
        await sup.wait_ready([fault.target])
        # Armed and running: wait for the load to reach the failpoint (the process dies there).
        deadline = time.monotonic() + ARMED_WAIT_S
        while child.crashes == crashes and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if child.crashes > crashes:
            run.fired.append(f"{fault.target}@{fault.failpoint}")
    elif fault.action == "down":
        ledger.in_outage = True
        try:
            await postgres_outage(run)
        finally:
            ledger.in_outage = False
    else:  # pragma: no cover - a typo in a Form
        raise ValueError(fault.action)
    await all_ready(run)
    run.mark(str(fault))


async def run_faults(form: Form, root: Path) -> tuple[Findings, Run, Ledger]:
    run = Run(form=form, root=root)
    sup = run.supervisor
    ledger = Ledger()
    tap = DialTap()
    stops = {"load": asyncio.Event(), "agents": asyncio.Event()}
    tasks: list[asyncio.Task[None]] = []
    watcher: asyncio.Task[None] | None = None
    async with running_sms_ru() as (sms, sms_url), running_telegram() as (telegram, telegram_url):
        settings = build(run, sms_url, telegram_url)
        try:
            await bring_up(run)
            watcher = asyncio.create_task(sup.watch())
            await tap.start(settings.nats_url, f"{settings.nats_namespace}.callback.telephony.>")
            async with httpx.AsyncClient(base_url=run.urls["callback"], timeout=10) as http:
                await put_site(http, abuse={"min_fill_ms": 0, "per_ip_10min": 10000, "per_phone_day": 100})
            ready = [asyncio.Event() for _ in range(form.agents)]
            tasks += [
                asyncio.create_task(agent_console(run.urls["callback"], login, flag, stops["agents"], ledger))
                for login, flag in zip(AGENTS[: form.agents], ready, strict=True)
            ]
            await asyncio.wait_for(asyncio.gather(*(flag.wait() for flag in ready)), 60)
            visitors = CallbackVisitors(run.urls["callback"], ledger, form.callbacks_per_s)
            openers = CaseOpeners(run.urls["verification"], ledger, form.cases_per_s)
            load = [
                asyncio.create_task(visitors.run(stops["load"])),
                asyncio.create_task(openers.run(stops["load"])),
            ]
            tasks += load
            run.mark("load on")
            await asyncio.sleep(form.settle_s)
            for fault in form.faults:
                await apply(run, fault, ledger)
                await asyncio.sleep(form.settle_s)
            stops["load"].set()
            await asyncio.gather(*load)  # every request sent has its final answer (or was given up)
            run.mark("load off")
            findings = await drain_and_audit(run, settings, ledger, tap, sms)
            findings.details["telegram messages"] = len(telegram.messages)
            run.mark("audited")
        finally:
            stops["load"].set()
            stops["agents"].set()
            await asyncio.gather(*tasks, return_exceptions=True)
            sup.stop_watching()
            if watcher is not None:
                await watcher
            await tap.close()
            await asyncio.to_thread(sup.stop_all)
    return findings, run, ledger


async def drain_and_audit(
    run: Run, settings: Settings, ledger: Ledger, tap: DialTap, sms: FakeSmsRu
) -> Findings:
    """Wait (generously) until every accepted request and case is final or planned for later and every
    event has reached its consumers, then audit whatever state that left."""
    db = await asyncpg.connect(settings.database_url)
    try:
        # A loaded machine drains the backlog slowly, not wrongly: wait while it moves; what has not moved
        # for STALL_S (or is still there after the form's cap) is stuck.
        deadline = time.monotonic() + run.form.drain_s
        last_said = last_progress = time.monotonic()
        fewest = None
        while time.monotonic() < deadline and (moving := await unsettled(db, ledger)):
            now = time.monotonic()
            if fewest is None or moving.total() < fewest:
                fewest, last_progress = moving.total(), now
            if now - last_progress > STALL_S:
                break
            if now - last_said > 10:
                print(f"faults: still moving {dict(moving)}", flush=True)
                last_said = now
            await asyncio.sleep(0.5)
        run.mark("settled")
        while time.monotonic() < deadline and (await events_not_delivered(db))[0]:
            await asyncio.sleep(0.5)
        run.mark("delivered")
        return await audit(db, settings, ledger, tap, sms)
    finally:
        await db.close()


def report(findings: Findings, run: Run, ledger: Ledger) -> str:
    sup = run.supervisor
    restarts = {name: child.starts - 1 for name, child in sup.children.items() if child.starts > 1}
    return "\n".join(
        [
            f"faults ({run.form.name}): {findings.line()}",
            f"faults load: callbacks {len(ledger.callbacks)}, cases {len(ledger.cases)}, merges tried"
            f" {ledger.merges_tried}, replays {ledger.replays} (mismatched {len(ledger.replay_mismatches)}),"
            f" answers dropped and retried {ledger.lost_answers}, retries {ledger.retries},"
            f" unanswered {ledger.unanswered}, refused {dict(ledger.refused)}; retried after"
            f" {dict(ledger.retried)}; server errors {dict(ledger.server_errors)},"
            f" while PostgreSQL was being killed {dict(ledger.server_errors_in_outage)}",
            f"faults injected: {', '.join(str(f) for f in run.form.faults)}; failpoints fired"
            f" {run.fired}; restarts {restarts}; not-ready while PostgreSQL was down {run.not_ready_seen}",
            f"faults details: {findings.details}; statuses {dict(findings.statuses)}",
            f"faults timeline: {', '.join(run.marks)}",
        ]
    )
