"""A loop's wake-up: set by a PostgreSQL NOTIFY channel, by a stop request, or by the poll interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

import asyncpg

log = logging.getLogger(__name__)


def worker_id() -> str:
    """Names the holder of a lease (host, process, a random tail), for operators reading the tables."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class NotifyWakeup:
    """LISTENs on one channel on its own connection (not a pool's) and wakes the loop at once.

    Polling stays the fallback: while the listener is down (PostgreSQL restarting), `wait` simply times
    out after the poll interval and the next `listen` reconnects.
    """

    def __init__(self, database_url: str, channel: str, poll_interval_s: float) -> None:
        self.database_url = database_url
        self.channel = channel
        self.poll_interval_s = poll_interval_s
        self.stopping = asyncio.Event()
        self._event = asyncio.Event()
        self._listener: asyncpg.Connection[asyncpg.Record] | None = None

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    async def listen(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        with contextlib.suppress(Exception):
            self._listener = await asyncpg.connect(self.database_url, timeout=3)
            await self._listener.add_listener(self.channel, lambda *_: self._event.set())

    async def wait(self) -> None:
        """Until a NOTIFY, a stop request or the poll interval, whichever comes first."""
        if self.stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), self.poll_interval_s)

    async def stop(self, task: asyncio.Task[None] | None, timeout: float, late: str) -> None:
        """Ask the loop to stop, wait for `task` (bounded; logs `late` if it overruns), close the listener."""
        self.stopping.set()
        self._event.set()
        if task is not None:
            try:
                await asyncio.wait_for(task, timeout)
            except TimeoutError:
                log.warning(late)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None
