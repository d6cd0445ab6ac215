"""An in-process SMSC.ru-style HTTP API (https://smsc.ru/api/http/) for contract tests of the SMSC adapter.

Reproduces over real HTTP: POST /sys/send.php with login, psw (or an empty login and the API key as psw),
phones, mes, fmt=3 answering {"id", "cnt", "cost", "balance"} (cost=3) or {"error", "error_code"}: 2 wrong
login, 3 no money, 6 message forbidden, 7 bad number, 8 undeliverable, 9 too many requests; HTTP 5xx and
garbage; and the status notification: POST <callback> with id, phone, status, err, ts.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

from fakes.asgi import Receive, Scope, Send, read_body, send_response, serve_asgi
from services.notifier.domain.segments import count_segments

ERROR_TEXT = {
    2: "authorise error",
    3: "no money",
    6: "message is denied",
    7: "invalid number",
    8: "can't deliver",
    9: "duplicate request, wait a minute",
}


@dataclass
class SentSmsc:
    sms_id: int
    phone: str
    text: str


@dataclass
class FakeSmsc:
    login: str = "abonent"
    password: str = "secret"
    refuse: dict[str, int] = field(default_factory=dict)
    fail_next: list[int | str] = field(default_factory=list)
    sent: list[SentSmsc] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1001))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if scope["path"] != "/sys/send.php":
            await send_response(send, 404, b"not found", "text/plain")
            return
        if self.fail_next:
            failure = self.fail_next.pop(0)
            if failure == "garbage":
                await send_response(send, 200, b"ERROR = 1 (parameters error)", "text/plain")
            else:
                await send_response(send, int(failure), b"Service Unavailable", "text/plain")
            return
        form = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
        if (form.get("login", ""), form.get("psw")) != (self.login, self.password):
            await self._json(send, {"error": ERROR_TEXT[2], "error_code": 2})
            return
        phone = form.get("phones", "")
        code = self.refuse.get(phone)
        if code is not None:
            await self._json(send, {"error": ERROR_TEXT.get(code, "error"), "error_code": code})
            return
        sms_id = next(self._ids)
        text = form.get("mes", "")
        self.sent.append(SentSmsc(sms_id, phone, text))
        parts = count_segments(text).segments
        await self._json(
            send, {"id": sms_id, "cnt": parts, "cost": f"{2.9 * parts:.2f}", "balance": "812.40"}
        )

    async def _json(self, send: Send, payload: object) -> None:
        await send_response(send, 200, json.dumps(payload, ensure_ascii=False).encode())

    async def report(
        self, callback_url: str, sms_id: int, phone: str, status: int, err: int = 0
    ) -> httpx.Response:
        form = {
            "id": str(sms_id),
            "phone": phone,
            "status": str(status),
            "err": str(err),
            "ts": str(int(time.time())),
        }
        async with httpx.AsyncClient() as client:
            return await client.post(callback_url, data=form)


@contextlib.asynccontextmanager
async def running_smsc(fake: FakeSmsc | None = None) -> AsyncIterator[tuple[FakeSmsc, str]]:
    fake = fake or FakeSmsc()
    async with serve_asgi(fake) as url:
        yield fake, url
