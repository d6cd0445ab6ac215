"""Dead letters of every service: list them and replay them onto their subject (`abonent dead-letters`)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import asyncpg

from services.common import db
from services.common.bus import Bus


class ReplayError(Exception):
    """A dead letter cannot be replayed (nothing stored to replay, or no such id)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    schema: str
    id: int
    consumer: str
    subject: str
    event_id: str | None
    payload: bytes | None
    reason: str
    deliveries: int
    created_at: dt.datetime
    replay_count: int
    replayed_at: dt.datetime | None

    @property
    def ref(self) -> str:
        """How people name it on the command line: ids are per service schema."""
        return f"{self.schema}:{self.id}"


async def has_dead_letters(conn: db.Connection) -> bool:
    """True if the connection's schema has the plumbing tables (its service was migrated)."""
    found: bool = await conn.fetchval("select to_regclass('dead_letters') is not null")
    return found


async def find(
    conn: db.Connection,
    schema: str,
    *,
    consumer: str | None = None,
    ids: list[int] | None = None,
    only_not_replayed: bool = False,
    limit: int = 1000,
) -> list[DeadLetter]:
    """Dead letters of the connection's schema, oldest first, filtered as asked."""
    rows = await conn.fetch(
        "select id, consumer, subject, event_id, payload, reason, deliveries, created_at, replay_count,"
        " replayed_at from dead_letters"
        " where ($1::text is null or consumer = $1)"
        "   and ($2::bigint[] is null or id = any($2))"
        "   and (not $3 or replay_count = 0)"
        " order by id limit $4",
        consumer,
        ids,
        only_not_replayed,
        limit,
    )
    return [_letter(schema, r) for r in rows]


def _letter(schema: str, row: asyncpg.Record) -> DeadLetter:
    return DeadLetter(
        schema=schema,
        id=row["id"],
        consumer=row["consumer"],
        subject=row["subject"],
        event_id=row["event_id"],
        payload=row["payload"],
        reason=row["reason"],
        deliveries=row["deliveries"],
        created_at=row["created_at"],
        replay_count=row["replay_count"],
        replayed_at=row["replayed_at"],
    )


async def replay(conn: db.Connection, bus: Bus, letter: DeadLetter) -> None:
    """Republish the stored message so its consumer applies it again; record the replay on the row.

    Every consumer of the subject sees the copy; those that applied the event already find it in their
    inbox and only ack it. The copy gets its own Nats-Msg-Id (JetStream would drop a second message with
    the event id inside its duplicate window); the event id inside the payload is unchanged.
    """
    if letter.payload is None or not letter.subject:
        raise ReplayError(f"{letter.ref}: the message was not stored, nothing to replay")
    event_id = _uuid_or_none(letter.event_id)
    if event_id is not None:
        # A fixed handler gets its whole failure budget again.
        await conn.execute(
            "delete from consumer_failures where consumer = $1 and event_id = $2", letter.consumer, event_id
        )
    await bus.publish_to(
        letter.subject, letter.payload, f"replay:{letter.ref}:{letter.replay_count + 1}", attempts=3
    )
    await conn.execute(
        "update dead_letters set replay_count = replay_count + 1, replayed_at = now() where id = $1",
        letter.id,
    )


def _uuid_or_none(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None
