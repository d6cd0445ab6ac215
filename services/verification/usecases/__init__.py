"""Verification use cases: cases (back office), sign_in (the subscriber), deadlines (timers)."""

from __future__ import annotations

from services.verification.usecases.billing import (
    BILLING,
    BILLING_SUBSCRIBER,
    BillingCommand,
    billing_endpoint,
)
from services.verification.usecases.cases import CaseUseCases
from services.verification.usecases.common import JOB_DEADLINE, JOB_PURGE, JOB_REMINDER, mask_holder
from services.verification.usecases.deadlines import DeadlineJobs
from services.verification.usecases.sign_in import LinkPage, SignInReturn, SignInUseCases

__all__ = [
    "BILLING",
    "BILLING_SUBSCRIBER",
    "JOB_DEADLINE",
    "JOB_PURGE",
    "JOB_REMINDER",
    "BillingCommand",
    "LinkPage",
    "SignInReturn",
    "VerificationService",
    "billing_endpoint",
    "mask_holder",
]


class VerificationService(CaseUseCases, SignInUseCases, DeadlineJobs):
    """The whole service: one object the app wires once (its fields live on CaseCore, a dataclass)."""

    __slots__ = ()
