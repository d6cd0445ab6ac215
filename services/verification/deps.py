"""What the verification routes share: the service object, injected as `service`."""

from __future__ import annotations

from litestar.datastructures import State
from litestar.di import NamedDependency

from services.common.web import runtime_extra
from services.verification.usecases import VerificationService

Service = NamedDependency[VerificationService]


def service_of(state: State) -> VerificationService:
    return runtime_extra(state, "verification", VerificationService)
