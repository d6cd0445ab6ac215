"""Durable timers: jobs scheduled in the caller's transaction, run once by whichever replica claims them.

How it holds together:
- `schedule(conn, kind, key, due_at, payload)` upserts one row per (kind, key) in the caller's
  transaction, so a state change and its timer commit together; scheduling again moves the due time.
- A runner claims due rows in a short transaction (`FOR UPDATE SKIP LOCKED`, a lease in `claimed_until`
  and a fresh `claim_token`), then runs each job in its own transaction that first re-locks the row by
  that token, runs the handler and marks the job done: the effect and the done-mark commit together.
  While a job runs its row stays locked, so no other replica can claim it even if the lease runs out;
  a replica that dies releases the lock with its connection, and the row is claimable once the lease
  has expired.
- A failing job is retried with capped exponential backoff and its error recorded; after `max_attempts`
  it is marked failed and logged. Each job has its own transaction, so one bad row never stops the rest.
- Recurring jobs (housekeeping) are rows with `every_s`; after a run (or after exhausting their retries)
  they are due again one interval later and never end up failed.
- Time comes from an injectable clock; `run_once()` is one deterministic pass for tests.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from prometheus_client import Counter

from services.common import db
from services.common.clock import Clock, SystemClock
from services.common.failpoints import failpoint
from services.common.logging import mask_pii
from services.common.wakeup import NotifyWakeup, worker_id

log = logging.getLogger(__name__)

JOBS_RUN = Counter("abonent_jobs_total", "Scheduled jobs run, by outcome", ["schema", "kind", "outcome"])


@dataclass(frozen=True, slots=True)
class Job:
    """What a handler gets: the row it runs for, and the clock's time of this run."""

    kind: str
    key: str
    due_at: dt.datetime
    payload: dict[str, Any]
    # Failed runs before this one.
    attempts: int
    # The runner's clock when the job started; handlers use it instead of reading the wall clock.
    now: dt.datetime
    every: dt.timedelta | None = None


# A handler may return a time to run the same job again (e.g. "more work left: again now"); None means
# done (one-off) or due again one interval later (recurring).
JobHandler = Callable[[db.Connection, Job], Awaitable[dt.datetime | None]]


@dataclass(frozen=True, slots=True)
class Recurring:
    """A housekeeping job every `every`; first due when a runner first starts with it declared."""

    kind: str
    every: dt.timedelta
    key: str = "every"
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JobState:
    """A job row as stored (tests, admin views)."""

    kind: str
    key: str
    due_at: dt.datetime
    payload: dict[str, Any]
    state: str
    attempts: int
    last_error: str | None
    claimed_until: dt.datetime | None
    finished_at: dt.datetime | None
    every_s: float | None


def _aware(value: dt.datetime, what: str) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware")
    return value


# --- in the caller's transaction ----------------------------------------------------------------------


# Scheduling again re-arms the job at its new time (see schedule()).
_REARM = (
    " on conflict (kind, key) do update set due_at = excluded.due_at, payload = excluded.payload,"
    "  state = 'pending', attempts = 0, last_error = null, claimed_until = null, claim_token = null,"
    "  claimed_by = null, finished_at = null, updated_at = now()"
)
_SCHEDULE = "insert into scheduled_jobs (kind, key, due_at, payload) values ($1, $2, $3, $4)" + _REARM


async def schedule(
    conn: db.Connection,
    kind: str,
    key: str,
    due_at: dt.datetime,
    payload: Mapping[str, Any] | None = None,
) -> None:
    """Make (kind, key) due at `due_at`, in the caller's transaction; again = move it (and re-arm it)."""
    # Clearing the claim fences off a runner that already claimed the old version: its run finds no row
    # with its token and does nothing, and the job runs again at the new time.
    await conn.execute(
        _SCHEDULE,
        kind,
        key,
        _aware(due_at, "due_at"),
        dict(payload or {}),
    )


