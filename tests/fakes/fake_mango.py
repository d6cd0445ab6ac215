"""An in-process MANGO OFFICE Virtual PBX API (API ВАТС v1.9) for contract tests of the cloud adapter.

Reproduces, over real HTTP:
- Request signing exactly as documented (§2.4.3): form fields vpbx_api_key, sign, json with
  sign = sha256(vpbx_api_key + json + vpbx_api_salt); computed here independently of the adapter.
- Command answers {"result": <code>} with the documented codes: 1000 accepted, 3101 not POST,
  3102 sign mismatch, 3103 parameter missing, 3104 bad json, 3105 wrong key, 3200 bad number; plus
  scripted billing/overload codes, HTTP 429 "Rate limit exceeded", 5xx and slow answers.
- POST /vpbx/commands/callback (§3.2.1): rings the employee (from.extension), then to_number, and reports
  it to the webhook URL it is given: POST <webhook>/result/callback {command_id, result} and the
  POST <webhook>/events/call sequence (§3.1.2) of both legs: Appeared / Connected / Disconnected with
  entry_id, call_id, seq, timestamp, location, from, to, command_id, disconnect_reason, all signed.
- POST /vpbx/commands/call/hangup (§3.2.3): ends the leg; Disconnected with reason 1181.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from fakes.asgi import Receive, Scope, Send, header_of, read_body, send_response, serve_asgi

AgentBehaviour = Literal["answer", "no_answer", "busy"]
VisitorBehaviour = Literal["answer", "busy", "no_answer", "rejected", "unreachable", "invalid_number"]

# disconnect_reason of the visitor's leg for each way it can fail to connect.
_VISITOR_REASON: dict[VisitorBehaviour, int] = {
    "busy": 1121,
    "no_answer": 1111,
    "rejected": 1122,
    "unreachable": 1131,
    "invalid_number": 1133,
}
_AGENT_REASON: dict[AgentBehaviour, int] = {"no_answer": 1111, "busy": 1121}


def documented_sign(api_key: str, json_text: str, api_salt: str) -> str:
    """sign = sha256(vpbx_api_key + json + vpbx_api_salt), as API ВАТС §2.4.3 states it."""
    return hashlib.sha256(f"{api_key}{json_text}{api_salt}".encode()).hexdigest()


@dataclass
class MangoScript:
    """How a callback to one number plays out. Times are milliseconds of real time."""

    agent: AgentBehaviour = "answer"
    visitor: VisitorBehaviour = "answer"
    step_ms: int = 5
    talk_ms: int = 20
    result: int = 1000  # the command's synchronous {"result": ...}
    async_result: int = 1000  # what POST /result/callback reports
    http_status: int = 200
    delay_s: float = 0.0  # answer the command only after this long
    duplicate_events: bool = False  # deliver every call event twice, as a retrying sender might


@dataclass(frozen=True)
class RecordedCommand:
    path: str
    payload: dict[str, Any] | None
    result: int | None
    http_status: int


@dataclass(frozen=True)
class DeliveredWebhook:
    path: str
    payload: dict[str, Any]
    status: int
    url: str = ""  # where it was POSTed


@dataclass(eq=False)
class _Leg:
    call_id: str
    from_: dict[str, str]
    to: dict[str, str]
    seq: int = 0
    live: bool = True


@dataclass(eq=False)
class _Callback:
    command_id: str
    entry_id: str
    legs: dict[str, _Leg] = field(default_factory=dict)  # "agent" / "visitor"
    task: asyncio.Task[None] | None = None


class FakeMango:
    """The fake VPBX API: an ASGI app under /vpbx plus controls and records for tests."""

    def __init__(self, *, api_key: str = "vpbx-key-0001", api_salt: str = "vpbx-salt-0001") -> None:
        self.api_key = api_key
        self.api_salt = api_salt
        self.base_url = ""  # where this fake listens; the adapter's base_url is base_url + "/vpbx"
        self.webhook_url = ""  # "Адрес внешней системы": where events are POSTed
        # Where one command's notifications go instead (by command_id): a test's load balancer.
        self.webhook_url_for: Callable[[str], Awaitable[str]] | None = None
        self.default_script = MangoScript()
        self.scripts: dict[str, MangoScript] = {}  # by to_number
        self.commands: list[RecordedCommand] = []
        self.webhooks: list[DeliveredWebhook] = []
        self._callbacks: dict[str, _Callback] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._client: httpx.AsyncClient | None = None

    def script(self, to_number: str, script: MangoScript) -> None:
        self.scripts[to_number] = script

    def callbacks_to(self, to_number: str) -> list[RecordedCommand]:
        return [
            c
            for c in self.commands
            if c.path == "/commands/callback"
            and c.payload is not None
            and c.payload.get("to_number") == to_number
        ]

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- signed webhooks ------------------------------------------------------------------------------

    def signed_form(self, payload: Mapping[str, Any], *, bad_sign: bool = False) -> dict[str, str]:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        sign = documented_sign(self.api_key, text, self.api_salt)
        if bad_sign:
            sign = documented_sign(self.api_key, text, "not-the-salt")
        return {"vpbx_api_key": self.api_key, "sign": sign, "json": text}

    async def send_webhook(self, path: str, payload: Mapping[str, Any], *, bad_sign: bool = False) -> int:
        """POST one notification to the external system the way the PBX does; returns the HTTP status."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=5.0)
        form = self.signed_form(payload, bad_sign=bad_sign)
        base = self.webhook_url
        if self.webhook_url_for is not None and payload.get("command_id"):
            base = await self.webhook_url_for(str(payload["command_id"]))
        try:
            status = (await self._client.post(base + path, data=form)).status_code
        except httpx.TransportError:
            status = 0  # the external system is down; Mango would try again later
        self.webhooks.append(DeliveredWebhook(path, dict(payload), status, base))
        return status

    # --- ASGI -----------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"].removeprefix("/vpbx")
        body = await read_body(receive)
        if scope["method"] != "POST":
            await self._answer(send, path, None, 3101)
            return
        form = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
        if not (header_of(scope, "content-type") or "").startswith("application/x-www-form-urlencoded"):
            await self._answer(send, path, None, 3103)
            return
        key, sign, text = form.get("vpbx_api_key"), form.get("sign"), form.get("json")
        if key is None or sign is None or text is None:
            await self._answer(send, path, None, 3103)
            return
        if key != self.api_key:
            await self._answer(send, path, None, 3105)
            return
        if sign != documented_sign(key, text, self.api_salt):
            await self._answer(send, path, None, 3102)
            return
        try:
            payload = json.loads(text)
        except json.JSONDecodeError:
            await self._answer(send, path, None, 3104)
            return
        if path == "/commands/callback":
            await self._callback(send, payload)
        elif path == "/commands/call/hangup":
            await self._hangup(send, payload)
        else:
            await self._answer(send, path, payload, 4001)

    async def _answer(
        self, send: Send, path: str, payload: dict[str, Any] | None, result: int, http_status: int = 200
    ) -> None:
        self.commands.append(
            RecordedCommand(path, payload, result if http_status == 200 else None, http_status)
        )
        if http_status != 200:
            message = "Rate limit exceeded" if http_status == 429 else "Server error"
            await send_response(send, http_status, json.dumps({"message": message}).encode())
            return
        await send_response(send, 200, json.dumps({"result": result}).encode())

    async def _callback(self, send: Send, payload: dict[str, Any]) -> None:
        command_id = payload.get("command_id")
        extension = (payload.get("from") or {}).get("extension")
        to_number = payload.get("to_number")
        if not command_id or not extension or not to_number:
            await self._answer(send, "/commands/callback", payload, 3103)
            return
        if not str(to_number).isdigit():
            await self._answer(send, "/commands/callback", payload, 3200)
            return
        script = self.scripts.get(str(to_number), self.default_script)
        if script.delay_s:
            await asyncio.sleep(script.delay_s)
        await self._answer(send, "/commands/callback", payload, script.result, script.http_status)
        if script.http_status != 200 or script.result != 1000:
            return
        n = next(self._ids)
        line = str(payload.get("line_number", "74950000000"))
        callback = _Callback(command_id=str(command_id), entry_id=f"entry-{n:04d}")
        callback.legs["agent"] = _Leg(f"{n}:agent", {"number": line}, {"extension": str(extension)})
        callback.legs["visitor"] = _Leg(
            f"{n}:visitor", {"extension": str(extension), "number": line}, {"number": str(to_number)}
        )
        self._callbacks[callback.command_id] = callback
        callback.task = self._spawn(self._play(callback, script))

    async def _play(self, callback: _Callback, script: MangoScript) -> None:
        step = script.step_ms / 1000
        await self.send_webhook(
            "/result/callback", {"command_id": callback.command_id, "result": script.async_result}
        )
        if script.async_result != 1000:
            return
        agent, visitor = callback.legs["agent"], callback.legs["visitor"]
        await self._event(callback, agent, "Appeared", script)
        await asyncio.sleep(step)
        if script.agent != "answer":
            await self._event(callback, agent, "Disconnected", script, _AGENT_REASON[script.agent])
            return
        await self._event(callback, agent, "Connected", script)
        await asyncio.sleep(step)
        await self._event(callback, visitor, "Appeared", script)
        await asyncio.sleep(step)
        if script.visitor != "answer":
            await self._event(callback, visitor, "Disconnected", script, _VISITOR_REASON[script.visitor])
            await self._event(callback, agent, "Disconnected", script, 1100)
            return
        await self._event(callback, visitor, "Connected", script)
        await asyncio.sleep(script.talk_ms / 1000)
        await self._event(callback, visitor, "Disconnected", script, 1120)  # the visitor hangs up
        await self._event(callback, agent, "Disconnected", script, 1100)

    async def _event(
        self,
        callback: _Callback,
        leg: _Leg,
        state: str,
        script: MangoScript,
        reason: int | None = None,
        *,
        ended: bool = False,
    ) -> None:
        if not leg.live and not ended:
            return
        leg.seq += 1
        payload: dict[str, Any] = {
            "entry_id": callback.entry_id,
            "call_id": leg.call_id,
            "timestamp": int(time.time()),
            "seq": leg.seq,
            "call_state": state,
            "location": "abonent",
            "from": leg.from_,
            "to": leg.to,
            "command_id": callback.command_id,
        }
        if reason is not None:
            payload["disconnect_reason"] = reason
            leg.live = False
        for _ in range(2 if script.duplicate_events else 1):
            await self.send_webhook("/events/call", payload)

    async def _hangup(self, send: Send, payload: dict[str, Any]) -> None:
        call_id = payload.get("call_id")
        if not payload.get("command_id") or not call_id:
            await self._answer(send, "/commands/call/hangup", payload, 3103)
            return
        found = [
            (cb, leg) for cb in self._callbacks.values() for leg in cb.legs.values() if leg.call_id == call_id
        ]
        if not found or not found[0][1].live:
            await self._answer(send, "/commands/call/hangup", payload, 4101)  # call ended or does not exist
            return
        callback, _ = found[0]
        if callback.task is not None:
            callback.task.cancel()
        # Ending one leg of a callback ends the whole call, at once for any later command.
        live = [leg for leg in callback.legs.values() if leg.live]
        for leg in live:
            leg.live = False
        await self._answer(send, "/commands/call/hangup", payload, 1000)
        self._spawn(self._hung_up(callback, live))

    async def _hung_up(self, callback: _Callback, legs: list[_Leg]) -> None:
        for leg in legs:
            await self._event(callback, leg, "Disconnected", self.default_script, 1181, ended=True)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


@contextlib.asynccontextmanager
async def serve_fake_mango(**kwargs: Any) -> AsyncIterator[FakeMango]:
    fake = FakeMango(**kwargs)
    async with serve_asgi(fake) as base_url:
        fake.base_url = base_url
        try:
            yield fake
        finally:
            await fake.close()


WebhookHandler = Callable[[str, Mapping[str, str]], Awaitable[bool]]


@contextlib.asynccontextmanager
async def serve_webhook_receiver(handler: WebhookHandler) -> AsyncIterator[str]:
    """The external system's side: POSTed forms go to `handler(path, form)`; 200 if it accepts, else 403."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if scope["method"] != "POST":
            await send_response(send, 405)
            return
        form = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
        accepted = await handler(scope["path"], form)
        await send_response(send, 200 if accepted else 403)

    async with serve_asgi(app) as base_url:
        yield base_url
