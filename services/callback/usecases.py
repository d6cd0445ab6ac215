"""Callback use cases: what the HTTP routes ask for, as transactions over the store and the domain."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import math
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol, cast
from zoneinfo import ZoneInfo

import msgspec
from prometheus_client import Counter, Histogram

from services.callback import store
from services.callback.domain.calendar import CalleeWindow, SiteCalendar, Slot, TimeRange, offer_slots
from services.callback.domain.guard import check_form_token, issue_form_token, proof_of_work_ok
from services.callback.domain.lifecycle import (
    CallbackState,
    IllegalTransition,
    is_terminal,
    retime,
    transition,
)
from services.callback.domain.phone import (
    PhoneRejected,
    calling_code,
    country_name,
    default_country,
    normalize_phone,
    refusal_message,
)
from services.callback.domain.promise import (
    Promise,
    PromiseReason,
    QueueSnapshot,
    promise_callback_time,
    render_promise_text,
)
from services.callback.domain.texts import status_text
from services.callback.schemas import (
    WEEKDAYS,
    CallbackCreate,
    CallbackCreated,
    CallbackStatus,
    CountryView,
    Lang,
    Offer,
    PowChallenge,
    PromiseView,
    Reschedule,
    RetryPlan,
    Site,
    SiteSettings,
    SlotView,
    WidgetConfig,
)
from services.common import db, outbox
from services.common.crypto import DataProtector, token_hash
from services.common.errors import ApiError
from services.common.events import (
    CallbackCancelled,
    CallbackEvent,
    CallbackExpired,
    CallbackMerged,
    CallbackRequested,
    CallbackScheduled,
)
from services.common.phone import mask_phone

log = logging.getLogger(__name__)

REFUSED = Counter("abonent_callback_refused_total", "Callback requests refused", ["reason"])
CREATED = Counter("abonent_callback_requests_total", "Callback requests accepted", ["outcome"])
PROMISE_SECONDS = Histogram(
    "abonent_callback_promised_latest_seconds",
    "Promised latest wait for ASAP requests",
    buckets=(30, 60, 120, 300, 600, 1800, 3600),
)

PHONE_CONTEXT = "callback.callbacks.phone"
EXPIRE_AFTER_LATEST = dt.timedelta(hours=24)

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class AgentAvailability(Protocol):
    """Ready agents per queue from live presence; None when nobody uses the agent console for it.

    Asked inside the caller's transaction, so it reads through the caller's connection."""

    async def ready_agents(self, conn: db.Connection, queue: str) -> int | None: ...


class PresenceAgents:
    """Ready agents from the console's presence; None (use staffed_agents) where nobody signs in."""

    async def ready_agents(self, conn: db.Connection, queue: str) -> int | None:
        return await store.ready_agent_count(conn, queue)


class StaffedAgents:
    """Until agents sign in, a site's `staffed_agents` setting stands for its agents."""

    async def ready_agents(self, conn: db.Connection, queue: str) -> int | None:
        return None


def refuse(
    status: int, code: str, message: str, field: str | None = None, retry_after: float | None = None
) -> ApiError:
    REFUSED.labels(code).inc()
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return ApiError(status, code, message, field, headers)


async def advance_callback(
    conn: db.Connection,
    row: store.CallbackRow,
    target: CallbackState,
    event: CallbackEvent,
    **changes: object,
) -> None:
    """One lifecycle step in the caller's transaction: the state machine must allow it, and the row
    change and its event commit together. Staying in the same state is a re-time (a waiting request
    gets a new due time), which the state machine allows only where it makes sense."""
    current = CallbackState(row.status)
    if target is current:
        retime(current)
    else:
        transition(current, target)
    await store.update_callback(conn, row.id, status=target, **changes)
    await outbox.append(conn, event)


def site_calendar(settings: SiteSettings) -> SiteCalendar:
    return SiteCalendar(
        tz=settings.timezone,
        weekly={
            WEEKDAYS.index(day): [TimeRange.parse(start, end) for start, end in ranges]
            for day, ranges in settings.working_hours.items()
        },
        holidays=frozenset(settings.holidays),
        production_calendar=settings.production_calendar,
    )


