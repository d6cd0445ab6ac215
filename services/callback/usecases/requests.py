"""A request after intake: its status (by its token or an alias's), cancel, reschedule, expiry."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable

import msgspec

from services.callback.domain.lifecycle import CallbackState, IllegalTransition, is_terminal
from services.callback.domain.texts import status_text
from services.callback.schemas import CallbackStatus, Lang, Reschedule, RetryPlan
from services.callback.store import aliases, budgets
from services.callback.store import callbacks as callback_store
from services.callback.usecases.common import (
    Clock,
    advance_callback,
    chosen_slot,
    ensure_slot_free,
    parse_clock,
    promise_for,
    promise_view,
    queue_state,
    refuse,
    schedule_to_promise,
    snapshot_for,
    stored_promise,
    utc_now,
)
from services.callback.usecases.presence import AgentAvailability, PresenceAgents
from services.callback.usecases.sites import SiteDirectory, callee_window
from services.common import db
from services.common.crypto import token_hash
from services.common.domain_errors import Conflict, Invalid, NotFound
from services.common.events import CallbackCancelled, CallbackExpired

# A pending request nobody dialed this long after its promised latest time is given up.
EXPIRE_AFTER_LATEST = dt.timedelta(hours=24)


class Requests:
    """What the holder of a status token may see and do, and the sweep that expires forgotten requests."""

    def __init__(
        self,
        pool: db.Pool,
        sites: SiteDirectory,
        agents: AgentAvailability | None = None,
        clock: Clock = utc_now,
        *,
        on_queue_changed: Callable[[str, list[str]], None] | None = None,
    ) -> None:
        self.pool = pool
        self.sites = sites
        self.agents: AgentAvailability = agents or PresenceAgents()
        self.clock = clock
        # Told once a request left or moved in its queue (committed): cached queue reads are stale.
        self.on_queue_changed = on_queue_changed

    def _queue_changed(self, row: callback_store.CallbackRow) -> None:
        if self.on_queue_changed is not None:
            self.on_queue_changed(row.org_id, [row.queue])

    def status_view(
        self, row: callback_store.CallbackRow, alias: aliases.AliasRow | None = None
    ) -> CallbackStatus:
        """The request's status; through an alias, the same call under the alias's id, language and time
        zone, and "cancelled" once the alias's holder withdrew (the call itself goes on for the other)."""
        now = self.clock()
        language, visitor_tz = (row.lang, row.visitor_tz) if alias is None else (alias.lang, alias.visitor_tz)
        lang: Lang = "en" if language == "en" else "ru"
        promise = promise_view(stored_promise(row), now, visitor_tz, lang)
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
    ) -> tuple[callback_store.CallbackRow, aliases.AliasRow | None]:
        """The request the token opens, and the alias it came through when it is a repeat's token."""
        if token:
            hashed = token_hash(token)
            row = await callback_store.callback_by_token(conn, callback_id, hashed)
            if row is not None:
                return row, None
            alias = await aliases.alias_by_token(conn, callback_id, hashed)
            if alias is not None:
                target = await callback_store.get_callback(conn, alias.callback_id)
                assert target is not None
                return target, alias
        # One answer for "no such request" and "wrong token": ids cannot be probed.
        raise NotFound("callback_not_found", "No callback request with this id and token")

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
                raise Conflict("already_finished", f"This request is already {row.status}") from None
            row = await self._locked(conn, row.id)
        self._queue_changed(row)
        return self.status_view(row)

    async def _withdraw(
        self, conn: db.Connection, row: callback_store.CallbackRow, alias: aliases.AliasRow
    ) -> CallbackStatus:
        """An alias's holder cancels: only their alias ends; the request they joined is someone's promise."""
        now = self.clock()
        if is_terminal(CallbackState(row.status)):
            raise Conflict("already_finished", f"This request is already {row.status}")
        if not await aliases.withdraw_alias(conn, alias.id, now):
            raise Conflict("already_finished", "This request is already cancelled")
        return self.status_view(row, msgspec.structs.replace(alias, withdrawn_at=now))

    async def _locked(self, conn: db.Connection, callback_id: uuid.UUID) -> callback_store.CallbackRow:
        row = await callback_store.get_callback(conn, callback_id, for_update=True)
        assert row is not None
        return row

    async def reschedule(self, callback_id: uuid.UUID, token: str | None, body: Reschedule) -> CallbackStatus:
        """Move a pending request to a chosen slot or a "not before"; it keeps its original place."""
        now = self.clock()
        async with db.transaction(self.pool) as conn:
            row, alias = await self._authorised(conn, callback_id, token)
            row = await self._locked(conn, row.id)
            if alias is not None and alias.withdrawn_at is not None:
                raise Conflict("not_reschedulable", "A request that is cancelled cannot be moved")
            if row.status not in ("requested", "scheduled"):
                raise Conflict("not_reschedulable", f"A request that is {row.status} cannot be moved")
            if alias is not None:
                # The call it follows keeps the time promised to whoever asked first.
                raise Conflict(
                    "not_reschedulable", "This request cannot be moved; cancel it and send a new one"
                )
            site = await self.sites.require(row.site_key, conn)
            not_before = parse_clock(body.not_before) if body.not_before else row.not_before
            callee = callee_window(site.settings, row.visitor_tz, not_before)
            slot = chosen_slot(body.slot_start, now, site.settings, callee)
            if slot is not None:
                await budgets.lock(conn, "slots", site.org_id, site.settings.queue)
            state = await queue_state(conn, self.agents, site.settings, now, org_id=site.org_id)
            # It keeps its place: those asked before it are ahead, and it does not wait for itself.
            snapshot = snapshot_for(state, now, requested_at=row.requested_at, exclude=row.id)
            if slot is not None:
                ensure_slot_free(slot, now, snapshot_for(state, now, exclude=row.id), site.settings, callee)
            promise = promise_for(now, snapshot, site.settings, callee, slot)
            if promise is None:
                raise refuse(Invalid, "no_callable_time", "We cannot call you at these hours", "not_before")
            await schedule_to_promise(
                conn, row, promise, snapshot, now=now, reason="rescheduled", not_before=not_before
            )
            row = await self._locked(conn, row.id)
        self._queue_changed(row)
        return self.status_view(row)

    async def expire_overdue(self) -> int:
        """Pending requests nobody dialed long after their promise: tell the visitor, don't wait forever."""
        now = self.clock()
        expired = 0
        async with db.transaction(self.pool) as conn:
            for row in await callback_store.overdue(conn, now - EXPIRE_AFTER_LATEST):
                await advance_callback(
                    conn,
                    row,
                    CallbackState.EXPIRED,
                    CallbackExpired(callback_id=row.id, site_key=row.site_key, state="expired"),
                    ended_at=now,
                )
                expired += 1
        return expired
