"""An in-process Telegram Bot API (https://core.telegram.org/bots/api) for contract tests of the adapter.

Reproduces over real HTTP: POST /bot<token>/sendMessage and /editMessageText with JSON bodies answering
{"ok": true, "result": Message} or {"ok": false, "error_code", "description", "parameters"}: 401 for a
wrong token, 429 "Too Many Requests: retry after N" with parameters.retry_after (a flood window during
which every call is refused and nothing is sent), 403 "Forbidden: bot was blocked by the user",
400 "Bad Request: chat not found" and "message is not modified".
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fakes.asgi import Receive, Scope, Send, read_body, send_response, serve_asgi


@dataclass
class ChatMessage:
    chat_id: str
    message_id: int
    text: str
    edits: int = 0


@dataclass
class FakeTelegram:
    token: str = "123456:TEST-token"
    blocked: set[str] = field(default_factory=set)
    known_chats: set[str] | None = None  # None: every chat exists
    # Flood control: calls before this monotonic time get 429 with the remaining seconds (rounded up).
    flood_until: float = 0.0
    messages: list[ChatMessage] = field(default_factory=list)
    refused_429: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def flood(self, seconds: float) -> None:
        self.flood_until = time.monotonic() + seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw = await read_body(receive)
        prefix = f"/bot{self.token}/"
        if not scope["path"].startswith(prefix):
            await self._answer(send, 401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
            return
        method = scope["path"][len(prefix) :]
        payload = json.loads(raw or b"{}")
        remaining = self.flood_until - time.monotonic()
        if remaining > 0:
            self.refused_429 += 1
            seconds = max(int(remaining + 0.999), 1)
            await self._answer(
                send,
                429,
                {
                    "ok": False,
                    "error_code": 429,
                    "description": f"Too Many Requests: retry after {seconds}",
                    "parameters": {"retry_after": seconds},
                },
            )
            return
        chat_id = str(payload.get("chat_id", ""))
        if chat_id in self.blocked:
            await self._error(send, 403, "Forbidden: bot was blocked by the user")
            return
        if self.known_chats is not None and chat_id not in self.known_chats:
            await self._error(send, 400, "Bad Request: chat not found")
            return
        if method == "sendMessage":
            sent = ChatMessage(chat_id, next(self._ids), str(payload["text"]))
            self.messages.append(sent)
            result = {
                "message_id": sent.message_id,
                "chat": {"id": int(chat_id), "type": "private"},
                "text": sent.text,
            }
            await self._answer(send, 200, {"ok": True, "result": result})
        elif method == "editMessageText":
            target = next(
                (
                    m
                    for m in self.messages
                    if m.chat_id == chat_id and m.message_id == payload.get("message_id")
                ),
                None,
            )
            if target is None:
                await self._error(send, 400, "Bad Request: message to edit not found")
            elif target.text == payload.get("text"):
                await self._error(
                    send,
                    400,
                    "Bad Request: message is not modified: specified new message content and reply markup "
                    "are exactly the same as a current content and reply markup of the message",
                )
            else:
                target.text = str(payload["text"])
                target.edits += 1
                await self._answer(send, 200, {"ok": True, "result": {"message_id": target.message_id}})
        else:
            await self._error(send, 404, "Not Found")

    async def _error(self, send: Send, code: int, description: str) -> None:
        await self._answer(send, code, {"ok": False, "error_code": code, "description": description})

    async def _answer(self, send: Send, status: int, payload: object) -> None:
        await send_response(send, status, json.dumps(payload, ensure_ascii=False).encode())


@contextlib.asynccontextmanager
async def running_telegram(fake: FakeTelegram | None = None) -> AsyncIterator[tuple[FakeTelegram, str]]:
    fake = fake or FakeTelegram()
    async with serve_asgi(fake) as url:
        yield fake, url
