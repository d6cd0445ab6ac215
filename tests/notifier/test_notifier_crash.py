"""A crash between the provider call and its commit: at most one message, never two (engine.py's rule)."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import uuid
from pathlib import Path

import asyncpg
import pytest
from support.harness import migrate_service, settings_env, spawn
from support.polling import until

from services.common import bus as busmod
from services.common.embedded import free_port
from services.common.events import VerificationSuspensionDue, encode_event
from services.common.settings import Settings

pytestmark = pytest.mark.slow
PHONE = "+79161234567"


def notifier_process(settings: Settings, log: Path, **env: str) -> subprocess.Popen[bytes]:
    extra = {
        "ABONENT_NOTIFIER_PORT": str(free_port()),
        "ABONENT_NOTIFY_SEND_LEASE_S": "2",
        "ABONENT_SCHEDULER_POLL_INTERVAL_S": "0.2",
        **env,
    }
    return spawn(["-m", "services.cli", "run", "notifier"], settings_env(settings, **extra), log)


async def test_a_crash_after_the_provider_call_never_sends_twice(
    settings: Settings, bus: busmod.Bus, tmp_path: Path
) -> None:
    await migrate_service(settings, "notifier")
    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": "notifier"})
    log = tmp_path / "notifier.log"
    try:
        crashing = notifier_process(settings, log, ABONENT_FAILPOINTS="notifier.send.after_provider")
        # Urgent and legally required: goes at once, whatever the time of day the test runs.
        event = VerificationSuspensionDue(
            case_id=uuid.uuid4(),
            state="suspended",
            occurred_at=dt.datetime.now(dt.UTC),
            msisdn=PHONE,
            reason="outdated_data",
            link="https://verify.example/v/restore",
        )
        await bus.publish(event.SUBJECT, encode_event(event), str(event.event_id))

        async def died() -> bool:
            return crashing.poll() is not None

        await until(died, timeout=60)
        assert crashing.returncode == -9, log.read_text()
        # The provider (the sandbox) has the message; our record of the call never committed.
        [received] = await conn.fetch("select * from sandbox_messages")
        assert received["submissions"] == 1
        assert await conn.fetchval("select state from attempts") == "in_flight"

        restarted = notifier_process(settings, log)
        try:

            async def settled() -> str | None:
                state: str | None = await conn.fetchval("select state from attempts")
                return state if state != "in_flight" else None

            assert await until(settled, timeout=90) == "unknown"
            message = await conn.fetchrow("select * from messages")
            assert message["state"] == "unknown"
            whats = [r["what"] for r in await conn.fetch("select what from timeline order by id")]
            assert whats[-1] == "outcome unknown"
            # Give the restarted sender every chance to (wrongly) send again.
            await asyncio.sleep(3)
            assert await conn.fetchval("select count(*) from attempts") == 1
            [still] = await conn.fetch("select * from sandbox_messages")
            assert still["submissions"] == 1
        finally:
            restarted.terminate()
            await asyncio.to_thread(restarted.wait, 20)
    finally:
        await conn.close()
