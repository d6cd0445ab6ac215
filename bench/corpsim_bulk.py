"""Corporate SIM bulk upload: rows/s through the whole API path beside a raw COPY of the same rows, and the
service's peak memory while it works (an N/10- and an N-row file: flat, not proportional).

Run with `./dev bench` (or `.venv/bin/python -m bench.corpsim_bulk [N] [--employees PCT] [--quick]
[--no-report]`). It starts embedded PostgreSQL and NATS in a temporary folder and the verification service
as its own process; a company and its API client are onboarded through the back-office API, and its N
numbers are put on its contract by COPY (setup, not measured). The file mixes device rows (meters with an
IMEI and address) and, every 100/PCT-th row, an employee row (a distinct person each: it opens their
verification case). Measured: token → POST the CSV (the service stages it) → poll the job until done. The
baseline, in the same run and database: COPY of the same rows (as text) into a plain table. Peak RSS is
sampled from /proc while each upload runs, and the CPU time the service process and PostgreSQL's processes
spent on it (per row: evidence that does not depend on what else the machine is doing). Loopback only;
every wait is bounded by a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import asyncpg
import httpx

from bench.support import (
    CpuMeter,
    append_report,
    service_env,
    start_service,
    stop_service,
    tail,
    wait_ready,
)
from services.common import crypto
from services.common.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from services.common.settings import Settings
from services.verification.corporate import store
from services.verification.domain.texts import spaced_mask

GOAL = 0.25
DEADLINE_S = 600.0
ADMIN = secrets.token_urlsafe(32)
HEADER = (
    "number,kind,device_type,device_name,imei,installation_address,last_name,first_name,middle_name,"
    "birth_date,passport_series,passport_number,passport_issue_date,passport_issuer_code"
)


def luhn(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return body + str((10 - total % 10) % 10)


def rows(first: int, n: int, employee_every: int) -> list[tuple[str, ...]]:
    """Device rows, and every `employee_every`-th row an employee (0: none)."""
    out: list[tuple[str, ...]] = []
    for i in range(n):
        number = f"+7916{first + i:07d}"
        if employee_every and i % employee_every == employee_every - 1:
            person = (
                "Иванов",
                "Иван",
                "Иванович",
                "12.04.1985",
                "4510",
                f"{(first + i) % 1_000_000:06d}",
                "20.05.2010",
            )
            out.append((number, "employee", "", "", "", "", *person, "770-001"))
        else:
            imei = luhn(f"35{first + i:012d}")
            out.append((number, "device", "meter", f"Меркурий {i}", imei, "Москва", *([""] * 8)))
    return out


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def onboard(http: httpx.AsyncClient, base: str, name: str, inn: str, ogrn: str) -> tuple[str, str, str]:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    made = await http.post(
        f"{base}/v1/companies", json={"name": name, "inn": inn, "ogrn": ogrn}, headers=auth
    )
    made.raise_for_status()
    company = made.json()["id"]
    client = await http.post(f"{base}/v1/companies/{company}/clients", json={"name": "bench"}, headers=auth)
    client.raise_for_status()
    return company, client.json()["client_id"], client.json()["client_secret"]


async def put_on_contract(
    db_url: str, protector: crypto.DataProtector, company: str, data: list[tuple[str, ...]]
) -> None:
    now = dt.datetime.now(dt.UTC)
    numbers, sims = [], []
    for row in data:
        number_id = uuid.uuid4()
        numbers.append(
            (
                number_id,
                uuid.UUID(company),
                protector.encrypt(row[0], store.MSISDN_CONTEXT, number_id),
                protector.blind_index(row[0], store.MSISDN_INDEX),
                spaced_mask(row[0]),
                now,
            )
        )
        sims.append((uuid.uuid4(), uuid.UUID(company), number_id, "unregistered", now, now))
    conn = await asyncpg.connect(db_url)
    try:
        cols = ("id", "company_id", "msisdn_enc", "msisdn_index", "msisdn_masked", "added_at")
        await conn.copy_records_to_table(
            "company_numbers", schema_name="verification", records=numbers, columns=cols
        )
        cols = ("id", "company_id", "number_id", "status", "created_at", "updated_at")
        await conn.copy_records_to_table("sims", schema_name="verification", records=sims, columns=cols)
    finally:
        await conn.close()


async def raw_copy(db_url: str, data: list[tuple[str, ...]]) -> float:
    conn = await asyncpg.connect(db_url)
    try:
        columns = ", ".join(f"{name} text" for name in HEADER.split(","))
        await conn.execute(f"create table if not exists bench_raw ({columns})")
        await conn.execute("truncate bench_raw")
        started = time.perf_counter()
        await conn.copy_records_to_table("bench_raw", records=data)
        return time.perf_counter() - started
    finally:
        await conn.close()


async def through_api(
    http: httpx.AsyncClient, base: str, client_id: str, secret: str, body: bytes, *, pid: int
) -> tuple[float, float, int, dict[str, object]]:
    """(seconds to the job's end, seconds to the POST's 202, peak RSS in kB while it ran, the job)."""
    peak = rss_kb(pid)
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    started = time.perf_counter()
    token = await http.post(
        f"{base}/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    token.raise_for_status()
    auth = {"Authorization": f"Bearer {token.json()['access_token']}"}

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_kb(pid))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    try:
        posted = await http.post(
            f"{base}/v1/corporate/bulk-uploads", content=body, headers={**auth, "Content-Type": "text/csv"}
        )
        if posted.status_code != 202:
            raise SystemExit(f"upload refused: {posted.status_code} {posted.text}")
        staged = time.perf_counter() - started
        location = base + posted.headers["location"]
        deadline = time.monotonic() + DEADLINE_S
        while True:
            job = (await http.get(location, headers=auth)).json()
            if job["state"] in ("done", "failed"):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"job not done after {DEADLINE_S:.0f} s: {job}")
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        sampler.cancel()
    return elapsed, staged, peak, job


class Result(NamedTuple):
    rows: int
    raw_s: float
    api_s: float
    staged_s: float
    rss_before_kb: int
    rss_peak_kb: int
    service_cpu_s: float
    postgres_cpu_s: float
    job: dict[str, object]


async def main(n: int, employee_pct: float, *, report: bool) -> int:
    small = max(1, n // 10)
    employee_every = round(100 / employee_pct) if employee_pct > 0 else 0
    with tempfile.TemporaryDirectory(prefix="abonent-bench-") as tmp:
        work = Path(tmp)
        postgres = EmbeddedPostgres(work / "postgres").start()
        nats = EmbeddedNats(work / "nats").start()
        proc: subprocess.Popen[bytes] | None = None
        keys, index = f"k1:{crypto.new_key()}", crypto.new_key()
        results: list[Result] = []
        clean = True
        try:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            env = service_env(
                ABONENT_DATABASE_URL=postgres.url,
                ABONENT_NATS_URL=nats.url,
                ABONENT_DATA_KEYS=keys,
                ABONENT_DATA_KEY_ID="k1",
                ABONENT_INDEX_KEY=index,
                ABONENT_ADMIN_TOKEN=ADMIN,
                ABONENT_VERIFICATION_PORT=str(port),
                ABONENT_VERIFICATION_PUBLIC_URL=base,
                # The bench never reaches a sign-in; an OIDC provider is the one that needs no keys here.
                ABONENT_IDENTITY_MODE="oidc",
                ABONENT_OIDC_DISCOVERY_URL="http://127.0.0.1:9/.well-known/openid-configuration",
                ABONENT_OIDC_CLIENT_ID="bench",
                ABONENT_LOG_LEVEL="WARNING",
                ABONENT_LOG_FORMAT="text",
            )
            log = work / "verification.log"
            proc = start_service("verification", env, log)
            await wait_ready(base, proc, log)
            protector = crypto.DataProtector.from_settings(
                Settings(data_keys=keys, data_key_id="k1", index_key=index)
            )
            companies = [
                ("ПАО Сбербанк", "7707083893", "1027700132195", 0, small),
                ("ПАО Газпром", "7736050003", "1027700070518", 1_000_000, n),
            ]
            async with httpx.AsyncClient(timeout=120) as http:
                for name, inn, ogrn, first, count in companies:
                    company, client_id, secret = await onboard(http, base, name, inn, ogrn)
                    data = rows(first, count, employee_every)
                    await put_on_contract(postgres.url, protector, company, data)
                    body = ("\r\n".join([HEADER, *(",".join(r) for r in data)]) + "\r\n").encode()
                    raw = await raw_copy(postgres.url, data)
                    rss_before = rss_kb(proc.pid)
                    assert postgres.proc is not None
                    meter = CpuMeter({"service": proc.pid, "postgres+": postgres.proc.pid})
                    meter.start()
                    api, staged, peak, job = await through_api(
                        http, base, client_id, secret, body, pid=proc.pid
                    )
                    used = meter.stop()
                    cpu = used["service"], used["postgres"]
                    if job["state"] != "done" or job["applied"] != count:
                        clean = False
                        print(f"warning: job {job}", file=sys.stderr)
                    results.append(Result(count, raw, api, staged, rss_before, peak, *cpu, job))
                    del data, body
        finally:
            if proc is not None:
                await stop_service(proc)
                if not clean:
                    print(tail(log), file=sys.stderr)
            nats.stop()
            postgres.stop()
    lines = [
        "| rows | raw COPY rows/s | API path rows/s (POST 202 after) | ratio (goal ≥ 0.25×) "
        "| service RSS before → peak | CPU per row: service / PostgreSQL |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = r.raw_s / r.api_s
        lines.append(
            f"| {r.rows} | {r.rows / r.raw_s:,.0f} | {r.rows / r.api_s:,.0f} ({r.staged_s:.1f} s) "
            f"| {ratio:.3f}× {'✓' if ratio >= GOAL else '✗'} "
            f"| {r.rss_before_kb / 1024:.0f} MB → {r.rss_peak_kb / 1024:.0f} MB "
            f"| {r.service_cpu_s / r.rows * 1e6:.0f} µs / {r.postgres_cpu_s / r.rows * 1e6:.0f} µs |"
        )
    mix = f"{100 / employee_every:g}% employee rows" if employee_every else "device rows only"
    lines.append(
        f"\nAPI path: token → POST the CSV ({mix}, the rest device rows; all valid; the service validates and"
        " stages it by COPY before its 202) → job done (applied a chunk per transaction: devices set-based"
        " with their outbox events, employees each opening a verification case). Raw COPY: the same rows as"
        " text into a plain table. CPU per row: the service process and all of PostgreSQL's processes, from"
        " /proc, over the upload (it includes the outbox relay and event consumers working meanwhile)."
        f" Load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())} (a shared machine)."
    )
    result = "\n".join(lines)
    print(result)
    if clean and report:
        append_report("Corporate SIM bulk upload: API path vs raw COPY", result)
    return 0 if clean else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 20 000 rows (and a tenth of that first) keep `./dev bench` within its 10 minutes; the 100 000-row
    # upload is test_corporate_bulk.py's long form (ABONENT_BULK_LONG=1) or `bench.corpsim_bulk 100000`.
    parser.add_argument("rows", nargs="?", type=int, default=20_000)
    parser.add_argument("--employees", type=float, default=5.0, help="percent of employee rows (default 5)")
    parser.add_argument("--quick", action="store_true", help="a 5 000-row smoke run, not recorded")
    parser.add_argument("--no-report", action="store_true", help="do not append to docs/benchmarks.md")
    args = parser.parse_args()
    quick = bool(args.quick)
    raise SystemExit(
        asyncio.run(main(5_000 if quick else args.rows, args.employees, report=not (quick or args.no_report)))
    )
