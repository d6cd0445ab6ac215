"""Verification: cases opened/s through the case API (bulk: 10 000) beside the same rows inserted by bare
asyncpg, and sign-in round trips/s through the sandbox ESIA beside the same ESIA requests without the
service — each with its ratio, CPU per operation and a flame graph of the service.

Run with `./dev bench verification` (or `.venv/bin/python -m bench.verification [--quick]`). It starts
embedded PostgreSQL and NATS in a temporary folder, the sandbox ESIA (`python -m
services.verification.sandbox_idp`, registered with a fresh GOST certificate) and the verification
service as their own processes; the load comes from a third process (bench.support.in_load_process).

1. Cases: `POST /v1/cases` from 8 clients until 10 000 cases are open (or the phase's deadline passes),
   then the baseline: the rows one API call wrote (case, link, timeline entry, deadline and reminder jobs,
   outbox event — read back from the service's tables) inserted again per case in one transaction by bare
   asyncpg into copies of those tables, from 8 connections, as many cases.
2. Sign-in: the subscriber's whole round trip as a browser makes it — the link's /start (the service signs
   the authorization request) → the sandbox's authorization page, login and consent → the service's
   /v/callback (it signs the token request, checks the tokens, reads the person, compares, records) → the
   result page; beside the same seven ESIA requests made by the service's own ESIA client alone
   (build_identity_provider: the same GOST signatures and token checks, no service, no database).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.support import (
    CpuMeter,
    bench_args,
    flame_graph,
    flame_note,
    in_load_process,
    pct,
    process_cpu,
    report,
    service_env,
    start_service,
    stop_service,
    tail,
    wait_ready,
)
from services.common import crypto
from services.common.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from services.verification.identity.config import IdentitySettings, build_identity_provider
from services.verification.identity.gost_keys import GostPrivateKey, self_signed_certificate, to_pem

CLIENT_ID = "ABONENT_BENCH"
PERSON_OID = "1000000001"  # the sandbox's trusted person whose data the cases carry
CASES = 10_000
CASES_QUICK = 200
CASE_CLIENTS = 8
CASES_DEADLINE_S = 90.0  # keeps ./dev bench under 10 minutes: a slower machine opens fewer
SIGN_INS = 8  # each costs four GOST signatures or checks in pure Python (70-400 ms each)
SIGN_INS_QUICK = 4
SIGN_IN_CLIENTS = 2
HOLDER: dict[str, Any] = {
    "reason": "regulator_request",
    "last_name": "Иванов",
    "first_name": "Иван",
    "middle_name": "Иванович",
    "birth_date": "1985-04-12",
    "passport_series": "4510",
    "passport_number": "123456",
    "passport_issue_date": "2010-05-20",
    "passport_issuer_code": "770-001",
    "lang": "ru",
    "tz": "Europe/Moscow",
}
# The tables one case open writes to, and how a copy of a row is found from the case's id.
CASE_TABLES = {
    "cases": "id = $1",
    "links": "case_id = $1",
    "case_timeline": "case_id = $1",
    "scheduled_jobs": "key like $1::text || '%'",
    "outbox": "position(convert_to($1::text, 'utf8') in payload) > 0",
}


# --- the load process -----------------------------------------------------------------------------------


async def open_cases(base: str, admin: str, count: int, clients: int, deadline_s: float) -> dict[str, Any]:
    """`count` POST /v1/cases from `clients` loops (distinct numbers, the sandbox person's data)."""
    numbers = itertools.count()
    latencies: list[float] = []
    links: list[str] = []
    refused: dict[int, int] = {}
    stop_at = time.perf_counter() + deadline_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as http:

        async def loop() -> None:
            while time.perf_counter() < stop_at:
                n = next(numbers)
                if n >= count:
                    return
                t0 = time.perf_counter()
                answer = await http.post("/v1/cases", json={**HOLDER, "msisdn": f"+7916{n:07d}"})
                if answer.status_code == 201:
                    latencies.append(time.perf_counter() - t0)
                    links.append(answer.json()["link"])
                else:
                    refused[answer.status_code] = refused.get(answer.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return {"elapsed": elapsed, "latencies": latencies, "links": links, "refused": refused}


def _copy_value(table: str, column: str, value: Any, old: uuid.UUID, new: uuid.UUID) -> Any:
    """A template row's value for another case: fresh keys, the new case id wherever the old one was."""
    if column == "id" and table == "links":
        return secrets.token_urlsafe(12)
    if column == "id" and table == "outbox":
        return uuid.uuid4()
    if column == "msisdn_index":
        return secrets.token_bytes(32)
    if value == old:
        return new
    if isinstance(value, str):
        return value.replace(str(old), str(new))
    if isinstance(value, bytes):
        return value.replace(str(old).encode(), str(new).encode())
    return value


async def insert_cases_bare(
    db_url: str, template: list[tuple[str, list[str], list[Any]]], old: uuid.UUID, count: int, clients: int
) -> dict[str, Any]:
    """The same rows per case as the API wrote, in one transaction per case, from `clients` connections."""
    statements = [
        (
            table,
            f"insert into bench.{table} ({', '.join(columns)}) values"
            f" ({', '.join(f'${i}' for i in range(1, len(columns) + 1))})",
            columns,
            values,
        )
        for table, columns, values in template
    ]
    numbers = itertools.count()
    latencies: list[float] = []
    # A connection per loop, whose backends this process meters itself: they end when it disconnects,
    # before the bench's own meter could read them.
    conns = [await asyncpg.connect(db_url) for _ in range(clients)]
    backends = [int(await conn.fetchval("select pg_backend_pid()")) for conn in conns]
    cpu_before = sum(sum(process_cpu(pid).values()) for pid in backends)

    async def loop(conn: asyncpg.Connection) -> None:
        while next(numbers) < count:
            new = uuid.uuid4()
            t0 = time.perf_counter()
            async with conn.transaction():
                for table, sql, columns, values in statements:
                    await conn.execute(
                        sql,
                        *(_copy_value(table, c, v, old, new) for c, v in zip(columns, values, strict=True)),
                    )
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(loop(conn) for conn in conns))
    elapsed = time.perf_counter() - started
    backend_cpu = sum(sum(process_cpu(pid).values()) for pid in backends) - cpu_before
    for conn in conns:
        await conn.close()
    return {"elapsed": elapsed, "latencies": latencies, "backend_cpu": backend_cpu}


def _auth_id(page: str) -> str:
    found = re.search(r'name="auth_id" value="([^"]+)"', page)
    if found is None:
        raise RuntimeError(f"no auth_id on the sandbox page: {page[:300]}")
    return found.group(1)


async def _at_sandbox(http: httpx.AsyncClient, authorization_url: str, sandbox: str) -> str:
    """A person at the sandbox: the authorization page, login as the test person, consent; returns the
    redirect back to the service (with code and state)."""
    page = await http.get(authorization_url)
    if page.status_code != 200:
        raise RuntimeError(f"authorization page: {page.status_code} {page.text[:300]}")
    auth_id = _auth_id(page.text)
    login = await http.post(f"{sandbox}/sandbox/login", data={"auth_id": auth_id, "oid": PERSON_OID})
    if login.status_code != 200:
        raise RuntimeError(f"sandbox login: {login.status_code} {login.text[:300]}")
    consent = await http.post(f"{sandbox}/sandbox/consent", data={"auth_id": auth_id, "decision": "allow"})
    if consent.status_code != 302:
        raise RuntimeError(f"sandbox consent: {consent.status_code} {consent.text[:300]}")
    return consent.headers["location"]


async def sign_ins_through_service(links: list[str], sandbox: str, clients: int) -> dict[str, Any]:
    """Each link's whole round trip as a browser makes it; the outcome page must say it is confirmed."""
    queue = list(links)
    latencies: list[float] = []
    outcomes: dict[str, int] = {}

    async def loop() -> None:
        async with httpx.AsyncClient(timeout=120) as http:
            while queue:
                link = queue.pop()
                http.cookies.clear()  # a fresh browser per subscriber
                t0 = time.perf_counter()
                start = await http.get(f"{link}/start")
                if start.status_code != 303:
                    raise RuntimeError(f"/start: {start.status_code} {start.text[:300]}")
                back = await _at_sandbox(http, start.headers["location"], sandbox)
                returned = await http.get(back)
                if returned.status_code != 303:
                    raise RuntimeError(f"/v/callback: {returned.status_code} {returned.text[:300]}")
                result = await http.get(urllib.parse.urljoin(back, returned.headers["location"]))
                latencies.append(time.perf_counter() - t0)
                kind = (
                    "confirmed"
                    if result.status_code == 200 and "Данные подтверждены" in result.text
                    else f"other ({result.status_code})"
                )
                outcomes[kind] = outcomes.get(kind, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    return {"elapsed": time.perf_counter() - started, "latencies": latencies, "outcomes": outcomes}


async def sign_ins_bare(
    identity: IdentitySettings, redirect_uri: str, sandbox: str, count: int, clients: int
) -> dict[str, Any]:
    """The same ESIA requests by the service's own ESIA client, with no service: sign the authorization
    URL, the person's three steps at the sandbox, then the token exchange and the person's data."""
    numbers = itertools.count()
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=120) as http:
        provider = build_identity_provider(identity, http)

        async def loop() -> None:
            async with httpx.AsyncClient(timeout=120) as browser:
                while next(numbers) < count:
                    t0 = time.perf_counter()
                    started = await provider.start(redirect_uri=redirect_uri)
                    back = await _at_sandbox(browser, started.authorization_url, sandbox)
                    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(back).query))
                    await provider.finish(
                        code=query["code"],
                        returned_state=query["state"],
                        started=started,
                        redirect_uri=redirect_uri,
                    )
                    latencies.append(time.perf_counter() - t0)

        began = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - began
        await provider.close()
    return {"elapsed": elapsed, "latencies": latencies}


