"""Notifier throughput: callback.requested on JetStream -> SMS.ru request, beside raw HTTP posts to it.

Run with `./dev bench` (or `.venv/bin/python -m bench.notifier [N] [--quick] [--no-report] [--profile
out.svg]` from the checkout). It starts embedded PostgreSQL and NATS in a temporary folder, runs the notifier
as its own process (`python -m services.cli run notifier --migrate`) with only the `sms_ru` channel pointed at
a tiny SMS.ru-shaped server in this process, publishes N callback.requested events for N distinct phones
(Nats-Msg-Id = event id), and times from the first publish to the server's request carrying the N-th phone.

The notifier runs twice: as configured by default (due SMS go to SMS.ru together, `to[<number>]=<text>`,
up to ABONENT_SMS_RU_BATCH = 100 per request) and with ABONENT_SMS_RU_BATCH=1 (one request per SMS). The
baselines, in the same run against the same server: N raw httpx POSTs of the same form one after another
(one SMS per request: the goal's baseline), and the same N SMS in raw requests carrying as many numbers as
the notifier's requests did on average. Messages/s are compared with messages/s; the output states what
one provider request carried. A third, untimed pass counts PostgreSQL statements and transactions per
message (`log_statement = all` for that pass only). Loopback only; every loop is bounded by a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import secrets
import tempfile
import time
import urllib.parse
import uuid
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from bench.support import (
    CpuMeter,
    append_report,
    flame_graph,
    pct,
    service_env,
    start_service,
    stop_service,
    wait_ready,
)
from services.common import bus as bus_mod
from services.common import crypto
from services.common.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from services.common.events import CallbackRequested, encode_event

API_ID = "bench-api-id"
TZ = "Europe/Moscow"
GOAL = 0.5
DEADLINE_S = 120.0  # the whole path must deliver N messages within this, or the run fails


@dataclass
class SmsServer:
    """Answers POST /sms/send like SMS.ru (`to` + `msg`, or `to[<number>]=<text>` for several numbers) and
    notes when each phone's request came."""

    arrivals: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    numbers: int = 0
    _next_id: int = 0
    got_all: asyncio.Event = field(default_factory=asyncio.Event)
    expect: int = 0

    def reset(self, expect: int) -> None:
        self.arrivals.clear()
        self.requests = 0
        self.numbers = 0
        self.expect = expect
        self.got_all = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Minimal HTTP/1.1 with keep-alive: httpx sends Content-Length bodies, never chunked ones.
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status, payload = self._answer(method, path, body)
                data = json.dumps(payload).encode()
                writer.write(
                    f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            # The fake provider closing at the end of the run: Python 3.11's stream server would log a
            # cancelled connection handler as an error.
            pass
        finally:
            writer.close()

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, object]]:
        if method != "POST" or not path.startswith("/sms/send"):
            return 404, {"status": "ERROR"}
        form = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
        if form.get("api_id") != API_ID:
            return 200, {"status": "ERROR", "status_code": 200, "status_text": "bad api_id"}
        phones = [key[3:-1] for key in form if key.startswith("to[")] or [form.get("to", "")]
        self.requests += 1
        self.numbers += len(phones)
        now = time.perf_counter()
        entries: dict[str, object] = {}
        for phone in phones:
            self.arrivals.setdefault(phone, now)
            self._next_id += 1
            entries[phone] = {
                "status": "OK",
                "status_code": 100,
                "sms_id": f"b-{self._next_id}",
                "sms": 1,
                "cost": "0",
            }
        if self.expect and len(self.arrivals) >= self.expect:
            self.got_all.set()
        return 200, {"status": "OK", "status_code": 100, "sms": entries, "balance": 1000.0}


def phones(n: int, prefix: str = "+7925") -> list[str]:
    # Distinct Moscow mobile numbers (MegaFon 925-928 ranges), valid for phonenumbers.
    return [f"{prefix}{i:07d}" for i in range(1, n + 1)]


