"""An in-process SMS.ru-style HTTP API (https://sms.ru/api/send) for contract tests of the SMS.ru adapter.

Reproduces over real HTTP: POST /sms/send with api_id, to (numbers, comma-separated) and msg - or, for a
different text per number, `to[<number>]=<text>` fields (at most 100 numbers) - and json=1, answering
{"status", "status_code", "sms": {<phone>: {"status", "status_code", "sms_id" | "status_text"}}, "balance"};
a wrong api_id (status_code 200 at the top), per-number refusals scripted by phone (202 bad number, 207 not
allowed, 201 no money, 220 unavailable, ...), HTTP 5xx and garbage bodies; and the delivery callback: POST
<callback> with data[0] = "sms_status\\n<sms_id>\\n<status_code>\\n<unix time>", repeated until "100".
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

STATUS_TEXT = {
    200: "Неправильный api_id",
    201: "Не хватает средств на лицевом счету",
    202: "Неправильно указан номер телефона получателя",
    204: "Имя отправителя не согласовано с администрацией",
    207: "На этот номер нельзя отправлять сообщения",
    220: "Сервис временно недоступен, попробуйте чуть позже",
}


@dataclass
class SentSms:
    sms_id: str
    phone: str
    text: str
    sender: str


@dataclass
class FakeSmsRu:
    api_id: str = "test-api-id"
    # Per-number refusal status_code; numbers not listed are accepted.
    refuse: dict[str, int] = field(default_factory=dict)
    # The next N requests answer this HTTP status (5xx) or a non-JSON body ("garbage").
    fail_next: list[int | str] = field(default_factory=list)
    sent: list[SentSms] = field(default_factory=list)
    requests: int = 0
    # Numbers each accepted request carried, in order (one entry per request).
    numbers_per_request: list[int] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if scope["path"] != "/sms/send" or scope["method"] != "POST":
            await send_response(send, 404, b"not found", "text/plain")
            return
        self.requests += 1
        if self.fail_next:
            failure = self.fail_next.pop(0)
            if failure == "garbage":
                await send_response(send, 200, b"<html>maintenance</html>", "text/html")
            else:
                await send_response(send, int(failure), b"Bad gateway", "text/plain")
            return
        form = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
        if form.get("api_id") != self.api_id:
            await self._json(send, {"status": "ERROR", "status_code": 200, "status_text": STATUS_TEXT[200]})
            return
        # to[<number>]=<text>: SMS.ru's form for different texts to different numbers.
        texts = {
            key[3:-1]: value for key, value in form.items() if key.startswith("to[") and key.endswith("]")
        }
        if not texts:
            texts = {phone: form.get("msg", "") for phone in form.get("to", "").split(",")}
        if len(texts) > 100:
            await self._json(send, {"status": "ERROR", "status_code": 207, "status_text": STATUS_TEXT[207]})
            return
        self.numbers_per_request.append(len(texts))
        entries: dict[str, object] = {}
        for phone, text in texts.items():
            code = self.refuse.get(phone)
            if code is not None:
                entries[phone] = {
                    "status": "ERROR",
                    "status_code": code,
                    "status_text": STATUS_TEXT.get(code, ""),
                }
                continue
            sms_id = f"{next(self._ids):06d}-{int(time.time()) % 10_000_000:07d}"
            self.sent.append(SentSms(sms_id, phone, text, form.get("from", "")))
            entries[phone] = {"status": "OK", "status_code": 100, "sms_id": sms_id}
        await self._json(send, {"status": "OK", "status_code": 100, "sms": entries, "balance": 4122.56})

    async def _json(self, send: Send, payload: object) -> None:
        await send_response(send, 200, json.dumps(payload, ensure_ascii=False).encode())

    async def report(self, callback_url: str, sms_id: str, status_code: int) -> httpx.Response:
        """Post one status the way SMS.ru's callback does; returns our service's answer."""
        line = f"sms_status\n{sms_id}\n{status_code}\n{int(time.time())}"
        async with httpx.AsyncClient() as client:
            return await client.post(callback_url, data={"data[0]": line})


@contextlib.asynccontextmanager
async def running_sms_ru(fake: FakeSmsRu | None = None) -> AsyncIterator[tuple[FakeSmsRu, str]]:
    fake = fake or FakeSmsRu()
    async with serve_asgi(fake) as url:
        yield fake, url
