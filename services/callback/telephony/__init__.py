"""Telephony adapters for callback dialing: the contract, a simulated PBX, Asterisk ARI and MANGO OFFICE."""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

from services.callback.telephony.ari import AriConfig, AsteriskAriAdapter
from services.callback.telephony.base import (
    CallEvent,
    CallEventKind,
    CallOrder,
    CallOutcome,
    DialOrder,
    TelephonyAdapter,
    TelephonyError,
    outcome_of,
)
from services.callback.telephony.cloud import MangoConfig, MangoOfficeAdapter
from services.callback.telephony.sim import SimConfig, SimulatedPbx

__all__ = [
    "AdapterName",
    "AriConfig",
    "AsteriskAriAdapter",
    "CallEvent",
    "CallEventKind",
    "CallOrder",
    "CallOutcome",
    "DialOrder",
    "MangoConfig",
    "MangoOfficeAdapter",
    "SimConfig",
    "SimulatedPbx",
    "TelephonyAdapter",
    "TelephonyError",
    "TelephonySettings",
    "build_adapter",
    "outcome_of",
]

AdapterName: TypeAlias = Literal["sim", "asterisk", "mango"]


class TelephonySettings(msgspec.Struct, frozen=True, kw_only=True):
    """Per-adapter configuration; only the section of the chosen adapter has to be filled in."""

    sim: SimConfig = msgspec.field(default_factory=SimConfig)
    sim_time_scale: float = 1.0
    asterisk: AriConfig | None = None
    mango: MangoConfig | None = None


def build_adapter(name: AdapterName, settings: TelephonySettings | None = None) -> TelephonyAdapter:
    """The adapter called `name` (the ABONENT_TELEPHONY value), built from its section of `settings`."""
    settings = settings or TelephonySettings()
    if name == "sim":
        return SimulatedPbx(settings.sim, time_scale=settings.sim_time_scale)
    if name == "asterisk":
        if settings.asterisk is None:
            raise ValueError(
                "telephony 'asterisk' needs TelephonySettings.asterisk (base_url, username, ...)"
            )
        return AsteriskAriAdapter(settings.asterisk)
    if name == "mango":
        if settings.mango is None:
            raise ValueError("telephony 'mango' needs TelephonySettings.mango (api_key, api_salt)")
        return MangoOfficeAdapter(settings.mango)
    raise ValueError(f"unknown telephony adapter {name!r}; expected sim, asterisk or mango")