def quiet_window_far_from_now() -> tuple[str, str]:
    """A one-minute quiet window 12 hours away in the recipients' zone, so quiet hours never apply."""
    far = dt.datetime.now(zoneinfo.ZoneInfo(TZ)) + dt.timedelta(hours=12)
    return far.strftime("%H:%M"), (far + dt.timedelta(minutes=1)).strftime("%H:%M")


TEXT = "Перезвоним до 12:15"


async def baseline(
    url: str, server: SmsServer, numbers: list[str], per_request: int = 1
) -> tuple[float, list[float]]:
    """N raw POSTs of the notifier's form, one after another over one keep-alive client; `per_request`
    numbers in each (SMS.ru's `to[<number>]=<text>` form when more than one). Latency: per request."""
    server.reset(0)
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=10) as client:
        start = time.perf_counter()
        for first in range(0, len(numbers), per_request):
            chunk = [phone.lstrip("+") for phone in numbers[first : first + per_request]]
            t0 = time.perf_counter()
            form = {"api_id": API_ID, "json": "1"}
            if len(chunk) == 1:
                form |= {"to": chunk[0], "msg": TEXT}
            else:
                form |= {f"to[{phone}]": TEXT for phone in chunk}
            answer = await client.post(f"{url}/sms/send", data=form)
            answer.raise_for_status()
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
    return len(numbers) / elapsed, latencies


async def through_notifier(
    nats_url: str, server: SmsServer, numbers: list[str], meter: CpuMeter | None
) -> tuple[float, list[float]]:
    """Publish one callback.requested per phone; time first publish -> the server's N-th phone."""
    server.reset(len(numbers))
    bus = await bus_mod.connect(nats_url, "bench")
    published: dict[str, float] = {}
    now = dt.datetime.now(dt.UTC)
    try:
        if meter is not None:
            meter.start()
        start = time.perf_counter()
        for phone in numbers:
            event = CallbackRequested(
                callback_id=uuid.uuid4(),
                site_key="bench",
                state="requested",
                phone=phone,
                visitor_tz=TZ,
                lang="ru",
                promised_earliest=now + dt.timedelta(minutes=5),
                promised_latest=now + dt.timedelta(minutes=30),
                promise_kind="asap",
            )
            published[phone.lstrip("+")] = time.perf_counter()
            await bus.publish(event.SUBJECT, encode_event(event), str(event.event_id))
        try:
            await asyncio.wait_for(server.got_all.wait(), DEADLINE_S)
        except TimeoutError:
            raise SystemExit(
                f"only {len(server.arrivals)}/{len(numbers)} messages reached the provider"
            ) from None
        elapsed = max(server.arrivals.values()) - start
        if meter is not None:
            meter.stop()
    finally:
        await bus.close()
    latencies = [server.arrivals[p] - t for p, t in published.items()]
    return len(numbers) / elapsed, latencies


@dataclass
class NotifierRun:
    """One timed pass through the notifier."""

    label: str
    rate: float
    latencies: list[float]
    cpu: dict[str, float]
    requests: int
    numbers: int


