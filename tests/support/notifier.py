"""Notifier test helpers: a harness over the in-process app (clock, timers, tables) and event factories."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import httpx
import msgspec
from litestar import Litestar
from support.harness import TEST_ADMIN_TOKEN
from support.polling import until

from services.common import bus as busmod
from services.common.clock import ManualClock
from services.common.events import (
    CallbackDialing,
    CallbackFailed,
    CallbackRequested,
    CallbackScheduled,
    Event,
    VerificationLinkIssued,
    encode_event,
)
from services.common.web import Runtime
from services.notifier.app import NotifierContext
from services.notifier.engine import Notifier

# A Monday, 12:00 in Moscow.
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
PHONE = "+79161234567"
BEARER = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}


class Harness:
    """Drives one notifier: publish events, move its clock, run its timers, read its tables."""

    def __init__(
        self,
        app: Litestar,
        client: httpx.AsyncClient,
        bus: busmod.Bus,
        conn: asyncpg.Connection,
        clock: ManualClock,
    ) -> None:
        self.app = app
        self.client = client
        self.bus = bus
        self.conn = conn
        self.clock = clock

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    @property
    def context(self) -> NotifierContext:
        context = self.runtime.extras["notifier_context"]
        assert isinstance(context, NotifierContext)
        return context

    @property
    def notifier(self) -> Notifier:
        return self.context.require()

    async def publish(self, event: Event, msg_id: str | None = None) -> None:
        await self.bus.publish(event.SUBJECT, encode_event(event), msg_id or str(event.event_id))

    async def advance(self, by: dt.timedelta) -> None:
        """Move the clock and run what fell due (timers, then sends)."""
        self.clock.advance(by)
        await self.tick()

    async def tick(self) -> None:
        await self.runtime.scheduler.run_once()
        sender = self.context.sender
        assert sender is not None
        await sender.run_once()

    async def messages(self, purpose: str | None = None) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            "select * from messages where $1::text is null or purpose = $1 order by occurred_at, created_at",
            purpose,
        )

    async def message(self, purpose: str, *states: str) -> asyncpg.Record:
        """The one message of `purpose`, once it reached one of `states`."""

        async def reached() -> asyncpg.Record | None:
            rows = await self.messages(purpose)
            return rows[0] if len(rows) == 1 and (not states or rows[0]["state"] in states) else None

        found: asyncpg.Record = await until(reached)
        return found

    async def timeline(self, message_id: uuid.UUID) -> list[str]:
        rows = await self.conn.fetch(
            "select what from timeline where message_id = $1 order by id", message_id
        )
        return [r["what"] for r in rows]

    async def inbox(self, address: str | None = None) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            "select * from sandbox_messages where $1::text is null or address = $1 order by id", address
        )

    async def attempts(self, message_id: uuid.UUID) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            "select * from attempts where message_id = $1 order by created_at", message_id
        )

    async def bind_sandbox_chat(self, phone: str) -> None:
        response = await self.client.post("/dev/inbox/bind", data={"phone": phone}, headers=BEARER)
        assert response.status_code in (200, 303), response.text
        assert (
            await self.conn.fetchval("select count(*) from bindings where chat_id = $1", "chat:" + phone) == 1
        )

    async def receipt(self, provider_message_id: str, status: str = "delivered") -> None:
        response = await self.client.post(
            "/dev/inbox/receipts",
            data={"provider_message_id": provider_message_id, "status": status},
            headers=BEARER,
        )
        assert response.status_code in (200, 303), response.text

    async def outbox_types(self) -> list[str]:
        rows = await self.conn.fetch("select payload from outbox order by seq")
        return [msgspec.json.decode(r["payload"])["type"] for r in rows]


# --- events ---------------------------------------------------------------------------------------------


def requested(
    callback_id: uuid.UUID,
    *,
    phone: str = PHONE,
    at: dt.datetime = T0,
    tz: str = "Europe/Moscow",
    lang: str = "ru",
) -> CallbackRequested:
    return CallbackRequested(
        callback_id=callback_id,
        site_key="shop",
        state="requested",
        occurred_at=at,
        phone=phone,
        visitor_tz=tz,
        lang=lang,
        promised_earliest=at + dt.timedelta(minutes=5),
        promised_latest=at + dt.timedelta(minutes=15),
        promise_kind="asap",
        page_url="https://shop.example/contact",
    )


def rescheduled(callback_id: uuid.UUID, *, at: dt.datetime, due: dt.datetime) -> CallbackScheduled:
    return CallbackScheduled(
        callback_id=callback_id,
        site_key="shop",
        state="scheduled",
        occurred_at=at,
        due_at=due,
        promised_earliest=due,
        promised_latest=due + dt.timedelta(minutes=10),
        reason="rescheduled",
    )


def dialing(callback_id: uuid.UUID, *, at: dt.datetime) -> CallbackDialing:
    return CallbackDialing(
        callback_id=callback_id, site_key="shop", state="dialing", occurred_at=at, attempt=1
    )


def failed(callback_id: uuid.UUID, *, at: dt.datetime, phone: str = PHONE) -> CallbackFailed:
    return CallbackFailed(
        callback_id=callback_id,
        site_key="shop",
        state="failed",
        occurred_at=at,
        phone=phone,
        lang="ru",
        outcome="no_answer",
        attempts=3,
    )


def link_issued(*, phone: str = PHONE, at: dt.datetime = T0, tz: str = "") -> VerificationLinkIssued:
    return VerificationLinkIssued(
        case_id=uuid.uuid4(),
        state="open",
        occurred_at=at,
        msisdn=phone,
        reason="outdated_data",
        deadline=at + dt.timedelta(days=30),
        link="https://verify.example/v/abc123",
        tz=tz,
    )
