"""A real relay or consumer in its own process, so tests can SIGKILL it at a failpoint.

usage: python tests/support/probe_process.py relay|consumer   (settings from ABONENT_* variables)
The consumer applies system.probe events as rows in probe_effects: a double effect shows as two rows.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from services.common import bus as busmod
from services.common import consumers, db
from services.common.events import AnyEvent
from services.common.logging import configure_logging
from services.common.outbox import OutboxRelay
from services.common.settings import get_settings

SCHEMA = "probe"


async def record_probe(conn: db.Connection, event: AnyEvent) -> None:
    await conn.execute("insert into probe_effects (event_id) values ($1)", event.event_id)


def probe_consumer_spec(max_deliver: int = 5, ack_wait_s: float = 2.0) -> consumers.ConsumerSpec:
    return consumers.ConsumerSpec(
        name="probe_effects",
        stream="SYSTEM",
        subjects=["system.probe"],
        handler=record_probe,
        ack_wait_s=ack_wait_s,
        max_deliver=max_deliver,
        retry_delays_s=(0.2,),
    )


async def main(role: str) -> None:
    settings = get_settings()
    configure_logging(f"probe-{role}", "INFO", "text")
    pool = await db.create_pool(settings.database_url, SCHEMA)
    bus = await busmod.connect(settings.nats_url, f"probe-{role}", settings.nats_namespace)
    await bus.ensure_streams()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if role == "relay":
        relay = OutboxRelay(
            pool, bus, SCHEMA, settings.database_url, poll_interval_s=0.1, lease_s=settings.outbox_lease_s
        )
        await relay.start()
        await stop.wait()
        await relay.stop()
    else:
        runner = consumers.ConsumerRunner(pool, bus, probe_consumer_spec())
        await runner.start()
        await stop.wait()
        await runner.stop()
    await bus.close()
    await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
