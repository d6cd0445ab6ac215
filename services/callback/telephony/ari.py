"""Asterisk REST Interface (ARI) adapter: two originated legs in a Stasis app, joined by a mixing bridge.

Protocol (Asterisk ARI, rest-api/api-docs/{channels,bridges,events}.json):
- REST under {base_url}/ari with HTTP basic auth; errors are JSON {"message": "..."}.
- Events over the WebSocket GET /ari/events?app=<app> (same basic auth); only a connected app gets them,
  and nothing is replayed after a reconnect, so after every reconnect the adapter re-reads its channels.
- POST /ari/channels?endpoint=&app=&appArgs=&channelId=&timeout=&callerId=[&originator=] originates a leg.
  The app is subscribed to the new channel at once (ChannelStateChange "Ringing", ChannelDestroyed with a
  Q.850 cause), and the channel enters the app (StasisStart with appArgs) when it is answered.
  A channelId derived from attempt_id makes a retried originate idempotent: Asterisk answers 409
  "Channel with given unique ID already exists" and the adapter adopts the existing channel.
- POST /ari/channels/{id}/play?media=sound:... plays the whisper; PlaybackFinished moves the call on.
  ARI has no text-to-speech, so the whisper is a pre-recorded sound (`whisper_media`), e.g. one rendered
  per site by the operator; with whisper_media=None it is skipped and `CallOrder.whisper_text` is unused.
- POST /ari/bridges?type=mixing&bridgeId= and POST /ari/bridges/{id}/addChannel?channel=a,b join the legs.
- DELETE /ari/channels/{id} hangs up a leg; when one leg of a call goes, the other is hung up too.

Flow (agent_first): originate agent -> StasisStart(agent) -> whisper -> originate visitor ->
StasisStart(visitor) -> bridge -> BRIDGED -> either leg leaves -> ENDED.
customer_first: originate visitor -> StasisStart(visitor) -> music on hold -> originate agent ->
StasisStart(agent) -> whisper -> bridge.
Voicemail is not detectable over plain ARI (an answering machine looks like an answer); VOICEMAIL is never
emitted by this adapter.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import msgspec
import websockets
from websockets.asyncio.client import connect

from services.callback.telephony.base import (
    ANSWERED_KIND,
    RINGING_KIND,
    CallEvent,
    CallEventKind,
    CallOrder,
    EventStream,
    Leg,
    TelephonyError,
    prune_finished,
)

__all__ = ["AriConfig", "AsteriskAriAdapter"]

log = logging.getLogger(__name__)

# Q.850 causes on a leg that never answered (ChannelDestroyed.cause).
_BUSY_CAUSES = frozenset({17, 21})  # user busy, call rejected
# unknown, normal clearing / unspecified before answer, no user responding, no answer, subscriber absent
_NO_ANSWER_CAUSES = frozenset({0, 16, 18, 19, 20, 31})


class AriConfig(msgspec.Struct, frozen=True, kw_only=True):
    base_url: str  # where Asterisk's HTTP server listens, e.g. "http://pbx:8088" (ARI lives under /ari)
    username: str
    password: str
    app: str = "abonent-callback"
    # {digits}: the visitor's number without "+", {number}: E.164 as given.
    visitor_endpoint_template: str = "PJSIP/{digits}@trunk"
    whisper_media: str | None = None  # e.g. "sound:abonent-whisper"; None: no whisper
    whisper_max_s: float = 10.0  # go on even if PlaybackFinished never arrives
    hold_music_class: str | None = (
        "default"  # visitor waits with this MOH class (customer_first); None: silence
    )
    channel_id_prefix: str = "abonent"
    http_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0  # how long start() waits for the event WebSocket
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 15.0

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError("AriConfig.base_url must be an http:// or https:// URL")
        try:
            self.visitor_endpoint_template.format(digits="79161234567", number="+79161234567")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"visitor_endpoint_template may use only {{digits}} and {{number}}: {exc}"
            ) from None
        for name in ("whisper_max_s", "http_timeout_s", "connect_timeout_s", "reconnect_initial_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"AriConfig.{name} must be positive")

    def for_replica(self, replica: str) -> AriConfig:
        """This config with the app name `<app>-<replica>`: Asterisk sends an app's events to one
        WebSocket only, so each replica registers its own app and hears exactly the calls it placed."""
        return msgspec.structs.replace(self, app=f"{self.app}-{replica}")


class _Channel(msgspec.Struct):
    id: str
    state: str = ""


class _Playback(msgspec.Struct):
    id: str


class _AriEvent(msgspec.Struct):
    type: str
    channel: _Channel | None = None
    cause: int | None = None
    cause_txt: str = ""
    playback: _Playback | None = None


class _AriError(msgspec.Struct):
    message: str = ""


@dataclass(eq=False)
class _AriLeg:
    role: Leg
    channel_id: str
    endpoint: str
    originated: bool = False
    ringing: bool = False
    answered: bool = False  # entered our Stasis app
    gone: bool = False


@dataclass(eq=False)
class _AriCall:
    order: CallOrder
    legs: dict[Leg, _AriLeg]
    sequence: tuple[Leg, Leg]
    bridge_id: str
    bridge_created: bool = False
    bridged: bool = False
    finished: bool = False
    # Step to take once the whisper has played (dial the next leg, or bridge).
    after_whisper: Callable[[_AriCall], Awaitable[None]] | None = None
    whisper_timer: asyncio.Task[None] | None = None

    @property
    def provider_call_id(self) -> str:
        return self.legs[self.sequence[0]].channel_id


class AsteriskAriAdapter:
    """TelephonyAdapter over Asterisk ARI. Call start() before place_call(); aclose() when done."""

    def __init__(self, config: AriConfig, *, name: str = "asterisk") -> None:
        self.name = name
        self.config = config
        self._http = httpx.AsyncClient(
            base_url=config.base_url.rstrip("/") + "/ari",
            auth=(config.username, config.password),
            timeout=config.http_timeout_s,
        )
        self._stream = EventStream()
        self._calls: dict[str, _AriCall] = {}
        self._by_channel: dict[str, tuple[_AriCall, Leg]] = {}
        self._by_playback: dict[str, _AriCall] = {}
        # Event handling, timers and hangup() change call state one at a time.
        self._lock = asyncio.Lock()
        self._connected = asyncio.Event()
        self._ws_task: asyncio.Task[None] | None = None
        self._closed = False
        self._connections = 0

    # --- lifecycle ------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the event WebSocket is up (place_call() refuses while it is down)."""
        return self._connected.is_set()

    def can_dial(self) -> bool:
        # Without the event stream a call's progress would be invisible: don't start one.
        return self.connected

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the event WebSocket (readiness checks); True once it is up."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout)
        return self.connected

    async def start(self) -> None:
        """Connect the event WebSocket; keep reconnecting in the background if Asterisk is not there yet."""
        if self._ws_task is None:
            self._ws_task = asyncio.create_task(self._event_loop(), name=f"ari-events-{self.config.app}")
        if not await self.wait_connected(self.config.connect_timeout_s):
            log.warning("ARI event stream not connected yet; retrying in the background")

    async def aclose(self) -> None:
        self._closed = True
        if self._ws_task is not None:
            self._ws_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ws_task
        for call in self._calls.values():
            if call.whisper_timer is not None:
                call.whisper_timer.cancel()
        await self._http.aclose()
        self._stream.close()

    # --- TelephonyAdapter -----------------------------------------------------------------------------

    async def place_call(self, order: CallOrder) -> str:
        if self._closed:
            raise TelephonyError("ARI adapter is closed", retryable=False)
        existing = self._calls.get(order.attempt_id)
        if existing is not None:
            return existing.provider_call_id
        if not self.connected:
            # Originating while deaf would lose the call's events.
            raise TelephonyError("ARI event stream is not connected", retryable=True)
        call = self._new_call(order)
        prune_finished(self._calls, lambda c: c.finished)
        self._calls[order.attempt_id] = call
        for leg in call.legs.values():
            self._by_channel[leg.channel_id] = (call, leg.role)
        first = call.legs[call.sequence[0]]
        try:
            state = await self._originate(call, first)
        except TelephonyError:
            # Forget the attempt so a retry originates again (with the same channelId, so no double ring).
            self._calls.pop(order.attempt_id, None)
            for leg in call.legs.values():
                self._by_channel.pop(leg.channel_id, None)
            raise
        async with self._lock:
            if call.finished and not first.gone:
                # hangup() came while the originate was on its way: the new channel must not ring on.
                first.gone = True
                with contextlib.suppress(TelephonyError):
                    await self._request("DELETE", f"/channels/{first.channel_id}", allow={404})
            else:
                await self._apply_state(call, first, state)
        return call.provider_call_id

    async def hangup(self, attempt_id: str) -> None:
        async with self._lock:
            call = self._calls.get(attempt_id)
            if call is None:
                # Placed by another replica (ARI REST is stateless): remove its channels and bridge by id.
                # The owner's app hears the channels go and reports the end; if the owner is gone, the
                # caller closes the attempt itself.
                prefix = self._prefix(attempt_id)
                for path in (
                    *(f"/channels/{c}" for c in self._channel_ids(attempt_id)),
                    f"/bridges/{prefix}-bridge",
                ):
                    with contextlib.suppress(TelephonyError):
                        await self._request("DELETE", path, allow={404})
                return
            if call.finished:
                return
            kind = CallEventKind.ENDED if call.bridged else CallEventKind.FAILED
            await self._finish(call, kind, "hangup requested")

    async def call_exists(self, attempt_id: str) -> bool | None:
        call = self._calls.get(attempt_id)
        if call is not None:
            return not call.finished
        # Another process's call (a dead replica's, or one placed just before a crash): channel ids come
        # from the attempt id, so Asterisk itself can be asked. None when it cannot be reached.
        try:
            for channel_id in self._channel_ids(attempt_id):
                response = await self._request("GET", f"/channels/{channel_id}", allow={404})
                if response.status_code != 404:
                    return True
        except TelephonyError as exc:
            log.warning("cannot ask Asterisk about attempt %s: %s", attempt_id, exc)
            return None
        return False

    async def events(self) -> AsyncIterator[CallEvent]:
        async for event in self._stream:
            yield event

    # --- the call -------------------------------------------------------------------------------------

    def _prefix(self, attempt_id: str) -> str:
        return f"{self.config.channel_id_prefix}-{attempt_id}"

    def _channel_ids(self, attempt_id: str) -> tuple[str, str]:
        prefix = self._prefix(attempt_id)
        return f"{prefix}-agent", f"{prefix}-visitor"

    def _new_call(self, order: CallOrder) -> _AriCall:
        prefix = self._prefix(order.attempt_id)
        digits = order.visitor_phone.lstrip("+")
        visitor_endpoint = self.config.visitor_endpoint_template.format(
            digits=digits, number=order.visitor_phone
        )
        sequence: tuple[Leg, Leg] = (
            ("agent", "visitor") if order.order == "agent_first" else ("visitor", "agent")
        )
        return _AriCall(
            order=order,
            legs={
                "agent": _AriLeg(role="agent", channel_id=f"{prefix}-agent", endpoint=order.agent_endpoint),
                "visitor": _AriLeg(role="visitor", channel_id=f"{prefix}-visitor", endpoint=visitor_endpoint),
            },
            sequence=sequence,
            bridge_id=f"{prefix}-bridge",
        )

    async def _originate(self, call: _AriCall, leg: _AriLeg) -> str:
        """Create the leg's channel; return its state. An existing channel with our id is adopted."""
        order = call.order
        params: dict[str, str | int] = {
            "endpoint": leg.endpoint,
            "app": self.config.app,
            "appArgs": f"{order.attempt_id},{leg.role}",
            "channelId": leg.channel_id,
            "timeout": order.ring_timeout_s,
            # The agent sees who is being called back; the visitor sees the site's number.
            "callerId": order.visitor_phone if leg.role == "agent" else order.caller_id,
        }
        other = call.legs["visitor" if leg.role == "agent" else "agent"]
        if other.answered:
            params["originator"] = other.channel_id  # lets Asterisk pick codecs matching the waiting leg
        response = await self._request("POST", "/channels", params=params, allow={409})
        if response.status_code == 409:
            response = await self._request("GET", f"/channels/{leg.channel_id}", allow={404})
            if response.status_code == 404:
                raise TelephonyError(f"{leg.role} channel exists and vanished; retry", retryable=True)
            log.info("adopted existing ARI channel %s", leg.channel_id)
        leg.originated = True
        return msgspec.json.decode(response.content, type=_Channel).state

    async def _apply_state(self, call: _AriCall, leg: _AriLeg, state: str) -> None:
        """Catch up with a channel state read over REST (after adopting it, or after a reconnect)."""
        if call.finished or leg.gone:
            return
        if state == "Ringing":
            self._mark_ringing(call, leg)
        elif state == "Up":
            await self._on_answered(call, leg)

    def _mark_ringing(self, call: _AriCall, leg: _AriLeg) -> None:
        if not leg.ringing:
            leg.ringing = True
            self._emit(call, RINGING_KIND[leg.role])

    async def _on_answered(self, call: _AriCall, leg: _AriLeg) -> None:
        if leg.answered or leg.gone or call.finished:
            return
        self._mark_ringing(call, leg)  # some endpoints answer without ever reporting Ringing
        leg.answered = True
        self._emit(call, ANSWERED_KIND[leg.role])
        first = leg.role == call.sequence[0]
        if leg.role == "agent":
            await self._whisper_then(call, self._dial_second if first else self._bridge)
        elif first:
            await self._hold_music(leg)
            await self._dial_second(call)
        else:
            await self._bridge(call)

    async def _whisper_then(self, call: _AriCall, step: Callable[[_AriCall], Awaitable[None]]) -> None:
        media = self.config.whisper_media
        if media is None:
            await step(call)
            return
        agent = call.legs["agent"]
        try:
            response = await self._request(
                "POST", f"/channels/{agent.channel_id}/play", params={"media": media}
            )
        except TelephonyError as exc:
            # The whisper is a courtesy: a call without it beats no call.
            log.warning("whisper failed for %s: %s", call.order.attempt_id, exc)
            await step(call)
            return
        playback = msgspec.json.decode(response.content, type=_Playback)
        self._by_playback[playback.id] = call
        call.after_whisper = step
        call.whisper_timer = asyncio.create_task(self._whisper_deadline(call))

    async def _whisper_deadline(self, call: _AriCall) -> None:
        await asyncio.sleep(self.config.whisper_max_s)
        async with self._lock:
            await self._after_whisper(call)

    async def _after_whisper(self, call: _AriCall) -> None:
        step, call.after_whisper = call.after_whisper, None
        if call.whisper_timer is not None and call.whisper_timer is not asyncio.current_task():
            call.whisper_timer.cancel()
        call.whisper_timer = None
        if step is not None and not call.finished:
            await step(call)

    async def _hold_music(self, leg: _AriLeg) -> None:
        if self.config.hold_music_class is None:
            return
        params = {"mohClass": self.config.hold_music_class}
        with contextlib.suppress(TelephonyError):
            await self._request("POST", f"/channels/{leg.channel_id}/moh", params=params)

    async def _dial_second(self, call: _AriCall) -> None:
        if call.finished:
            return
        leg = call.legs[call.sequence[1]]
        try:
            state = await self._originate(call, leg)
        except TelephonyError as exc:
            await self._finish(call, CallEventKind.FAILED, f"could not dial the {leg.role}: {exc.message}")
            return
        await self._apply_state(call, leg, state)

    async def _bridge(self, call: _AriCall) -> None:
        if call.finished:
            return
        agent, visitor = call.legs["agent"], call.legs["visitor"]
        try:
            if call.sequence[0] == "visitor" and self.config.hold_music_class is not None:
                with contextlib.suppress(TelephonyError):
                    await self._request("DELETE", f"/channels/{visitor.channel_id}/moh", allow={404, 409})
            params = {"type": "mixing", "bridgeId": call.bridge_id, "name": call.bridge_id}
            await self._request("POST", "/bridges", params=params)
            call.bridge_created = True
            channels = f"{agent.channel_id},{visitor.channel_id}"
            await self._request("POST", f"/bridges/{call.bridge_id}/addChannel", params={"channel": channels})
        except TelephonyError as exc:
            await self._finish(call, CallEventKind.FAILED, f"could not bridge: {exc.message}")
            return
        call.bridged = True
        self._emit(call, CallEventKind.BRIDGED)

    async def _on_leg_gone(self, call: _AriCall, leg: _AriLeg, cause: int | None, cause_txt: str) -> None:
        if leg.gone:
            return
        leg.gone = True
        if call.finished:
            return
        if call.bridged:
            await self._finish(call, CallEventKind.ENDED, f"{leg.role} hung up")
        elif leg.answered:
            await self._finish(call, CallEventKind.FAILED, f"{leg.role} hung up before the bridge")
        else:
            kind, detail = _unanswered_outcome(leg.role, cause, cause_txt)
            await self._finish(call, kind, detail)

    async def _finish(self, call: _AriCall, kind: CallEventKind, detail: str) -> None:
        """Emit the attempt's terminal event, then hang up whatever is left of it."""
        call.finished = True
        self._emit(call, kind, detail)
        if call.whisper_timer is not None:
            call.whisper_timer.cancel()
            call.whisper_timer = None
        call.after_whisper = None
        for leg in call.legs.values():
            # Forgetting the ids first turns any late StasisStart of these channels into an orphan hang-up.
            self._by_channel.pop(leg.channel_id, None)
            if leg.originated and not leg.gone:
                leg.gone = True
                with contextlib.suppress(TelephonyError):
                    await self._request("DELETE", f"/channels/{leg.channel_id}", allow={404})
        if call.bridge_created:
            with contextlib.suppress(TelephonyError):
                await self._request("DELETE", f"/bridges/{call.bridge_id}", allow={404})
        for playback_id in [pid for pid, owner in self._by_playback.items() if owner is call]:
            del self._by_playback[playback_id]

    def _emit(self, call: _AriCall, kind: CallEventKind, detail: str = "") -> None:
        self._stream.emit(call.order.attempt_id, kind, provider_call_id=call.provider_call_id, detail=detail)

    # --- REST -----------------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str | int] | dict[str, str] | None = None,
        allow: set[int] | frozenset[int] = frozenset(),
    ) -> httpx.Response:
        """One ARI call; 2xx and the `allow`ed statuses return, anything else raises TelephonyError."""
        try:
            response = await self._http.request(method, path, params=params)
        except httpx.TimeoutException as exc:
            raise TelephonyError(f"ARI {method} {path} timed out", retryable=True) from exc
        except httpx.TransportError as exc:
            raise TelephonyError(f"ARI {method} {path} unreachable: {exc}", retryable=True) from exc
        if response.is_success or response.status_code in allow:
            return response
        try:
            message = msgspec.json.decode(response.content, type=_AriError).message
        except msgspec.DecodeError:
            message = response.text[:200]
        retryable = response.status_code >= 500 or response.status_code in (408, 429)
        raise TelephonyError(
            f"ARI {method} {path} -> {response.status_code} {message}".rstrip(), retryable=retryable
        )

    # --- events ---------------------------------------------------------------------------------------

    def _events_url(self) -> str:
        base = self.config.base_url.rstrip("/")
        scheme, _, rest = base.partition("://")
        ws_scheme = "wss" if scheme == "https" else "ws"
        return f"{ws_scheme}://{rest}/ari/events?{httpx.QueryParams({'app': self.config.app})}"

    async def _event_loop(self) -> None:
        token = base64.b64encode(f"{self.config.username}:{self.config.password}".encode()).decode()
        headers = {"Authorization": f"Basic {token}"}
        delay = self.config.reconnect_initial_s
        while not self._closed:
            try:
                async with connect(
                    self._events_url(), additional_headers=headers, open_timeout=self.config.connect_timeout_s
                ) as ws:
                    self._connections += 1
                    log.info("ARI event stream connected (app %s)", self.config.app)
                    delay = self.config.reconnect_initial_s
                    if self._connections > 1:
                        await self._resync()
                    self._connected.set()
                    async for raw in ws:
                        await self._on_message(raw)
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, websockets.ConnectionClosed, websockets.InvalidHandshake) as exc:
                log.warning("ARI event stream lost: %s", exc)
            except Exception:
                log.exception("ARI event stream failed")
            finally:
                self._connected.clear()
            if self._closed:
                return
            # Jitter keeps callback replicas from reconnecting in lockstep after an Asterisk restart.
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.config.reconnect_max_s)

    async def _resync(self) -> None:
        """Events sent while the socket was down are gone: re-read every live leg over REST."""
        async with self._lock:
            for call in list(self._calls.values()):
                for leg in call.legs.values():
                    if call.finished or not leg.originated or leg.gone:
                        continue
                    try:
                        response = await self._request("GET", f"/channels/{leg.channel_id}", allow={404})
                    except TelephonyError as exc:
                        log.warning("cannot re-read channel %s: %s", leg.channel_id, exc)
                        continue
                    if response.status_code == 404:
                        await self._on_leg_gone(call, leg, None, "channel vanished while events were down")
                    else:
                        state = msgspec.json.decode(response.content, type=_Channel).state
                        await self._apply_state(call, leg, state)

    async def _on_message(self, raw: str | bytes) -> None:
        try:
            event = msgspec.json.decode(raw, type=_AriEvent)
        except msgspec.DecodeError:
            log.warning("undecodable ARI event dropped")
            return
        async with self._lock:
            try:
                await self._dispatch(event)
            except Exception:
                # One bad event must not take the event stream (and every other call) down.
                log.exception("ARI event %s failed", event.type)

    async def _dispatch(self, event: _AriEvent) -> None:
        if event.type == "PlaybackFinished" and event.playback is not None:
            call = self._by_playback.pop(event.playback.id, None)
            if call is not None:
                await self._after_whisper(call)
            return
        if event.channel is None:
            return
        entry = self._by_channel.get(event.channel.id)
        if entry is None:
            if event.type == "StasisStart" and event.channel.id.startswith(
                self.config.channel_id_prefix + "-"
            ):
                # Ours but unknown: an originate that timed out and was never retried, or a finished call.
                log.info("hanging up orphan channel %s", event.channel.id)
                with contextlib.suppress(TelephonyError):
                    await self._request("DELETE", f"/channels/{event.channel.id}", allow={404})
            return
        call, role = entry
        leg = call.legs[role]
        if event.type == "ChannelStateChange" and event.channel.state == "Ringing":
            self._mark_ringing(call, leg)
        elif event.type == "StasisStart":
            await self._on_answered(call, leg)
        elif event.type == "StasisEnd" and leg.answered:
            await self._on_leg_gone(call, leg, None, "left the application")
        elif event.type == "ChannelDestroyed":
            await self._on_leg_gone(call, leg, event.cause, event.cause_txt)


def _unanswered_outcome(role: Leg, cause: int | None, cause_txt: str) -> tuple[CallEventKind, str]:
    detail = f"cause {cause} {cause_txt}".strip() if cause is not None else cause_txt
    if cause is None:
        return CallEventKind.FAILED, detail
    if role == "agent":
        if cause in _BUSY_CAUSES or cause in _NO_ANSWER_CAUSES:
            return CallEventKind.AGENT_NO_ANSWER, detail
        return CallEventKind.FAILED, detail
    if cause in _BUSY_CAUSES:
        return CallEventKind.VISITOR_BUSY, detail
    if cause in _NO_ANSWER_CAUSES:
        return CallEventKind.VISITOR_NO_ANSWER, detail
    return CallEventKind.FAILED, detail
