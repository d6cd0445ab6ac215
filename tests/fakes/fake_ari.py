"""An in-process Asterisk that speaks ARI over real HTTP and WebSocket, for contract tests of the adapter.

Reproduces the documented surface the adapter uses (Asterisk rest-api/api-docs channels.json,
bridges.json, events.json):
- POST /ari/channels (originate; 400 without endpoint/app, 409 "Channel with given unique ID already
  exists"), GET/DELETE /ari/channels/{id} (404 "Channel not found"), POST /ari/channels/{id}/play
  (201 Playback; 409 "Channel not in a Stasis application"), POST/DELETE /ari/channels/{id}/moh,
  POST /ari/bridges, POST /ari/bridges/{id}/addChannel (400 channel not found, 404 bridge not found,
  422 "Channel not in Stasis application"), DELETE /ari/bridges/{id}. Errors are {"message": ...}.
- HTTP basic auth or ?api_key=user:pass (401 otherwise).
- GET /ari/events?app=... WebSocket: ChannelStateChange (Ringing, Up), StasisStart (with appArgs split at
  commas) on answer, StasisEnd, ChannelDestroyed with Q.850 cause/cause_txt, PlaybackStarted/Finished,
  ChannelEnteredBridge. Events go only to sockets connected at that moment: nothing is replayed.

How each dialled endpoint behaves is scripted with EndpointScript; faults (status codes, slow answers,
answers held back) are injected per request with fail_next() / delay_next() / answer_later();
drop_websockets() and refuse_websockets simulate an Asterisk restart.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import itertools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from fakes.asgi import Receive, Scope, Send, header_of, query_of, read_body, send_response, serve_asgi

EndpointOutcome = Literal["answer", "busy", "no_answer", "reject", "congestion", "hold"]

# Q.850 cause -> Asterisk's cause text (ast_cause2str).
CAUSE_TEXT = {
    16: "Normal Clearing",
    17: "User busy",
    18: "No user responding",
    19: "User alerting, no answer",
    21: "Call Rejected",
    34: "Circuit/channel congestion",
}
_OUTCOME_CAUSE: dict[EndpointOutcome, int] = {"busy": 17, "reject": 21, "congestion": 34}


@dataclass
class EndpointScript:
    """What the phone behind an endpoint does. Times are milliseconds of real time.

    no_answer rings until the originate `timeout` (seconds, multiplied by FakeAri.seconds_scale);
    hold rings until the test calls answer_channel() or hangup_channel().
    """

    outcome: EndpointOutcome = "answer"
    ring_ms: int = 5
    answer_ms: int = 20
    talk_ms: int | None = None  # after answering, the far end hangs up after this long


@dataclass
class FakeChannel:
    id: str
    name: str
    endpoint: str
    app: str
    args: list[str]
    caller_number: str
    timeout_s: int
    state: str = "Down"
    in_stasis: bool = False
    bridge_id: str | None = None
    moh: bool = False
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "caller": {"name": "", "number": self.caller_number},
            "connected": {"name": "", "number": ""},
            "accountcode": "",
            "dialplan": {"context": "default", "exten": "s", "priority": 1, "app_name": "", "app_data": ""},
            "creationtime": self.created,
            "language": "en",
        }


@dataclass
class FakeBridge:
    id: str
    name: str
    bridge_type: str
    channels: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "technology": "simple_bridge",
            "bridge_type": self.bridge_type,
            "bridge_class": "stasis",
            "creator": "Stasis",
            "name": self.name,
            "channels": list(self.channels),
            "video_mode": "talker",
        }


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # below /ari, e.g. "/channels"
    query: dict[str, str]
    status: int


@dataclass
class _Fault:
    method: str
    path_prefix: str
    status: int | None
    delay_s: float
    times: int
    release: asyncio.Event | None = None  # carried out at once, but answered only once this is set


@dataclass(eq=False)
class _Socket:
    app: str
    outbox: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)


class _Reply(Exception):
    """Raised by a handler to answer with an ARI error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


ARI_USER = "abonent"
ARI_PASSWORD = "s3cret"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