# --- the run --------------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


async def inserts_by_table(pg: asyncpg.Connection) -> dict[str, int]:
    """Rows in each table one case open writes to (counted: the statistics counters lag by seconds)."""
    return {
        table: int(await pg.fetchval(f"select count(*) from verification.{table}")) for table in CASE_TABLES
    }


async def template_rows(pg: asyncpg.Connection, case_id: uuid.UUID) -> list[tuple[str, list[str], list[Any]]]:
    """What opening `case_id` wrote, table by table (timeline ids are left to their sequence)."""
    found: list[tuple[str, list[str], list[Any]]] = []
    for table, where in CASE_TABLES.items():
        key: Any = case_id if table in ("cases", "links", "case_timeline") else str(case_id)
        for row in await pg.fetch(f"select * from verification.{table} where {where}", key):
            values = dict(row)  # iterating a Record gives its values, a dict its columns
            columns = [c for c in values if not (table == "case_timeline" and c == "id")]
            found.append((table, columns, [values[c] for c in columns]))
    return found


async def measure(args: Any, work: Path) -> str:
    started = time.perf_counter()
    quick = bool(args.quick)
    postgres = EmbeddedPostgres(work / "postgres").start()
    nats_server = EmbeddedNats(work / "nats").start()
    key = GostPrivateKey.generate()
    (work / "client-key.pem").write_text(key.to_pem())
    (work / "client-cert.pem").write_text(to_pem("CERTIFICATE", self_signed_certificate(key, CLIENT_ID)))
    sandbox_port, port = free_port(), free_port()
    sandbox_url, base = f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{port}"
    identity = IdentitySettings(
        identity_mode="esia",
        esia_base_url=sandbox_url,
        esia_client_id=CLIENT_ID,
        esia_signer="gost",
        esia_private_key_path=str(work / "client-key.pem"),
        esia_certificate_path=str(work / "client-cert.pem"),
        esia_jwks_url=f"{sandbox_url}/jwks",
    )
    admin = secrets.token_urlsafe(24)
    env = service_env(
        ABONENT_DATABASE_URL=postgres.url,
        ABONENT_NATS_URL=nats_server.url,
        ABONENT_DATA_KEYS=f"k1:{crypto.new_key()}",
        ABONENT_DATA_KEY_ID="k1",
        ABONENT_INDEX_KEY=crypto.new_key(),
        ABONENT_ADMIN_TOKEN=admin,
        ABONENT_VERIFICATION_PORT=str(port),
        ABONENT_VERIFICATION_PUBLIC_URL=base,
        ABONENT_LOG_LEVEL="WARNING",
        ABONENT_LOG_FORMAT="text",
        ABONENT_IDENTITY_MODE="esia",
        ABONENT_ESIA_BASE_URL=sandbox_url,
        ABONENT_ESIA_CLIENT_ID=CLIENT_ID,
        ABONENT_ESIA_SIGNER="gost",
        ABONENT_ESIA_PRIVATE_KEY_PATH=str(work / "client-key.pem"),
        ABONENT_ESIA_CERTIFICATE_PATH=str(work / "client-cert.pem"),
        ABONENT_ESIA_JWKS_URL=f"{sandbox_url}/jwks",
    )
    sandbox_log, log = work / "sandbox.log", work / "verification.log"
    with sandbox_log.open("ab") as out:
        sandbox = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.verification.sandbox_idp",
            "--port",
            str(sandbox_port),
            "--client",
            f"{CLIENT_ID}={work / 'client-cert.pem'}",
            env=env,
            stdout=out,
            stderr=out,
        )
    proc = start_service("verification", env, log)
    rows: list[str] = []
    notes: list[str] = []
    try:
        await wait_ready(base, proc, log, timeout_s=180)  # generous: a loaded machine starts slowly
        async with httpx.AsyncClient() as probe:
            for _ in range(300):
                if sandbox.returncode is not None:
                    raise SystemExit("sandbox exited:\n" + tail(sandbox_log))
                try:
                    if (await probe.get(f"{sandbox_url}/health/ready")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        pg = await asyncpg.connect(postgres.url)
        postgres_pid = postgres.proc.pid if postgres.proc is not None else 0
        meter = CpuMeter({"service": proc.pid, "postgres+": postgres_pid})

        # 1. cases through the API, then the same rows by bare asyncpg
        count = CASES_QUICK if quick else CASES
        before = await inserts_by_table(pg)
        meter.start()
        async with flame_graph(proc.pid, "verification-cases", enabled=not args.no_profile) as cases_flame:
            api = await support_load(open_cases, base, admin, count, CASE_CLIENTS, CASES_DEADLINE_S)
        meter.stop()
        api_cpu = meter.per(len(api["latencies"]))
        opened = len(api["latencies"])
        if opened == 0:
            raise SystemExit(f"no case opened: {api['refused']}\n" + tail(log))
        written = {t: n - before.get(t, 0) for t, n in (await inserts_by_table(pg)).items()}
        first = uuid.UUID(
            await pg.fetchval("select id::text from verification.cases order by opened_at limit 1")
        )
        template = await template_rows(pg, first)
        await pg.execute("create schema bench")
        for table in CASE_TABLES:
            await pg.execute(f"create table bench.{table} (like verification.{table} including all)")
        bare = await support_load(insert_cases_bare, postgres.url, template, first, opened, CASE_CLIENTS)
        bare_cpu = f"postgres backends {bare['backend_cpu'] / opened * 1000:.2f} ms"
        api_rate, bare_rate = opened / api["elapsed"], opened / bare["elapsed"]
        rows.append(
            f"| cases opened, `POST /v1/cases` from {CASE_CLIENTS} clients ({opened:,} cases) |"
            f" {api_rate:.0f}/s, p50 {ms(pct(api['latencies'], 0.5))} ms,"
            f" p99 {ms(pct(api['latencies'], 0.99))} ms |"
            f" the same {len(template)} rows per case in one transaction by bare asyncpg: {bare_rate:.0f}/s,"
            f" p99 {ms(pct(bare['latencies'], 0.99))} ms | {api_rate / bare_rate:.2f}× |"
        )
        per_case = ", ".join(
            f"{t} {n / opened:.1f}" for t, n in sorted(written.items()) if n / opened >= 0.05
        )
        notes.append(f"Rows the API wrote per case: {per_case}; refused: {api['refused'] or 'none'}.")
        notes.append(f"CPU per case: API {api_cpu}; bare SQL {bare_cpu} (load process not counted).")

        # 2. sign-in round trips through the service, then the same ESIA requests without it
        sign_ins = SIGN_INS_QUICK if quick else SIGN_INS
        meter = CpuMeter({"service": proc.pid, "postgres+": postgres_pid, "sandbox": sandbox.pid})
        meter.start()
        async with flame_graph(
            proc.pid, "verification-sign-in", enabled=not args.no_profile
        ) as sign_in_flame:
            through = await support_load(
                sign_ins_through_service, api["links"][:sign_ins], sandbox_url, SIGN_IN_CLIENTS
            )
        meter.stop()
        through_cpu = meter.per(sign_ins)
        confirmed = await pg.fetchval("select count(*) from verification.cases where status = 'confirmed'")
        # No service here: the ESIA client's signing runs in the load process, which is not metered.
        meter = CpuMeter({"postgres+": postgres_pid, "sandbox": sandbox.pid})
        meter.start()
        alone = await support_load(
            sign_ins_bare, identity, f"{base}/v/callback", sandbox_url, sign_ins, SIGN_IN_CLIENTS
        )
        meter.stop()
        alone_cpu = meter.per(sign_ins)
        svc_rate, alone_rate = sign_ins / through["elapsed"], sign_ins / alone["elapsed"]
        rows.append(
            f"| sign-in round trips (link → ESIA sandbox → result page), {SIGN_IN_CLIENTS} subscribers at"
            f" a time ({sign_ins}) | {svc_rate:.2f}/s, p50 {ms(pct(through['latencies'], 0.5))} ms |"
            f" the same 7 ESIA requests by the ESIA client alone: {alone_rate:.2f}/s,"
            f" p50 {ms(pct(alone['latencies'], 0.5))} ms | {svc_rate / alone_rate:.2f}× |"
        )
        notes.append(
            f"Sign-in outcomes: {through['outcomes']}; cases confirmed in PostgreSQL: {confirmed}."
            f" CPU per round trip: through the service {through_cpu}; ESIA client alone {alone_cpu}."
        )
        for flame, what in ((cases_flame, "case opening"), (sign_in_flame, "the sign-in round trip")):
            if note := flame_note(flame, what):
                notes.append(note)
        await pg.close()
    finally:
        await stop_service(proc)
        if sandbox.returncode is None:
            sandbox.terminate()
            await sandbox.wait()
        nats_server.stop()
        postgres.stop()
    notes.append(
        f"Whole run {time.perf_counter() - started:.0f} s. Load from a separate process; the service, the"
        " sandbox ESIA, PostgreSQL and NATS each their own process; loopback only."
    )
    return "\n".join(
        ["| path | service | baseline in the same run | ratio |", "|---|---|---|---|", *rows, "", *notes]
    )


async def support_load(target: Any, *args: Any) -> dict[str, Any]:
    """`target(*args)` in the load process: its CPU is neither the service's nor this process's."""
    result: dict[str, Any] = await in_load_process(target, *args)
    return result


async def main(argv: list[str] | None = None) -> int:
    args = bench_args(__doc__ or "", argv)
    with tempfile.TemporaryDirectory(prefix="abonent-bench-") as tmp:
        body = await measure(args, Path(tmp))
    report("Verification: cases opened and sign-in round trips", body, args)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
