"""Notifier retention: its own tables are aged out by the scheduler's clock in bounded batches, messages
take their attempts and timeline along, people's choices stay, and a dedupe window shorter than the
stream's max age stops start-up naming the variable."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from typing import Any

import msgspec
import pytest
from support.notifier import T0, Harness
from support.polling import until

from services.common.settings import Settings, SettingsError, load_section
from services.notifier.app import create_app
from services.notifier.settings import NotifierSettings

DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)
# The first retention pass runs when the harness starts (at T0); the next an hour later, at RUN.
RUN = T0 + HOUR + dt.timedelta(minutes=1)


async def add_recipient(harness: Harness) -> uuid.UUID:
    recipient = uuid.uuid4()
    await harness.conn.execute(
        "insert into recipients (id, phone_hash, phone_enc, phone_masked, tz, tz_rule)"
        " values ($1, $2, 'x', '+7916*****67', 'Europe/Moscow', 'event')",
        recipient,
        recipient.bytes,
    )
    return recipient


async def add_message(harness: Harness, recipient: uuid.UUID, updated_at: dt.datetime) -> uuid.UUID:
    message = uuid.uuid4()
    await harness.conn.execute(
        "insert into messages (id, event_id, event_type, occurred_at, recipient_id, tenant, purpose,"
        " category, thread_key, template, template_version, lang, body, urgent, legally_required,"
        " edit_in_place,"
        " channel_order, state, send_at, timing_rule, created_at, updated_at)"
        " values ($1, $2, 'callback.requested.v1', $3, $4, 'shop', 'promise', 'callback', $5, 't', 1, 'ru',"
        " 'text', false, false, false, '{sms}', 'delivered', $3, 'now', $3, $3)",
        message,
        uuid.uuid4(),
        updated_at,
        recipient,
        f"callback:{uuid.uuid4()}",
    )
    await harness.conn.execute(
        "insert into attempts (id, message_id, channel, kind, state, not_before) values"
        " ($1, $2, 'sandbox_sms', 'sms', 'delivered', $3)",
        uuid.uuid4(),
        message,
        updated_at,
    )
    await harness.conn.execute(
        "insert into timeline (message_id, at, what) values ($1, $2, 'queued')", message, updated_at
    )
    return message


async def count(harness: Harness, table: str, where: str = "true", *args: Any) -> int:
    return int(await harness.conn.fetchval(f"select count(*) from {table} where {where}", *args))


async def test_notifier_tables_are_pruned_by_age_and_people_s_choices_stay(harness_factory: Any) -> None:
    own = NotifierSettings()
    harness: Harness = await harness_factory(own)
    just_past, just_inside = dt.timedelta(minutes=2), -dt.timedelta(minutes=2)
    keep_messages = DAY * own.notify_retention_messages_days
    recipient = await add_recipient(harness)
    old = [await add_message(harness, recipient, RUN - keep_messages - just_past) for _ in range(3)]
    recent = await add_message(harness, recipient, RUN - keep_messages - just_inside)
    await harness.conn.execute(
        "insert into opt_outs (recipient_id, category) values ($1, 'callback')", recipient
    )
    await harness.conn.execute(
        "insert into bindings (recipient_id, channel, chat_id, bound_at)"
        " values ($1, 'sandbox_chat', 'c1', $2)",
        recipient,
        RUN - 400 * DAY,
    )
    ages = {
        "early_receipts": HOUR * own.notify_retention_early_receipts_hours,
        "callback_contacts": DAY * own.notify_retention_contacts_days,
        "pending_binds": HOUR * own.notify_retention_pending_binds_hours,
        "binding_log": DAY * own.notify_retention_binding_log_days,
        "sandbox_messages": DAY * own.notify_retention_sandbox_days,
    }
    for offset in (just_past, just_inside):
        await harness.conn.execute(
            "insert into early_receipts (channel, provider_message_id, status, at, received_at)"
            " values ('sms_ru', $1, 'delivered', $2, $2)",
            str(uuid.uuid4()),
            RUN - ages["early_receipts"] - offset,
        )
        await harness.conn.execute(
            "insert into callback_contacts (callback_id, recipient_id, site_key, lang, created_at)"
            " values ($1, $2, 'shop', 'ru', $3)",
            uuid.uuid4(),
            recipient,
            RUN - ages["callback_contacts"] - offset,
        )
        await harness.conn.execute(
            "insert into pending_binds (channel, chat_id, recipient_id, started_at)"
            " values ('sandbox_chat', $1, $2, $3)",
            str(uuid.uuid4()),
            recipient,
            RUN - ages["pending_binds"] - offset,
        )
        await harness.conn.execute(
            "insert into binding_log (recipient_id, channel, chat_id, action, at)"
            " values ($1, 'sandbox_chat', 'c1', 'bound', $2)",
            recipient,
            RUN - ages["binding_log"] - offset,
        )
        await harness.conn.execute(
            "insert into sandbox_messages (idempotency_key, channel, address, body, provider_message_id,"
            " sent_at) values ($1, 'sandbox_sms', '+79161234567', 'b', $2, $3)",
            uuid.uuid4(),
            str(uuid.uuid4()),
            RUN - ages["sandbox_messages"] - offset,
        )

    await harness.advance(RUN - T0)

    async def pruned() -> bool:
        await harness.tick()
        return await count(harness, "messages") == 1 and all(
            [await count(harness, table) == 1 for table in ages]
        )

    await until(pruned)
    assert await count(harness, "messages", "id = $1", recent) == 1
    # Attempts and timeline went with their messages (on delete cascade), the recent one's stayed.
    assert await count(harness, "attempts", "message_id = any($1::uuid[])", old) == 0
    assert await count(harness, "timeline", "message_id = any($1::uuid[])", old) == 0
    assert await count(harness, "attempts", "message_id = $1", recent) == 1
    assert await count(harness, "timeline", "message_id = $1", recent) == 1
    # The person, their opt-out and their chat are choices, not history: never aged out.
    assert await count(harness, "recipients") == 1
    assert await count(harness, "opt_outs") == 1
    assert await count(harness, "bindings") == 1


def test_a_message_window_not_longer_than_the_stream_stops_start_up(settings: Settings) -> None:
    week = msgspec.structs.replace(settings, stream_max_age_days=7)
    with pytest.raises(SettingsError, match="ABONENT_NOTIFY_RETENTION_MESSAGES_DAYS"):
        create_app(week, NotifierSettings(notify_retention_messages_days=7))
    create_app(week, NotifierSettings(notify_retention_messages_days=8))  # longer: fine


@pytest.mark.parametrize(
    "variable", ["ABONENT_NOTIFY_RETENTION_SANDBOX_DAYS", "ABONENT_NOTIFY_RETENTION_EARLY_RECEIPTS_HOURS"]
)
def test_notifier_retention_settings_must_be_positive(variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_section(NotifierSettings, {**os.environ, variable: "0"})