class FakeAri:
    """The fake Asterisk: an ASGI app plus the controls and records tests use."""

    def __init__(
        self, *, username: str = ARI_USER, password: str = ARI_PASSWORD, seconds_scale: float = 0.01
    ) -> None:
        self.username = username
        self.password = password
        self.seconds_scale = seconds_scale  # originate `timeout` seconds -> real seconds
        self.playback_ms = 15
        self.base_url = ""
        self.default_script = EndpointScript()
        self.scripts: dict[str, EndpointScript] = {}
        self.requests: list[RecordedRequest] = []
        self.channels: dict[str, FakeChannel] = {}
        self.destroyed: dict[str, tuple[FakeChannel, int]] = {}  # id -> (channel, cause)
        self.bridges: dict[str, FakeBridge] = {}
        self.rung: list[str] = []  # endpoint of every channel actually created: each one rang a phone
        self.refuse_websockets = False
        self.websocket_connects = 0
        self._faults: list[_Fault] = []
        self._sockets: set[_Socket] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lifecycles: dict[str, asyncio.Task[None]] = {}
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()

    # --- controls -------------------------------------------------------------------------------------

    def script(self, endpoint: str, script: EndpointScript) -> None:
        self.scripts[endpoint] = script

    def fail_next(self, method: str, path_prefix: str, status: int = 500, *, times: int = 1) -> None:
        """The next `times` matching requests get `status` with an ARI error body."""
        self._faults.append(_Fault(method, path_prefix, status, 0.0, times))

    def delay_next(self, method: str, path_prefix: str, seconds: float, *, times: int = 1) -> None:
        """The next `times` matching requests are carried out, but only after `seconds`."""
        self._faults.append(_Fault(method, path_prefix, None, seconds, times))

    def answer_later(self, method: str, path_prefix: str, release: asyncio.Event, *, times: int = 1) -> None:
        """The next `times` matching requests are carried out at once (a channel rings and its events go
        out), but their HTTP answer waits until `release` is set: a fast PBX whose events overtake it."""
        self._faults.append(_Fault(method, path_prefix, None, 0.0, times, release))

    async def drop_websockets(self) -> None:
        """Close every event WebSocket, as an Asterisk restart does, and wait until they are gone."""
        for sock in list(self._sockets):
            sock.outbox.put_nowait(None)
        await self.wait_until(lambda: not self._sockets)

    async def answer_channel(self, channel_id: str) -> None:
        """The person behind a `hold` endpoint picks up."""
        await self._answer(self.channels[channel_id])

    async def hangup_channel(self, channel_id: str, cause: int = 16) -> None:
        """The far end of a channel hangs up."""
        self._destroy(self.channels[channel_id], cause)

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path == path]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait for a state of the fake (checked whenever something in it changes)."""

        async def _wait() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(_wait(), timeout)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- ASGI -----------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        expected = f"{self.username}:{self.password}"
        header = header_of(scope, "authorization")
        if header is not None and header.startswith("Basic "):
            return base64.b64decode(header[6:]).decode() == expected
        return query_of(scope).get("api_key") == expected

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, full_path = scope["method"], scope["path"]
        query = query_of(scope)
        body = await read_body(receive)
        if not self._authorized(scope):
            await send_response(send, 401, json.dumps({"message": "Authentication required"}).encode())
            return
        path = full_path.removeprefix("/ari")
        fault = self._take_fault(method, path)
        if fault is not None and fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault is not None and fault.status is not None:
            status, payload = fault.status, {"message": "Internal Server Error"}
        else:
            if body and header_of(scope, "content-type") == "application/json":
                # ARI reads the other keys of a JSON body as query parameters.
                extra = json.loads(body)
                query.update({k: str(v) for k, v in extra.items() if k != "variables"})
            try:
                status, payload = self._route(method, path, query)
            except _Reply as reply:
                status, payload = reply.status, {"message": reply.message}
        self.requests.append(RecordedRequest(method, path, query, status))
        self._touch()
        if fault is not None and fault.release is not None:
            await fault.release.wait()
        await send_response(send, status, json.dumps(payload).encode() if payload is not None else b"")

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.method == method and path.startswith(fault.path_prefix) and fault.times > 0:
                fault.times -= 1
                return fault
        return None

    def _route(self, method: str, path: str, query: dict[str, str]) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        match method, parts:
            case "POST", ["channels"]:
                return self._originate(query)
            case "GET", ["channels", channel_id]:
                return 200, self._channel(channel_id).to_json()
            case "DELETE", ["channels", channel_id]:
                cause = {"normal": 16, "busy": 17, "congestion": 34}.get(query.get("reason", "normal"), 16)
                self._destroy(self._channel(channel_id), cause)
                return 204, None
            case "POST", ["channels", channel_id, "play"]:
                return self._play(channel_id, query)
            case "POST" | "DELETE", ["channels", channel_id, "moh"]:
                channel = self._stasis_channel(channel_id)
                channel.moh = method == "POST"
                return 204, None
            case "POST", ["bridges"]:
                return self._create_bridge(query)
            case "POST", ["bridges", bridge_id, "addChannel"]:
                return self._add_channels(bridge_id, query)
            case "DELETE", ["bridges", bridge_id]:
                bridge = self.bridges.pop(bridge_id, None)
                if bridge is None:
                    raise _Reply(404, "Bridge not found")
                for channel_id in bridge.channels:
                    if channel_id in self.channels:
                        self.channels[channel_id].bridge_id = None
                return 204, None
        raise _Reply(404, "Resource not found")

    # --- channels -------------------------------------------------------------------------------------

    def _channel(self, channel_id: str) -> FakeChannel:
        channel = self.channels.get(channel_id)
        if channel is None:
            raise _Reply(404, "Channel not found")
        return channel

    def _stasis_channel(self, channel_id: str) -> FakeChannel:
        channel = self._channel(channel_id)
        if not channel.in_stasis:
            raise _Reply(409, "Channel not in a Stasis application")
        return channel

    def _originate(self, query: dict[str, str]) -> tuple[int, Any]:
        endpoint = query.get("endpoint", "")
        if "/" not in endpoint:
            raise _Reply(400, "Endpoint must be specified as tech/resource")
        if not query.get("app"):
            raise _Reply(400, "Application or extension must be specified")
        channel_id = query.get("channelId") or f"1700000000.{next(self._ids)}"
        if channel_id in self.channels:
            raise _Reply(409, "Channel with given unique ID already exists")
        tech, _, resource = endpoint.partition("/")
        channel = FakeChannel(
            id=channel_id,
            name=f"{tech}/{resource.split('@')[0]}-{next(self._ids):08x}",
            endpoint=endpoint,
            app=query["app"],
            args=query.get("appArgs", "").split(",") if query.get("appArgs") else [],
            caller_number=query.get("callerId", ""),
            timeout_s=int(query.get("timeout", "30")),
            created=_now(),
        )
        self.channels[channel_id] = channel
        self.rung.append(endpoint)
        script = self.scripts.get(endpoint, self.default_script)
        task = self._spawn(self._lifecycle(channel, script))
        self._lifecycles[channel_id] = task
        return 200, channel.to_json()

    async def _lifecycle(self, channel: FakeChannel, script: EndpointScript) -> None:
        await asyncio.sleep(script.ring_ms / 1000)
        self._set_state(channel, "Ringing")
        if script.outcome == "hold":
            return
        if script.outcome == "no_answer":
            if channel.timeout_s >= 0:
                await asyncio.sleep(channel.timeout_s * self.seconds_scale)
                self._destroy(channel, 19)
            return
        await asyncio.sleep(script.answer_ms / 1000)
        if script.outcome != "answer":
            self._destroy(channel, _OUTCOME_CAUSE[script.outcome])
            return
        await self._answer(channel)
        if script.talk_ms is not None:
            await asyncio.sleep(script.talk_ms / 1000)
            self._destroy(channel, 16)

    async def _answer(self, channel: FakeChannel) -> None:
        if channel.in_stasis or channel.id not in self.channels:
            return
        self._set_state(channel, "Up")
        channel.in_stasis = True
        self._publish(
            channel.app, {"type": "StasisStart", "args": channel.args, "channel": channel.to_json()}
        )

    def _set_state(self, channel: FakeChannel, state: str) -> None:
        channel.state = state
        self._publish(channel.app, {"type": "ChannelStateChange", "channel": channel.to_json()})

    def _destroy(self, channel: FakeChannel, cause: int) -> None:
        if channel.id not in self.channels:
            return
        del self.channels[channel.id]
        task = self._lifecycles.pop(channel.id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if channel.bridge_id is not None and channel.bridge_id in self.bridges:
            self.bridges[channel.bridge_id].channels.remove(channel.id)
        if channel.in_stasis:
            self._publish(channel.app, {"type": "StasisEnd", "channel": channel.to_json()})
        channel.state = "Down"
        self.destroyed[channel.id] = (channel, cause)
        self._publish(
            channel.app,
            {
                "type": "ChannelDestroyed",
                "cause": cause,
                "cause_txt": CAUSE_TEXT.get(cause, "Unknown"),
                "channel": channel.to_json(),
            },
        )

    def _play(self, channel_id: str, query: dict[str, str]) -> tuple[int, Any]:
        channel = self._stasis_channel(channel_id)
        media = query.get("media")
        if not media:
            raise _Reply(400, "media parameter is required")
        playback = {
            "id": query.get("playbackId") or f"playback-{next(self._ids)}",
            "media_uri": media,
            "target_uri": f"channel:{channel_id}",
            "language": "en",
            "state": "queued",
        }
        self._spawn(self._playback(channel, playback))
        return 201, playback

    async def _playback(self, channel: FakeChannel, playback: dict[str, Any]) -> None:
        self._publish(channel.app, {"type": "PlaybackStarted", "playback": {**playback, "state": "playing"}})
        await asyncio.sleep(self.playback_ms / 1000)
        if channel.id in self.channels:
            self._publish(
                channel.app, {"type": "PlaybackFinished", "playback": {**playback, "state": "done"}}
            )

    # --- bridges --------------------------------------------------------------------------------------

    def _create_bridge(self, query: dict[str, str]) -> tuple[int, Any]:
        bridge_type = query.get("type", "mixing")
        if bridge_type not in ("mixing", "holding"):
            raise _Reply(400, "Invalid bridge type")
        bridge_id = query.get("bridgeId") or f"bridge-{next(self._ids)}"
        bridge = self.bridges.setdefault(bridge_id, FakeBridge(bridge_id, query.get("name", ""), bridge_type))
        return 200, bridge.to_json()

    def _add_channels(self, bridge_id: str, query: dict[str, str]) -> tuple[int, Any]:
        bridge = self.bridges.get(bridge_id)
        if bridge is None:
            raise _Reply(404, "Bridge not found")
        ids = [c for c in query.get("channel", "").split(",") if c]
        if not ids or any(c not in self.channels for c in ids):
            raise _Reply(400, "Channel not found")
        if any(not self.channels[c].in_stasis for c in ids):
            raise _Reply(422, "Channel not in Stasis application")
        for channel_id in ids:
            channel = self.channels[channel_id]
            channel.bridge_id = bridge_id
            channel.moh = False
            bridge.channels.append(channel_id)
            self._publish(
                channel.app,
                {"type": "ChannelEnteredBridge", "bridge": bridge.to_json(), "channel": channel.to_json()},
            )
        return 204, None

    # --- events ---------------------------------------------------------------------------------------

    def _publish(self, app: str, event: dict[str, Any]) -> None:
        message = {**event, "timestamp": _now(), "application": app, "asterisk_id": "00:00:00:00:00:01"}
        for sock in self._sockets:
            if sock.app == app:
                sock.outbox.put_nowait(message)
        self._touch()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        app = query_of(scope).get("app", "")
        if self.refuse_websockets or not self._authorized(scope) or not app:
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        sock = _Socket(app=app)
        self._sockets.add(sock)
        self.websocket_connects += 1
        self._touch()

        async def pump() -> None:
            while (message := await sock.outbox.get()) is not None:
                await send({"type": "websocket.send", "text": json.dumps(message)})
            await send({"type": "websocket.close", "code": 1011})

        async def listen() -> None:
            while (await receive())["type"] != "websocket.disconnect":
                pass

        pumping, listening = asyncio.create_task(pump()), asyncio.create_task(listen())
        try:
            await asyncio.wait({pumping, listening}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pumping, listening):
                task.cancel()
            await asyncio.gather(pumping, listening, return_exceptions=True)
            self._sockets.discard(sock)
            self._touch()

    # --- plumbing -------------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _touch(self) -> None:
        self._changed.set()


@contextlib.asynccontextmanager
async def serve_fake_ari(**kwargs: Any) -> AsyncIterator[FakeAri]:
    """A FakeAri listening on a fresh port; `fake.base_url` is what AriConfig.base_url should be."""
    fake = FakeAri(**kwargs)
    async with serve_asgi(fake) as base_url:
        fake.base_url = base_url
        try:
            yield fake
        finally:
            await fake.close()
