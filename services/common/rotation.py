"""Key rotation: re-encrypt a service's declared encrypted columns onto the active key, batch by batch."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.common import db
from services.common.crypto import CannotDecrypt, DataProtector

log = logging.getLogger(__name__)

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True, slots=True)
class EncryptedColumn:
    """A bytea column holding DataProtector ciphertexts, as the service encrypts it.

    `context` is the associated-data label the service passes to encrypt/decrypt, and `id_column` the
    (unique, orderable) column whose value is the row id bound into the associated data.
    """

    table: str
    id_column: str
    column: str
    context: str

    def __post_init__(self) -> None:
        # Identifiers cannot be bound as parameters; they come from code, and are checked to be plain names.
        for name in (self.table, self.id_column, self.column):
            if not _IDENTIFIER.fullmatch(name):
                raise ValueError(f"not a plain SQL identifier: {name!r}")

    @property
    def not_under_active_key(self) -> str:
        """SQL: a value not written under the active key, whose header is bound as $2 (its length $1)."""
        return f"{self.column} is not null and substring({self.column} from 1 for $1) is distinct from $2"

    @property
    def label(self) -> str:
        return f"{self.table}.{self.column}"


@dataclass(slots=True)
class RotationCount:
    rotated: int = 0
    failed: int = 0
    # Values still not under the active key after the pass (locked by others, failed, or written meanwhile).
    remaining: int = 0


async def count_not_active(conn: db.Connection, protector: DataProtector, column: EncryptedColumn) -> int:
    prefix = protector.active_prefix
    return int(
        await conn.fetchval(
            f"select count(*) from {column.table} where {column.not_under_active_key}",
            len(prefix),
            prefix,
        )
    )


async def rotate_batch(
    conn: db.Connection,
    protector: DataProtector,
    column: EncryptedColumn,
    *,
    after: Any,
    batch: int,
) -> tuple[Any, int, int]:
    """One batch inside the caller's transaction: (last id seen or None when done, rotated, failed).

    Rows are taken in id order after `after` with FOR UPDATE SKIP LOCKED, so a concurrent writer is not
    blocked and two rotators share the work; a row skipped here is picked up by the next run.
    """
    prefix = protector.active_prefix
    bound = "" if after is None else f" and {column.id_column} > $4"
    params: list[Any] = [len(prefix), prefix, batch] + ([] if after is None else [after])
    records = await conn.fetch(
        f"select {column.id_column} as id, {column.column} as value from {column.table}"
        f" where {column.not_under_active_key}{bound}"
        f" order by {column.id_column} limit $3 for update skip locked",
        *params,
    )
    if not records:
        return None, 0, 0
    updates: list[tuple[Any, bytes]] = []
    failed = 0
    for record in records:
        try:
            fresh = protector.reencrypt(bytes(record["value"]), column.context, record["id"])
        except CannotDecrypt:
            # One unreadable value never stops the rotation; it is counted, logged and left as it is.
            failed += 1
            log.warning("cannot re-encrypt", extra={"column": column.label, "row_id": str(record["id"])})
            continue
        if fresh is not None:
            updates.append((record["id"], fresh))
    if updates:
        await conn.executemany(
            f"update {column.table} set {column.column} = $2 where {column.id_column} = $1",
            updates,
        )
    return records[-1]["id"], len(updates), failed


async def rotate_column(
    pool: db.Pool,
    protector: DataProtector,
    column: EncryptedColumn,
    *,
    batch: int = 500,
    progress: Callable[[EncryptedColumn, RotationCount], None] | None = None,
) -> RotationCount:
    """Re-encrypt every value of `column` not under the active key; each batch is its own transaction.

    Resumable: an interrupted run loses at most its current batch's work, and the next run selects only
    what is still not under the active key.
    """
    count = RotationCount()
    after: Any = None
    while True:
        async with db.transaction(pool) as conn:
            after, rotated, failed = await rotate_batch(conn, protector, column, after=after, batch=batch)
        if after is None:
            break
        count.rotated += rotated
        count.failed += failed
        if progress is not None:
            progress(column, count)
    async with pool.acquire() as conn:
        count.remaining = await count_not_active(conn, protector, column)
    return count
