"""Verification use cases: open, read, cancel and extend cases; the subscriber's link and sign-in; timers."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from services.common import db, outbox, scheduler
from services.common.calendar import zone
from services.common.clock import Clock
from services.common.crypto import DataProtector
from services.common.domain_errors import Conflict, Invalid, NotFound
from services.common.events import (
    VerificationAccountNotConfirmed,
    VerificationCaseCancelled,
    VerificationCaseState,
    VerificationConfirmed,
    VerificationConsentDenied,
    VerificationEvent,
    VerificationExpired,
    VerificationLinkIssued,
    VerificationMismatch,
    VerificationReminderDue,
    VerificationRestored,
    VerificationSuspensionDue,
)
from services.common.phone import PhoneRejected, parse_phone
from services.common.scheduler import Job
from services.common.webhooks import Endpoint, Resolver, WebhookChannel
from services.verification import store
from services.verification.domain.compare import Holder, compare
from services.verification.domain.deadlines import deadline_for, last_day, reminder_times
from services.verification.domain.links import (
    link_id_text,
    link_url,
    make_token,
    new_link_id,
    read_token,
    token_for,
)
from services.verification.domain.policy import CaseReason, Policy
from services.verification.domain.texts import spaced_mask
from services.verification.identity.base import IdentityError, IdentityProvider, PersonRecord, SignInStart
from services.verification.schemas import ACTIVE_STATUSES, CaseDetail, CaseOpen, CaseView, HolderView
from services.verification.settings import VerificationSettings

log = logging.getLogger(__name__)

JOB_REMINDER = "verification.reminder"
JOB_DEADLINE = "verification.deadline"
JOB_PURGE = "verification.purge"
SYSTEM = "system"
SUBSCRIBER = "subscriber"
BROWSER_PURPOSE = "verification.browser"
# Deterministic ids for what must happen once per case (a reminder, a billing command): a job run twice
# (a lease taken over mid-commit) produces the same event id, which JetStream and the inbox drop.
_IDS = uuid.UUID("6f1d3a52-0c7e-4d55-9b1e-2f7c8a9d0e11")

# Suspend/restore commands to billing: signed, retried ≈24 h until acknowledged; the body's command_id
# (and the Idempotency-Key, the delivery id) let billing apply each once.
BILLING = WebhookChannel(
    name="billing", disabled_reason="no billing endpoint configured (ABONENT_BILLING_WEBHOOK_URL)"
)
BILLING_SUBSCRIBER = "billing"

SignInOutcome = Literal["confirmed", "mismatch", "consent_denied", "account_not_confirmed", "failed"]
PageKind = Literal["active", "used", "forged", "expired", "cancelled"]
ReturnKind = Literal["outcome", "state_unknown", "state_replayed", "state_expired", "other_browser"]


class BillingCommand(msgspec.Struct, frozen=True, kw_only=True):
    """The webhook body billing receives (it must know the number: it is the operator's own system)."""

    command_id: uuid.UUID
    command: Literal["suspend", "restore"]
    case_id: uuid.UUID
    msisdn: str
    reason: str
    occurred_at: dt.datetime


def billing_endpoint(own: VerificationSettings) -> Resolver:
    async def resolve(_conn: db.Connection, _subscriber: str) -> Endpoint | None:
        if not own.billing_webhook_url:
            return None
        return Endpoint(url=own.billing_webhook_url, secret=own.billing_webhook_secret)

    return resolve


@dataclass(frozen=True, slots=True)
class LinkPage:
    """What opening a link shows."""

    kind: PageKind
    token: str = ""
    case: store.CaseRow | None = None
    msisdn: str = ""  # spaced mask
    outcome: str | None = None  # for a used link: what it was used for


@dataclass(frozen=True, slots=True)
class SignInReturn:
    """What the IdP's redirect back led to."""

    kind: ReturnKind
    token: str = ""
    outcome: SignInOutcome | None = None
    lang: str = "ru"


@dataclass(slots=True)
class VerificationService:
    pool: db.Pool
    protector: DataProtector
    own: VerificationSettings
    policies: dict[CaseReason, Policy]
    clock: Clock
    public_url: str
    link_base: str
    provider: IdentityProvider | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def redirect_uri(self) -> str:
        return f"{self.public_url}/v/callback"

    # --- helpers -----------------------------------------------------------------------------------------

    def _link(self, link_id: str) -> str:
        return link_url(self.link_base, token_for(link_id, self.protector.sign))

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

    # --- back office -------------------------------------------------------------------------------------

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
        policy = self.policies[data.reason]
        deadline = deadline_for(policy, now, data.tz)
        index = self.protector.blind_index(msisdn, store.MSISDN_INDEX)
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
            active = await store.active_case_id(conn, index)
            if active is None:
                case_id = uuid.uuid4()
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
                row = store.CaseRow(
                    id=case_id,
                    reason=data.reason,
                    status="open",
                    lang=data.lang,
                    tz=data.tz,
                    msisdn_enc=self.protector.encrypt(msisdn, store.MSISDN_CONTEXT, case_id),
                    msisdn_index=index,
                    msisdn_masked=spaced_mask(msisdn),
                    holder_enc=self.protector.encrypt(
                        msgspec.json.encode(holder).decode(), store.HOLDER_CONTEXT, case_id
                    ),
                    opened_by=actor,
                    opened_at=now,
                    deadline=deadline,
                )
                if await store.insert_case(conn, row):
                    await self._issue(conn, row, msisdn, policy, now)
                    if idempotency_key:
                        await store.remember_idempotency_key(conn, idempotency_key, request_hash, case_id)
                    return await self._view(conn, row), True
                # A concurrent open of the same number won the unique index: return its case.
                active = await store.active_case_id(conn, index)
                if active is None:
                    raise Conflict("case_busy", "The number's case changed meanwhile; retry", field="msisdn")
            if idempotency_key:
                await store.remember_idempotency_key(conn, idempotency_key, request_hash, active)
            return await self._existing(conn, active, actor), False

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

    async def cancel(self, case_id: uuid.UUID, actor: str, reason: str) -> CaseView:
        now = self.clock.now()
        async with db.transaction(self.pool) as conn:
            row = await self._case_for_update(conn, case_id)
            if row.status not in ACTIVE_STATUSES:
                raise Conflict("case_closed", f"The case is already {row.status}", field="case_id")
            await self._close(conn, row, "cancelled", now)
            await store.add_timeline(conn, case_id, now, "cancelled", actor, detail={"why": reason})
            await outbox.append(
                conn, VerificationCaseCancelled(case_id=case_id, state="cancelled", by=actor, occurred_at=now)
            )
            if row.status == "suspended":
                # The suspension existed only because of this case.
                await self._billing(conn, row, "restore", "case_cancelled", now)
            return await self._view(conn, await self._case_for_update(conn, case_id))

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

    async def _billing(
        self,
        conn: db.Connection,
        row: store.CaseRow,
        command: Literal["suspend", "restore"],
        reason: str,
        now: dt.datetime,
    ) -> None:
        command_id = uuid.uuid5(_IDS, f"{row.id}:{command}")
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

    # --- timers ------------------------------------------------------------------------------------------

    async def on_reminder(self, conn: db.Connection, job: Job) -> dt.datetime | None:
        case_id = uuid.UUID(job.payload["case_id"])
        row = await store.get_case(conn, case_id, lock=True)
        if row is None or row.status != "open" or row.deadline.isoformat() != job.payload["deadline"]:
            return None  # decided, cancelled or extended meanwhile (the extension planned its own)
        link = await store.current_link(conn, case_id)
        days = int(job.payload["days"])
        event = VerificationReminderDue(
            event_id=uuid.uuid5(_IDS, f"{case_id}:reminder:{days}:{job.payload['deadline']}"),
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
        link = await store.current_link(conn, case_id)
        await store.set_status(conn, case_id, "suspended", suspended_at=job.now)
        msisdn = self._msisdn(row)
        await outbox.append(
            conn,
            VerificationExpired(
                case_id=case_id, state="suspended", deadline=row.deadline, occurred_at=job.now
            ),
            VerificationSuspensionDue(
                event_id=uuid.uuid5(_IDS, f"{case_id}:suspension_due"),
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

    # --- the subscriber's link ---------------------------------------------------------------------------

    async def open_link(self, token: str) -> LinkPage:
        """What the link shows; every refused opening is in the case's timeline."""
        link_id = read_token(token, self.protector.sign)
        if link_id is None:
            log.warning("forged or mistyped verification link opened")
            return LinkPage(kind="forged")
        now = self.clock.now()
        async with db.transaction(self.pool) as conn:
            link = await store.get_link(conn, link_id)
            row = None if link is None else await store.get_case(conn, link.case_id)
            if link is None or row is None:
                log.warning("verification link with a valid signature but no row opened")
                return LinkPage(kind="forged")
            kind = self._link_kind(link, row, now)
            outcome = await store.last_outcome(conn, link_id) if kind == "used" else None
            entry = "link_opened" if kind == "active" else "link_refused"
            await store.add_timeline(conn, row.id, now, entry, SUBSCRIBER, detail={"page": kind})
        return LinkPage(kind=kind, token=token, case=row, msisdn=row.msisdn_masked, outcome=outcome)

    def _link_kind(self, link: store.LinkRow, row: store.CaseRow, now: dt.datetime) -> PageKind:
        if row.status == "cancelled":
            return "cancelled"
        if link.spent_at is not None or row.status in ("confirmed", "restored"):
            return "used"
        if now > row.deadline + dt.timedelta(days=self.own.verification_link_grace_days):
            return "expired"
        return "active"

    async def result(self, token: str) -> tuple[store.CaseRow, str, bool] | None:
        """(the case, the link's latest sign-in outcome, whether trying again makes sense), if any."""
        link_id = read_token(token, self.protector.sign)
        if link_id is None:
            return None
        async with self.pool.acquire() as conn:
            link = await store.get_link(conn, link_id)
            row = None if link is None else await store.get_case(conn, link.case_id)
            outcome = await store.last_outcome(conn, link_id)
        if link is None or row is None or outcome is None:
            return None
        retry = outcome not in {"confirmed", "mismatch"}
        return row, outcome, retry and self._link_kind(link, row, self.clock.now()) == "active"

    async def start_sign_in(self, token: str, browser_secret: str) -> tuple[LinkPage, str | None]:
        """(the link's page, the IdP URL to send the browser to — None when the link is not active)."""
        page = await self.open_link(token)
        if page.kind != "active" or page.case is None:
            return page, None
        if self.provider is None:
            raise RuntimeError("no identity provider configured")
        # Outside any transaction: a slow remote signer must not hold a pool connection.
        started = await self.provider.start(redirect_uri=self.redirect_uri)
        now = self.clock.now()
        link_id = read_token(token, self.protector.sign) or ""
        async with db.transaction(self.pool) as conn:
            await store.insert_sign_in(
                conn,
                store.SignInRow(
                    state=started.state,
                    case_id=page.case.id,
                    link_id=link_id,
                    provider=self.provider.name,
                    nonce=started.nonce,
                    code_verifier=started.code_verifier,
                    browser_hash=self.protector.blind_index(browser_secret, BROWSER_PURPOSE),
                    created_at=now,
                    expires_at=now + dt.timedelta(seconds=self.own.verification_sign_in_ttl_s),
                ),
            )
            await store.add_timeline(
                conn,
                page.case.id,
                now,
                "sign_in_started",
                SUBSCRIBER,
                detail={"provider": self.provider.name},
            )
        return page, started.authorization_url

    async def finish_sign_in(
        self, *, state: str, code: str, error: str, error_description: str, browser_secret: str
    ) -> SignInReturn:
        """The IdP sent the browser back: check the state, get the person, compare, decide. Never raises
        for anything the IdP or the browser sent; every refusal is audited on the case it names."""
        now = self.clock.now()
        async with db.transaction(self.pool) as conn:
            # The state is spent here, whatever happens next: a replay finds it used.
            signed_in, status = await store.take_sign_in(conn, state, now) if state else (None, "unknown")
            case = None if signed_in is None else await store.get_case(conn, signed_in.case_id)
            lang = "ru" if case is None else case.lang
            token = "" if signed_in is None else token_for(signed_in.link_id, self.protector.sign)
            if signed_in is None:
                log.warning("sign-in return with an unknown state")
                return SignInReturn(kind="state_unknown")
            if status != "ok":
                await store.add_timeline(
                    conn,
                    signed_in.case_id,
                    now,
                    "sign_in_refused",
                    SUBSCRIBER,
                    detail={"why": f"state_{status}"},
                )
                kind: ReturnKind = "state_replayed" if status == "replayed" else "state_expired"
                return SignInReturn(kind=kind, token=token, lang=lang)
            presented = self.protector.blind_index(browser_secret, BROWSER_PURPOSE)
            if not hmac.compare_digest(presented, signed_in.browser_hash):
                await store.add_timeline(
                    conn,
                    signed_in.case_id,
                    now,
                    "sign_in_refused",
                    SUBSCRIBER,
                    detail={"why": "other_browser"},
                )
                await store.set_sign_in_outcome(conn, state, "failed")
                return SignInReturn(kind="other_browser", token=token, lang=lang)
        person, outcome, detail = await self._person(
            signed_in, state=state, code=code, error=error, error_description=error_description
        )
        decided = await self._decide(signed_in, person, outcome, detail)
        return SignInReturn(kind="outcome", token=token, outcome=decided, lang=lang)

    async def _person(
        self, signed_in: store.SignInRow, *, state: str, code: str, error: str, error_description: str
    ) -> tuple[PersonRecord | None, SignInOutcome | None, dict[str, str]]:
        """The person, or the outcome the IdP's answer already decides (with what to audit)."""
        if error or not code:
            esia_code = error_description.split(":", 1)[0].strip()[:32]
            if error == "access_denied" or esia_code == "ESIA-007004":
                return None, "consent_denied", {"code": esia_code or error[:64]}
            if esia_code == "ESIA-007055":
                return None, "account_not_confirmed", {"code": esia_code}
            return None, "failed", {"kind": "provider_error", "code": (esia_code or error or "no_code")[:64]}
        if self.provider is None:
            return None, "failed", {"kind": "no_provider"}
        started = SignInStart(
            authorization_url="",
            state=signed_in.state,
            nonce=signed_in.nonce,
            code_verifier=signed_in.code_verifier,
        )
        try:
            person = await self.provider.finish(
                code=code, returned_state=state, started=started, redirect_uri=self.redirect_uri
            )
        except IdentityError as exc:
            if exc.kind in ("consent_denied", "account_not_confirmed"):
                return None, exc.kind, {"code": exc.code}
            log.warning("identity provider failed: %s %s %s", exc.kind, exc.code, exc.detail)
            return None, "failed", {"kind": exc.kind, "code": exc.code}
        except Exception as exc:
            # The IdP client is supposed to type everything; anything else is still a clear page, not a 500.
            log.exception("identity provider raised an untyped error")
            return None, "failed", {"kind": "internal", "code": type(exc).__name__}
        if not person.trusted:
            return None, "account_not_confirmed", {"code": "is_tru=false"}
        return person, None, {}

    async def _decide(
        self,
        signed_in: store.SignInRow,
        person: PersonRecord | None,
        outcome: SignInOutcome | None,
        detail: dict[str, str],
    ) -> SignInOutcome:
        now = self.clock.now()
        async with db.transaction(self.pool) as conn:
            row = await self._case_for_update(conn, signed_in.case_id)
            state: VerificationCaseState = row.status  # type: ignore[assignment]
            events: list[VerificationEvent] = []
            if row.status not in ACTIVE_STATUSES:
                outcome, detail = "failed", {"kind": "case_closed", "status": row.status}
            elif person is not None:
                holder = self._holder(row)
                if holder is None:
                    outcome, detail = "failed", {"kind": "personal_data_purged"}
                else:
                    msisdn = self._msisdn(row) if self.own.verification_require_msisdn else ""
                    result = compare(holder, person, msisdn=msisdn)
                    await store.spend_link(conn, signed_in.link_id, now)
                    if result.matched:
                        outcome = "confirmed"
                        state = "restored" if row.status == "suspended" else "confirmed"
                        await self._close(conn, row, state, now)
                        events.append(VerificationConfirmed(case_id=row.id, state=state, occurred_at=now))
                        if state == "restored":
                            events.append(
                                VerificationRestored(
                                    case_id=row.id,
                                    state=state,
                                    msisdn=self._msisdn(row),
                                    lang=row.lang,
                                    tz=row.tz,
                                    occurred_at=now,
                                )
                            )
                            await self._billing(conn, row, "restore", "confirmed", now)
                    else:
                        outcome = "mismatch"
                        # A suspended number stays suspended; an open case waits for the office.
                        state = "suspended" if row.status == "suspended" else "mismatch"
                        await store.set_status(conn, row.id, state, mismatch_fields=result.fields)
                        events.append(
                            VerificationMismatch(
                                case_id=row.id, state=state, fields=result.fields, occurred_at=now
                            )
                        )
                        detail = {"fields": ",".join(result.fields)}
            elif outcome == "consent_denied":
                events.append(VerificationConsentDenied(case_id=row.id, state=state, occurred_at=now))
            elif outcome == "account_not_confirmed":
                events.append(VerificationAccountNotConfirmed(case_id=row.id, state=state, occurred_at=now))
            final: SignInOutcome = outcome or "failed"
            if events:
                await outbox.append(conn, *events)
            await store.set_sign_in_outcome(conn, signed_in.state, final)
            await store.add_timeline(conn, row.id, now, f"sign_in_{final}", SUBSCRIBER, detail=detail)
            return final


def mask_holder(holder: Holder) -> HolderView:
    initials = " ".join(f"{part[0]}." for part in (holder.first_name, holder.middle_name) if part)
    return HolderView(
        name=f"{holder.last_name} {initials}".strip(),
        passport=f"{holder.passport_series[:2]}** ***{holder.passport_number[-3:]}",
    )