def callee_window(settings: SiteSettings, visitor_tz: str, not_before: dt.time | None) -> CalleeWindow:
    window = settings.calling_window
    return CalleeWindow(
        tz=visitor_tz, window=TimeRange.parse(window.start, window.end), not_before=not_before
    )


def parse_clock(value: str | None) -> dt.time | None:
    return None if value is None else dt.time.fromisoformat(value)


def slot_label(slot: Slot, tz: str, lang: Lang) -> str:
    local = slot.start.astimezone(ZoneInfo(tz))
    if lang == "ru":
        days = ("пн", "вт", "ср", "чт", "пт", "сб", "вс")
        return f"{days[local.weekday()]}, {local.day:02d}.{local.month:02d}, {local:%H:%M}"
    return f"{local:%a} {local.day} {local:%b}, {local:%H:%M}"


class SiteDirectory:
    """Sites by key with a short in-process cache: the widget's hot paths read them on every request."""

    def __init__(self, pool: db.Pool, ttl_s: float = 5.0) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, Site | None]] = {}

    async def get(self, site_key: str, conn: db.Connection | None = None) -> Site | None:
        """The site, from the cache or the database. A caller holding a connection (inside a transaction)
        passes it: a miss then reads through it instead of taking a second one from the pool."""
        cached = self._cache.get(site_key)
        if cached is not None and time.monotonic() - cached[0] < self.ttl_s:
            return cached[1]
        if conn is not None:
            site = await store.get_site(conn, site_key)
        else:
            async with self.pool.acquire() as own:
                site = await store.get_site(own, site_key)
        self._cache[site_key] = (time.monotonic(), site)
        return site

    async def require(self, site_key: str, conn: db.Connection | None = None) -> Site:
        site = await self.get(site_key, conn)
        if site is None:
            raise ApiError(404, "site_not_found", f"No site with key {site_key!r}", "site_key")
        return site

    def forget(self, site_key: str) -> None:
        self._cache.pop(site_key, None)