def table(
    n: int,
    *,
    raw: tuple[float, list[float]],
    raw_batched: tuple[float, list[float]],
    per_request: int,
    runs: list[NotifierRun],
    counted: tuple[int, int, int] | None,
) -> str:
    def row(name: str, rate: float, latencies: list[float]) -> str:
        return (
            f"| {name} | {rate:.1f} | {pct(latencies, 0.5) * 1000:.1f} | {pct(latencies, 0.99) * 1000:.1f} |"
        )

    main = runs[0]
    ratio = main.rate / raw[0]
    verdict = "met" if ratio >= GOAL else "NOT met"
    rows = [
        "| path | messages/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
        row("raw httpx POST -> provider, 1 SMS per request (baseline)", *raw),
        row(f"raw httpx POST -> provider, {per_request} SMS per request", *raw_batched),
        *(row(f"event on JetStream -> notifier -> provider, {r.label}", r.rate, r.latencies) for r in runs),
        "",
        f"N = {n}; ratio notifier/raw (messages/s over the 1-SMS-per-request baseline) = {ratio:.3f}x"
        f" (goal >= {GOAL}x: {verdict})"
        + "".join(f"; {r.label}: {r.rate / raw[0]:.3f}x" for r in runs[1:])
        + f"; notifier/raw at the same SMS per request: {main.rate / raw_batched[0]:.3f}x.",
        "What one provider request carried: "
        + "; ".join(f"{r.label}: {r.requests} requests for {r.numbers} SMS" for r in runs)
        + ".",
        "Latency: baselines per POST round trip; notifier from each event's publish to its provider request.",
        "CPU per message while the notifier ran: "
        + "; ".join(
            f"{r.label}: notifier process {r.cpu['notifier'] / n * 1000:.2f} ms,"
            f" PostgreSQL {r.cpu['postgres'] / n * 1000:.2f} ms"
            for r in runs
        )
        + f"; load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}.",
    ]
    if counted is not None:
        statements, transactions, messages = counted
        rows.append(
            f"PostgreSQL per message ({main.label}, {messages} messages, statements logged):"
            f" {statements / messages:.1f} statements, {transactions / messages:.2f} transactions."
        )
    return "\n".join(rows)


async def count_statements(
    postgres: EmbeddedPostgres, nats_url: str, server: SmsServer, numbers: list[str]
) -> tuple[int, int]:
    """(statements, transactions) PostgreSQL ran while `numbers` went through the notifier, up to the
    last outcome recorded.

    Load-independent: `log_statement = all` is on for this pass only (every statement a connection sends
    is one log line and one round trip), and pg_stat_database counts the transactions. Lines of this
    function's own connection (its backend pid is in each line's prefix) are left out.
    """
    admin = await asyncpg.connect(postgres.url)
    try:
        own_pid = f"[{await admin.fetchval('select pg_backend_pid()')}]"
        await admin.execute("alter system set log_statement = 'all'")
        await admin.execute("select pg_reload_conf()")
        await asyncio.sleep(0.5)  # backends read the reloaded file before their next command
        xacts = "select xact_commit + xact_rollback from pg_stat_database where datname = current_database()"
        sent = "select count(*) from notifier.attempts where state = 'sent'"
        already: int = await admin.fetchval(sent)
        await admin.execute("select pg_stat_clear_snapshot()")
        before_xacts: int = await admin.fetchval(xacts)
        start = postgres.log.stat().st_size
        await through_notifier(nats_url, server, numbers, None)
        deadline = time.monotonic() + DEADLINE_S
        while await admin.fetchval(sent) < already + len(numbers):
            if time.monotonic() > deadline:
                raise SystemExit("the sends were not recorded in time")
            await asyncio.sleep(0.05)
        text = postgres.log.read_bytes()[start:].decode(errors="replace")
        await admin.execute("select pg_stat_clear_snapshot()")
        after_xacts: int = await admin.fetchval(xacts)
        await admin.execute("alter system reset log_statement")
        await admin.execute("select pg_reload_conf()")
    finally:
        await admin.close()
    statements = sum(
        1
        for line in text.splitlines()
        if ("LOG:  statement: " in line or "LOG:  execute " in line) and own_pid not in line
    )
    return statements, after_xacts - before_xacts


async def run_notifier(
    label: str,
    *,
    env: dict[str, str],
    work: Path,
    postgres: EmbeddedPostgres,
    nats_url: str,
    server: SmsServer,
    numbers: list[str],
    count: list[str] | None = None,
    flame: str | None = None,
) -> tuple[NotifierRun, tuple[int, int, int] | None]:
    """Start the notifier with `env`, time `numbers` through it (and count statements for `count`)."""
    port = free_port()
    log = work / f"notifier-{port}.log"
    proc = start_service("notifier", env | {"ABONENT_NOTIFIER_PORT": str(port)}, log)
    try:
        await wait_ready(f"http://127.0.0.1:{port}", proc, log)
        assert postgres.proc is not None
        meter = CpuMeter({"notifier": proc.pid, "postgres+": postgres.proc.pid})
        out = Path(flame) if flame else None
        async with flame_graph(proc.pid, "notifier", enabled=out is not None, out=out):
            rate, latencies = await through_notifier(nats_url, server, numbers, meter)
        run = NotifierRun(label, rate, latencies, meter.used, server.requests, server.numbers)
        counted = None
        if count:
            statements, transactions = await count_statements(postgres, nats_url, server, count)
            counted = (statements, transactions, len(count))
    finally:
        await stop_service(proc)
    return run, counted


