"""An app served for real from its own thread (uvicorn, lifespan on), for sync tests that drive a browser."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn


@contextlib.contextmanager
def served_in_thread(
    app: Any, port: int, before: Callable[[], Awaitable[None]] | None = None, timeout: float = 60
) -> Iterator[str]:
    """Serve `app` on 127.0.0.1:`port` with its lifespan (pool, bus, timers) until the block ends.

    Its own thread and event loop: a sync Playwright session owns this thread's loop. `before` runs on
    that loop first (e.g. migrations)."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", access_log=False
    )
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            if before is not None:
                asyncio.run(before())  # type: ignore[arg-type]
            server.run()
        except BaseException as exc:  # reported to the test below, not lost in the thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"served-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if failure or not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(10)
            raise RuntimeError(f"app on port {port} did not start: {failure or 'no error, see the log'}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
