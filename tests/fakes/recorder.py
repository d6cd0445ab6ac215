"""Reads an adapter's single event stream in the background and lets tests wait for one attempt's events."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

from services.callback.telephony.base import CallEvent, CallEventKind, TelephonyAdapter


class EventRecorder:
    def __init__(self, adapter: TelephonyAdapter) -> None:
        self.adapter = adapter
        self.events: list[CallEvent] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventRecorder:
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _read(self) -> None:
        async for event in self.adapter.events():
            self.events.append(event)
            self._changed.set()

    def of(self, attempt_id: str) -> list[CallEvent]:
        return [e for e in self.events if e.attempt_id == attempt_id]

    def kinds(self, attempt_id: str) -> list[CallEventKind]:
        return [e.kind for e in self.of(attempt_id)]

    async def wait_for(self, attempt_id: str, kind: CallEventKind, timeout: float = 5.0) -> CallEvent:
        """The first `kind` event of the attempt, waiting for it if it has not come yet."""

        async def _wait() -> CallEvent:
            while True:
                for event in self.of(attempt_id):
                    if event.kind is kind:
                        return event
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {kind} for {attempt_id}; got {self.kinds(attempt_id)}") from None

    async def until_terminal(self, attempt_id: str, timeout: float = 5.0) -> list[CallEventKind]:
        """The attempt's event kinds up to and including its terminal event."""

        async def _wait() -> None:
            while not any(e.is_terminal for e in self.of(attempt_id)):
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"{attempt_id} never ended; got {self.kinds(attempt_id)}") from None
        return self.kinds(attempt_id)
