"""The registry adapter: what a submission carries (Decree 844 fields) and what the registry can answer.

No public registry API exists; the HTTP client (http.py) speaks the sandbox registry's small protocol, and
a real integration is another implementation of `Registry`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal, Protocol

import msgspec

Outcome = Literal["pending", "accepted", "rejected"]


class EmployeeRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A user SIM: the person (confirmed through their own ESIA account) and the passport."""

    last_name: str
    first_name: str
    middle_name: str = ""
    birth_date: dt.date
    passport_series: str
    passport_number: str
    passport_issue_date: dt.date
    passport_issuer_code: str


class DeviceRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A device SIM (M2M/IoT): the equipment and where it is installed."""

    type: str
    name: str
    id_kind: Literal["imei", "mac"]
    id: str
    installation_address: str = ""


class Submission(msgspec.Struct, frozen=True, kw_only=True):
    """One registration record. `submission_id` is the idempotency key: resending it never duplicates."""

    submission_id: uuid.UUID
    msisdn: str
    company_name: str
    company_inn: str
    company_ogrn: str
    operator_name: str
    operator_ogrn: str
    employee: EmployeeRecord | None = None
    device: DeviceRecord | None = None


class Status(msgspec.Struct, frozen=True, kw_only=True):
    """Where a submission stands at the registry; `reason` names why it was rejected."""

    submission_id: uuid.UUID
    outcome: Outcome
    reason: str = ""
    registry_ref: str = ""


class RegistryError(Exception):
    """The registry could not be asked."""


class RegistryUnavailable(RegistryError):
    """Transient (5xx, timeout, connection): the outcome is unknown; retry the same submission id later."""


class RegistryRefused(RegistryError):
    """The registry refused the request itself (4xx): retrying the same record cannot help."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Registry(Protocol):
    async def submit(self, submission: Submission) -> Status:
        """Send (or resend) a record; the registry answers where that submission id stands."""
        ...

    async def status(self, submission_id: uuid.UUID) -> Status:
        """Ask where a submission stands (polling, until it is decided)."""
        ...
