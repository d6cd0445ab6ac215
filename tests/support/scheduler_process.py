"""A scheduler replica in its own process, so tests can SIGKILL it at a failpoint mid-job.

usage: python tests/support/scheduler_process.py SCHEMA   (settings from ABONENT_* variables)
It runs "probe" jobs by inserting a row into SCHEMA.effects: a double effect shows as two rows.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from services.common import db
from services.common.logging import configure_logging
from services.common.scheduler import Job, Scheduler
from services.common.settings import get_settings


async def record_effect(conn: db.Connection, job: Job) -> None:
    await conn.execute("insert into effects (kind, key, at) values ($1, $2, $3)", job.kind, job.key, job.now)


async def main(schema: str) -> None:
    settings = get_settings()
    configure_logging("scheduler-probe", "INFO", "text")
    pool = await db.create_pool(settings.database_url, schema)
    runner = Scheduler(pool, schema, settings.database_url, poll_interval_s=0.1)
    runner.register("probe", record_effect)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await runner.start()
    await stop.wait()
    await runner.stop()
    await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
