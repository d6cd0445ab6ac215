"""A crash between the provider call and its commit: at most one message, never two (engine.py's rule)."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import uuid
import zoneinfo
from pathlib import Path

import asyncpg
import pytest
from fakes.fake_sms_ru import running_sms_ru
from support.harness import migrate_service, settings_env, spawn
from support.polling import until

from services.common import bus as busmod
from services.common.embedded import free_port
from services.common.events import CallbackRequested, VerificationSuspensionDue, encode_event
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


def far_quiet_hours() -> dict[str, str]:
    """A one-minute quiet window 12 hours away in Moscow: the test's messages go at once, day or night."""
    far = dt.datetime.now(zoneinfo.ZoneInfo("Europe/Moscow")) + dt.timedelta(hours=12)
    return {
        "ABONENT_NOTIFY_QUIET_START": far.strftime("%H:%M"),
        "ABONENT_NOTIFY_QUIET_END": (far + dt.timedelta(minutes=1)).strftime("%H:%M"),
    }


async def test_a_crash_after_a_request_with_several_sms_sends_none_of_them_again(
    settings: Settings, bus: busmod.Bus, tmp_path: Path
) -> None:
    """The same rule when one SMS.ru request carried several SMS: every attempt it carried becomes
    unknown, and none is sent again."""
    await migrate_service(settings, "notifier")
    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": "notifier"})
    log = tmp_path / "notifier.log"
    now = dt.datetime.now(dt.UTC)
    events = [
        CallbackRequested(
            callback_id=uuid.uuid4(),
            site_key="shop",
            state="requested",
            occurred_at=now,
            phone=f"+7916555{i:04d}",
            visitor_tz="Europe/Moscow",
            lang="ru",
            promised_earliest=now + dt.timedelta(minutes=5),
            promised_latest=now + dt.timedelta(minutes=30),
            promise_kind="asap",
        )
        # Two per consumer lane (four lanes): a lane commits its attempts at once, so the first sender
        # pass - the one that crashes - claims at least two, and sends them in one request.
        for i in range(8)
    ]
    try:
        async with running_sms_ru() as (fake, url):
            sms_ru = {
                "ABONENT_NOTIFY_CHANNELS": "sms_ru,sandbox",
                "ABONENT_SMS_RU_URL": url,
                "ABONENT_SMS_RU_API_ID": fake.api_id,
                "ABONENT_SMS_RECEIPT_SECRET": "receipt-secret",
                **far_quiet_hours(),
            }
            # Published before the notifier starts: one fetched batch.
            for event in events:
                await bus.publish(event.SUBJECT, encode_event(event), str(event.event_id))
            crashing = notifier_process(
                settings, log, ABONENT_FAILPOINTS="notifier.send.after_provider", **sms_ru
            )

            async def died() -> bool:
                return crashing.poll() is not None

            await until(died, timeout=60)
            assert crashing.returncode == -9, log.read_text()
            sent_before = sorted(s.phone for s in fake.sent)
            assert set(sent_before) <= {e.phone.lstrip("+") for e in events}
            assert fake.numbers_per_request == [len(sent_before)]  # one request ...
            assert len(sent_before) >= 2  # ... carrying several SMS
            in_flight = await conn.fetchval("select count(*) from attempts where state = 'in_flight'")
            assert in_flight == len(sent_before)

            restarted = notifier_process(settings, log, **sms_ru)
            try:

                async def settled() -> bool:
                    states = [r["state"] for r in await conn.fetch("select state from attempts")]
                    return len(states) == len(events) and "in_flight" not in states and "ready" not in states

                await until(settled, timeout=90)
                # Whatever the crashed request carried is unknown; anything it had not claimed went later.
                unknown = await conn.fetchval("select count(*) from attempts where state = 'unknown'")
                assert unknown == len(sent_before)
                await asyncio.sleep(3)  # every chance to (wrongly) send again
                phones = sorted(s.phone for s in fake.sent)
                assert phones == sorted(e.phone.lstrip("+") for e in events)  # each number once
                assert await conn.fetchval("select count(*) from attempts") == len(events)
            finally:
                restarted.terminate()
                await asyncio.to_thread(restarted.wait, 20)
    finally:
        await conn.close()
