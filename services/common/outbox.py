"""Transactional outbox: events commit with the state change; relays publish them to JetStream on a lease."""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg
from prometheus_client import Counter, Gauge

from services.common import db
from services.common.bus import Bus
from services.common.events import Event, encode_event
from services.common.failpoints import failpoint
from services.common.logging import mask_pii
from services.common.wakeup import NotifyWakeup, worker_id

log = logging.getLogger(__name__)

OUTBOX_PUBLISHED = Counter("abonent_outbox_published_total", "Outbox events published", ["schema"])
OUTBOX_PENDING = Gauge("abonent_outbox_pending", "Outbox events not yet published", ["schema"])


async def append(conn: db.Connection, *events: Event) -> None:
    """Record events in the caller's transaction; they are published only if it commits."""
    await conn.executemany(
        "insert into outbox (id, subject, payload) values ($1, $2, $3)",
        [(e.event_id, e.SUBJECT, encode_event(e)) for e in events],
    )


def as_columns(*events: Event) -> tuple[list[uuid.UUID], list[str], list[bytes]]:
    """Events as three parallel arrays (ids, subjects, payloads) for `insert_from_columns`."""
    return [e.event_id for e in events], [e.SUBJECT for e in events], [encode_event(e) for e in events]


def insert_from_columns(ids: str, subjects: str, payloads: str) -> str:
    """The outbox insert of `as_columns` arrays bound at the caller's placeholders (e.g. "$7"), for a caller
    that writes its change and its events in one statement (a data-modifying CTE) instead of two round
    trips; the caller may append a `where` (e.g. only if its own insert happened). Rows keep array order."""
    return (
        "insert into outbox (id, subject, payload) select e.id, e.subject, e.payload"
        f" from unnest({ids}::uuid[], {subjects}::text[], {payloads}::bytea[]) as e (id, subject, payload)"
    )


# How long a row stays leased to the process that committed it and publishes it itself (publish_claimed):
# past this, any relay takes it, so a publisher that died delays its events by about this much.
DIRECT_CLAIM_S = 10.0


async def publish_claimed(
    pool: db.Pool, bus: Bus, holder: str, rows: list[tuple[uuid.UUID, str, bytes]], schema: str
) -> int:
    """Publish outbox rows (id, subject, payload) the caller just committed already claimed by `holder`
    (claimed_by/claimed_until set by its insert), then mark them published; returns rows published.

    For events whose latency matters: they skip the NOTIFY, the relay's claim and its queue. The rows are
    leased, so no relay sends them meanwhile; a failure gives them back to the relays at once, and a crash
    leaves them to the relays once the lease lapses (JetStream drops a resend by its Nats-Msg-Id).
    """
    published: list[uuid.UUID] = []
    error: Exception | None = None
    for event_id, subject, payload in rows:
        try:
            await bus.publish(subject, payload, str(event_id), attempts=2)
        except Exception as exc:
            error = exc
            break
        published.append(event_id)
    async with pool.acquire() as conn:
        if published:
            await mark_published(conn, published)
        if error is not None:
            unpublished = [r[0] for r in rows[len(published) :]]
            await release_failed(conn, holder, unpublished[0], unpublished[1:], repr(error))
            log.warning("direct publish failed; left to the relay: %r", error)
    OUTBOX_PUBLISHED.labels(schema).inc(len(published))
    return len(published)


async def claim_batch(conn: db.Connection, relay_id: str, limit: int, lease_s: float) -> list[asyncpg.Record]:
    """Lease up to `limit` unpublished rows nobody holds (or whose holder's lease ran out), oldest first.

    One statement, so the row locks last only as long as it runs; the lease is what keeps other relays
    off the rows while this one publishes.
    """
    rows = await conn.fetch(
        "update outbox set claimed_until = now() + make_interval(secs => $3), claimed_by = $1"
        " where id in (select id from outbox where published_at is null"
        "   and (claimed_until is null or claimed_until < now())"
        "   order by seq limit $2 for update skip locked)"
        " returning id, subject, payload, seq",
        relay_id,
        limit,
        lease_s,
    )
    return sorted(rows, key=lambda r: r["seq"])


