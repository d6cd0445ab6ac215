"""Intake: what the widget shows, the offer (a promise and slots), accepting a request or merging a repeat."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
import uuid
from collections import OrderedDict
from zoneinfo import ZoneInfo

import msgspec
from prometheus_client import Counter, Histogram

from services.callback.domain.calendar import CalleeWindow, Slot
from services.callback.domain.guard import check_form_token, issue_form_token, proof_of_work_ok
from services.callback.domain.lifecycle import CallbackState, born
from services.callback.domain.phone import (
    PhoneRejected,
    calling_code,
    country_name,
    default_country,
    normalize_phone,
    refusal_message,
)
from services.callback.domain.promise import QueueSnapshot
from services.callback.schemas import (
    CallbackCreate,
    CallbackCreated,
    CountryView,
    Lang,
    Offer,
    PowChallenge,
    SiteSettings,
    WidgetConfig,
)
from services.callback.store import aliases, budgets, idempotency
from services.callback.store import callbacks as callback_store
from services.callback.store import intake as intake_store
from services.callback.usecases.common import (
    PHONE_CONTEXT,
    PROMISE_HORIZON,
    SLOT_MINUTES,
    Clock,
    chosen_slot,
    ensure_slot_free,
    parse_clock,
    promise_for,
    promise_view,
    refuse,
    slot_ranges,
    slots_for,
    state_name,
    stored_promise,
    utc_now,
)
from services.callback.usecases.presence import AgentAvailability, PresenceAgents
from services.callback.usecases.queues import QueueCache
from services.callback.usecases.sites import SiteDirectory, callee_window
from services.common import db
from services.common.crypto import DataProtector, token_hash
from services.common.domain_errors import Conflict, Forbidden, Invalid, TooMany
from services.common.events import CallbackMerged, CallbackRequested, CallbackScheduled, Event
from services.common.phone import mask_phone

CREATED = Counter("abonent_callback_requests_total", "Callback requests accepted", ["outcome"])
PROMISE_SECONDS = Histogram(
    "abonent_callback_promised_latest_seconds",
    "Promised latest wait for ASAP requests",
    buckets=(30, 60, 120, 300, 600, 1800, 3600),
)


# An offer made from the same queue read and site settings is reused this long (s): what it shows moves
# with the queue (a new read makes a new offer) and with the clock only at slot boundaries.
OFFER_REUSE_S = 1.0
# Offers kept for reuse: one per site, zone, language and "not before" asked for lately.
OFFERS_KEPT = 1024


class _SeenOffer(msgspec.Struct, kw_only=True):
    made_at: float  # monotonic
    snapshot: QueueSnapshot
    settings: SiteSettings
    offer: Offer  # without a form token: each offer gets its own


class Intake:
    """The widget's way in: configuration, offers and new requests for a site."""

    def __init__(
        self,
        pool: db.Pool,
        protector: DataProtector,
        sites: SiteDirectory,
        agents: AgentAvailability | None = None,
        clock: Clock = utc_now,
        *,
        queues: QueueCache | None = None,
    ) -> None:
        self.pool = pool
        self.protector = protector
        self.sites = sites
        self.agents: AgentAvailability = agents or PresenceAgents()
        self.clock = clock
        # Each queue is read and its wait simulated once per state, for every offer and request of it.
        self.queues = queues or QueueCache(self.agents, sites)
        # Offers as made from one queue read, per site, zone, language and "not before": the calendars
        # behind the promise and the slots cost more than everything else an offer does.
        self._offers: OrderedDict[tuple[str, str, str, str | None], _SeenOffer] = OrderedDict()

    async def widget_config(self, site_key: str, lang: Lang | None) -> WidgetConfig:
        site = await self.sites.require(site_key)
        settings = site.settings
        chosen: Lang = lang or settings.default_lang
        return WidgetConfig(
            site_key=site_key,
            name=settings.name,
            lang=chosen,
            texts=settings.texts.get(chosen, {}),
            consent=settings.consent,
            theme=settings.theme,
            allowed_countries=settings.allowed_countries,
            default_country=default_country(settings.allowed_countries),
            countries=[
                CountryView(code=code, name=country_name(code, chosen), calling_code=calling_code(code))
                for code in settings.allowed_countries
            ],
            fields=settings.widget_fields,
        )

    async def offer(self, site_key: str, tz: str, lang: Lang, not_before: str | None) -> Offer:
        """The promise and slots a visitor would get now. The site and the queue come from their caches
        (a pool connection is taken only on a miss), so the cost does not grow with the queue."""
        now = self.clock()
        site = await self.sites.require(site_key)
        settings = site.settings
        queue = await self.queues.snapshot(self.pool, settings, now, org_id=site.org_id)
        # The offer is made as of the queue's read (at most a second ago): its offsets count from then.
        snapshot, as_of = queue.snapshot, queue.as_of
        key = (site_key, tz, lang, not_before)
        seen = self._offers.get(key)
        if (
            seen is None
            or seen.snapshot is not snapshot
            or seen.settings is not settings
            or time.monotonic() - seen.made_at >= OFFER_REUSE_S
        ):
            callee = callee_window(settings, tz, parse_clock(not_before))
            promise = promise_for(as_of, snapshot, settings, callee)
            slots = slots_for(as_of, snapshot, settings, callee)
            bits = settings.abuse.proof_of_work_bits
            seen = _SeenOffer(
                made_at=time.monotonic(),
                snapshot=snapshot,
                settings=settings,
                offer=Offer(
                    open_now=promise is not None and promise.kind == "asap",
                    promise=None if promise is None else promise_view(promise, as_of, tz, lang),
                    slot_minutes=SLOT_MINUTES,
                    slot_ranges=slot_ranges(slots, tz),
                    form_token="",
                    pow=PowChallenge(bits=bits) if bits else None,
                ),
            )
            self._offers[key] = seen
            if len(self._offers) > OFFERS_KEPT:
                self._offers.popitem(last=False)
        else:
            self._offers.move_to_end(key)
        token = issue_form_token(self.protector.sign, site_key, now, secrets.token_hex(6))
        return msgspec.structs.replace(seen.offer, form_token=token)

    async def create(
        self, site_key: str, body: CallbackCreate, *, client_ip: str, idempotency_key: str | None
    ) -> tuple[int, CallbackCreated]:
        """Accept a request (201 and a promise) or join a pending one for the same phone; the status code
        is returned for the route because an idempotent replay answers with the original's.

        Round trips: BEGIN, the claim (locks, form token, Idempotency-Key), the checks (budgets, the
        phone's pending request, the queue's agents and line), one write, COMMIT; and the queue's
        handle-time history once per queue cache TTL."""
        site = await self.sites.require(site_key)
        settings = site.settings
        now = self.clock()
        self._check_form(site_key, settings, body, now)
        try:
            # National formats are read as the site's first country; the widget sends "+<code>…" always.
            countries = settings.allowed_countries
            phone = normalize_phone(body.phone, countries, default_country(countries))
        except PhoneRejected as exc:
            raise refuse(Invalid, exc.reason, refusal_message(exc, body.lang), "phone") from None
        if settings.consent.required and not body.consent:
            raise refuse(
                Invalid, "consent_required", "Please agree to the processing of your number", "consent"
            )
        callee = callee_window(settings, body.visitor_tz, parse_clock(body.not_before))
        slot = chosen_slot(body.slot_start, now, settings, callee)
        request_hash = hashlib.sha256(msgspec.json.encode(body)).digest()
        # Each once per request: they are keyed hashes, not free.
        phone_hash = self.protector.blind_index(phone, "phone")
        ip_hash = self.protector.blind_index(client_ip, "ip")
        claim = (
            None
            if idempotency_key is None
            else intake_store.IdempotencyClaim(
                id=uuid.uuid4(), site_key=site_key, key=idempotency_key, request_hash=request_hash
            )
        )
        # One advisory lock remains, because the per-address budget needs it: "fewer than N requests from
        # this address" is a count, which no unique constraint can say, and without it a burst of parallel
        # POSTs from one address would all read the same count and all pass. Same-phone races need no lock
        # (the one-pending-per-phone index makes the later one join), nor do Idempotency-Keys (their primary
        # key makes a concurrent replay wait for the first, then replay it). A slot booking also takes its
        # queue's lock: a slot's capacity is a count too.
        locks = [budgets.lock_key(site_key, "ip", ip_hash.hex())]
        if slot is not None:
            locks.append(budgets.lock_key("slots", site.org_id, settings.queue))

        async with db.transaction(self.pool) as conn:
            claimed = await intake_store.claim(
                conn, lock_keys=locks, form_token_hash=token_hash(body.form_token), idempotency=claim
            )
            if claimed.stored is not None:
                return self._replay(claimed.stored, request_hash)
            # A repeat for a pending phone is a request like any other: it spends its form and passes the
            # budgets before it may join, so joining can't be used to probe numbers for free.
            if not claimed.form_fresh:
                raise refuse(
                    Invalid, "form_token_spent", "This form was already sent; please reload it", "form_token"
                )
            found = await self._check_budgets(
                conn, site_key, settings, org_id=site.org_id, phone_hash=phone_hash, ip_hash=ip_hash, now=now
            )
            pending = found.pending
            # The pending request read may be overtaken by a concurrent one (a new request for the number
            # commits first, or the pending one is dialed and finishes): each write says whether it
            # happened, and the other way is taken with a fresh look.
            done: tuple[int, CallbackCreated] | None = None
            for _ in range(3):
                if pending is not None:
                    done = await self._merge(conn, pending, body, ip_hash=ip_hash, now=now, claim=claim)
                else:
                    done = await self._insert(
                        conn,
                        site_key,
                        settings,
                        body,
                        org_id=site.org_id,
                        phone=phone,
                        phone_hash=phone_hash,
                        ip_hash=ip_hash,
                        callee=callee,
                        slot=slot,
                        now=now,
                        claim=claim,
                        queue=found,
                    )
                if done is not None:
                    break
                pending = await callback_store.pending_for_phone(conn, site_key, phone_hash)
            if done is None:
                raise refuse(Conflict, "request_contended", "Please send the request again", "phone")
        # Committed: this queue's next offer here reads its line again (other replicas hear the event). No
        # call started or ended, so the handle-time history and the wait simulation stay shared.
        self.queues.forget(site.org_id, [settings.queue], calls=False)
        return done

    def _answer(
        self, claim: intake_store.IdempotencyClaim | None, status_code: int, created: CallbackCreated
    ) -> intake_store.Answer | None:
        """What a replay returns, with the status token encrypted: a database dump hands out no tokens."""
        if claim is None:
            return None
        response = msgspec.to_builtins(created)
        del response["status_token"]
        return intake_store.Answer(
            id=claim.id,
            status_code=status_code,
            response=response,
            status_token_enc=self.protector.encrypt(
                created.status_token, idempotency.IDEMPOTENT_TOKEN_CONTEXT, claim.id
            ),
        )

    def _check_form(
        self, site_key: str, settings: SiteSettings, body: CallbackCreate, now: dt.datetime
    ) -> None:
        if body.website:
            raise refuse(Forbidden, "bot_suspected", "The request looks automated", "website")
        problem = check_form_token(
            body.form_token, self.protector.sign, site_key, now, settings.abuse.min_fill_ms
        )
        if problem == "filled_too_fast":
            raise refuse(
                Forbidden, "bot_suspected", "The form was sent faster than a person can fill it", "form_token"
            )
        if problem is not None:
            raise refuse(Invalid, problem, "The form is outdated; please reload it", "form_token")
        if not proof_of_work_ok(body.form_token, body.pow_nonce, settings.abuse.proof_of_work_bits):
            raise refuse(
                Forbidden, "pow_required", "The browser check did not complete; please retry", "pow_nonce"
            )

    def _replay(
        self, stored: idempotency.IdempotentAnswer, request_hash: bytes
    ) -> tuple[int, CallbackCreated]:
        if stored.request_hash != request_hash:
            raise Conflict("idempotency_conflict", "This Idempotency-Key was used for a different request")
        response = dict(stored.response)
        if stored.status_token_enc is not None:
            response["status_token"] = self.protector.decrypt(
                stored.status_token_enc, idempotency.IDEMPOTENT_TOKEN_CONTEXT, stored.id
            )
        return stored.status_code, msgspec.convert(response, CallbackCreated)

    async def _check_budgets(
        self,
        conn: db.Connection,
        site_key: str,
        settings: SiteSettings,
        *,
        org_id: str,
        phone_hash: bytes,
        ip_hash: bytes,
        now: dt.datetime,
    ) -> intake_store.Checks:
        """TooMany when a budget is spent; else the checks' findings: the phone's pending request on the
        site, if any, and the queue's agents and line as of `now`."""
        abuse = settings.abuse
        window = dt.timedelta(minutes=10)
        day = dt.timedelta(days=1)
        local_midnight = now.astimezone(ZoneInfo(settings.timezone)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        found = await intake_store.checks(
            conn,
            site_key=site_key,
            org_id=org_id,
            ip_hash=ip_hash,
            ip_since=now - window,
            ip_cap=abuse.per_ip_10min,
            phone_hash=phone_hash,
            phone_since=now - day,
            phone_cap=abuse.per_phone_day,
            site_since=local_midnight,
            site_cap=abuse.daily_cap,
            queue=settings.queue,
            now=now,
            horizon=now + PROMISE_HORIZON,
        )
        if found.ip_count >= abuse.per_ip_10min and found.ip_oldest is not None:
            retry = (found.ip_oldest + window - now).total_seconds()
            raise refuse(
                TooMany, "rate_limited", "Too many requests from your network; try again later", None, retry
            )
        if found.phone_count >= abuse.per_phone_day and found.phone_oldest is not None:
            retry = (found.phone_oldest + day - now).total_seconds()
            raise refuse(TooMany, "rate_limited", "Too many requests for this number today", "phone", retry)
        if found.site_count >= abuse.daily_cap:
            retry = (local_midnight + day - now).total_seconds()
            raise refuse(TooMany, "rate_limited", "This site takes no more requests today", None, retry)
        return found

    async def _insert(
        self,
        conn: db.Connection,
        site_key: str,
        settings: SiteSettings,
        body: CallbackCreate,
        *,
        org_id: str,
        phone: str,
        phone_hash: bytes,
        ip_hash: bytes,
        callee: CalleeWindow,
        slot: Slot | None,
        now: dt.datetime,
        claim: intake_store.IdempotencyClaim | None,
        queue: intake_store.Checks,
    ) -> tuple[int, CallbackCreated] | None:
        """A new request, born scheduled; None (nothing written) when the phone got a pending request
        from a concurrent one meanwhile."""
        # A request is promised from what PostgreSQL said in its own transaction's checks (a slot's last
        # place under the queue's lock, taken in the claim), with the queue's handle-time history; the
        # wait's simulation is shared with every request that sees the same agents and calls.
        snapshot = await self.queues.newcomer(
            conn,
            settings,
            now,
            org_id=org_id,
            ready_agents=queue.ready_agents,
            busy_started=queue.busy_started,
            due_now=queue.due_now,
            later_due_s=queue.later_due_s,
            last_handled=queue.last_handled,
        )
        if slot is not None:
            ensure_slot_free(slot, now, snapshot, settings, callee)
        promise = promise_for(now, snapshot, settings, callee, slot)
        if promise is None:
            raise refuse(
                Invalid,
                "no_callable_time",
                "Nobody can call you back in the next two weeks at these hours",
                "not_before",
            )
        callback_id = uuid.uuid4()
        # Born requested and scheduled at once: the state machine says which states it passes through,
        # and each is announced (callback.requested carries the phone for the notifier).
        passed = born(CallbackState.SCHEDULED)
        row = callback_store.CallbackRow(
            id=callback_id,
            site_key=site_key,
            org_id=org_id,
            queue=settings.queue,
            phone_enc=self.protector.encrypt(phone, PHONE_CONTEXT, callback_id),
            phone_hash=phone_hash,
            phone_masked=mask_phone(phone),
            visitor_id=body.visitor_id,
            visitor_tz=body.visitor_tz,
            lang=body.lang,
            not_before=callee.not_before,
            status=passed[-1],
            requested_at=now,
            due_at=now if promise.kind == "asap" else promise.earliest,
            promise_kind=promise.kind,
            promise_reason=promise.reason,
            promised_earliest=promise.earliest,
            promised_latest=promise.latest,
            attempts=0,
            max_attempts=settings.retry_policy.max_attempts,
            outcome=None,
            first_dial_at=None,
            connected_at=None,
            ended_at=None,
            page_url=body.page_url,
            referrer=body.referrer,
            utm=body.utm,
            consent_version=settings.consent.version if body.consent else None,
            merged_count=0,
            updated_at=now,
        )
        events: list[Event] = [
            CallbackRequested(
                callback_id=callback_id,
                site_key=site_key,
                state="requested",
                phone=phone,
                visitor_tz=body.visitor_tz,
                lang=body.lang,
                promised_earliest=promise.earliest,
                promised_latest=promise.latest,
                promise_kind=promise.kind,
                page_url=body.page_url,
            ),
            CallbackScheduled(
                callback_id=callback_id,
                site_key=site_key,
                state="scheduled",
                due_at=row.due_at,
                promised_earliest=promise.earliest,
                promised_latest=promise.latest,
                reason=promise.reason,
            ),
        ]
        token = secrets.token_urlsafe(24)
        lang: Lang = body.lang
        created = CallbackCreated(
            id=callback_id,
            status_token=token,
            status=row.status,
            promise=promise_view(promise, now, body.visitor_tz, lang),
        )
        written = await intake_store.insert_request(
            conn,
            row,
            client_ip_hash=ip_hash,
            promise=intake_store.PromiseGiven(
                given_at=now,
                kind=promise.kind,
                reason=promise.reason,
                earliest=promise.earliest,
                latest=promise.latest,
                snapshot=msgspec.to_builtins(snapshot),
            ),
            token_hash=token_hash(token),
            events=events,
            answer=self._answer(claim, 201, created),
        )
        if not written:
            return None
        CREATED.labels("new").inc()
        if promise.kind == "asap":
            PROMISE_SECONDS.observe((promise.latest - now).total_seconds())
        return 201, created

    async def _merge(
        self,
        conn: db.Connection,
        existing: callback_store.CallbackRow,
        body: CallbackCreate,
        *,
        ip_hash: bytes,
        now: dt.datetime,
        claim: intake_store.IdempotencyClaim | None,
    ) -> tuple[int, CallbackCreated] | None:
        """Same phone, same site, still pending: the number is called once, at the original's place and
        promise. The caller may be the same visitor again or a stranger who typed that number, so they get
        an alias: an id and token of their own that follow the call and can withdraw only the alias. The
        answer is shaped like a fresh acceptance (201, "scheduled", a new id): nothing tells the caller
        that the number had a pending request, and nothing they get can cancel or move it. None (nothing
        written) when the request stopped being pending since it was read."""
        token = secrets.token_urlsafe(24)
        alias = aliases.AliasRow(
            id=uuid.uuid4(),
            callback_id=existing.id,
            visitor_tz=body.visitor_tz,
            lang=body.lang,
            withdrawn_at=None,
        )
        created = CallbackCreated(
            id=alias.id,
            status_token=token,
            status=CallbackState.SCHEDULED,
            promise=promise_view(stored_promise(existing), now, body.visitor_tz, body.lang),
        )
        joined = await intake_store.join_pending(
            conn,
            alias,
            site_key=existing.site_key,
            token_hash=token_hash(token),
            client_ip_hash=ip_hash,
            now=now,
            events=[
                CallbackMerged(
                    callback_id=existing.id, site_key=existing.site_key, state=state_name(existing.status)
                )
            ],
            answer=self._answer(claim, 201, created),
        )
        if not joined:
            return None
        CREATED.labels("merged").inc()
        return 201, created
