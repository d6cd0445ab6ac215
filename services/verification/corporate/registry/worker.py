"""The registry worker: SIMs ready for submission are submitted (leased, idempotent by submission id),
retried with exponential backoff, polled until decided, and moved to accepted or rejected(reason)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from typing import Any

import msgspec

from services.common import db
from services.common.clock import Clock
from services.common.crypto import DataProtector
from services.verification.corporate import flow_store, store, transitions
from services.verification.corporate.domain.sim import SimStatus, transition
from services.verification.corporate.lifecycle import CorporateFlow
from services.verification.corporate.registry.base import (
    DeviceRecord,
    EmployeeRecord,
    Registry,
    RegistryRefused,
    RegistryUnavailable,
    Status,
    Submission,
)
from services.verification.corporate.settings import CorporateFlowSettings

log = logging.getLogger(__name__)

ACTOR = "registry"
QUEUE_BATCH = 500


class RegistryWorker:
    """One pass = queue ready SIMs, lease due submissions, call the registry with no connection held,
    then record each answer in its own transaction (one bad row never stops the rest)."""

    def __init__(
        self,
        *,
        pool: db.Pool,
        protector: DataProtector,
        registry: Registry,
        flow: CorporateFlow,
        settings: CorporateFlowSettings,
        clock: Clock,
        operator_name: str,
        operator_ogrn: str,
        batch: int = 20,
    ) -> None:
        self.pool = pool
        self.protector = protector
        self.registry = registry
        self.flow = flow
        self.settings = settings
        self.clock = clock
        self.operator_name = operator_name
        self.operator_ogrn = operator_ogrn
        self.batch = batch
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="corpsim-registry-worker")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                # A call cut off here is retried with the same submission id after its lease.
                await asyncio.wait_for(self._task, self.settings.corpsim_registry_timeout_s + 5)
            self._task = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                done = await self.run_once()
            except Exception:
                log.exception("registry pass failed")
                done = 0
            if done >= self.batch:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.corpsim_worker_interval_s)

    async def run_once(self) -> int:
        """One pass; how many submissions it called the registry for."""
        now = self.clock.now()
        lease = dt.timedelta(seconds=self.settings.corpsim_registry_lease_s)
        async with self.pool.acquire() as conn, conn.transaction():
            await flow_store.queue_pending_submissions(conn, now=now, limit=QUEUE_BATCH)
            claimed = await flow_store.claim_submissions(conn, now=now, lease=lease, limit=self.batch)
        results = await asyncio.gather(*(self._process(sub) for sub in claimed), return_exceptions=True)
        for sub, result in zip(claimed, results, strict=True):
            if isinstance(result, BaseException):
                # Its lease runs out and the next pass retries it (same submission id).
                log.error("registry submission failed", extra={"submission_id": str(sub.id)}, exc_info=result)
        return len(claimed)

    async def _process(self, sub: flow_store.SubmissionRow) -> None:
        try:
            if sub.state == "queued":
                async with self.pool.acquire() as conn:
                    record = await self._record(conn, sub)
                if record is None:
                    await self._abandon(sub)
                    return
                status = await self.registry.submit(record)
            else:
                status = await self.registry.status(sub.id)
        except RegistryUnavailable as exc:
            await self._retry(sub, str(exc))
            return
        except RegistryRefused as exc:
            if sub.state == "sent" and exc.code == "unknown_submission":
                # The registry lost it: send it again under the same id.
                await self._retry(sub, str(exc), state="queued")
                return
            status = Status(submission_id=sub.id, outcome="rejected", reason=f"registry_refused:{exc.code}")
        await self._record_status(sub, status)

    async def _record(self, conn: db.Connection, sub: flow_store.SubmissionRow) -> Submission | None:
        """The Decree 844 record for the SIM's current binding; None if it changed since it was queued."""
        found = await store.get_sim(conn, sub.company_id, sub.sim_id)
        company = await store.get_company(conn, sub.company_id)
        if found is None or company is None or not _same_binding(found.sim, sub):
            return None
        sim = found.sim
        employee = device = None
        if sim.binding == "employee" and sim.employee_enc is not None:
            stored: dict[str, Any] = msgspec.json.decode(
                self.protector.decrypt(sim.employee_enc, store.EMPLOYEE_CONTEXT, sim.id)
            )
            employee = msgspec.convert(stored["holder"], EmployeeRecord)
        elif sim.binding == "device" and sim.device_type and sim.device_id:
            device = DeviceRecord(
                type=sim.device_type,
                name=sim.device_name or "",
                id_kind="mac" if sim.device_id_kind == "mac" else "imei",
                id=sim.device_id,
                installation_address=sim.installation_address or "",
            )
        return Submission(
            submission_id=sub.id,
            msisdn=self.protector.decrypt(found.msisdn_enc, store.MSISDN_CONTEXT, sim.number_id),
            company_name=company.name,
            company_inn=company.inn,
            company_ogrn=company.ogrn,
            operator_name=self.operator_name,
            operator_ogrn=self.operator_ogrn,
            employee=employee,
            device=device,
        )

    async def _abandon(self, sub: flow_store.SubmissionRow) -> None:
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            if await flow_store.lock_submission(conn, sub.id, _token(sub)) is None:
                return
            await flow_store.settle_submission(
                conn,
                sub.id,
                state="abandoned",
                now=now,
                next_attempt_at=now,
                attempts=sub.attempts,
                reason="binding_changed",
            )

    async def _retry(self, sub: flow_store.SubmissionRow, error: str, *, state: str | None = None) -> None:
        now = self.clock.now()
        attempts = sub.attempts + 1
        delay = min(
            self.settings.corpsim_registry_retry_base_s * 2 ** (attempts - 1),
            self.settings.corpsim_registry_retry_max_s,
        )
        async with self.pool.acquire() as conn, conn.transaction():
            if await flow_store.lock_submission(conn, sub.id, _token(sub)) is None:
                return
            await flow_store.settle_submission(
                conn,
                sub.id,
                state=state or sub.state,
                now=now,
                next_attempt_at=now + dt.timedelta(seconds=delay),
                attempts=attempts,
                last_error=error[:500],
            )
            await store.add_sim_timeline(
                conn,
                sub.company_id,
                sub.sim_id,
                at=now,
                kind="registry_retry",
                actor=ACTOR,
                detail={"submission_id": str(sub.id), "attempts": attempts, "retry_in_s": delay},
            )
        log.warning(
            "registry unavailable; retrying", extra={"submission_id": str(sub.id), "attempts": attempts}
        )

    async def _record_status(self, sub: flow_store.SubmissionRow, status: Status) -> None:
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            if await flow_store.lock_submission(conn, sub.id, _token(sub)) is None:
                return  # the lease ran out and another worker took it over
            found = await store.get_sim(conn, sub.company_id, sub.sim_id, lock=True)
            if (
                found is None
                or not _same_binding(found.sim, sub)
                or found.sim.status not in ("pending_submission", "submitted")
            ):
                await flow_store.settle_submission(
                    conn,
                    sub.id,
                    state="abandoned",
                    now=now,
                    next_attempt_at=now,
                    attempts=sub.attempts,
                    reason="binding_changed",
                )
                return
            detail = {"submission_id": str(sub.id)}
            if found.sim.status == "pending_submission":
                # The registry has the record: the SIM is submitted (the event and audit entry go with it).
                moved = transition(
                    "pending_submission",
                    "employee" if found.sim.binding == "employee" else "device",
                    "submit",
                )
                sim = await transitions.apply(
                    conn, found, moved, flow=self.flow, actor=ACTOR, now=now, detail=detail
                )
                found = store.SimWithNumber(
                    sim=sim, msisdn_enc=found.msisdn_enc, msisdn_masked=found.msisdn_masked
                )
            if status.outcome == "pending":
                await flow_store.settle_submission(
                    conn,
                    sub.id,
                    state="sent",
                    now=now,
                    next_attempt_at=now + dt.timedelta(seconds=self.settings.corpsim_registry_poll_s),
                    attempts=0,
                    registry_ref=status.registry_ref or None,
                )
                return
            current: SimStatus = "submitted"
            binding = found.sim.binding
            if status.outcome == "accepted":
                moved = transition(current, "device" if binding == "device" else "employee", "accept")
            else:
                moved = transition(
                    current,
                    "device" if binding == "device" else "employee",
                    "reject",
                    reason=status.reason or "rejected_by_registry",
                )
            # Accepted clears the deadline (and restores a suspended number); rejected keeps its deadline,
            # or gets one: in the same transaction as the transition (transitions.apply).
            await transitions.apply(conn, found, moved, flow=self.flow, actor=ACTOR, now=now, detail=detail)
            await flow_store.settle_submission(
                conn,
                sub.id,
                state=status.outcome,
                now=now,
                next_attempt_at=now,
                attempts=sub.attempts,
                registry_ref=status.registry_ref or None,
                reason=moved.reason,
            )


def _same_binding(sim: store.SimRow, sub: flow_store.SubmissionRow) -> bool:
    return sim.bound_at is not None and sim.bound_at == sub.bound_at


def _token(sub: flow_store.SubmissionRow) -> Any:
    assert sub.lease_token is not None  # claimed rows carry their lease token
    return sub.lease_token