async def mark_published(conn: db.Connection, ids: list[uuid.UUID]) -> None:
    await conn.execute("update outbox set published_at = now() where id = any($1::uuid[])", ids)


async def release_failed(
    conn: db.Connection, relay_id: str, failed: uuid.UUID, behind: list[uuid.UUID], error: str
) -> None:
    """Give back rows this relay claimed but did not publish, so any relay may retry them at once.

    Only the row whose publish failed has the attempt and error recorded; the rows behind it were kept
    back (a batch is published in seq order) and were never tried.
    """
    await conn.execute(
        "update outbox set claimed_until = null, attempts = attempts + (id = $2)::int,"
        " last_error = case when id = $2 then $4 else last_error end"
        " where id = any($3::uuid[]) and claimed_by = $1 and published_at is null",
        relay_id,
        failed,
        [failed, *behind],
        # Stored where logging's masking never looks: error texts can quote personal data.
        mask_pii(error[:500]),
    )


async def count_pending(conn: db.Connection) -> int:
    pending: int = await conn.fetchval("select count(*) from outbox where published_at is null")
    return pending


class OutboxRelay:
    """Publishes unsent outbox rows; any number of relays may share one outbox.

    A relay leases a batch (claimed_until) in one short statement, publishes it with no transaction or
    lock held (Nats-Msg-Id = event id), then marks the published rows. A relay that dies leaves its lease
    to expire; another relay then claims and republishes those rows, and JetStream drops the copies it
    already has because the republish falls inside its duplicate window (lease ≪ 2 min). The guarantee
    is stated in services/common/events.py: at least once, no order promised.
    """

    def __init__(
        self,
        pool: db.Pool,
        bus: Bus,
        schema: str,
        database_url: str,
        *,
        poll_interval_s: float = 1.0,
        batch: int = 100,
        lease_s: float = 30.0,
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.schema = schema
        self.database_url = database_url
        self.poll_interval_s = poll_interval_s
        self.batch = batch
        self.lease_s = lease_s
        # Names the holder of a lease (for operators reading the outbox, and for releasing our own rows).
        self.relay_id = worker_id()
        self._wakeup = NotifyWakeup(database_url, f"abonent_outbox_{schema}", poll_interval_s)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay:{self.schema}")

    async def stop(self, timeout: float = 10.0) -> None:
        """Flush what is pending (bounded by timeout), then stop."""
        late = "outbox relay did not flush in time; its leased rows go to the next relay"
        await self._wakeup.stop(self._task, timeout, late)

    async def _run(self) -> None:
        while True:
            await self._wakeup.listen()
            # Cleared before the pass: a NOTIFY that arrives during it triggers the next one at once.
            self._wakeup.clear()
            try:
                sent = await self.publish_batch()
            except Exception as exc:
                log.warning("outbox relay error: %r", exc)
                sent = 0
            if self._wakeup.stopping.is_set() and sent == 0:
                return
            if sent >= self.batch:
                continue  # more rows are waiting
            await self._wakeup.wait()

    async def publish_batch(self) -> int:
        """Lease a batch, publish it in seq order outside any transaction, mark it; return rows sent."""
        async with self.pool.acquire() as conn:
            rows = await claim_batch(conn, self.relay_id, self.batch, self.lease_s)
        if not rows:
            return 0
        published: list[uuid.UUID] = []
        error: Exception | None = None
        for row in rows:
            try:
                # Few attempts: a failed row is released and retried by the relay loop, not held here.
                await self.bus.publish(row["subject"], row["payload"], str(row["id"]), attempts=3)
            except Exception as exc:
                error = exc
                break
            published.append(row["id"])
            failpoint("relay.after_publish")
        async with self.pool.acquire() as conn:
            if published:
                await mark_published(conn, published)
            if error is not None:
                unpublished = [r["id"] for r in rows[len(published) :]]
                await release_failed(conn, self.relay_id, unpublished[0], unpublished[1:], repr(error))
                log.warning("outbox publish failed, will retry: %r", error)
            pending = await count_pending(conn)
        OUTBOX_PUBLISHED.labels(self.schema).inc(len(published))
        OUTBOX_PENDING.labels(self.schema).set(pending)
        return len(published)