class CallbackService:
    def __init__(
        self,
        pool: db.Pool,
        protector: DataProtector,
        sites: SiteDirectory,
        agents: AgentAvailability | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.pool = pool
        self.protector = protector
        self.sites = sites
        self.agents: AgentAvailability = agents or StaffedAgents()
        self.clock = clock

    # --- reading --------------------------------------------------------------------------------------

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

    async def _snapshot(self, conn: db.Connection, settings: SiteSettings, now: dt.datetime) -> QueueSnapshot:
        figures = await store.queue_figures(conn, settings.queue, now)
        ready = await self.agents.ready_agents(conn, settings.queue)
        if ready is None:
            ready = max(settings.staffed_agents - len(figures.busy_elapsed_s), 0)
        return QueueSnapshot(
            ready_agents=ready,
            busy_elapsed_s=figures.busy_elapsed_s,
            ahead=figures.waiting_due,
            handle_time_samples_s=figures.handle_times_s,
        )

    def _promise(
        self,
        now: dt.datetime,
        snapshot: QueueSnapshot,
        settings: SiteSettings,
        callee: CalleeWindow,
        slot: Slot | None = None,
    ) -> Promise | None:
        return promise_callback_time(
            now,
            snapshot,
            site_calendar(settings),
            callee,
            slot,
            agents_at_opening=max(settings.staffed_agents, 1),
        )

    async def offer(self, site_key: str, tz: str, lang: Lang, not_before: str | None) -> Offer:
        now = self.clock()
        # One connection for the whole read: the widget's hottest path takes one pool slot, once.
        async with self.pool.acquire() as conn:
            site = await self.sites.require(site_key, conn)
            settings = site.settings
            callee = callee_window(settings, tz, parse_clock(not_before))
            snapshot = await self._snapshot(conn, settings, now)
        promise = self._promise(now, snapshot, settings, callee)
        slots = offer_slots(now, site_calendar(settings), callee)
        token = issue_form_token(self.protector.sign, site_key, now, secrets.token_hex(6))
        bits = settings.abuse.proof_of_work_bits
        return Offer(
            open_now=promise is not None and promise.kind == "asap",
            promise=None if promise is None else self._view(promise, now, tz, lang),
            slots=[SlotView(start=s.start, end=s.end, label=slot_label(s, tz, lang)) for s in slots],
            form_token=token,
            pow=PowChallenge(bits=bits) if bits else None,
        )

    def _view(self, promise: Promise, now: dt.datetime, tz: str, lang: Lang) -> PromiseView:
        return PromiseView(
            kind=promise.kind,
            earliest=promise.earliest,
            latest=promise.latest,
            text=render_promise_text(promise, now, tz, lang),
        )

    def _stored_promise(self, row: store.CallbackRow) -> Promise:
        return Promise(
            kind="asap" if row.promise_kind == "asap" else "scheduled",
            earliest=row.promised_earliest,
            latest=row.promised_latest,
            reason=cast(PromiseReason, row.promise_reason),
        )

    def status_view(self, row: store.CallbackRow, alias: store.AliasRow | None = None) -> CallbackStatus:
        """The request's status; through an alias, the same call under the alias's id, language and time
        zone, and "cancelled" once the alias's holder withdrew (the call itself goes on for the other)."""
        now = self.clock()
        language, visitor_tz = (row.lang, row.visitor_tz) if alias is None else (alias.lang, alias.visitor_tz)
        lang: Lang = "en" if language == "en" else "ru"
        promise = self._view(self._stored_promise(row), now, visitor_tz, lang)
        status: str = row.status
        attempts, outcome, updated_at = row.attempts, row.outcome, row.updated_at
        if alias is not None and alias.withdrawn_at is not None:
            status, attempts, outcome, updated_at = CallbackState.CANCELLED, 0, None, alias.withdrawn_at
        retry_plan = None
        if attempts > 0 and not is_terminal(CallbackState(status)):
            retry_plan = RetryPlan(
                attempts_left=max(row.max_attempts - row.attempts, 0),
                next_attempt_at=row.due_at if row.status == "scheduled" else None,
                last_attempt_by=row.last_attempt_by,
            )
        return CallbackStatus(
            id=row.id if alias is None else alias.id,
            status=status,
            text=status_text(status, lang, promise.text),
            promise=promise,
            attempts=attempts,
            max_attempts=row.max_attempts,
            retry_plan=retry_plan,
            outcome=outcome,
            updated_at=updated_at,
        )

    async def status(self, callback_id: uuid.UUID, token: str | None) -> CallbackStatus:
        async with self.pool.acquire() as conn:
            row, alias = await self._authorised(conn, callback_id, token)
        return self.status_view(row, alias)

    async def watched_callback(self, callback_id: uuid.UUID, token: str | None) -> uuid.UUID:
        """The request whose changes a status stream for this id waits on (an alias's is its target's)."""
        async with self.pool.acquire() as conn:
            row, _ = await self._authorised(conn, callback_id, token)
        return row.id

    async def _authorised(
        self, conn: db.Connection, callback_id: uuid.UUID, token: str | None
    ) -> tuple[store.CallbackRow, store.AliasRow | None]:
        """The request the token opens, and the alias it came through when it is a repeat's token."""
        if token:
            hashed = token_hash(token)
            row = await store.callback_by_token(conn, callback_id, hashed)
            if row is not None:
                return row, None
            alias = await store.alias_by_token(conn, callback_id, hashed)
            if alias is not None:
                target = await store.get_callback(conn, alias.callback_id)
                assert target is not None
                return target, alias
        # One answer for "no such request" and "wrong token": ids cannot be probed.
        raise ApiError(404, "callback_not_found", "No callback request with this id and token")

    # --- creating -------------------------------------------------------------------------------------

    async def create(
        self, site_key: str, body: CallbackCreate, *, client_ip: str, idempotency_key: str | None
    ) -> tuple[int, CallbackCreated]:
        site = await self.sites.require(site_key)
        settings = site.settings
        now = self.clock()
        self._check_form(site_key, settings, body, now)
        try:
            # National formats are read as the site's first country; the widget sends "+<code>…" always.
            countries = settings.allowed_countries
            phone = normalize_phone(body.phone, countries, default_country(countries))
        except PhoneRejected as exc:
            raise refuse(400, exc.reason, refusal_message(exc, body.lang), "phone") from None
        if settings.consent.required and not body.consent:
            raise refuse(400, "consent_required", "Please agree to the processing of your number", "consent")
        callee = callee_window(settings, body.visitor_tz, parse_clock(body.not_before))
        slot = self._chosen_slot(body.slot_start, now, settings, callee)
        request_hash = hashlib.sha256(msgspec.json.encode(body)).digest()

        async with db.transaction(self.pool) as conn:
            if idempotency_key:
                replay = await self._replay(conn, site_key, idempotency_key, request_hash)
                if replay is not None:
                    return replay
            phone_hash = self.protector.blind_index(phone, "phone")
            await store.lock(conn, site_key, phone.encode().hex())
            # A repeat for a pending phone is a request like any other: it spends its form and passes the
            # budgets before it may join, so joining can't be used to probe numbers for free.
            if not await store.spend_form_token(conn, token_hash(body.form_token)):
                raise refuse(
                    400, "form_token_spent", "This form was already sent; please reload it", "form_token"
                )
            await self._check_budgets(
                conn, site_key, settings, phone_hash=phone_hash, client_ip=client_ip, now=now
            )
            existing = await store.pending_for_phone(conn, site_key, phone_hash)
            if existing is not None:
                status_code, created = await self._merge(conn, existing, body, client_ip=client_ip, now=now)
            else:
                status_code, created = await self._insert(
                    conn,
                    site_key,
                    settings,
                    body,
                    phone=phone,
                    phone_hash=phone_hash,
                    callee=callee,
                    slot=slot,
                    client_ip=client_ip,
                    now=now,
                )
            if idempotency_key:
                await store.put_idempotent(
                    conn,
                    site_key,
                    idempotency_key,
                    self._idempotent_answer(request_hash, status_code, created),
                )
        return status_code, created

    def _idempotent_answer(
        self, request_hash: bytes, status_code: int, created: CallbackCreated
    ) -> store.IdempotentAnswer:
        """What a replay returns, with the status token encrypted: a database dump hands out no tokens."""
        row_id = uuid.uuid4()
        response = msgspec.to_builtins(created)
        del response["status_token"]
        return store.IdempotentAnswer(
            id=row_id,
            request_hash=request_hash,
            status_code=status_code,
            response=response,
            status_token_enc=self.protector.encrypt(
                created.status_token, store.IDEMPOTENT_TOKEN_CONTEXT, row_id
            ),
        )

    def _check_form(
        self, site_key: str, settings: SiteSettings, body: CallbackCreate, now: dt.datetime
    ) -> None:
        if body.website:
            raise refuse(403, "bot_suspected", "The request looks automated", "website")
        problem = check_form_token(
            body.form_token, self.protector.sign, site_key, now, settings.abuse.min_fill_ms
        )
        if problem == "filled_too_fast":
            raise refuse(
                403, "bot_suspected", "The form was sent faster than a person can fill it", "form_token"
            )
        if problem is not None:
            raise refuse(400, problem, "The form is outdated; please reload it", "form_token")
        if not proof_of_work_ok(body.form_token, body.pow_nonce, settings.abuse.proof_of_work_bits):
            raise refuse(403, "pow_required", "The browser check did not complete; please retry", "pow_nonce")

    def _chosen_slot(
        self, slot_start: dt.datetime | None, now: dt.datetime, settings: SiteSettings, callee: CalleeWindow
    ) -> Slot | None:
        if slot_start is None:
            return None
        for slot in offer_slots(now, site_calendar(settings), callee):
            if slot.start == slot_start:
                return slot
        raise refuse(
            400, "invalid_slot", "This time is no longer available; please choose another", "slot_start"
        )

    async def _replay(
        self, conn: db.Connection, site_key: str, key: str, request_hash: bytes
    ) -> tuple[int, CallbackCreated] | None:
        await store.lock(conn, site_key, "idempotency", key)
        stored = await store.get_idempotent(conn, site_key, key)
        if stored is None:
            return None
        if stored.request_hash != request_hash:
            raise ApiError(
                409, "idempotency_conflict", "This Idempotency-Key was used for a different request"
            )
        response = dict(stored.response)
        if stored.status_token_enc is not None:
            response["status_token"] = self.protector.decrypt(
                stored.status_token_enc, store.IDEMPOTENT_TOKEN_CONTEXT, stored.id
            )
        return stored.status_code, msgspec.convert(response, CallbackCreated)

    async def _check_budgets(
        self,
        conn: db.Connection,
        site_key: str,
        settings: SiteSettings,
        *,
        phone_hash: bytes,
        client_ip: str,
        now: dt.datetime,
    ) -> None:
        abuse = settings.abuse
        ip_hash = self.protector.blind_index(client_ip, "ip")
        await store.lock(conn, site_key, "ip", ip_hash.hex())
        window = dt.timedelta(minutes=10)
        count, oldest = await store.recent_by_ip(conn, site_key, ip_hash, now - window)
        if count >= abuse.per_ip_10min and oldest is not None:
            retry = (oldest + window - now).total_seconds()
            raise refuse(
                429, "rate_limited", "Too many requests from your network; try again later", None, retry
            )
        day = dt.timedelta(days=1)
        count, oldest = await store.recent_by_phone(conn, phone_hash, now - day)
        if count >= abuse.per_phone_day and oldest is not None:
            retry = (oldest + day - now).total_seconds()
            raise refuse(429, "rate_limited", "Too many requests for this number today", "phone", retry)
        local_midnight = now.astimezone(ZoneInfo(settings.timezone)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        if await store.count_site_since(conn, site_key, local_midnight) >= abuse.daily_cap:
            retry = (local_midnight + day - now).total_seconds()
            raise refuse(429, "rate_limited", "This site takes no more requests today", None, retry)

    async def _insert(
        self,
        conn: db.Connection,
        site_key: str,
        settings: SiteSettings,
        body: CallbackCreate,
        *,
        phone: str,
        phone_hash: bytes,
        callee: CalleeWindow,
        slot: Slot | None,
        client_ip: str,
        now: dt.datetime,
    ) -> tuple[int, CallbackCreated]:
        snapshot = await self._snapshot(conn, settings, now)
        promise = self._promise(now, snapshot, settings, callee, slot)
        if promise is None:
            raise refuse(
                400,
                "no_callable_time",
                "We cannot call you in the next two weeks at these hours",
                "not_before",
            )
        callback_id = uuid.uuid4()
        row = store.CallbackRow(
            id=callback_id,
            site_key=site_key,
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
        await store.insert_callback(conn, row, client_ip_hash=self.protector.blind_index(client_ip, "ip"))
        await store.record_promise(
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
        await store.add_token(conn, callback_id, token_hash(token))
        state = transition(CallbackState.REQUESTED, CallbackState.SCHEDULED)
        await store.update_callback(conn, callback_id, status=state)
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
            status=state,
            promise=self._view(promise, now, body.visitor_tz, lang),
        )

    async def _merge(
        self,
        conn: db.Connection,
        existing: store.CallbackRow,
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
        await store.mark_merged(conn, existing.id)
        token = secrets.token_urlsafe(24)
        alias = store.AliasRow(
            id=uuid.uuid4(),
            callback_id=existing.id,
            visitor_tz=body.visitor_tz,
            lang=body.lang,
            withdrawn_at=None,
        )
        await store.add_alias(
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
                callback_id=existing.id, site_key=existing.site_key, state=_state_name(existing.status)
            ),
        )
        CREATED.labels("merged").inc()
        return 201, CallbackCreated(
            id=alias.id,
            status_token=token,
            status=CallbackState.SCHEDULED,
            promise=self._view(self._stored_promise(existing), now, body.visitor_tz, body.lang),
        )

    # --- visitor actions --------------------------------------------------------------------------------

    async def cancel(self, callback_id: uuid.UUID, token: str | None) -> CallbackStatus:
        async with db.transaction(self.pool) as conn:
            row, alias = await self._authorised(conn, callback_id, token)
            if alias is not None:
                return await self._withdraw(conn, row, alias)
            row = await self._locked(conn, row.id)
            try:
                await advance_callback(
                    conn,
                    row,
                    CallbackState.CANCELLED,
                    CallbackCancelled(
                        callback_id=row.id, site_key=row.site_key, state="cancelled", by="visitor"
                    ),
                    ended_at=self.clock(),
                )
            except IllegalTransition:
                raise ApiError(409, "already_finished", f"This request is already {row.status}") from None
            row = await self._locked(conn, row.id)
        return self.status_view(row)

    async def _withdraw(
        self, conn: db.Connection, row: store.CallbackRow, alias: store.AliasRow
    ) -> CallbackStatus:
        """An alias's holder cancels: only their alias ends; the request they joined is someone's promise."""
        now = self.clock()
        if is_terminal(CallbackState(row.status)):
            raise ApiError(409, "already_finished", f"This request is already {row.status}")
        if not await store.withdraw_alias(conn, alias.id, now):
            raise ApiError(409, "already_finished", "This request is already cancelled")
        return self.status_view(row, msgspec.structs.replace(alias, withdrawn_at=now))

    async def _locked(self, conn: db.Connection, callback_id: uuid.UUID) -> store.CallbackRow:
        row = await store.get_callback(conn, callback_id, for_update=True)
        assert row is not None
        return row

    async def reschedule(self, callback_id: uuid.UUID, token: str | None, body: Reschedule) -> CallbackStatus:
        """Move a pending request to a chosen slot or a "not before"; it keeps its original place."""
        now = self.clock()
        async with db.transaction(self.pool) as conn:
            row, alias = await self._authorised(conn, callback_id, token)
            row = await self._locked(conn, row.id)
            if alias is not None and alias.withdrawn_at is not None:
                raise ApiError(409, "not_reschedulable", "A request that is cancelled cannot be moved")
            if row.status not in ("requested", "scheduled"):
                raise ApiError(409, "not_reschedulable", f"A request that is {row.status} cannot be moved")
            if alias is not None:
                # The call it follows keeps the time promised to whoever asked first.
                raise ApiError(
                    409, "not_reschedulable", "This request cannot be moved; cancel it and send a new one"
                )
            site = await self.sites.require(row.site_key, conn)
            not_before = parse_clock(body.not_before) if body.not_before else row.not_before
            callee = callee_window(site.settings, row.visitor_tz, not_before)
            slot = self._chosen_slot(body.slot_start, now, site.settings, callee)
            snapshot = await self._snapshot(conn, site.settings, now)
            promise = self._promise(now, snapshot, site.settings, callee, slot)
            if promise is None:
                raise refuse(400, "no_callable_time", "We cannot call you at these hours", "not_before")
            due_at = now if promise.kind == "asap" else promise.earliest
            await store.record_promise(
                conn,
                row.id,
                given_at=now,
                kind=promise.kind,
                reason=promise.reason,
                earliest=promise.earliest,
                latest=promise.latest,
                snapshot=msgspec.to_builtins(snapshot),
            )
            await advance_callback(
                conn,
                row,
                CallbackState.SCHEDULED,
                CallbackScheduled(
                    callback_id=row.id,
                    site_key=row.site_key,
                    state="scheduled",
                    due_at=due_at,
                    promised_earliest=promise.earliest,
                    promised_latest=promise.latest,
                    reason="rescheduled",
                ),
                not_before=not_before,
                due_at=due_at,
                promise_kind=promise.kind,
                promise_reason=promise.reason,
                promised_earliest=promise.earliest,
                promised_latest=promise.latest,
            )
            row = await self._locked(conn, row.id)
        return self.status_view(row)

    async def expire_overdue(self) -> int:
        """Pending requests nobody dialed long after their promise: tell the visitor, don't wait forever."""
        now = self.clock()
        expired = 0
        async with db.transaction(self.pool) as conn:
            for callback_id, site_key in await store.overdue(conn, now - EXPIRE_AFTER_LATEST):
                await store.update_callback(conn, callback_id, status=CallbackState.EXPIRED, ended_at=now)
                await outbox.append(
                    conn, CallbackExpired(callback_id=callback_id, site_key=site_key, state="expired")
                )
                expired += 1
        return expired


def _state_name(
    status: str,
) -> Literal["requested", "scheduled", "dialing", "connected", "completed", "failed", "cancelled", "expired"]:
    return CallbackState(status).value


async def periodically(interval_s: float, job: Callable[[], Awaitable[object]], stop: asyncio.Event) -> None:
    """Run `job` every interval until stopped; a failed run is logged and retried on the next tick."""
    while not stop.is_set():
        try:
            await job()
        except Exception:
            log.exception("periodic job failed", extra={"job": getattr(job, "__qualname__", "?")})
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except TimeoutError:
            continue
