"""Live status for visitors: one NATS subscription per process fans callback events out to SSE streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.common.bus import Bus
from services.common.events import CallbackEvent, decode_event

log = logging.getLogger(__name__)


class StatusFeed:
    """Wakes every stream watching a callback when any replica publishes an event about it."""

    def __init__(
        self, bus: Bus, listeners: Sequence[Callable[[CallbackEvent], Awaitable[None]]] = ()
    ) -> None:
        self.bus = bus
        # Told of every callback event too (the re-promiser: a queue changed).
        self.listeners = tuple(listeners)
        self._watchers: dict[uuid.UUID, set[asyncio.Queue[None]]] = defaultdict(set)
        self._sub: Subscription | None = None

    async def start(self) -> None:
        # Core NATS subscription: JetStream publishes reach it too, and missing one is harmless
        # because every wake-up re-reads the authoritative row.
        self._sub = await self.bus.nc.subscribe(self.bus.ns.subject("callback.>"), cb=self._on_event)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for queues in self._watchers.values():
            for queue in queues:
                queue.put_nowait(None)

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except Exception:
            return
        if isinstance(event, CallbackEvent):
            for queue in self._watchers.get(event.callback_id, ()):
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)
            for listener in self.listeners:
                try:
                    await listener(event)
                except Exception:
                    log.exception("status feed listener failed")

    @contextlib.asynccontextmanager
    async def watch(self, callback_id: uuid.UUID) -> AsyncIterator[asyncio.Queue[None]]:
        queue: asyncio.Queue[None] = asyncio.Queue(maxsize=8)
        self._watchers[callback_id].add(queue)
        try:
            yield queue
        finally:
            self._watchers[callback_id].discard(queue)
            if not self._watchers[callback_id]:
                del self._watchers[callback_id]
