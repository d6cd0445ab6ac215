"""The sandbox registry's app: takes registration records (idempotent by submission id), decides each after
a delay (accept, or reject with a reason), and lets tests inject faults and preset verdicts."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from litestar import Litestar, Request, Response, delete, get, post, put
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody

# Built-in rules, so a dev can see a rejection without the test controls (see `decide`).
UNKNOWN_TAC_PREFIX = "00"  # IMEIs whose TAC starts with 00 are "not in the IMEI database"
MISMATCH_SERIES = "0000"  # a passport series the sandbox "cannot find"
FAULT_STEPS = ("submit", "status")


@dataclass
class Received:
    submission_id: str
    record: dict[str, Any]
    received_at: float
    posts: int = 1
    outcome: str = "pending"
    reason: str = ""


@dataclass
class Fault:
    step: str
    status: int  # the HTTP status to answer; 0 with delay_s: answer late (a client timeout)
    delay_s: float
    times: int


@dataclass
class RegistryState:
    delay_s: float
    submissions: dict[str, Received] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)  # msisdn → rejection reason ("" accepts)
    faults: list[Fault] = field(default_factory=list)


def _state(request: Request[Any, Any, Any]) -> RegistryState:
    state: RegistryState = request.app.state.registry
    return state


def decide(state: RegistryState, record: dict[str, Any]) -> tuple[str, str]:
    """The verdict for a record: a preset one for its number, else the built-in rules, else accepted."""
    msisdn = str(record.get("msisdn", ""))
    if msisdn in state.verdicts:
        reason = state.verdicts[msisdn]
        return ("rejected", reason) if reason else ("accepted", "")
    device = record.get("device") or {}
    if device.get("id_kind") == "imei" and str(device.get("id", "")).startswith(UNKNOWN_TAC_PREFIX):
        return "rejected", "invalid_imei"
    employee = record.get("employee") or {}
    if employee.get("passport_series") == MISMATCH_SERIES:
        return "rejected", "passport_mismatch"
    if not record.get("employee") and not record.get("device"):
        return "rejected", "no_user_data"
    return "accepted", ""


def _take_fault(state: RegistryState, step: str) -> Fault | None:
    for fault in state.faults:
        if fault.step == step and fault.times > 0:
            fault.times -= 1
            return fault
    return None


async def _late(fault: Fault | None) -> Response[Any] | None:
    """A fault's effect after the request was handled: answer late (a client timeout) and/or with an error."""
    if fault is None:
        return None
    if fault.delay_s:
        await asyncio.sleep(fault.delay_s)
    return _error(fault.status, "injected", f"injected fault at {fault.step}") if fault.status else None


def _error(status: int, code: str, message: str) -> Response[Any]:
    return Response({"error": {"code": code, "message": message, "field": None}}, status_code=status)


def _status(state: RegistryState, item: Received) -> dict[str, Any]:
    if item.outcome == "pending" and time.monotonic() >= item.received_at + state.delay_s:
        item.outcome, item.reason = decide(state, item.record)
    return {
        "submission_id": item.submission_id,
        "outcome": item.outcome,
        "reason": item.reason,
        "registry_ref": f"SBX-{item.submission_id[:8]}",
    }


@post("/submissions", status_code=202)
async def submit(request: Request[Any, Any, Any], data: JSONBody[dict[str, Any]]) -> Any:
    """Take a record; the same submission_id again is the same submission (never a second one)."""
    state = _state(request)
    fault = _take_fault(state, "submit")
    if fault is not None and fault.status and not fault.delay_s:
        return _error(fault.status, "injected", "injected fault at submit")  # refused before taking it
    try:
        submission_id = str(uuid.UUID(str(data.get("submission_id"))))
    except ValueError:
        return _error(400, "invalid_submission_id", "submission_id must be a UUID")
    if not data.get("msisdn"):
        return _error(400, "missing_msisdn", "msisdn is required")
    item = state.submissions.get(submission_id)
    if item is None:
        item = Received(submission_id=submission_id, record=data, received_at=time.monotonic())
        state.submissions[submission_id] = item
    else:
        item.posts += 1
    # A delayed fault happens after the record was taken: the client cannot know whether it was.
    return await _late(fault) or _status(state, item)


@get("/submissions/{submission_id:str}")
async def status(request: Request[Any, Any, Any], submission_id: FromPath[str]) -> Any:
    state = _state(request)
    failed = await _late(_take_fault(state, "status"))
    if failed is not None:
        return failed
    item = state.submissions.get(submission_id)
    if item is None:
        return _error(404, "unknown_submission", "no such submission")
    return _status(state, item)


@get("/health/ready")
async def ready() -> dict[str, str]:
    """The probe `abonent up` waits on."""
    return {"status": "ok"}


@post("/sandbox/faults", status_code=201)
async def add_fault(request: Request[Any, Any, Any], data: JSONBody[dict[str, Any]]) -> Any:
    """Inject a fault: {"step": "submit|status", "status": 503, "delay_s": 0, "times": 1}; a delay longer
    than the client's timeout (with status 0) is a timeout."""
    step = str(data.get("step", ""))
    if step not in FAULT_STEPS:
        return _error(400, "invalid", f"step must be one of {FAULT_STEPS}")
    fault = Fault(
        step=step,
        status=int(data.get("status", 503) or 0),
        delay_s=float(data.get("delay_s", 0) or 0),
        times=int(data.get("times", 1) or 1),
    )
    _state(request).faults.append(fault)
    return {"step": fault.step, "status": fault.status, "delay_s": fault.delay_s, "times": fault.times}


@delete("/sandbox/faults")
async def clear_faults(request: Request[Any, Any, Any]) -> None:
    _state(request).faults.clear()


@post("/sandbox/verdicts", status_code=201)
async def preset_verdict(request: Request[Any, Any, Any], data: JSONBody[dict[str, Any]]) -> dict[str, str]:
    """Decide a number's records in advance: {"msisdn": "+7…", "reason": "passport_mismatch"} rejects,
    an empty reason accepts."""
    msisdn, reason = str(data.get("msisdn", "")), str(data.get("reason", ""))
    _state(request).verdicts[msisdn] = reason
    return {"msisdn": msisdn, "reason": reason}


@put("/sandbox/delay")
async def set_delay(request: Request[Any, Any, Any], data: JSONBody[dict[str, Any]]) -> dict[str, float]:
    """Change how long records wait before they are decided ({"delay_s": 0} decides the waiting ones)."""
    state = _state(request)
    state.delay_s = float(data.get("delay_s", 0) or 0)
    return {"delay_s": state.delay_s}


@get("/sandbox/submissions")
async def received(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    """Everything received, oldest first, with how many POSTs each submission id took."""
    return [
        {"submission_id": s.submission_id, "posts": s.posts, "outcome": s.outcome, "record": s.record}
        for s in _state(request).submissions.values()
    ]


def create_registry_app(*, delay_s: float = 2.0) -> Litestar:
    """The sandbox; each record is decided `delay_s` seconds after it first arrives."""
    return Litestar(
        route_handlers=[submit, status, ready, add_fault, clear_faults, preset_verdict, set_delay, received],
        state=State({"registry": RegistryState(delay_s=delay_s)}),
        openapi_config=None,
    )
