"""Notifier throughput: callback.requested on JetStream -> SMS.ru request, beside raw HTTP posts to it.

Run with `./dev bench` (or `.venv/bin/python -m bench.notifier [N]` from the checkout). It starts embedded
PostgreSQL and NATS in a temporary folder, runs the notifier as its own process (`python -m services.cli run
notifier --migrate`) with only the `sms_ru` channel pointed at a tiny SMS.ru-shaped server in this process,
publishes N callback.requested events for N distinct phones (Nats-Msg-Id = event id), and times from the first
publish to the server's N-th send request. The baseline, in the same run against the same server: N raw
httpx POSTs of the same form, one after another. Loopback only; every loop is bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from bench.support import append_report, pct, service_env, start_service, stop_service, wait_ready
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
    """Answers POST /sms/send like SMS.ru (one number per call) and notes when each phone's request came."""

    arrivals: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    _next_id: int = 0
    got_all: asyncio.Event = field(default_factory=asyncio.Event)
    expect: int = 0

    def reset(self, expect: int) -> None:
        self.arrivals.clear()
        self.requests = 0
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
        finally:
            writer.close()

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, object]]:
        if method != "POST" or not path.startswith("/sms/send"):
            return 404, {"status": "ERROR"}
        form = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
        if form.get("api_id") != API_ID:
            return 200, {"status": "ERROR", "status_code": 200, "status_text": "bad api_id"}
        phone = form.get("to", "")
        self.requests += 1
        self.arrivals.setdefault(phone, time.perf_counter())
        if self.expect and len(self.arrivals) >= self.expect:
            self.got_all.set()
        self._next_id += 1
        entry = {"status": "OK", "status_code": 100, "sms_id": f"b-{self._next_id}", "sms": 1, "cost": "0"}
        return 200, {"status": "OK", "status_code": 100, "sms": {phone: entry}, "balance": 1000.0}


def cpu_seconds(root: int, *, with_children: bool) -> float:
    """User+system CPU of process `root` (and its direct children: PostgreSQL's backends), from /proc.

    Throughput on a shared, loaded machine swings with the neighbours; CPU per message does much less,
    so the report gives both. Linux only: elsewhere 0.
    """
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0.0
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else []:
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            # Fields after the ")" closing the command name: state ppid ... utime(14) stime(15).
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            pid, ppid = int(entry.name), int(fields[1])
            if pid == root or (with_children and ppid == root):
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


@dataclass
class CpuMeter:
    """CPU seconds the notifier and PostgreSQL spent between `start` and `stop`."""

    notifier_pid: int
    postgres_pid: int
    used: dict[str, float] = field(default_factory=dict)

    def sample(self) -> dict[str, float]:
        return {
            "notifier": cpu_seconds(self.notifier_pid, with_children=False),
            "postgres": cpu_seconds(self.postgres_pid, with_children=True),
        }

    def start(self) -> None:
        self.used = self.sample()

    def stop(self) -> None:
        self.used = {k: v - self.used[k] for k, v in self.sample().items()}


def phones(n: int) -> list[str]:
    # Distinct Moscow mobile numbers (MegaFon 925 range), valid for phonenumbers.
    return [f"+7925{i:07d}" for i in range(1, n + 1)]


def quiet_window_far_from_now() -> tuple[str, str]:
    """A one-minute quiet window 12 hours away in the recipients' zone, so quiet hours never apply."""
    far = dt.datetime.now(zoneinfo.ZoneInfo(TZ)) + dt.timedelta(hours=12)
    return far.strftime("%H:%M"), (far + dt.timedelta(minutes=1)).strftime("%H:%M")


async def baseline(url: str, server: SmsServer, numbers: list[str]) -> tuple[float, list[float]]:
    """N raw POSTs of the notifier's form, one after another over one keep-alive client."""
    server.reset(0)
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=10) as client:
        start = time.perf_counter()
        for phone in numbers:
            t0 = time.perf_counter()
            form = {"api_id": API_ID, "to": phone.lstrip("+"), "msg": "Перезвоним до 12:15", "json": "1"}
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


def table(
    n: int, raw: tuple[float, list[float]], full: tuple[float, list[float]], cpu: dict[str, float]
) -> str:
    ratio = full[0] / raw[0]

    def row(name: str, figures: tuple[float, list[float]]) -> str:
        rate, latencies = figures
        return (
            f"| {name} | {rate:.1f} | {pct(latencies, 0.5) * 1000:.1f} | {pct(latencies, 0.99) * 1000:.1f} |"
        )

    verdict = "met" if ratio >= GOAL else "NOT met"
    rows = [
        "| path | messages/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
        row("raw httpx POST -> provider (baseline)", raw),
        row("event on JetStream -> notifier -> provider", full),
        "",
        f"N = {n}; ratio notifier/raw = {ratio:.3f}x (goal >= {GOAL}x: {verdict}).",
        "Latency: baseline per POST round trip; notifier from each event's publish to its provider request.",
        f"CPU per message while the notifier ran: notifier process {cpu['notifier'] / n * 1000:.2f} ms,"
        f" PostgreSQL {cpu['postgres'] / n * 1000:.2f} ms;"
        f" load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}.",
    ]
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
        Path("/tmp/ns-statements.log").write_text(text)
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


async def main(n: int) -> int:
    with tempfile.TemporaryDirectory(prefix="abonent-bench-") as tmp:
        work = Path(tmp)
        postgres = EmbeddedPostgres(work / "postgres").start()
        nats = EmbeddedNats(work / "nats").start()
        server = SmsServer()
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        provider = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
        proc: subprocess.Popen[bytes] | None = None
        try:
            port = free_port()
            quiet_start, quiet_end = quiet_window_far_from_now()
            env = service_env(
                **{
                    "ABONENT_DATABASE_URL": postgres.url,
                    "ABONENT_NATS_URL": nats.url,
                    "ABONENT_DATA_KEYS": f"k1:{crypto.new_key()}",
                    "ABONENT_DATA_KEY_ID": "k1",
                    "ABONENT_INDEX_KEY": crypto.new_key(),
                    "ABONENT_NOTIFIER_PORT": str(port),
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
            log = work / "notifier.log"
            proc = start_service("notifier", env, log)
            await wait_ready(f"http://127.0.0.1:{port}", proc, log)
            numbers = phones(n)
            raw = await baseline(provider, server, numbers)
            assert postgres.proc is not None
            meter = CpuMeter(proc.pid, postgres.proc.pid)
            full = await through_notifier(nats.url, server, numbers, meter)
            counted = [f"+7926{i:07d}" for i in range(1, min(n, 100) + 1)]
            statements, transactions = await count_statements(postgres, nats.url, server, counted)
            print(f"statements per message {statements / len(counted):.1f}, transactions per message {transactions / len(counted):.2f}")
            if server.requests != n:
                print(
                    f"warning: the provider got {server.requests} requests for {n} messages", file=sys.stderr
                )
        finally:
            if proc is not None:
                await stop_service(proc)
            listener.close()
            nats.stop()
            postgres.stop()
    result = table(n, raw, full, meter.used)
    print(result)
    append_report("Notifier: event -> SMS provider", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)))
