"""Transactional outbox: events commit with the state change; a relay publishes them to JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from prometheus_client import Counter, Gauge

from services.common import db
from services.common.bus import Bus
from services.common.events import Event, encode_event
from services.common.failpoints import failpoint

log = logging.getLogger(__name__)

OUTBOX_PUBLISHED = Counter("abonent_outbox_published_total", "Outbox events published", ["schema"])
OUTBOX_PENDING = Gauge("abonent_outbox_pending", "Outbox events not yet published", ["schema"])


async def append(conn: db.Connection, *events: Event) -> None:
    """Record events in the caller's transaction; they are published only if it commits."""
    await conn.executemany(
        "insert into outbox (id, subject, payload) values ($1, $2, $3)",
        [(e.event_id, e.SUBJECT, encode_event(e)) for e in events],
    )


class OutboxRelay:
    """Publishes unsent outbox rows in order. Several relays may run: rows are claimed with SKIP LOCKED."""

    def __init__(
        self,
        pool: db.Pool,
        bus: Bus,
        schema: str,
        database_url: str,
        *,
        poll_interval_s: float = 1.0,
        batch: int = 100,
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.schema = schema
        self.database_url = database_url
        self.poll_interval_s = poll_interval_s
        self.batch = batch
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay:{self.schema}")

    async def stop(self, timeout: float = 10.0) -> None:
        """Flush what is pending (bounded by timeout), then stop."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                log.warning("outbox relay did not flush in time; rows stay for the next relay")
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()

    async def _listen(self) -> None:
        """LISTEN wakes the relay at once; polling remains the fallback when the listener is down."""
        if self._listener is not None and not self._listener.is_closed():
            return
        with contextlib.suppress(Exception):
            self._listener = await asyncpg.connect(self.database_url, timeout=3)
            await self._listener.add_listener(f"abonent_outbox_{self.schema}", lambda *_: self._wake.set())

    async def _run(self) -> None:
        while True:
            await self._listen()
            try:
                sent = await self.publish_batch()
            except Exception as exc:
                log.warning("outbox relay error: %r", exc)
                sent = 0
            if self._stopping.is_set() and sent == 0:
                return
            if sent >= self.batch:
                continue  # more rows are waiting
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    async def publish_batch(self) -> int:
        """Claim a batch, publish each row with Nats-Msg-Id = event id, mark it sent; return rows sent."""
        async with db.transaction(self.pool) as conn:
            rows = await conn.fetch(
                "select id, subject, payload from outbox where published_at is null"
                " order by seq limit $1 for update skip locked",
                self.batch,
            )
            for row in rows:
                try:
                    await self.bus.publish(row["subject"], row["payload"], str(row["id"]))
                except Exception as exc:
                    # Keep the earlier rows' marks; this one (and later ones, for order) wait for a retry.
                    await conn.execute(
                        "update outbox set attempts = attempts + 1, last_error = $2 where id = $1",
                        row["id"],
                        repr(exc)[:500],
                    )
                    log.warning("outbox publish failed, will retry: %r", exc)
                    return 0
                failpoint("relay.after_publish")
                await conn.execute("update outbox set published_at = now() where id = $1", row["id"])
            pending = await conn.fetchval("select count(*) from outbox where published_at is null")
        OUTBOX_PUBLISHED.labels(self.schema).inc(len(rows))
        OUTBOX_PENDING.labels(self.schema).set(pending)
        return len(rows)