async def schedule_many(
    conn: db.Connection, jobs: Sequence[tuple[str, str, dt.datetime, Mapping[str, Any]]]
) -> None:
    """`schedule` for many (kind, key, due_at, payload) in one statement (a batch of new rows); each
    (kind, key) at most once in a batch."""
    if not jobs:
        return
    await conn.execute(
        "insert into scheduled_jobs (kind, key, due_at, payload)"
        " select j.kind, j.key, j.due_at, j.payload::jsonb"
        " from unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[])"
        "  as j (kind, key, due_at, payload)" + _REARM,
        [kind for kind, _, _, _ in jobs],
        [key for _, key, _, _ in jobs],
        [_aware(due_at, "due_at") for _, _, due_at, _ in jobs],
        [json.dumps(dict(payload)) for _, _, _, payload in jobs],
    )


async def cancel(conn: db.Connection, kind: str, key: str) -> bool:
    """Forget (kind, key), in the caller's transaction; True if it existed and had not run yet."""
    state = await conn.fetchval(
        "delete from scheduled_jobs where kind = $1 and key = $2 returning state", kind, key
    )
    return bool(state == "pending")


async def get_job(conn: db.Connection, kind: str, key: str) -> JobState | None:
    row = await conn.fetchrow(
        "select kind, key, due_at, payload, state, attempts, last_error, claimed_until, finished_at, every_s"
        " from scheduled_jobs where kind = $1 and key = $2",
        kind,
        key,
    )
    return None if row is None else JobState(**dict(row))


# --- runner's own statements --------------------------------------------------------------------------


async def _ensure_recurring(conn: db.Connection, job: Recurring, now: dt.datetime) -> None:
    # An existing row keeps its due time (a restart must not re-run housekeeping at once); only a changed
    # interval is taken over.
    await conn.execute(
        "insert into scheduled_jobs (kind, key, due_at, payload, every_s) values ($1, $2, $3, $4, $5)"
        " on conflict (kind, key) do update set every_s = excluded.every_s, payload = excluded.payload,"
        "  state = 'pending', updated_at = now()",
        job.kind,
        job.key,
        now,
        dict(job.payload),
        job.every.total_seconds(),
    )


async def _claim(
    conn: db.Connection,
    kinds: list[str],
    *,
    now: dt.datetime,
    lease_until: dt.datetime,
    token: uuid.UUID,
    runner_id: str,
    limit: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        "with due as ("
        "  select kind, key from scheduled_jobs"
        "  where state = 'pending' and due_at <= $1 and kind = any($2::text[])"
        "    and (claimed_until is null or claimed_until <= $1)"
        "  order by due_at limit $3 for update skip locked)"
        " update scheduled_jobs j set claimed_until = $4, claim_token = $5, claimed_by = $6,"
        "  updated_at = now()"
        " from due where j.kind = due.kind and j.key = due.key"
        " returning j.kind, j.key, j.due_at, j.payload, j.attempts, j.every_s",
        now,
        kinds,
        limit,
        lease_until,
        token,
        runner_id,
    )


async def _lock_claimed(conn: db.Connection, kind: str, key: str, token: uuid.UUID) -> bool:
    """Hold the row for this job's transaction; False if the claim was lost (moved, cancelled, re-claimed)."""
    found = await conn.fetchval(
        "select true from scheduled_jobs where kind = $1 and key = $2 and claim_token = $3 for update",
        kind,
        key,
        token,
    )
    return bool(found)


async def _settle(
    conn: db.Connection,
    kind: str,
    key: str,
    token: uuid.UUID,
    *,
    state: str,
    due_at: dt.datetime | None = None,
    finished_at: dt.datetime | None = None,
    attempts: int = 0,
    last_error: str | None = None,
) -> None:
    """End a claimed run: done or failed (finished_at), or pending again at due_at; the claim is released.

    No row matches when the handler itself re-scheduled or cancelled this job: that wins."""
    await conn.execute(
        "update scheduled_jobs set state = $4, due_at = coalesce($5, due_at), finished_at = $6,"
        "  attempts = $7, last_error = $8, claimed_until = null, claim_token = null, updated_at = now()"
        " where kind = $1 and key = $2 and claim_token = $3",
        kind,
        key,
        token,
        state,
        due_at,
        finished_at,
        attempts,
        last_error,
    )


