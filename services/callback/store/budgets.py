"""SQL of the intake's guards: advisory locks (the request budgets themselves are read in store/intake.py)."""

from __future__ import annotations

import zlib

from services.common.db import Connection


def lock_key(*parts: str) -> int:
    """The advisory lock (class 1) for a key such as site+address; a collision only makes two keys wait."""
    return zlib.crc32("|".join(parts).encode()) - 2**31


async def lock(conn: Connection, *parts: str) -> None:
    """Serialise concurrent transactions on the same key until the transaction ends."""
    await conn.execute("select pg_advisory_xact_lock($1, $2)", 1, lock_key(*parts))
