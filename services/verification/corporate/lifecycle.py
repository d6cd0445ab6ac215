"""A corporate SIM's life after binding: registration deadlines on the shared timers, reminders, suspension
and restoration, and the company's signed webhooks on every change."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from typing import Any

import msgspec

from services.common import db, outbox, scheduler
from services.common.crypto import DataProtector
from services.common.events import (
    AnyEvent,
    CorpSimEvent,
    CorpSimRestored,
    CorpSimState,
    CorpSimSuspensionDue,
)
from services.common.scheduler import Job
from services.common.webhooks import Endpoint, WebhookChannel
from services.verification.corporate import flow_store, store
from services.verification.corporate.domain import deadlines

log = logging.getLogger(__name__)

JOB_SIM_DEADLINE = "corpsim.deadline"
JOB_SIM_REMINDER = "corpsim.reminder"
JOB_DEADLINE_SWEEP = "corpsim.deadline_sweep"
SYSTEM = "system"
# Stable ids for effects that must happen once per (SIM, deadline) however often a job runs.
ONCE_IDS = uuid.UUID("6f1c3b9e-6d0e-4c55-9a43-0c1f7e4b2a11")
SWEEP_BATCH = 500

CORPORATE = WebhookChannel(name="corporate", disabled_reason="the company has no webhook URL")


class CompanyWebhook(msgspec.Struct, kw_only=True, frozen=True):
    """The body a company's webhook receives (signed; docs/webhooks.md). Its own number in full; no
    personal data of the employee (the company has it; the webhook could be logged on their side)."""

    event_id: uuid.UUID
    type: str
    company_id: uuid.UUID
    sim_id: uuid.UUID
    msisdn: str
    state: str
    version: int
    occurred_at: dt.datetime
    from_state: str | None = None
    reason: str = ""
    deadline: dt.datetime | None = None
    days_left: int | None = None


_encoder = msgspec.json.Encoder()


@dataclasses.dataclass(frozen=True, kw_only=True)
class CorporateFlow:
    """Deadlines, reminders, suspension/restoration and company webhooks; every method runs in the
    caller's transaction (`conn`)."""

    protector: DataProtector
    tz: str

    def _msisdn(self, target: flow_store.DeadlineTarget) -> str:
        return self.protector.decrypt(target.msisdn_enc, store.MSISDN_CONTEXT, target.number_id)

    # --- deadlines ------------------------------------------------------------------------------------

    async def plan_deadline(
        self, conn: db.Connection, target: flow_store.DeadlineTarget, now: dt.datetime
    ) -> None:
        """Give a not-registered SIM without a deadline its deadline and reminders (nothing otherwise)."""
        if target.status == "accepted" or target.deadline is not None:
            return
        case: deadlines.DeadlineCase = "rejected" if target.status == "rejected" else "unregistered"
        use_from = target.use_from if target.binding == "device" else None
        deadline = deadlines.deadline_for(case, now, self.tz, use_from=use_from)
        await flow_store.set_deadline(
            conn, target.company_id, target.id, deadline=deadline, suspended_at=target.suspended_at, now=now
        )
        await self._schedule(conn, target, case, deadline, now)
        await store.add_sim_timeline(
            conn,
            target.company_id,
            target.id,
            at=now,
            kind="deadline_set",
            actor=SYSTEM,
            detail={"deadline": deadline.isoformat(), "policy": case},
        )

    async def _schedule(
        self,
        conn: db.Connection,
        target: flow_store.DeadlineTarget,
        case: deadlines.DeadlineCase,
        deadline: dt.datetime,
        now: dt.datetime,
    ) -> None:
        payload = {
            "company_id": str(target.company_id),
            "sim_id": str(target.id),
            "deadline": deadline.isoformat(),
        }
        await scheduler.schedule(conn, JOB_SIM_DEADLINE, str(target.id), deadline, payload)
        for days, at in deadlines.reminder_times(case, deadline, self.tz, now).items():
            await scheduler.schedule(
                conn, JOB_SIM_REMINDER, f"{target.id}:{days}", at, {**payload, "days": days}
            )

    async def set_use_from(
        self, conn: db.Connection, company_id: uuid.UUID, sim_id: uuid.UUID, day: dt.date, now: dt.datetime
    ) -> dt.datetime | None:
        """A device SIM starts service on `day`: its deadline moves to 3 working days before, if earlier.

        Returns the SIM's deadline, or None for a SIM that is not the company's."""
        if not await flow_store.set_use_from(conn, company_id, sim_id, day):
            return None
        target = await flow_store.deadline_target(conn, company_id, sim_id)
        assert target is not None  # updated just above in this transaction
        if target.status == "accepted":
            return None
        if target.binding != "device":
            return target.deadline
        device_deadline = deadlines.end_of_working_day(deadlines.device_last_day(day), self.tz)
        if target.deadline is not None and target.deadline <= device_deadline:
            return target.deadline
        await flow_store.set_deadline(
            conn, company_id, sim_id, deadline=device_deadline, suspended_at=target.suspended_at, now=now
        )
        case: deadlines.DeadlineCase = "rejected" if target.status == "rejected" else "unregistered"
        await self._schedule(conn, target, case, device_deadline, now)
        await store.add_sim_timeline(
            conn,
            company_id,
            sim_id,
            at=now,
            kind="deadline_set",
            actor=SYSTEM,
            detail={
                "deadline": device_deadline.isoformat(),
                "policy": "device_use_from",
                "use_from": day.isoformat(),
            },
        )
        return device_deadline

    async def registered(
        self, conn: db.Connection, company_id: uuid.UUID, sim_id: uuid.UUID, now: dt.datetime
    ) -> None:
        """The registry accepted the SIM (in its transaction): no deadline any more; restored if suspended."""
        target = await flow_store.deadline_target(conn, company_id, sim_id)
        if target is None:
            return
        await scheduler.cancel(conn, JOB_SIM_DEADLINE, str(sim_id))
        for days in {d for p in deadlines.SIM_POLICIES.values() for d in p.reminder_working_days}:
            await scheduler.cancel(conn, JOB_SIM_REMINDER, f"{sim_id}:{days}")
        version = await flow_store.set_deadline(
            conn, company_id, sim_id, deadline=None, suspended_at=None, now=now
        )
        if target.suspended_at is None:
            return
        await outbox.append(
            conn,
            CorpSimRestored(
                event_id=uuid.uuid5(ONCE_IDS, f"{sim_id}:restored:{target.suspended_at.isoformat()}"),
                sim_id=sim_id,
                company_id=company_id,
                state=_state(target.status),
                version=version,
                msisdn_masked=target.msisdn_masked,
                msisdn=self._msisdn(target),
                occurred_at=now,
            ),
        )
        await store.add_sim_timeline(conn, company_id, sim_id, at=now, kind="restored", actor=SYSTEM)

    # --- timer jobs -----------------------------------------------------------------------------------

    async def on_sweep(self, conn: db.Connection, job: Job) -> dt.datetime | None:
        """Deadlines for SIMs that need one (new on a contract, unbound, rejected, rebound after accepted)."""
        targets = await flow_store.sims_needing_deadline(conn, limit=SWEEP_BATCH)
        for target in targets:
            await self.plan_deadline(conn, target, job.now)
        return job.now if len(targets) == SWEEP_BATCH else None  # more left: again at once

    async def _job_target(self, conn: db.Connection, job: Job) -> flow_store.DeadlineTarget | None:
        target = await flow_store.deadline_target(
            conn, uuid.UUID(job.payload["company_id"]), uuid.UUID(job.payload["sim_id"])
        )
        if target is None or target.status == "accepted" or target.deadline is None:
            return None
        if target.deadline.isoformat() != job.payload["deadline"]:
            return None  # the deadline moved (it planned its own jobs)
        return target

    async def on_reminder(self, conn: db.Connection, job: Job) -> dt.datetime | None:
        target = await self._job_target(conn, job)
        if target is None:
            return None
        days = int(job.payload["days"])
        await self._webhook(
            conn,
            target,
            event_id=uuid.uuid5(ONCE_IDS, f"{target.id}:reminder:{days}:{job.payload['deadline']}"),
            event_type="corpsim.reminder",
            occurred_at=job.now,
            deadline=target.deadline,
            days_left=days,
        )
        await store.add_sim_timeline(
            conn,
            target.company_id,
            target.id,
            at=job.now,
            kind="reminder_due",
            actor=SYSTEM,
            detail={"days_left": days},
        )
        return None

    async def on_deadline(self, conn: db.Connection, job: Job) -> dt.datetime | None:
        target = await self._job_target(conn, job)
        if target is None or target.suspended_at is not None:
            return None
        assert target.deadline is not None  # _job_target checked
        if target.deadline > job.now:
            return target.deadline
        version = await flow_store.set_deadline(
            conn, target.company_id, target.id, deadline=target.deadline, suspended_at=job.now, now=job.now
        )
        await outbox.append(
            conn,
            CorpSimSuspensionDue(
                event_id=uuid.uuid5(ONCE_IDS, f"{target.id}:suspension_due:{job.payload['deadline']}"),
                sim_id=target.id,
                company_id=target.company_id,
                state=_state(target.status),
                version=version,
                msisdn_masked=target.msisdn_masked,
                msisdn=self._msisdn(target),
                deadline=target.deadline,
                occurred_at=job.now,
            ),
        )
        await store.add_sim_timeline(
            conn,
            target.company_id,
            target.id,
            at=job.now,
            kind="suspension_due",
            actor=SYSTEM,
            detail={"deadline": target.deadline.isoformat(), "status": target.status},
        )
        return None

    # --- company webhooks -----------------------------------------------------------------------------

    async def on_event(self, conn: db.Connection, event: AnyEvent) -> None:
        """Consumer of corpsim.*: queue the company's signed webhook (once per event id)."""
        if not isinstance(event, CorpSimEvent):
            return
        target = await flow_store.deadline_target(conn, event.company_id, event.sim_id, lock=False)
        if target is None:
            return
        data: dict[str, Any] = msgspec.structs.asdict(event)
        await self._webhook(
            conn,
            target,
            event_id=event.event_id,
            event_type=event.SUBJECT,
            occurred_at=event.occurred_at,
            state=event.state,
            version=event.version,
            from_state=data.get("from_state"),
            reason=str(data.get("reason", "") or ""),
            deadline=data.get("deadline"),
        )

    async def _webhook(
        self,
        conn: db.Connection,
        target: flow_store.DeadlineTarget,
        *,
        event_id: uuid.UUID,
        event_type: str,
        occurred_at: dt.datetime,
        state: str | None = None,
        version: int | None = None,
        from_state: str | None = None,
        reason: str = "",
        deadline: dt.datetime | None = None,
        days_left: int | None = None,
    ) -> None:
        body = CompanyWebhook(
            event_id=event_id,
            type=event_type,
            company_id=target.company_id,
            sim_id=target.id,
            msisdn=self._msisdn(target),
            state=state or target.status,
            version=version if version is not None else target.version,
            occurred_at=occurred_at,
            from_state=from_state,
            reason=reason,
            deadline=deadline,
            days_left=days_left,
        )
        await CORPORATE.enqueue(
            conn,
            subscriber=str(target.company_id),
            event_id=event_id,
            event_type=event_type,
            payload=_encoder.encode(body),
        )

    async def set_webhook(
        self,
        conn: db.Connection,
        company_id: uuid.UUID,
        url: str,
        secret: str,
        *,
        actor: str,
        now: dt.datetime,
    ) -> None:
        await flow_store.put_company_webhook(
            conn,
            flow_store.CompanyWebhookRow(
                company_id=company_id,
                url=url,
                secret_enc=self.protector.encrypt(secret, flow_store.WEBHOOK_SECRET_CONTEXT, company_id),
                updated_by=actor,
                updated_at=now,
            ),
        )
        await flow_store.add_audit(
            conn, company_id, at=now, kind="webhook_set", actor=actor, detail={"url": url}
        )

    async def resolve_webhook(self, conn: db.Connection, subscriber: str) -> Endpoint | None:
        """The WebhookSender's resolver: the company's current URL and secret."""
        row = await flow_store.get_company_webhook(conn, uuid.UUID(subscriber))
        if row is None:
            return None
        secret = self.protector.decrypt(row.secret_enc, flow_store.WEBHOOK_SECRET_CONTEXT, row.company_id)
        return Endpoint(url=row.url, secret=secret)


def _state(status: str) -> CorpSimState:
    # The sims check constraint and the event's Literal hold the same names.
    return status  # type: ignore[return-value]