# --- the runner ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Kind:
    handler: JobHandler
    max_attempts: int


class Scheduler:
    """Runs due jobs of the kinds registered with it. Any number of replicas may run on one schema."""

    def __init__(
        self,
        pool: db.Pool,
        schema: str,
        database_url: str,
        *,
        clock: Clock | None = None,
        poll_interval_s: float = 1.0,
        lease: dt.timedelta = dt.timedelta(seconds=60),
        batch: int = 20,
        max_attempts: int = 10,
        backoff_base: dt.timedelta = dt.timedelta(seconds=5),
        backoff_cap: dt.timedelta = dt.timedelta(minutes=30),
    ) -> None:
        # `pool` should be the process's worker pool, so HTTP traffic cannot starve timers.
        self.pool = pool
        self.schema = schema
        self.database_url = database_url
        self.clock: Clock = clock or SystemClock()
        self.poll_interval_s = poll_interval_s
        self.lease = lease
        self.batch = batch
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.runner_id = worker_id()
        self._kinds: dict[str, _Kind] = {}
        self._recurring: dict[tuple[str, str], Recurring] = {}
        self._recurring_ensured = False
        self._wakeup = NotifyWakeup(database_url, f"abonent_jobs_{schema}", poll_interval_s)
        self._task: asyncio.Task[None] | None = None

    # registration

    def register(self, kind: str, handler: JobHandler, *, max_attempts: int | None = None) -> None:
        """Run jobs of `kind` with `handler` (in the job's transaction). One handler per kind."""
        if kind in self._kinds:
            raise ValueError(f"a handler for job kind {kind!r} is already registered")
        self._kinds[kind] = _Kind(handler, max_attempts or self.max_attempts)

    def every(self, job: Recurring) -> None:
        """Declare a recurring job; its kind needs a handler too. Stored when the runner starts."""
        if job.every <= dt.timedelta(0):
            raise ValueError(f"recurring job {job.kind!r} needs a positive interval")
        self._recurring[(job.kind, job.key)] = job
        self._recurring_ensured = False

    @property
    def kinds(self) -> list[str]:
        return sorted(self._kinds)

    # lifecycle

    async def start(self) -> None:
        missing = sorted({kind for kind, _key in self._recurring} - set(self._kinds))
        if missing:
            raise ValueError(f"recurring jobs without a handler: {', '.join(missing)}")
        await self._ensure_recurring()
        self._task = asyncio.create_task(self._run(), name=f"scheduler:{self.schema}")

    async def stop(self, timeout: float = 10.0) -> None:
        """Let the job in hand finish (bounded by timeout), then stop; unfinished claims expire."""
        late = "scheduler did not stop in time; its claimed jobs wait for their lease"
        await self._wakeup.stop(self._task, timeout, late)
        self._task = None

    def wake(self) -> None:
        """Run a pass now rather than at the next poll (after driving a test clock, for instance)."""
        self._wakeup.set()

    async def _ensure_recurring(self) -> None:
        if self._recurring_ensured:
            return
        now = self.clock.now()
        async with db.transaction(self.pool) as conn:
            for job in self._recurring.values():
                await _ensure_recurring(conn, job, now)
        self._recurring_ensured = True

    async def _run(self) -> None:
        failures = 0
        while not self._wakeup.stopping.is_set():
            await self._wakeup.listen()
            # Cleared before the pass: a NOTIFY that arrives during it triggers the next one at once.
            self._wakeup.clear()
            try:
                ran = await self.run_once()
                failures = 0
            except Exception as exc:
                failures += 1
                log.warning("scheduler pass failed: %r", exc, extra={"schema": self.schema})
                ran = 0
                await asyncio.sleep(min(0.2 * 2**failures, 5.0))
            if ran >= self.batch:
                continue  # more may be due
            await self._wakeup.wait()

    # one pass

    async def run_once(self) -> int:
        """Claim what is due by the clock and run it; return how many jobs were claimed."""
        if not self._kinds:
            return 0
        await self._ensure_recurring()
        now = self.clock.now()
        token = uuid.uuid4()
        async with db.transaction(self.pool) as conn:
            rows = await _claim(
                conn,
                self.kinds,
                now=now,
                lease_until=now + self.lease,
                token=token,
                runner_id=self.runner_id,
                limit=self.batch,
            )
        for row in sorted(rows, key=lambda r: (r["due_at"], r["kind"], r["key"])):
            if self._wakeup.stopping.is_set():
                break  # the rest wait for their lease; stopping should not start new work
            await self._run_job(row, token)
        return len(rows)

    async def _run_job(self, row: asyncpg.Record, token: uuid.UUID) -> None:
        every_s = row["every_s"]
        job = Job(
            kind=row["kind"],
            key=row["key"],
            due_at=row["due_at"],
            payload=row["payload"],
            attempts=row["attempts"],
            now=self.clock.now(),
            every=None if every_s is None else dt.timedelta(seconds=every_s),
        )
        registered = self._kinds[job.kind]
        try:
            async with db.transaction(self.pool) as conn:
                if not await _lock_claimed(conn, job.kind, job.key, token):
                    JOBS_RUN.labels(self.schema, job.kind, "superseded").inc()
                    return
                again = await registered.handler(conn, job)
                if again is not None:
                    due = _aware(again, "handler result")
                    await _settle(conn, job.kind, job.key, token, state="pending", due_at=due)
                elif job.every is not None:
                    due = job.now + job.every
                    await _settle(conn, job.kind, job.key, token, state="pending", due_at=due)
                else:
                    await _settle(conn, job.kind, job.key, token, state="done", finished_at=job.now)
                failpoint(f"scheduler.{job.kind}.before_commit")
        except Exception as exc:
            await self._record_failure(job, token, registered.max_attempts, exc)
            return
        JOBS_RUN.labels(self.schema, job.kind, "done").inc()

    async def _record_failure(self, job: Job, token: uuid.UUID, max_attempts: int, exc: Exception) -> None:
        attempts = job.attempts + 1
        # Stored in the row, which logging's masking never sees: mask phones and documents here.
        error = mask_pii(f"{type(exc).__name__}: {exc}")[:1000]
        now = self.clock.now()
        extra = {"kind": job.kind, "key": job.key, "attempts": attempts, "error": error}
        try:
            async with db.transaction(self.pool) as conn:
                if attempts < max_attempts:
                    retry_at = now + self.backoff(attempts)
                    if job.every is not None:
                        retry_at = min(retry_at, now + job.every)
                    await _settle(
                        conn,
                        job.kind,
                        job.key,
                        token,
                        state="pending",
                        due_at=retry_at,
                        attempts=attempts,
                        last_error=error,
                    )
                    JOBS_RUN.labels(self.schema, job.kind, "retry").inc()
                    log.warning("scheduled job failed, will retry", extra=extra)
                elif job.every is not None:
                    # Housekeeping never ends up failed: it is recorded, logged and tried next period.
                    due = now + job.every
                    await _settle(
                        conn, job.kind, job.key, token, state="pending", due_at=due, last_error=error
                    )
                    JOBS_RUN.labels(self.schema, job.kind, "failed").inc()
                    log.error("recurring job failed every retry; trying next period", extra=extra)
                else:
                    await _settle(
                        conn,
                        job.kind,
                        job.key,
                        token,
                        state="failed",
                        finished_at=now,
                        attempts=attempts,
                        last_error=error,
                    )
                    JOBS_RUN.labels(self.schema, job.kind, "failed").inc()
                    log.error("scheduled job failed for good", extra=extra)
        except Exception:
            # The database is gone too: the lease runs out and the job is tried again then.
            log.exception("could not record a job failure", extra=extra)

    def backoff(self, attempts: int) -> dt.timedelta:
        """Delay before retry number `attempts` (1-based): doubling from the base, capped."""
        delay: dt.timedelta = self.backoff_base * 2 ** min(attempts - 1, 30)
        return min(delay, self.backoff_cap)
