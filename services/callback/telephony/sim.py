"""A simulated PBX for development, demos and tests: the event sequences of a real one, without phones.

Automatic mode draws each leg's fate from SimConfig and plays it out with scaled delays. Manual mode rings
and then waits for a person (the agent console) to answer, reject or hang up. `script()` pins the outcome
for one visitor number, which tests use to get a deterministic call regardless of the probabilities.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import msgspec

from services.callback.telephony.base import (
    ANSWERED_KIND,
    RINGING_KIND,
    CallEvent,
    CallEventKind,
    CallOrder,
    CallOutcome,
    EventStream,
    Leg,
    TelephonyError,
    prune_finished,
)

__all__ = ["RejectReason", "SimConfig", "SimStateError", "SimulatedPbx"]

log = logging.getLogger(__name__)

RejectReason: TypeAlias = Literal["busy", "no_answer", "voicemail"]
_LegFate: TypeAlias = Literal["answer", "busy", "no_answer", "voicemail", "failed"]


class SimConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How simulated people behave. Delays are seconds before `time_scale`.

    The visitor is busy with busy_p, reaches voicemail with voicemail_p, otherwise answers with
    visitor_answer_p or lets it ring out. The agent answers with agent_answer_p.
    """

    ring_s: float = 3.0
    agent_answer_p: float = 1.0
    visitor_answer_p: float = 0.8
    busy_p: float = 0.1
    voicemail_p: float = 0.05
    talk_s: float = 20.0
    manual: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("agent_answer_p", "visitor_answer_p", "busy_p", "voicemail_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.busy_p + self.voicemail_p > 1.0:
            raise ValueError("busy_p + voicemail_p must not exceed 1")
        if self.ring_s < 0 or self.talk_s < 0:
            raise ValueError("ring_s and talk_s must not be negative")


class SimStateError(ValueError):
    """A manual action that does not fit the call: unknown attempt, or that leg is not ringing."""


# What each scripted outcome means for the agent and the visitor leg.
_SCRIPTED_FATES: dict[CallOutcome, tuple[_LegFate, _LegFate]] = {
    CallOutcome.CONNECTED: ("answer", "answer"),
    CallOutcome.BUSY: ("answer", "busy"),
    CallOutcome.VISITOR_NO_ANSWER: ("answer", "no_answer"),
    CallOutcome.VOICEMAIL: ("answer", "voicemail"),
    CallOutcome.AGENT_NO_ANSWER: ("no_answer", "answer"),
    CallOutcome.FAILED: ("failed", "failed"),
}


@dataclass(eq=False)
class _SimCall:
    order: CallOrder
    provider_call_id: str
    fates: dict[Leg, _LegFate]
    manual: bool
    task: asyncio.Task[None] | None = None
    bridged: bool = False
    # Manual mode: the leg that is ringing now and the decision a person will make for it.
    ringing_leg: Leg | None = None
    decision: asyncio.Future[_LegFate] | None = None
    legs_done: list[Leg] = field(default_factory=list)


class SimulatedPbx:
    """TelephonyAdapter playing out calls in-process; `time_scale` shrinks every delay (tests use 0.001)."""

    def __init__(
        self, config: SimConfig | None = None, *, time_scale: float = 1.0, name: str = "sim"
    ) -> None:
        if time_scale < 0:
            raise ValueError("time_scale must not be negative")
        self.name = name
        self.config = config or SimConfig()
        self.time_scale = time_scale
        self._rng = random.Random(self.config.seed)
        self._calls: dict[str, _SimCall] = {}
        self._scripts: dict[str, CallOutcome] = {}
        self._ids = itertools.count(1)
        self._stream = EventStream()
        self._closed = False

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        # Nothing to connect to; calls may be placed right away.
        return None

    async def aclose(self) -> None:
        self._closed = True
        tasks = [call.task for call in self._calls.values() if call.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._stream.close()

    # --- test and console controls --------------------------------------------------------------------

    def script(self, visitor_phone: str, outcome: CallOutcome | None) -> None:
        """Force the outcome of every later call to this number (None removes the script).

        A scripted call plays out by itself, in manual mode too.
        """
        if outcome is None:
            self._scripts.pop(visitor_phone, None)
        else:
            self._scripts[visitor_phone] = outcome

    async def answer(self, attempt_id: str, leg: Leg) -> None:
        """A person picks up the ringing leg (manual mode)."""
        self._decide(attempt_id, leg, "answer")

    async def reject(self, attempt_id: str, leg: Leg, reason: RejectReason) -> None:
        """The ringing leg does not pick up: busy, rings out, or its voicemail answers (manual mode)."""
        self._decide(attempt_id, leg, reason)

    def _decide(self, attempt_id: str, leg: Leg, fate: _LegFate) -> None:
        call = self._calls.get(attempt_id)
        if call is None or self._stream.is_finished(attempt_id):
            raise SimStateError(f"attempt {attempt_id} is not in progress")
        if call.ringing_leg != leg or call.decision is None or call.decision.done():
            raise SimStateError(f"the {leg} leg of attempt {attempt_id} is not ringing")
        call.decision.set_result(fate)

    # --- TelephonyAdapter -----------------------------------------------------------------------------

    def can_dial(self) -> bool:
        return True

    async def place_call(self, order: CallOrder) -> str:
        if self._closed:
            raise TelephonyError("simulated PBX is closed", retryable=False)
        existing = self._calls.get(order.attempt_id)
        if existing is not None:
            return existing.provider_call_id
        scripted = self._scripts.get(order.visitor_phone)
        if scripted is not None:
            agent_fate, visitor_fate = _SCRIPTED_FATES[scripted]
        else:
            agent_fate, visitor_fate = self._draw_fates()
        call = _SimCall(
            order=order,
            provider_call_id=f"sim-{next(self._ids):06d}",
            fates={"agent": agent_fate, "visitor": visitor_fate},
            manual=self.config.manual and scripted is None,
        )
        prune_finished(self._calls, lambda c: self._stream.is_finished(c.order.attempt_id))
        self._calls[order.attempt_id] = call
        call.task = asyncio.create_task(self._play(call), name=f"sim-call-{order.attempt_id}")
        return call.provider_call_id

    async def hangup(self, attempt_id: str) -> None:
        call = self._calls.get(attempt_id)
        if call is None or self._stream.is_finished(attempt_id):
            return
        # Emit before cancelling: the cancelled task never gets to emit anything after this.
        if call.bridged:
            self._emit(call, CallEventKind.ENDED, "hung up")
        else:
            self._emit(call, CallEventKind.FAILED, "hung up before the bridge")
        if call.task is not None:
            call.task.cancel()

    async def call_exists(self, attempt_id: str) -> bool | None:
        # The simulated PBX lives in this process: a call it does not know does not exist.
        return attempt_id in self._calls and not self._stream.is_finished(attempt_id)

    async def events(self) -> AsyncIterator[CallEvent]:
        async for event in self._stream:
            yield event

    # --- the call itself ------------------------------------------------------------------------------

    def _draw_fates(self) -> tuple[_LegFate, _LegFate]:
        # Drawn at placement so a seeded run does not depend on how concurrent calls interleave.
        cfg = self.config
        agent: _LegFate = "answer" if self._rng.random() < cfg.agent_answer_p else "no_answer"
        roll = self._rng.random()
        visitor: _LegFate
        if roll < cfg.busy_p:
            visitor = "busy"
        elif roll < cfg.busy_p + cfg.voicemail_p:
            visitor = "voicemail"
        else:
            visitor = "answer" if self._rng.random() < cfg.visitor_answer_p else "no_answer"
        return agent, visitor

    async def _play(self, call: _SimCall) -> None:
        legs: tuple[Leg, Leg] = (
            ("agent", "visitor") if call.order.order == "agent_first" else ("visitor", "agent")
        )
        try:
            for leg in legs:
                self._emit(call, RINGING_KIND[leg])
                fate = await self._ring(call, leg)
                if fate != "answer":
                    kind, detail = _failure(leg, fate)
                    self._emit(call, kind, detail)
                    return
                self._emit(call, ANSWERED_KIND[leg])
                call.legs_done.append(leg)
            call.bridged = True
            self._emit(call, CallEventKind.BRIDGED)
            if call.manual:
                # Talks until someone calls hangup(), which cancels this task.
                await asyncio.Event().wait()
            else:
                await self._sleep(self.config.talk_s)
                self._emit(call, CallEventKind.ENDED, "visitor hung up")
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - a bug here must not leave the attempt without an outcome
            log.exception("simulated call %s crashed", call.order.attempt_id)
            self._emit(call, CallEventKind.FAILED, "simulator error")

    async def _ring(self, call: _SimCall, leg: Leg) -> _LegFate:
        if call.manual:
            call.ringing_leg = leg
            call.decision = asyncio.get_running_loop().create_future()
            try:
                return await call.decision
            finally:
                call.ringing_leg = None
                call.decision = None
        fate = call.fates[leg]
        ring_s = self.config.ring_s
        delay = {
            "answer": ring_s,
            "busy": ring_s / 3,  # a busy signal comes back quickly
            "voicemail": min(ring_s * 2, float(call.order.ring_timeout_s)),
            "no_answer": float(call.order.ring_timeout_s),
            "failed": 0.0,
        }[fate]
        await self._sleep(delay)
        return fate

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds * self.time_scale)

    def _emit(self, call: _SimCall, kind: CallEventKind, detail: str = "") -> None:
        self._stream.emit(call.order.attempt_id, kind, provider_call_id=call.provider_call_id, detail=detail)


def _failure(leg: Leg, fate: _LegFate) -> tuple[CallEventKind, str]:
    if fate == "failed":
        return CallEventKind.FAILED, "trunk failure (simulated)"
    if leg == "agent":
        # Whatever stops the agent from picking up, the attempt needs another agent: one kind for all.
        return CallEventKind.AGENT_NO_ANSWER, fate.replace("_", " ")
    kinds: dict[_LegFate, CallEventKind] = {
        "busy": CallEventKind.VISITOR_BUSY,
        "no_answer": CallEventKind.VISITOR_NO_ANSWER,
        "voicemail": CallEventKind.VOICEMAIL,
    }
    return kinds[fate], fate.replace("_", " ")
