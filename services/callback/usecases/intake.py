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
from services.callback.domain.lifecycle import CallbackState
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
from services.callback.usecases.common import (
    PHONE_CONTEXT,
    SLOT_MINUTES,
    Clock,
    advance_callback,
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
from services.common import db, outbox
from services.common.crypto import DataProtector, token_hash
from services.common.domain_errors import Conflict, Forbidden, Invalid, TooMany
from services.common.events import CallbackMerged, CallbackRequested, CallbackScheduled
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
        is returned for the route because an idempotent replay answers with the original's."""
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

        async with db.transaction(self.pool) as conn:
            if idempotency_key:
                replay = await self._replay(conn, site_key, idempotency_key, request_hash)
                if replay is not None:
                    return replay
            phone_hash = self.protector.blind_index(phone, "phone")
            await budgets.lock(conn, site_key, phone.encode().hex())
            # A repeat for a pending phone is a request like any other: it spends its form and passes the
            # budgets before it may join, so joining can't be used to probe numbers for free.
            if not await budgets.spend_form_token(conn, token_hash(body.form_token)):
                raise refuse(
                    Invalid, "form_token_spent", "This form was already sent; please reload it", "form_token"
                )
            await self._check_budgets(
                conn,
                site_key,
                settings,
                org_id=site.org_id,
                phone_hash=phone_hash,
                client_ip=client_ip,
                now=now,
            )
            existing = await callback_store.pending_for_phone(conn, site_key, phone_hash)
            if existing is not None:
                status_code, created = await self._merge(conn, existing, body, client_ip=client_ip, now=now)
            else:
                status_code, created = await self._insert(
                    conn,
                    site_key,
                    settings,
                    body,
                    org_id=site.org_id,
                    phone=phone,
                    phone_hash=phone_hash,
                    callee=callee,
                    slot=slot,
                    client_ip=client_ip,
                    now=now,
                )
            if idempotency_key:
                await idempotency.put_idempotent(
                    conn,
                    site_key,
                    idempotency_key,
                    self._idempotent_answer(request_hash, status_code, created),
                )
        # Committed: this queue's next offer or request here reads it again (other replicas hear the event).
        self.queues.forget(site.org_id, [settings.queue])
        return status_code, created

    def _idempotent_answer(
        self, request_hash: bytes, status_code: int, created: CallbackCreated
    ) -> idempotency.IdempotentAnswer:
        """What a replay returns, with the status token encrypted: a database dump hands out no tokens."""
        row_id = uuid.uuid4()
        response = msgspec.to_builtins(created)
        del response["status_token"]
        return idempotency.IdempotentAnswer(
            id=row_id,
            request_hash=request_hash,
            status_code=status_code,
            response=response,
            status_token_enc=self.protector.encrypt(
                created.status_token, idempotency.IDEMPOTENT_TOKEN_CONTEXT, row_id
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

    async def _replay(
        self, conn: db.Connection, site_key: str, key: str, request_hash: bytes
    ) -> tuple[int, CallbackCreated] | None:
        await budgets.lock(conn, site_key, "idempotency", key)
        stored = await idempotency.get_idempotent(conn, site_key, key)
        if stored is None:
            return None
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
        client_ip: str,
        now: dt.datetime,
    ) -> None:
        abuse = settings.abuse
        ip_hash = self.protector.blind_index(client_ip, "ip")
        await budgets.lock(conn, site_key, "ip", ip_hash.hex())
        window = dt.timedelta(minutes=10)
        count, oldest = await budgets.recent_by_ip(conn, site_key, ip_hash, now - window)
        if count >= abuse.per_ip_10min and oldest is not None:
            retry = (oldest + window - now).total_seconds()
            raise refuse(
                TooMany, "rate_limited", "Too many requests from your network; try again later", None, retry
            )
        day = dt.timedelta(days=1)
        count, oldest = await budgets.recent_by_phone(conn, org_id, phone_hash, now - day)
        if count >= abuse.per_phone_day and oldest is not None:
            retry = (oldest + day - now).total_seconds()
            raise refuse(TooMany, "rate_limited", "Too many requests for this number today", "phone", retry)
        local_midnight = now.astimezone(ZoneInfo(settings.timezone)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        if await budgets.count_site_since(conn, site_key, local_midnight) >= abuse.daily_cap:
            retry = (local_midnight + day - now).total_seconds()
            raise refuse(TooMany, "rate_limited", "This site takes no more requests today", None, retry)

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
        callee: CalleeWindow,
        slot: Slot | None,
        client_ip: str,
        now: dt.datetime,
    ) -> tuple[int, CallbackCreated]:
        if slot is not None:
            # Bookings of one queue take turns, so two visitors cannot both take a slot's last place.
            await budgets.lock(conn, "slots", org_id, settings.queue)
        # A request is promised from what PostgreSQL says now, in its own transaction (a slot's last place
        # under the queue's lock); the read refreshes the queue's cached one, and the wait's simulation is
        # shared with every offer and request that sees the same state.
        snapshot = (await self.queues.snapshot(conn, settings, now, org_id=org_id, fresh=True)).snapshot
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
            status=CallbackState.REQUESTED,
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
        await callback_store.insert_callback(
            conn, row, client_ip_hash=self.protector.blind_index(client_ip, "ip")
        )
        await callback_store.record_promise(
            conn,
            callback_id,
            given_at=now,
            kind=promise.kind,
            reason=promise.reason,
            earliest=promise.earliest,
            latest=promise.latest,
            snapshot=msgspec.to_builtins(snapshot),
        )
        token = secrets.token_urlsafe(24)
        await callback_store.add_token(conn, callback_id, token_hash(token))
        # Requested is announced on insert; the move to scheduled is a lifecycle step like any other.
        await outbox.append(
            conn,
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
        )
        await advance_callback(
            conn,
            row,
            CallbackState.SCHEDULED,
            CallbackScheduled(
                callback_id=callback_id,
                site_key=site_key,
                state="scheduled",
                due_at=row.due_at,
                promised_earliest=promise.earliest,
                promised_latest=promise.latest,
                reason=promise.reason,
            ),
        )
        CREATED.labels("new").inc()
        if promise.kind == "asap":
            PROMISE_SECONDS.observe((promise.latest - now).total_seconds())
        lang: Lang = body.lang
        return 201, CallbackCreated(
            id=callback_id,
            status_token=token,
            status=CallbackState.SCHEDULED,
            promise=promise_view(promise, now, body.visitor_tz, lang),
        )

    async def _merge(
        self,
        conn: db.Connection,
        existing: callback_store.CallbackRow,
        body: CallbackCreate,
        *,
        client_ip: str,
        now: dt.datetime,
    ) -> tuple[int, CallbackCreated]:
        """Same phone, same site, still pending: the number is called once, at the original's place and
        promise. The caller may be the same visitor again or a stranger who typed that number, so they get
        an alias: an id and token of their own that follow the call and can withdraw only the alias. The
        answer is shaped like a fresh acceptance (201, "scheduled", a new id): nothing tells the caller
        that the number had a pending request, and nothing they get can cancel or move it."""
        await callback_store.mark_merged(conn, existing.id)
        token = secrets.token_urlsafe(24)
        alias = aliases.AliasRow(
            id=uuid.uuid4(),
            callback_id=existing.id,
            visitor_tz=body.visitor_tz,
            lang=body.lang,
            withdrawn_at=None,
        )
        await aliases.add_alias(
            conn,
            alias,
            site_key=existing.site_key,
            token_hash=token_hash(token),
            client_ip_hash=self.protector.blind_index(client_ip, "ip"),
            now=now,
        )
        await outbox.append(
            conn,
            CallbackMerged(
                callback_id=existing.id, site_key=existing.site_key, state=state_name(existing.status)
            ),
        )
        CREATED.labels("merged").inc()
        return 201, CallbackCreated(
            id=alias.id,
            status_token=token,
            status=CallbackState.SCHEDULED,
            promise=promise_view(stored_promise(existing), now, body.visitor_tz, body.lang),
        )
