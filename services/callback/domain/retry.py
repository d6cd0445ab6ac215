"""Redial policy: bounded attempts, spacing by outcome, never outside the visitor's calling window."""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec

from services.callback.domain.calendar import CalleeWindow, SiteCalendar, next_callable_instant

Outcome = Literal[
    "connected",
    "visitor_no_answer",
    "busy",
    "voicemail",
    "agent_no_answer",
    "failed",
    "declined",
    "provider_error",
    # A crash between the order and its "placed" mark: whether the phones rang is not known, so the same
    # attempt is never placed again; the request is re-timed like after a provider error.
    "unknown",
]

# After the provider refuses an order outright (bad credentials, number format, account blocked) the
# request waits this long before the next try: long enough not to hammer a broken trunk, short enough
# that the visitor is still called once an operator fixes it.
PROVIDER_BACKOFF_S = 60


class RetrySpacing(msgspec.Struct, frozen=True, kw_only=True):
    max_attempts: int
    busy_retry_s: int
    no_answer_retry_s: int
    failed_retry_s: int


class RetryDecision(msgspec.Struct, frozen=True, kw_only=True):
    """`next_at` None means: no more attempts, the request has failed."""

    next_at: dt.datetime | None
    counts_as_attempt: bool


def decide_retry(
    outcome: Outcome,
    attempts_done: int,
    spacing: RetrySpacing,
    *,
    now: dt.datetime,
    site: SiteCalendar,
    callee: CalleeWindow,
) -> RetryDecision:
    """What to do after an attempt that did not connect.

    - An agent who did not answer is our failure, not the visitor's: redial at once, no attempt used.
    - A provider that refused the order is our failure too: no attempt used, never a reason to give up,
      but back off so a broken trunk is not hammered.
    - An explicit decline stops everything: people who reject a call do not want another.
    - Busy is retried soon (they are on the phone), no answer / voicemail later, technical failures quickly.
    """
    if outcome == "agent_no_answer":
        return RetryDecision(next_at=now, counts_as_attempt=False)
    if outcome in ("provider_error", "unknown"):
        backoff = now + dt.timedelta(seconds=PROVIDER_BACKOFF_S)
        return RetryDecision(next_at=next_callable_instant(backoff, site, callee), counts_as_attempt=False)
    if outcome in ("declined", "connected") or attempts_done >= spacing.max_attempts:
        return RetryDecision(next_at=None, counts_as_attempt=True)
    delay = {
        "busy": spacing.busy_retry_s,
        "visitor_no_answer": spacing.no_answer_retry_s,
        "voicemail": spacing.no_answer_retry_s,
    }.get(outcome, spacing.failed_retry_s)
    next_at = next_callable_instant(now + dt.timedelta(seconds=delay), site, callee)
    return RetryDecision(next_at=next_at, counts_as_attempt=True)


def last_attempt_by(
    next_at: dt.datetime, attempts_left: int, spacing: RetrySpacing, site: SiteCalendar, callee: CalleeWindow
) -> dt.datetime | None:
    """When the last of the remaining attempts happens if none connects (no-answer spacing): the plan the
    visitor sees ("2 more tries, the last at 18:40")."""
    at: dt.datetime | None = next_at
    for _ in range(max(attempts_left - 1, 0)):
        if at is None:
            return None
        at = next_callable_instant(at + dt.timedelta(seconds=spacing.no_answer_retry_s), site, callee)
    return at
