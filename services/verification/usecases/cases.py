"""Back-office use cases: open, list, read, re-issue the link, cancel and extend a case."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

import msgspec

from services.common import db, outbox, scheduler
from services.common.calendar import zone
from services.common.domain_errors import Conflict, Invalid, NotFound
from services.common.events import VerificationCaseCancelled, VerificationLinkIssued
from services.common.phone import PhoneRejected, parse_phone
from services.verification import store
from services.verification.domain.compare import Holder
from services.verification.domain.deadlines import deadline_for, reminder_times
from services.verification.domain.links import link_id_text, link_url, make_token, new_link_id
from services.verification.domain.policy import CaseReason, Policy
from services.verification.domain.texts import spaced_mask
from services.verification.schemas import ACTIVE_STATUSES, CaseDetail, CaseOpen, CaseView
from services.verification.usecases.common import JOB_DEADLINE, JOB_REMINDER, SYSTEM, CaseCore


class CaseToOpen(msgspec.Struct, frozen=True, kw_only=True):
    """One case of open_cases_in: an E.164 number and its checked holder (check_open's rules)."""

    msisdn: str
    holder: Holder
    lang: str
    tz: str


class CaseUseCases(CaseCore):
    __slots__ = ()

    def check_open(self, data: CaseOpen) -> str:
        """Rules msgspec cannot state; the E.164 number. Raises Invalid naming the field."""
        try:
            msisdn = parse_phone(data.msisdn, ["RU"]).e164
        except PhoneRejected as exc:
            raise Invalid("invalid_msisdn", f"msisdn: {exc.message}", field="msisdn") from None
        today = self.clock.now().date()
        if data.birth_date > today:
            raise Invalid("invalid_birth_date", "birth_date is in the future", field="birth_date")
        if data.birth_date.year < 1900:
            raise Invalid("invalid_birth_date", "birth_date is before 1900", field="birth_date")
        if data.passport_issue_date > today:
            raise Invalid(
                "invalid_passport_issue_date",
                "passport_issue_date is in the future",
                field="passport_issue_date",
            )
        if data.passport_issue_date < data.birth_date:
            raise Invalid(
                "invalid_passport_issue_date",
                "passport_issue_date is before birth_date",
                field="passport_issue_date",
            )
        for name in ("last_name", "first_name", "middle_name"):
            value: str = getattr(data, name)
            if value and (not value.strip() or not all(c.isalpha() or c in " -'’." for c in value)):
                raise Invalid("invalid_name", f"{name} may hold only letters, spaces and hyphens", field=name)
        try:
            zone(data.tz)
        except ValueError:
            raise Invalid("invalid_tz", f"tz: unknown time zone {data.tz!r}", field="tz") from None
        return msisdn

    async def open_case(
        self, data: CaseOpen, actor: str, idempotency_key: str | None
    ) -> tuple[CaseView, bool]:
        """(the case, True if new). The number's active case is returned instead of a second one."""
        msisdn = self.check_open(data)
        now = self.clock.now()
        request_hash = hashlib.sha256(msgspec.json.encode(data)).digest()
        async with db.transaction(self.pool) as conn:
            if idempotency_key:
                remembered = await store.idempotent_case(conn, idempotency_key)
                if remembered is not None:
                    if remembered[0] != request_hash:
                        raise Conflict(
                            "idempotency_key_reused",
                            "This Idempotency-Key was used with a different request",
                            field="Idempotency-Key",
                        )
                    return await self._existing(conn, remembered[1], actor), False
            holder = Holder(
                last_name=data.last_name.strip(),
                first_name=data.first_name.strip(),
                middle_name=data.middle_name.strip(),
                birth_date=data.birth_date,
                passport_series=data.passport_series,
                passport_number=data.passport_number,
                passport_issue_date=data.passport_issue_date,
                passport_issuer_code=data.passport_issuer_code,
            )
            case_id, created = await self.open_case_in(
                conn,
                msisdn=msisdn,
                holder=holder,
                reason=data.reason,
                lang=data.lang,
                tz=data.tz,
                actor=actor,
                now=now,
            )
            if idempotency_key:
                await store.remember_idempotency_key(conn, idempotency_key, request_hash, case_id)
            if created:
                return await self._view(conn, await self._case_for_update(conn, case_id)), True
            return await self._existing(conn, case_id, actor), False

    async def open_case_in(
        self,
        conn: db.Connection,
        *,
        msisdn: str,
        holder: Holder,
        reason: CaseReason,
        lang: str,
        tz: str,
        actor: str,
        now: dt.datetime,
    ) -> tuple[uuid.UUID, bool]:
        """(the case id, True if opened now) in the caller's transaction; the number's active case
        instead of a second one. `msisdn` is E.164 and the holder checked (check_open's rules)."""
        policy = self.policies[reason]
        index = self.protector.blind_index(msisdn, store.MSISDN_INDEX)
        active = await store.active_case_id(conn, index)
        if active is not None:
            return active, False
        case_id = uuid.uuid4()
        row = store.CaseRow(
            id=case_id,
            reason=reason,
            status="open",
            lang=lang,
            tz=tz,
            msisdn_enc=self.protector.encrypt(msisdn, store.MSISDN_CONTEXT, case_id),
            msisdn_index=index,
            msisdn_masked=spaced_mask(msisdn),
            holder_enc=self.protector.encrypt(
                msgspec.json.encode(holder).decode(), store.HOLDER_CONTEXT, case_id
            ),
            opened_by=actor,
            opened_at=now,
            deadline=deadline_for(policy, now, tz),
        )
        if await store.insert_case(conn, row):
            await self._issue(conn, row, msisdn, policy, now)
            return case_id, True
        # A concurrent open of the same number won the unique index: return its case.
        active = await store.active_case_id(conn, index)
        if active is None:
            raise Conflict("case_busy", "The number's case changed meanwhile; retry", field="msisdn")
        return active, False

    async def open_cases_in(
        self,
        conn: db.Connection,
        requests: list[CaseToOpen],
        *,
        reason: CaseReason,
        actor: str,
        now: dt.datetime,
    ) -> list[uuid.UUID | None]:
        """open_case_in for many numbers in a handful of statements (a bulk upload's employees): per
        request its new case's id, or None when the number has an active case (nothing opened for it).
        Each case gets what _issue gives one: its link, timeline, deadline and reminders, link_issued."""
        policy = self.policies[reason]
        indexes = [self.protector.blind_index(r.msisdn, store.MSISDN_INDEX) for r in requests]
        taken = await store.active_case_indexes(conn, indexes)
        # The deadline and reminders depend only on the zone here (same policy, same now): once per zone.
        plans: dict[str, tuple[dt.datetime, dict[int, dt.datetime]]] = {}
        rows: list[store.CaseRow | None] = []
        for request, index in zip(requests, indexes, strict=True):
            if index in taken:
                rows.append(None)
                continue
            taken.add(index)  # the same number twice: its first request only
            if request.tz not in plans:
                deadline = deadline_for(policy, now, request.tz)
                plans[request.tz] = (
                    deadline,
                    reminder_times(policy.reminder_days, deadline, request.tz, now),
                )
            case_id = uuid.uuid4()
            rows.append(
                store.CaseRow(
                    id=case_id,
                    reason=reason,
                    status="open",
                    lang=request.lang,
                    tz=request.tz,
                    msisdn_enc=self.protector.encrypt(request.msisdn, store.MSISDN_CONTEXT, case_id),
                    msisdn_index=index,
                    msisdn_masked=spaced_mask(request.msisdn),
                    holder_enc=self.protector.encrypt(
                        msgspec.json.encode(request.holder).decode(), store.HOLDER_CONTEXT, case_id
                    ),
                    opened_by=actor,
                    opened_at=now,
                    deadline=plans[request.tz][0],
                )
            )
        inserted = await store.insert_cases(conn, [r for r in rows if r is not None])
        opened = [r if r is not None and r.id in inserted else None for r in rows]
        links: list[tuple[str, uuid.UUID, dt.datetime]] = []
        timeline: list[tuple[uuid.UUID, dt.datetime, str, str, dict[str, Any]]] = []
        jobs: list[tuple[str, str, dt.datetime, Mapping[str, Any]]] = []
        events: list[VerificationLinkIssued] = []
        for row, request in zip(opened, requests, strict=True):
            if row is None:
                continue
            raw_id = new_link_id()
            links.append((link_id_text(raw_id), row.id, now))
            timeline.append(
                (
                    row.id,
                    now,
                    "opened",
                    actor,
                    {"reason": reason, "deadline": row.deadline.isoformat(), "policy": policy.legal_source},
                )
            )
            payload = {"case_id": str(row.id), "deadline": row.deadline.isoformat()}
            jobs.append((JOB_DEADLINE, str(row.id), row.deadline, payload))
            # A new case has no reminders to cancel (_schedule's cancel is for a moved deadline).
            for days, at in plans[row.tz][1].items():
                jobs.append((JOB_REMINDER, f"{row.id}:{days}", at, {**payload, "days": days}))
            events.append(
                VerificationLinkIssued(
                    case_id=row.id,
                    state="open",
                    msisdn=request.msisdn,
                    reason=reason,
                    deadline=row.deadline,
                    link=link_url(self.link_base, make_token(raw_id, self.protector.sign)),
                    lang=row.lang,
                    tz=row.tz,
                    occurred_at=now,
                )
            )
            timeline.append((row.id, now, "link_issued", SYSTEM, {}))
        if links:
            await store.insert_links(conn, links)
            await store.add_timeline_rows(conn, timeline)
            await scheduler.schedule_many(conn, jobs)
            await outbox.append(conn, *events)
        return [None if row is None else row.id for row in opened]

    async def _existing(self, conn: db.Connection, case_id: uuid.UUID, actor: str) -> CaseView:
        row = await self._case_for_update(conn, case_id)
        await store.add_timeline(conn, case_id, self.clock.now(), "open_repeated", actor)
        return await self._view(conn, row)

    async def _issue(
        self, conn: db.Connection, row: store.CaseRow, msisdn: str, policy: Policy, now: dt.datetime
    ) -> None:
        raw_id = new_link_id()
        link_id = link_id_text(raw_id)
        await store.insert_link(conn, link_id, row.id, now)
        link = link_url(self.link_base, make_token(raw_id, self.protector.sign))
        await store.add_timeline(
            conn,
            row.id,
            now,
            "opened",
            row.opened_by,
            detail={
                "reason": row.reason,
                "deadline": row.deadline.isoformat(),
                "policy": policy.legal_source,
            },
        )
        await self._schedule(conn, row, policy, now)
        await outbox.append(
            conn,
            VerificationLinkIssued(
                case_id=row.id,
                state="open",
                msisdn=msisdn,
                reason=row.reason,  # type: ignore[arg-type]
                deadline=row.deadline,
                link=link,
                lang=row.lang,
                tz=row.tz,
                occurred_at=now,
            ),
        )
        await store.add_timeline(conn, row.id, now, "link_issued", SYSTEM)

    async def list_cases(
        self,
        actor: str,
        why: str,
        *,
        status: str | None = None,
        reason: str | None = None,
        deadline_from: dt.datetime | None = None,
        deadline_to: dt.datetime | None = None,
        msisdn: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[CaseView]:
        index = None
        if msisdn is not None:
            try:
                e164 = parse_phone(msisdn, ["RU"]).e164
            except PhoneRejected as exc:
                raise Invalid("invalid_msisdn", f"msisdn: {exc.message}", field="msisdn") from None
            index = self.protector.blind_index(e164, store.MSISDN_INDEX)
        async with db.transaction(self.pool) as conn:
            rows = await store.list_cases(
                conn,
                status=status,
                reason=reason,
                deadline_from=deadline_from,
                deadline_to=deadline_to,
                msisdn_index=index,
                limit=limit,
                offset=offset,
            )
            # Every case shown (masked) is a read: who listed it and why is in its timeline.
            await store.add_timeline_many(
                conn, [r.id for r in rows], self.clock.now(), "listed", actor, detail={"why": why}
            )
            return [await self._view(conn, r) for r in rows]

    async def read_case(self, case_id: uuid.UUID, actor: str, why: str) -> CaseDetail:
        async with db.transaction(self.pool) as conn:
            row = await store.get_case(conn, case_id)
            if row is None:
                raise NotFound("case_not_found", f"No case {case_id}", field="case_id")
            await store.add_timeline(conn, case_id, self.clock.now(), "read", actor, detail={"why": why})
            return CaseDetail(case=await self._view(conn, row), timeline=await store.timeline(conn, case_id))

    async def reissue_link(self, case_id: uuid.UUID, actor: str, reason: str) -> CaseView:
        """A fresh link for an active case (e.g. the SMS never arrived); the previous one stops working.

        `verification.link_issued` goes out again with the new link, so the notifier sends it."""
        now = self.clock.now()
        async with db.transaction(self.pool) as conn:
            row = await self._case_for_update(conn, case_id)
            if row.status not in ACTIVE_STATUSES:
                raise Conflict("case_closed", f"The case is already {row.status}", field="case_id")
            previous = await store.current_link(conn, case_id)
            if previous is not None:
                # Spent, not deleted: the old link then shows "already used", and a sign-in begun with
                # it before now cannot decide the case when it comes back.
                await store.spend_link(conn, previous.id, now)
            raw_id = new_link_id()
            await store.insert_link(conn, link_id_text(raw_id), case_id, now)
            await outbox.append(
                conn,
                VerificationLinkIssued(
                    case_id=case_id,
                    state=row.status,
                    msisdn=self._msisdn(row),
                    reason=row.reason,  # type: ignore[arg-type]
                    deadline=row.deadline,
                    link=link_url(self.link_base, make_token(raw_id, self.protector.sign)),
                    lang=row.lang,
                    tz=row.tz,
                    occurred_at=now,
                ),
            )
            await store.add_timeline(conn, case_id, now, "link_reissued", actor, detail={"why": reason})
            return await self._view(conn, row)

    async def cancel(self, case_id: uuid.UUID, actor: str, reason: str) -> CaseView:
        now = self.clock.now()
        async with db.transaction(self.pool) as conn:
            row = await self._case_for_update(conn, case_id)
            if row.status not in ACTIVE_STATUSES:
                raise Conflict("case_closed", f"The case is already {row.status}", field="case_id")
            await self.cancel_in(conn, row, actor, reason, now)
            return await self._view(conn, await self._case_for_update(conn, case_id))

    async def cancel_in(
        self, conn: db.Connection, row: store.CaseRow, actor: str, reason: str, now: dt.datetime
    ) -> None:
        """Cancel an active case (locked by the caller) in the caller's transaction."""
        await self._close(conn, row, "cancelled", now)
        await store.add_timeline(conn, row.id, now, "cancelled", actor, detail={"why": reason})
        await outbox.append(
            conn, VerificationCaseCancelled(case_id=row.id, state="cancelled", by=actor, occurred_at=now)
        )
        if row.status == "suspended":
            # The suspension existed only because of this case.
            await self._billing(conn, row, "restore", "case_cancelled", now)

    async def extend(self, case_id: uuid.UUID, days: int, actor: str, reason: str) -> CaseView:
        now = self.clock.now()
        async with db.transaction(self.pool) as conn:
            row = await self._case_for_update(conn, case_id)
            if row.status not in ("open", "mismatch"):
                raise Conflict(
                    "case_not_extendable",
                    f"Only an open case can be extended; this one is {row.status}",
                    field="case_id",
                )
            old = row.deadline
            row.deadline = old + dt.timedelta(days=days)
            await store.set_deadline(conn, case_id, row.deadline)
            await self._schedule(conn, row, self.policies[row.reason], now)  # type: ignore[index]
            await store.add_timeline(
                conn,
                case_id,
                now,
                "extended",
                actor,
                detail={"why": reason, "from": old.isoformat(), "to": row.deadline.isoformat(), "days": days},
            )
            return await self._view(conn, row)
