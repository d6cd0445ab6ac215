"""Timer jobs: a case's reminders, its deadline (suspension and the billing command) and the purge."""

from __future__ import annotations

import datetime as dt
import uuid

from services.common import db, outbox
from services.common.events import VerificationExpired, VerificationReminderDue, VerificationSuspensionDue
from services.common.scheduler import Job
from services.verification import store
from services.verification.corporate.transitions import employee_case_decided
from services.verification.usecases.common import ONCE_IDS, SYSTEM, CaseCore


class DeadlineJobs(CaseCore):
    __slots__ = ()

    async def on_reminder(self, conn: db.Connection, job: Job) -> dt.datetime | None:
        case_id = uuid.UUID(job.payload["case_id"])
        row = await store.get_case(conn, case_id, lock=True)
        if row is None or row.status != "open" or row.deadline.isoformat() != job.payload["deadline"]:
            return None  # decided, cancelled or extended meanwhile (the extension planned its own)
        link = await store.current_link(conn, case_id)
        days = int(job.payload["days"])
        event = VerificationReminderDue(
            event_id=uuid.uuid5(ONCE_IDS, f"{case_id}:reminder:{days}:{job.payload['deadline']}"),
            case_id=case_id,
            state="open",
            msisdn=self._msisdn(row),
            deadline=row.deadline,
            link="" if link is None else self._link(link.id),
            days_left=days,
            lang=row.lang,
            tz=row.tz,
            occurred_at=job.now,
        )
        await outbox.append(conn, event)
        await store.add_timeline(conn, case_id, job.now, "reminder_due", SYSTEM, detail={"days_left": days})
        return None

    async def on_deadline(self, conn: db.Connection, job: Job) -> dt.datetime | None:
        case_id = uuid.UUID(job.payload["case_id"])
        row = await store.get_case(conn, case_id, lock=True)
        if row is None or row.status not in ("open", "mismatch"):
            return None
        if row.deadline > job.now:
            return row.deadline  # extended after this run was claimed
        if row.reason == "corporate_sim":
            # An employee never confirmed a company's SIM: the case just ends and the SIM is rejected;
            # suspension follows the SIM's own registration deadline (corporate rules), not this case.
            await self._close(conn, row, "cancelled", job.now)
            await outbox.append(
                conn,
                VerificationExpired(
                    case_id=case_id, state="cancelled", deadline=row.deadline, occurred_at=job.now
                ),
            )
            await store.add_timeline(
                conn, case_id, job.now, "expired", SYSTEM, detail={"deadline": row.deadline.isoformat()}
            )
            await employee_case_decided(conn, case_id, "expired", [], job.now, flow=self.corporate_flow)
            return None
        link = await store.current_link(conn, case_id)
        await store.set_status(conn, case_id, "suspended", suspended_at=job.now)
        msisdn = self._msisdn(row)
        await outbox.append(
            conn,
            VerificationExpired(
                case_id=case_id, state="suspended", deadline=row.deadline, occurred_at=job.now
            ),
            VerificationSuspensionDue(
                event_id=uuid.uuid5(ONCE_IDS, f"{case_id}:suspension_due"),
                case_id=case_id,
                state="suspended",
                msisdn=msisdn,
                reason=row.reason,  # type: ignore[arg-type]
                link="" if link is None or link.spent_at else self._link(link.id),
                lang=row.lang,
                tz=row.tz,
                occurred_at=job.now,
            ),
        )
        await store.add_timeline(
            conn, case_id, job.now, "expired", SYSTEM, detail={"deadline": row.deadline.isoformat()}
        )
        await self._billing(conn, row, "suspend", row.reason, job.now)
        return None

    async def on_purge(self, conn: db.Connection, job: Job) -> dt.datetime | None:
        case_id = uuid.UUID(job.payload["case_id"])
        if await store.purge_personal_data(conn, case_id, job.now):
            await store.add_timeline(conn, case_id, job.now, "personal_data_purged", SYSTEM)
        return None
