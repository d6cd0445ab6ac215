"""Test controls: inject ESIA faults, clear them, read what clients sent."""

from __future__ import annotations

import re
from typing import Any

from litestar import Request, delete, get, post
from litestar.params import JSONBody

from services.verification.sandbox_idp.state import FAULT_STEPS, TOKEN_FAULTS, Fault, RestError, sandbox_of


@post("/sandbox/faults", status_code=201)
async def add_fault(request: Request[Any, Any, Any], data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
    """Inject a fault: {"step": "ac|te|prns", "error": "ESIA-007007", "delay_s": 2, "token": "expired",
    "times": 1}. Errors may be given as "007007" too."""
    step = str(data.get("step", ""))
    error = str(data.get("error", "") or "")
    if error and not error.startswith("ESIA-"):
        error = f"ESIA-{error}"
    token_fault = str(data.get("token", "") or "")
    if step not in FAULT_STEPS or (error and not re.fullmatch(r"ESIA-\d{6}", error)):
        raise RestError(400, "invalid", f"step must be one of {FAULT_STEPS}; error like ESIA-007007")
    if token_fault and (step != "te" or token_fault not in TOKEN_FAULTS):
        raise RestError(400, "invalid", f"token faults are for step te: {TOKEN_FAULTS}")
    fault = Fault(
        step=step,
        error=error,
        delay_s=float(data.get("delay_s", 0) or 0),
        token=token_fault,
        times=int(data.get("times", 1) or 1),
    )
    sandbox_of(request).faults.append(fault)
    return {
        "step": fault.step,
        "error": fault.error,
        "delay_s": fault.delay_s,
        "token": fault.token,
        "times": fault.times,
    }


@delete("/sandbox/faults")
async def clear_faults(request: Request[Any, Any, Any]) -> None:
    sandbox_of(request).faults.clear()


@get("/sandbox/requests")
async def recorded_requests(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    """What clients sent to v2/ac and v3/te, oldest first (tests parse them field by field)."""
    return sandbox_of(request).requests


ROUTES = [add_fault, clear_faults, recorded_requests]
