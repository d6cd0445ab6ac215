"""The subscriber's side: open the link, start the sign-in, finish it at the IdP's return, decide."""

from __future__ import annotations

import datetime as dt
import hmac
import logging
from dataclasses import dataclass
from typing import Literal

from services.common import db, outbox
from services.common.events import (
    VerificationAccountNotConfirmed,
    VerificationCaseState,
    VerificationConfirmed,
    VerificationConsentDenied,
    VerificationEvent,
    VerificationMismatch,
    VerificationRestored,
)
from services.verification import store
from services.verification.corporate.transitions import employee_case_decided
from services.verification.domain.compare import compare
from services.verification.domain.links import read_token, token_for
from services.verification.identity.base import IdentityError, PersonRecord, SignInStart
from services.verification.schemas import ACTIVE_STATUSES
from services.verification.usecases.common import BROWSER_PURPOSE, SUBSCRIBER, CaseCore

log = logging.getLogger(__name__)

SignInOutcome = Literal["confirmed", "mismatch", "consent_denied", "account_not_confirmed", "failed"]
PageKind = Literal["active", "used", "forged", "expired", "cancelled"]
ReturnKind = Literal["outcome", "state_unknown", "state_replayed", "state_expired", "other_browser"]


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


class SignInUseCases(CaseCore):
    __slots__ = ()

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
            link = await store.get_link(conn, signed_in.link_id)
            if row.status not in ACTIVE_STATUSES:
                outcome, detail = "failed", {"kind": "case_closed", "status": row.status}
            elif link is None or link.spent_at is not None:
                # Re-issued (or decided by another sign-in) while this one was at the IdP.
                outcome, detail = "failed", {"kind": "link_spent"}
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
                    if row.reason == "corporate_sim":
                        # A company's SIM awaits this employee: it moves on in this same transaction.
                        await employee_case_decided(
                            conn,
                            row.id,
                            "confirmed" if result.matched else "mismatch",
                            result.fields,
                            now,
                            flow=self.corporate_flow,
                        )
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