async def main(n: int, *, report: bool, flame: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="abonent-bench-") as tmp:
        work = Path(tmp)
        postgres = EmbeddedPostgres(work / "postgres").start()
        nats = EmbeddedNats(work / "nats").start()
        server = SmsServer()
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        provider = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
        try:
            quiet_start, quiet_end = quiet_window_far_from_now()
            env = service_env(
                **{
                    "ABONENT_DATABASE_URL": postgres.url,
                    "ABONENT_NATS_URL": nats.url,
                    "ABONENT_DATA_KEYS": f"k1:{crypto.new_key()}",
                    "ABONENT_DATA_KEY_ID": "k1",
                    "ABONENT_INDEX_KEY": crypto.new_key(),
                    "ABONENT_LOG_LEVEL": "WARNING",
                    "ABONENT_LOG_FORMAT": "text",
                    # Routes list a messenger first, so one must be configured; nobody bound a chat, so
                    # every message goes straight to SMS (Telegram's API URL points at our server anyway).
                    "ABONENT_NOTIFY_CHANNELS": "sms_ru,telegram",
                    "ABONENT_TELEGRAM_API_URL": provider,
                    "ABONENT_TELEGRAM_BOT_TOKEN": "bench:token",
                    "ABONENT_TELEGRAM_WEBHOOK_SECRET": secrets.token_urlsafe(16),
                    "ABONENT_SMS_RU_URL": provider,
                    "ABONENT_SMS_RU_API_ID": API_ID,
                    "ABONENT_SMS_RECEIPT_SECRET": secrets.token_urlsafe(16),
                    "ABONENT_NOTIFY_QUIET_START": quiet_start,
                    "ABONENT_NOTIFY_QUIET_END": quiet_end,
                    "ABONENT_NOTIFY_SMS_DAILY_BUDGET": "1000000",
                }
            )
            numbers = phones(n)
            raw = await baseline(provider, server, numbers)
            # Each pass its own numbers: a person's second callback of the evening is not this bench's case.
            batched, counted = await run_notifier(
                "SMS together (ABONENT_SMS_RU_BATCH=100)",
                env=env,
                work=work,
                postgres=postgres,
                nats_url=nats.url,
                server=server,
                numbers=phones(n, prefix="+7926"),
                count=phones(min(n, 100), prefix="+7927"),
                flame=flame,
            )
            single, _ = await run_notifier(
                "1 SMS per request (ABONENT_SMS_RU_BATCH=1)",
                env=env | {"ABONENT_SMS_RU_BATCH": "1"},
                work=work,
                postgres=postgres,
                nats_url=nats.url,
                server=server,
                numbers=phones(n, prefix="+7928"),
            )
            per_request = max(1, round(batched.numbers / max(batched.requests, 1)))
            raw_batched = await baseline(provider, server, numbers, per_request)
        finally:
            listener.close()
            nats.stop()
            postgres.stop()
    result = table(
        n, raw=raw, raw_batched=raw_batched, per_request=per_request, runs=[batched, single], counted=counted
    )
    print(result)
    if report:
        append_report("Notifier: event -> SMS provider", result)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=300, help="messages per pass (default 300)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (N = 60)")
    parser.add_argument("--no-report", action="store_true", help="do not append to docs/benchmarks.md")
    parser.add_argument("--profile", metavar="SVG", help="py-spy flame graph of the batched pass")
    args = parser.parse_args()
    raise SystemExit(
        asyncio.run(main(60 if args.quick else args.n, report=not args.no_report, flame=args.profile))
    )
