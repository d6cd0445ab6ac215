"""NATS JetStream: a connection that never gives up, the namespace, streams and publishing."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from services.common.events import STREAMS

log = logging.getLogger(__name__)


class Namespace:
    """Maps logical subjects and stream names into this deployment's namespace (tests get their own)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def subject(self, logical: str) -> str:
        return f"{self.prefix}.{logical}" if self.prefix else logical

    def stream(self, logical: str) -> str:
        return f"{self.prefix.upper()}_{logical}" if self.prefix else logical


class Bus:
    """One NATS connection per process, with its JetStream context and namespace."""

    def __init__(
        self, nc: NatsClient, namespace: Namespace, replicas: int = 1, stream_max_age_s: float = 0.0
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=5)
        self.ns = namespace
        self.replicas = replicas
        # Streams this bus declares keep messages this long (0: forever); fixed at connect, so every
        # re-declaration (e.g. a consumer re-subscribing after a reconnect) keeps the same retention.
        self.stream_max_age_s = stream_max_age_s
        # Set by the reconnect callback; pull loops re-create their subscriptions when they see it.
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    async def close(self) -> None:
        """Flush what we published, then close.

        The drain is bounded by nats-py's own `drain_timeout` (set in `connect`), never by cancelling it
        from outside: cancelling `drain()` cancels its internal gather, whose CancelledError nobody then
        retrieves ("_GatheringFuture exception was never retrieved" at every slow shutdown).
        """
        try:
            await self.nc.drain()
        except Exception:
            # Draining fails while the connection is down or reconnecting; closing may then fail the same
            # way (ConnectionResetError on the dead socket). Either way the connection is finished.
            with contextlib.suppress(Exception):
                await self.nc.close()

    async def ensure_streams(self, streams: dict[str, list[str]] | None = None) -> None:
        """Create or update every stream; safe to run from every replica on every start."""
        for name, subjects in (streams or STREAMS).items():
            config = StreamConfig(
                name=self.ns.stream(name),
                subjects=[self.ns.subject(s) for s in subjects],
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                # Publish dedupe window: relay retries of one event stay inside it.
                duplicate_window=120.0,
                max_age=self.stream_max_age_s,
            )
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError:
                await self.js.update_stream(config)

    async def publish(self, subject: str, payload: bytes, msg_id: str, *, attempts: int = 5) -> bool:
        """Publish on a logical subject with Nats-Msg-Id; retries keep the SAME id. True if new."""
        return await self.publish_to(self.ns.subject(subject), payload, msg_id, attempts=attempts)

    async def publish_to(self, subject: str, payload: bytes, msg_id: str, *, attempts: int = 5) -> bool:
        """Publish on a subject already in this namespace (e.g. one stored with a dead letter)."""
        delay = 0.2
        for attempt in range(1, attempts + 1):
            try:
                ack = await self.js.publish(subject, payload, timeout=5, headers={"Nats-Msg-Id": msg_id})
                return not ack.duplicate
            except (
                nats.errors.TimeoutError,
                nats.js.errors.ServiceUnavailableError,
                nats.errors.NoRespondersError,
                nats.errors.ConnectionClosedError,
                nats.errors.ConnectionReconnectingError,
            ):
                if attempt == attempts:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")


def server_urls(url: str) -> list[str]:
    """`nats://a:4222,nats://b:4222` → each server; blanks around the commas are ignored."""
    return [part.strip() for part in url.split(",") if part.strip()]


async def connect(
    url: str,
    name: str,
    namespace: str = "",
    replicas: int = 1,
    *,
    stream_max_age_s: float = 0.0,
    drain_timeout_s: float = 5.0,
) -> Bus:
    """Connect and keep reconnecting forever (nats-py gives up after ~2 min by default).

    `url` may list several servers, comma-separated (a cluster): the first connect tries each, and a
    reconnect goes to any of them, not only to those the connected server advertised.
    """
    holder: list[Bus] = []

    async def on_disconnect() -> None:
        if holder and (holder[0].nc.is_draining or holder[0].nc.is_closed):
            return  # our own shutdown
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")
        if holder:
            holder[0].reconnects += 1

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    nc = await nats.connect(
        servers=server_urls(url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=3,
        allow_reconnect=True,
        drain_timeout=drain_timeout_s,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )
    bus = Bus(nc, Namespace(namespace), replicas, stream_max_age_s)
    holder.append(bus)
    return bus
