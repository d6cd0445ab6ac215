"""Migrations: ordered, recorded, and applied once when several processes start together."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from support.harness import settings_env, spawn

from services.common.settings import Settings


async def test_two_processes_migrating_at_once_apply_each_migration_once(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    env = settings_env(settings)
    procs = [spawn(["-m", "services.cli", "migrate"], env, tmp_path / f"migrate{i}.log") for i in range(2)]
    codes = await asyncio.gather(*(asyncio.to_thread(p.wait, 60) for p in procs))
    logs = "\n".join((tmp_path / f"migrate{i}.log").read_text() for i in range(2))
    assert codes == [0, 0], logs
    for schema in ("callback", "verification", "notifier"):
        versions = await db.fetch(f"select version from {schema}.schema_migrations")
        names = [r["version"] for r in versions]
        assert len(names) == len(set(names))
        assert "plumbing/0001_plumbing" in names
    # Both processes reported; together they applied each migration exactly once.
    applied = [line for line in logs.splitlines() if line.startswith("callback:")]
    counts = sorted(int(line.split(":")[1].split()[0]) for line in applied)
    assert counts[0] == 0
    assert counts[1] > 0
