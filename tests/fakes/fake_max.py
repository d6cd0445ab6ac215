"""An in-process MAX bot API (https://dev.max.ru/docs-api) for contract tests of the MAX adapter.

Reproduces over real HTTP: POST /messages?chat_id=… {"text"} answering {"message": {"recipient",
"body": {"mid", "seq", "text"}, ...}}, PUT /messages?message_id=… {"text"} answering {"success": true};
the token only in the Authorization header (401 otherwise); 429 with Retry-After; 403 chat.denied for a
user who stopped the bot; 404 chat.not.found; {"code", "message"} error bodies.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fakes.asgi import Receive, Scope, Send, header_of, query_of, read_body, send_response, serve_asgi


@dataclass
class MaxMessage:
    chat_id: str
    mid: str
    text: str
    edits: int = 0


@dataclass
class FakeMax:
    token: str = "max-test-token"
    blocked: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    throttle_next: int = 0
    messages: list[MaxMessage] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw = await read_body(receive)
        if header_of(scope, "authorization") != self.token or "access_token" in query_of(scope):
            await self._error(send, 401, "verify.token", "Invalid access_token")
            return
        if scope["path"] != "/messages":
            await self._error(send, 404, "not.found", "Path not found")
            return
        if self.throttle_next:
            self.throttle_next -= 1
            body = json.dumps({"code": "too.many.requests", "message": "Rate limit exceeded"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [(b"content-type", b"application/json"), (b"retry-after", b"2")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        query = query_of(scope)
        payload = json.loads(raw or b"{}")
        if scope["method"] == "POST":
            chat_id = query.get("chat_id", "")
            if chat_id in self.blocked:
                await self._error(send, 403, "chat.denied", "Bot is blocked by the user")
                return
            if chat_id in self.missing:
                await self._error(send, 404, "chat.not.found", f"Chat {chat_id} not found")
                return
            sent = MaxMessage(chat_id, f"mid.{next(self._ids):032x}", str(payload["text"]))
            self.messages.append(sent)
            message = {
                "recipient": {"chat_id": int(chat_id), "chat_type": "dialog"},
                "timestamp": 1770679787821,
                "body": {"mid": sent.mid, "seq": 1, "text": sent.text},
            }
            await self._json(send, 200, {"message": message})
        elif scope["method"] == "PUT":
            target = next((m for m in self.messages if m.mid == query.get("message_id")), None)
            if target is None:
                await self._error(send, 404, "message.not.found", "Message not found")
                return
            target.text = str(payload["text"])
            target.edits += 1
            await self._json(send, 200, {"success": True})
        else:
            await self._error(send, 405, "method.not.allowed", "Method not allowed")

    async def _error(self, send: Send, status: int, code: str, message: str) -> None:
        await self._json(send, status, {"code": code, "message": message})

    async def _json(self, send: Send, status: int, payload: object) -> None:
        await send_response(send, status, json.dumps(payload, ensure_ascii=False).encode())


@contextlib.asynccontextmanager
async def running_max(fake: FakeMax | None = None) -> AsyncIterator[tuple[FakeMax, str]]:
    fake = fake or FakeMax()
    async with serve_asgi(fake) as url:
        yield fake, url
