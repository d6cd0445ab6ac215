"""Run a raw ASGI app on a fresh 127.0.0.1 port inside the test's event loop (real sockets, real HTTP/WS)."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@contextlib.asynccontextmanager
async def serve_asgi(app: AsgiApp) -> AsyncIterator[str]:
    """Serve `app` until the block ends; yields its base URL, e.g. "http://127.0.0.1:43121"."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,  # the kernel picks a free port: parallel tests never collide
        log_level="warning",
        lifespan="off",
        # The sans-I/O websockets protocol: the legacy one warns about deprecated websockets APIs.
        ws="websockets-sansio",
        timeout_graceful_shutdown=1,
        access_log=False,
    )
    server = uvicorn.Server(config)
    # uvicorn binds the socket itself: asyncio then sets TCP_NODELAY on accepted connections, which it
    # skips for a hand-made socket (proto 0), costing ~40 ms of delayed ACK per keep-alive request.
    # startup() and a quick stop instead of serve(): serve() polls for exit every 0.1 s and its shutdown()
    # sleeps another 0.1 s, which would dominate the run time of a test suite starting servers per test.
    config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup()
    try:
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await _stop(server)


async def _stop(server: uvicorn.Server) -> None:
    for listener in server.servers:
        listener.close()
    state = server.server_state
    for connection in list(state.connections):
        connection.shutdown()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    while (state.connections or state.tasks) and loop.time() < deadline:
        await asyncio.sleep(0.005)
    for task in list(state.tasks):
        task.cancel()
    for listener in server.servers:
        await listener.wait_closed()


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return body
        body += bytes(message.get("body", b""))
        if not message.get("more_body", False):
            return body


def query_of(scope: Scope) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True))


def header_of(scope: Scope, name: str) -> str | None:
    wanted = name.lower().encode()
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            return bytes(value).decode("latin-1")
    return None


async def send_response(
    send: Send, status: int, body: bytes = b"", content_type: str = "application/json"
) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if body:
        headers.append((b"content-type", content_type.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
