"""A bulk upload survives its process: the verification service (its own process) is killed mid-job and
started again; the job completes from its last committed chunk with the right report and no event twice."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from support.corporate_bulk import put_on_contract
from support.harness import TEST_ADMIN_TOKEN, settings_env, spawn, stop_process, wait_ready_blocking
from support.polling import until
from support.verification import MATCH_CASE

from services.common.crypto import DataProtector
from services.common.embedded import free_port
from services.common.settings import Settings
from services.verification.corporate import store
from services.verification.corporate.bulk import CHUNK_ROWS

ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}
ROWS = CHUNK_ROWS + CHUNK_ROWS // 2  # two chunks: the first commits, the second is cut off
EMPLOYEE = {k: v for k, v in MATCH_CASE.items() if k not in ("msisdn", "reason", "lang", "tz")}
HEADER = "number,kind,device_type,device_name,imei," + ",".join(EMPLOYEE)


def luhn(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return body + str((10 - total % 10) % 10)


def number(i: int) -> str:
    return f"+7916{6000000 + i:07d}"


def upload_file() -> tuple[bytes, set[int], set[int]]:
    """(CSV, rows in error, employee rows): every 100th row a bad IMEI; an employee row in each chunk."""
    lines, errors, employees = [HEADER], set(), {10, CHUNK_ROWS + 10}
    blank = "," * (len(EMPLOYEE) - 1)
    for i in range(1, ROWS + 1):
        imei = luhn(f"35{i:012d}")
        if i in employees:
            person = {**EMPLOYEE, "passport_number": f"{i:06d}"}
            lines.append(f"{number(i)},employee,,,," + ",".join(person.values()))
        elif i % 100 == 0:
            lines.append(f"{number(i)},device,tracker,GPS,{imei[:-1]}{(int(imei[-1]) + 1) % 10},{blank}")
            errors.add(i)
        else:
            lines.append(f"{number(i)},device,tracker,GPS {i},{imei},{blank}")
    return ("\n".join(lines) + "\n").encode(), errors, employees


def start(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = settings_env(
        settings,
        ABONENT_VERIFICATION_PORT=str(port),
        ABONENT_VERIFICATION_PUBLIC_URL=f"http://127.0.0.1:{port}",
        # Case opening never reaches a sign-in here; an OIDC provider is the one that needs no keys.
        ABONENT_IDENTITY_MODE="oidc",
        ABONENT_OIDC_DISCOVERY_URL="http://127.0.0.1:9/.well-known/openid-configuration",
        ABONENT_OIDC_CLIENT_ID="test",
    )
    proc = spawn(["-m", "services.cli", "run", "verification", "--migrate"], env, log)
    wait_ready_blocking(f"http://127.0.0.1:{port}", proc, log, what="verification")
    return proc


async def test_a_job_cut_off_by_a_killed_process_completes_after_restart_without_duplicates(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "verification.log"
    proc = await asyncio.to_thread(start, settings, port, log)
    blocker: asyncpg.Connection | None = None
    try:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            made = await http.post(
                "/v1/companies",
                json={"name": "ПАО Сбербанк", "inn": "7707083893", "ogrn": "1027700132195"},
                headers=ADMIN,
            )
            assert made.status_code == 201, made.text
            company = made.json()["id"]
            client = (
                await http.post(f"/v1/companies/{company}/clients", json={"name": "HR"}, headers=ADMIN)
            ).json()
            await put_on_contract(
                db,
                DataProtector.from_settings(settings),
                uuid.UUID(company),
                [number(i) for i in range(1, ROWS + 1)],
            )
            basic = base64.b64encode(f"{client['client_id']}:{client['client_secret']}".encode()).decode()
            token = await http.post(
                "/oauth/token",
                data={"grant_type": "client_credentials"},
                headers={"Authorization": f"Basic {basic}"},
            )
            auth = {"Authorization": f"Bearer {token.json()['access_token']}"}

            # Hold a SIM of the second chunk: the job commits the first chunk, then waits on this lock.
            blocker = await asyncpg.connect(settings.database_url)
            await blocker.execute("begin")
            index = DataProtector.from_settings(settings).blind_index(number(ROWS), store.MSISDN_INDEX)
            await blocker.execute(
                "select 1 from verification.sims s join verification.company_numbers n on n.id = s.number_id"
                " where n.msisdn_index = $1 for update of s",
                index,
            )
            body, errors, employees = upload_file()
            posted = await http.post(
                "/v1/corporate/bulk-uploads", content=body, headers={**auth, "Content-Type": "text/csv"}
            )
            assert posted.status_code == 202, posted.text
            location = posted.headers["location"]

            async def first_chunk_done() -> dict[str, Any] | None:
                job = (await http.get(location, headers=auth)).json()
                return job if job["done"] >= CHUNK_ROWS else None

            cut = await until(first_chunk_done, timeout=120, interval=0.1)
            assert (cut["state"], cut["done"]) == ("running", CHUNK_ROWS), cut
        proc.kill()  # no graceful stop: the second chunk's transaction dies with the process
        await asyncio.to_thread(proc.wait)
        await blocker.execute("rollback")

        proc = await asyncio.to_thread(start, settings, port, log)
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:

            async def finished() -> dict[str, Any] | None:
                job = (await http.get(location, headers=auth)).json()
                return job if job["state"] in ("done", "failed") else None

            job = await until(finished, timeout=120, interval=0.2)
            assert (job["state"], job["total"], job["done"]) == ("done", ROWS, ROWS), job
            assert (job["applied"], job["errors"], job["unchanged"]) == (
                ROWS - len(errors),
                len(errors),
                0,
            ), job
            report = (await http.get(job["report_url"], headers=auth)).text.splitlines()[1:]
            assert {int(line.split(",")[0]) for line in report} == errors
        assert "resumed at row" in log.read_text()
        # Every applied row once: one corpsim.bound per SIM, one verification case per employee row.
        events = await db.fetch("select payload from verification.outbox where subject = 'corpsim.bound'")
        assert len(events) == ROWS - len(errors)
        bound = await db.fetchval(
            "select count(*) from verification.sims"
            " where status in ('pending_submission', 'pending_employee_confirmation')"
        )
        assert bound == ROWS - len(errors)
        cases = await db.fetchval("select count(*) from verification.cases where reason = 'corporate_sim'")
        assert cases == len(employees)
        links = await db.fetchval(
            "select count(*) from verification.outbox where subject = 'verification.link_issued'"
        )
        assert links == len(employees)
    finally:
        if blocker is not None:
            await blocker.close()
        # SIGTERM, then SIGKILL if its graceful stop overruns (a loaded machine drains events slowly).
        await asyncio.to_thread(stop_process, proc)
