"""What the verification use cases share: the service's state, case views, timers and billing commands."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from services.common import db, scheduler
from services.common.clock import Clock
from services.common.crypto import DataProtector
from services.common.domain_errors import NotFound
from services.verification import store
from services.verification.corporate.lifecycle import CorporateFlow
from services.verification.domain.compare import Holder
from services.verification.domain.deadlines import last_day, reminder_times
from services.verification.domain.links import link_url, token_for
from services.verification.domain.policy import CaseReason, Policy
from services.verification.identity.base import IdentityProvider
from services.verification.schemas import ACTIVE_STATUSES, CaseView, HolderView
from services.verification.settings import VerificationSettings
from services.verification.usecases.billing import BILLING, BILLING_SUBSCRIBER, BillingCommand

JOB_REMINDER = "verification.reminder"
JOB_DEADLINE = "verification.deadline"
JOB_PURGE = "verification.purge"
SYSTEM = "system"
SUBSCRIBER = "subscriber"
BROWSER_PURPOSE = "verification.browser"
# Deterministic ids for what must happen once per case (a reminder, a billing command): a job run twice
# (a lease taken over mid-commit) produces the same event id, which JetStream and the inbox drop.
ONCE_IDS = uuid.UUID("6f1d3a52-0c7e-4d55-9b1e-2f7c8a9d0e11")


@dataclass(slots=True)
class CaseCore:
    """The service's dependencies and the helpers every use-case group needs; no public operations."""

    pool: db.Pool
    protector: DataProtector
    own: VerificationSettings
    policies: dict[CaseReason, Policy]
    clock: Clock
    public_url: str
    link_base: str
    provider: IdentityProvider | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The zone corporate SIM deadlines are counted in (ABONENT_CORPSIM_ZONE): an employee's case decides
    # their company's SIM, whose deadline moves in the same transaction.
    corpsim_zone: str = "Europe/Moscow"

    @property
    def corporate_flow(self) -> CorporateFlow:
        return CorporateFlow(protector=self.protector, tz=self.corpsim_zone)

    @property
    def redirect_uri(self) -> str:
        return f"{self.public_url}/v/callback"

    # --- helpers -----------------------------------------------------------------------------------------

    def _link(self, link_id: str) -> str:
        return link_url(self.link_base, token_for(link_id, self.protector.sign))

    async def current_link(self, conn: db.Connection, case_id: uuid.UUID) -> str | None:
        """The case's unspent link (for the corporate SIM API, which shows it to the company)."""
        link = await store.current_link(conn, case_id)
        return None if link is None or link.spent_at else self._link(link.id)

    def _holder(self, row: store.CaseRow) -> Holder | None:
        if row.holder_enc is None:
            return None
        plain = self.protector.decrypt(row.holder_enc, store.HOLDER_CONTEXT, row.id)
        return msgspec.json.decode(plain, type=Holder)

    def _msisdn(self, row: store.CaseRow) -> str:
        if row.msisdn_enc is None:
            return ""
        return self.protector.decrypt(row.msisdn_enc, store.MSISDN_CONTEXT, row.id)

    async def _view(self, conn: db.Connection, row: store.CaseRow) -> CaseView:
        holder = self._holder(row)
        link = await store.current_link(conn, row.id) if row.status in ACTIVE_STATUSES else None
        return CaseView(
            id=row.id,
            status=row.status,  # type: ignore[arg-type]  # the table's check constraint
            reason=row.reason,  # type: ignore[arg-type]
            msisdn=row.msisdn_masked,
            lang=row.lang,  # type: ignore[arg-type]
            tz=row.tz,
            opened_at=row.opened_at,
            deadline=row.deadline,
            last_day=last_day(row.deadline, row.tz),
            suspended_at=row.suspended_at,
            closed_at=row.closed_at,
            mismatch_fields=row.mismatch_fields,
            holder=None if holder is None else mask_holder(holder),
            link=None if link is None or link.spent_at else self._link(link.id),
        )

    async def _case_for_update(self, conn: db.Connection, case_id: uuid.UUID) -> store.CaseRow:
        row = await store.get_case(conn, case_id, lock=True)
        if row is None:
            raise NotFound("case_not_found", f"No case {case_id}", field="case_id")
        return row

    async def _schedule(
        self, conn: db.Connection, row: store.CaseRow, policy: Policy, now: dt.datetime
    ) -> None:
        """The case's deadline and reminders, in the caller's transaction (again = moved)."""
        payload = {"case_id": str(row.id), "deadline": row.deadline.isoformat()}
        await scheduler.schedule(conn, JOB_DEADLINE, str(row.id), row.deadline, payload)
        planned = reminder_times(policy.reminder_days, row.deadline, row.tz, now)
        for days in policy.reminder_days:
            key = f"{row.id}:{days}"
            if days in planned:
                await scheduler.schedule(conn, JOB_REMINDER, key, planned[days], {**payload, "days": days})
            else:
                await scheduler.cancel(conn, JOB_REMINDER, key)

    async def _unschedule(self, conn: db.Connection, row: store.CaseRow) -> None:
        await scheduler.cancel(conn, JOB_DEADLINE, str(row.id))
        for days in self.policies[row.reason].reminder_days:  # type: ignore[index]
            await scheduler.cancel(conn, JOB_REMINDER, f"{row.id}:{days}")

    async def _close(self, conn: db.Connection, row: store.CaseRow, status: str, now: dt.datetime) -> None:
        await store.set_status(conn, row.id, status, closed_at=now)
        await self._unschedule(conn, row)
        purge_at = now + dt.timedelta(days=self.own.verification_purge_days)
        await scheduler.schedule(conn, JOB_PURGE, str(row.id), purge_at, {"case_id": str(row.id)})

    async def _billing(
        self,
        conn: db.Connection,
        row: store.CaseRow,
        command: Literal["suspend", "restore"],
        reason: str,
        now: dt.datetime,
    ) -> None:
        command_id = uuid.uuid5(ONCE_IDS, f"{row.id}:{command}")
        body = BillingCommand(
            command_id=command_id,
            command=command,
            case_id=row.id,
            msisdn=self._msisdn(row),
            reason=reason,
            occurred_at=now,
        )
        queued = await BILLING.enqueue(
            conn,
            subscriber=BILLING_SUBSCRIBER,
            event_id=command_id,
            event_type=f"verification.billing.{command}.v1",
            payload=msgspec.json.encode(body),
        )
        if queued is not None:
            await store.add_timeline(
                conn, row.id, now, f"billing_{command}", SYSTEM, detail={"command_id": str(command_id)}
            )


def mask_holder(holder: Holder) -> HolderView:
    initials = " ".join(f"{part[0]}." for part in (holder.first_name, holder.middle_name) if part)
    return HolderView(
        name=f"{holder.last_name} {initials}".strip(),
        passport=f"{holder.passport_series[:2]}** ***{holder.passport_number[-3:]}",
    )
