"""The notifier's engine: events become messages, messages become provider calls, receipts close them.

How one message travels (every step commits with its timeline entry, and notify.* events go through the
outbox in the same transaction):

1. **Plan** (`on_event`, the consumer's inbox transaction): route the event (routing.toml), find the
   recipient, insert the message — unique on (event id, recipient, purpose), so a redelivered or replayed
   event never makes a second one — supersede the thread's pending older messages, decide the time
   (quiet hours, deadline, TTL: domain/timing.py). Due now: released at once; else a `notify.release`
   timer (services.common.scheduler) in the same transaction.
2. **Release**: pick the first usable channel of the route's order (a bound messenger; else SMS within
   the fatigue budget) and insert an *attempt* row in state `ready`. One attempt per (message, channel).
3. **Send** (`Sender`): claim ready attempts with a lease ("in flight until T", SKIP LOCKED), commit, call
   the provider with no transaction or connection held, then record the outcome in a second transaction.
   A pass claims up to ABONENT_NOTIFY_SEND_BATCH attempts; new SMS on a gateway that takes several per
   request (`BatchChannel`: SMS.ru's `to[<number>]=<text>`) go out together, each with its own outcome,
   and accepted SMS are recorded set-based (one statement per table for the pass).

Planning and release run in the consumer's transaction for a whole lane of fetched events: a lane's new
callbacks are planned set-based (`Planning.on_events`), everything else event by event; if anything in
the lane fails, the consumer rolls it back and applies its events one by one (services/common/consumers.py).
4. **Fallback**: a messenger send arms `notify.fallback` N minutes later; it sends SMS only if no delivery
   receipt came. A receipt after that is recorded as late; there is no further fallback.

**The window between a provider call and its commit.** Between (3)'s provider call and the transaction
recording it, a crash leaves the attempt `in_flight`. When its lease has expired, the `notify.sweep`
timer marks it `unknown` — the provider may or may not have the message — and never calls that channel
again for that message: *at most one message per channel, never two*. With several SMS in one gateway
request the window is the same for each of them: a crash after that request leaves every attempt it
carried in flight, and each becomes unknown; none is sent again. What follows is the ordinary rule:
an unknown messenger send is treated like one without a receipt (the SMS fallback follows after N
minutes unless a receipt arrives); an unknown SMS is final. A sender that comes back after its lease still
records its outcome (the attempt becomes `sent` with the provider's id). Providers that take an
idempotency key get the attempt id as `OutboundMessage.message_id` — the same on every retry of that
attempt — so a transient-error retry is never a duplicate at the provider either.

Modules: `core` (job names, metrics, ChannelRegistry, recipients), `planning` (1, 2, 4), `sending` (3: the
Sender and outcome recording; `Notifier` is assembled there), `receipts`, `bindings` (messenger binding).
"""

from services.notifier.engine.core import (
    BIND_CONTACT_WITHIN,
    CONTACT_WAIT,
    FALLBACK_JOB,
    FINAL_STATES,
    MAX_LINK_CHARS,
    MESSAGES,
    PHONE_INDEX,
    RELEASE_JOB,
    SWEEP_JOB,
    ChannelRegistry,
    short_link,
)
from services.notifier.engine.sending import Notifier, Sender

__all__ = [
    "BIND_CONTACT_WITHIN",
    "CONTACT_WAIT",
    "FALLBACK_JOB",
    "FINAL_STATES",
    "MAX_LINK_CHARS",
    "MESSAGES",
    "PHONE_INDEX",
    "RELEASE_JOB",
    "SWEEP_JOB",
    "ChannelRegistry",
    "Notifier",
    "Sender",
    "short_link",
]
