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

    def deadline_change(self, sim: store.SimRow, now: dt.datetime) -> deadlines.DeadlineChange:
        """The SIM's deadline in its new state (`sim` as it is about to be written)."""
        return deadlines.deadline_change(
            status=sim.status,
            binding=sim.binding,
            deadline=sim.deadline,
            suspended_at=sim.suspended_at,
            use_from=sim.use_from,
            now=now,
            tz=self.tz,
        )

    async def deadline_changed(
        self,
        conn: db.Connection,
        sim: store.SimWithNumber,
        change: deadlines.DeadlineChange,
        *,
        was_suspended_at: dt.datetime | None,
        now: dt.datetime,
    ) -> None:
        """The timers, events and audit entries of a deadline change already written to the SIM's row, in
        the same transaction (so the status, the deadline and its timer commit or roll back together)."""
        row = sim.sim
        if change.reason == "":
            return
        if change.reason == "registered":
            await scheduler.cancel(conn, JOB_SIM_DEADLINE, str(row.id))
            for days in {d for p in deadlines.SIM_POLICIES.values() for d in p.reminder_working_days}:
                await scheduler.cancel(conn, JOB_SIM_REMINDER, f"{row.id}:{days}")
            if not change.restored or was_suspended_at is None:
                return
            await outbox.append(
                conn,
                CorpSimRestored(
                    event_id=uuid.uuid5(ONCE_IDS, f"{row.id}:restored:{was_suspended_at.isoformat()}"),
                    sim_id=row.id,
                    company_id=row.company_id,
                    state=_state(row.status),
                    version=row.version,
                    msisdn_masked=sim.msisdn_masked,
                    msisdn=self.protector.decrypt(sim.msisdn_enc, store.MSISDN_CONTEXT, row.number_id),
                    occurred_at=now,
                ),
            )
            await store.add_sim_timeline(conn, row.company_id, row.id, at=now, kind="restored", actor=SYSTEM)
            return
        assert change.deadline is not None  # every reason but "registered" sets one
        await self._schedule(
            conn,
            company_id=row.company_id,
            sim_id=row.id,
            case=change.case,
            deadline=change.deadline,
            now=now,
        )
        detail: dict[str, Any] = {"deadline": change.deadline.isoformat(), "policy": change.reason}
        if change.reason == "device_use_from" and row.use_from is not None:
            detail["use_from"] = row.use_from.isoformat()
        await store.add_sim_timeline(
            conn, row.company_id, row.id, at=now, kind="deadline_set", actor=SYSTEM, detail=detail
        )

    async def _schedule(
        self,
        conn: db.Connection,
        *,
        company_id: uuid.UUID,
        sim_id: uuid.UUID,
        case: deadlines.DeadlineCase,
        deadline: dt.datetime,
        now: dt.datetime,
    ) -> None:
        # Scheduling again moves the job; reminders of an earlier deadline that this one does not have
        # find the deadline changed when they run and do nothing (_job_target).
        payload = {"company_id": str(company_id), "sim_id": str(sim_id), "deadline": deadline.isoformat()}
        await scheduler.schedule(conn, JOB_SIM_DEADLINE, str(sim_id), deadline, payload)
        for days, at in deadlines.reminder_times(case, deadline, self.tz, now).items():
            await scheduler.schedule(
                conn, JOB_SIM_REMINDER, f"{sim_id}:{days}", at, {**payload, "days": days}
            )

    def new_sim_deadline(self, now: dt.datetime) -> deadlines.DeadlineChange:
        """The deadline of a SIM put on a contract now (the same for every SIM of one batch)."""
        return deadlines.deadline_change(
            status="unregistered",
            binding=None,
            deadline=None,
            suspended_at=None,
            use_from=None,
            now=now,
            tz=self.tz,
        )

    async def new_on_contract(
        self,
        conn: db.Connection,
        company_id: uuid.UUID,
        sim_ids: list[uuid.UUID],
        change: deadlines.DeadlineChange,
        now: dt.datetime,
    ) -> None:
        """The timers and audit entries of SIMs just inserted with `change.deadline`, in the inserting
        transaction; set-based, since a contract brings numbers by the thousand."""
        if not sim_ids or change.deadline is None:
            return
        deadline = change.deadline

        def payload(sim_id: uuid.UUID) -> dict[str, Any]:
            return {"company_id": str(company_id), "sim_id": str(sim_id), "deadline": deadline.isoformat()}

        jobs = [(JOB_SIM_DEADLINE, str(sim_id), deadline, payload(sim_id)) for sim_id in sim_ids]
        for days, at in deadlines.reminder_times(change.case, deadline, self.tz, now).items():
            jobs += [
                (JOB_SIM_REMINDER, f"{sim_id}:{days}", at, {**payload(sim_id), "days": days})
                for sim_id in sim_ids
            ]
        await scheduler.schedule_many(conn, jobs)
        await store.add_sim_timelines(
            conn,
            company_id,
            sim_ids,
            at=now,
            kind="deadline_set",
            actor=SYSTEM,
            detail={"deadline": deadline.isoformat(), "policy": change.reason},
        )

    # --- timer jobs -----------------------------------------------------------------------------------

    async def on_sweep(self, conn: db.Connection, job: Job) -> dt.datetime | None:
        """A safety net, not the mechanism: every transition sets its SIM's deadline in its own transaction
        (transitions.apply), and so does putting a number on a contract. What can still lack one are SIMs
        whose state was written set-based without apply (the bulk upload's device bindings of SIMs that
        were accepted) and rows from before deadlines were set in the transition; they get theirs here."""
        targets = await flow_store.sims_needing_deadline(conn, limit=SWEEP_BATCH)
        for target in targets:
            found = await store.get_sim(conn, target.company_id, target.id, lock=True)
            if found is None:
                continue
            change = self.deadline_change(found.sim, job.now)
            version = await flow_store.set_deadline(
                conn,
                target.company_id,
                target.id,
                deadline=change.deadline,
                suspended_at=change.suspended_at,
                now=job.now,
            )
            saved = msgspec.structs.replace(
                found.sim, deadline=change.deadline, suspended_at=change.suspended_at, version=version
            )
            await self.deadline_changed(
                conn,
                msgspec.structs.replace(found, sim=saved),
                change,
                was_suspended_at=found.sim.suspended_at,
                now=job.now,
            )
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
