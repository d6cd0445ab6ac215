"""After a fault run, from PostgreSQL, the NATS wire and the fake providers' logs: nothing answered 2xx is
lost or stuck, nobody was dialled twice for one attempt, no agent held two calls, no message was sent
twice, and every outbox event reached each of its consumers."""

from __future__ import annotations

import collections
import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec
import nats
from fakes.fake_sms_ru import FakeSmsRu

from faults.load import Ledger
from services.common.consumers import CATALOGUE
from services.common.crypto import DataProtector
from services.common.events import CallbackEvent
from services.common.settings import Settings
from services.notifier.routing import load_router

FINAL_CALLBACK = frozenset({"completed", "failed", "cancelled", "expired"})
WAITING_CALLBACK = frozenset({"requested", "scheduled"})
# Cases that wait for the subscriber (their deadline is ahead) or are closed.
WAITING_CASE = frozenset({"open", "mismatch"})
FINAL_CASE = frozenset({"suspended", "confirmed", "restored", "cancelled"})


class DialTap:
    """A plain NATS subscription on the telephony subject: it sees every publish, including the ones
    JetStream drops as duplicates of an earlier Nats-Msg-Id, so a second dial of one attempt (which
    publishes its events again under the same ids) still shows as a second provider call id."""

    def __init__(self) -> None:
        self.calls: dict[str, set[str]] = collections.defaultdict(set)
        self.events = 0
        self._nc: Any = None

    async def start(self, urls: str, subject: str) -> None:
        self._nc = await nats.connect(
            urls.split(","), name="faults-dial-tap", max_reconnect_attempts=-1, reconnect_time_wait=0.2
        )

        async def seen(msg: Any) -> None:
            with_fields = msgspec.json.decode(msg.data)
            self.events += 1
            provider_call_id = with_fields.get("provider_call_id") or ""
            if provider_call_id:
                self.calls[str(with_fields["attempt_id"])].add(str(provider_call_id))

        await self._nc.subscribe(subject, cb=seen)

    @property
    def dialled(self) -> int:
        return len(self.calls)

    @property
    def double_dials(self) -> list[str]:
        return [attempt for attempt, ids in self.calls.items() if len(ids) > 1]

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()


@dataclass
class Findings:
    accepted: int = 0
    completed: int = 0
    pending: int = 0
    stuck: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    double_dials: list[str] = field(default_factory=list)
    double_calls: list[str] = field(default_factory=list)  # an agent on two attempts at once
    double_messages: list[str] = field(default_factory=list)
    undelivered_events: list[str] = field(default_factory=list)  # outbox event missing from a consumer
    unpublished: int = 0
    dead_letters: int = 0
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    details: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"accepted {self.accepted}, completed {self.completed}, pending {self.pending},"
            f" stuck {len(self.stuck)}, lost {len(self.lost)}, double_dials {len(self.double_dials)},"
            f" double_calls {len(self.double_calls)}, double_messages {len(self.double_messages)},"
            f" undelivered_events {len(self.undelivered_events)}, dead_letters {self.dead_letters}"
        )


async def callback_states(db: asyncpg.Connection, ledger: Ledger) -> tuple[dict[str, str], list[str]]:
    """Each accepted request id (an alias resolves to the request it joined) -> its request's status and
    due time class; and the accepted ids found nowhere (lost)."""
    ids = [uuid.UUID(i) for i in ledger.callbacks]
    rows = await db.fetch(
        "select r.id::text as asked, c.status, c.due_at > now() as ahead"
        " from unnest($1::uuid[]) as r(id)"
        " left join callback.callback_aliases a on a.id = r.id"
        " left join callback.callbacks c on c.id = coalesce(a.callback_id, r.id)",
        ids,
    )
    states: dict[str, str] = {}
    lost: list[str] = []
    for row in rows:
        if row["status"] is None:
            lost.append(row["asked"])
        elif row["status"] in FINAL_CALLBACK:
            states[row["asked"]] = row["status"]
        elif row["status"] in WAITING_CALLBACK and row["ahead"]:
            states[row["asked"]] = "planned"  # a retry or re-time legitimately planned for later
        else:
            states[row["asked"]] = "in progress:" + row["status"]
    return states, lost


async def case_states(db: asyncpg.Connection, ledger: Ledger) -> tuple[dict[str, str], list[str]]:
    ids = [uuid.UUID(i) for i in ledger.cases]
    rows = await db.fetch(
        "select r.id::text as asked, c.status, c.deadline > now() as ahead"
        " from unnest($1::uuid[]) as r(id) left join verification.cases c on c.id = r.id",
        ids,
    )
    states: dict[str, str] = {}
    lost: list[str] = []
    for row in rows:
        if row["status"] is None:
            lost.append(row["asked"])
        elif row["status"] in FINAL_CASE:
            states[row["asked"]] = row["status"]
        elif row["status"] in WAITING_CASE and row["ahead"]:
            states[row["asked"]] = "planned"  # waiting for the subscriber until the deadline
        else:
            states[row["asked"]] = "in progress:" + row["status"]
    return states, lost


async def unsettled(db: asyncpg.Connection, ledger: Ledger) -> collections.Counter[str]:
    """What is still moving: accepted requests and cases neither final nor planned for later (by state),
    and unpublished outbox rows (by schema). Empty once the system has settled."""
    callbacks, _ = await callback_states(db, ledger)
    cases, _ = await case_states(db, ledger)
    moving = collections.Counter(s for s in (*callbacks.values(), *cases.values()) if s.startswith("in "))
    for schema in ("callback", "verification", "notifier"):
        count = await db.fetchval(f"select count(*) from {schema}.outbox where published_at is null")
        if count:
            moving[f"{schema} outbox"] = count
    return moving


async def agents_on_two_calls(db: asyncpg.Connection) -> list[str]:
    """Calls of one agent that overlap: a call holds its agent from the order sent to the provider
    (`ordered_at`; `started_at` is the dispatch pass's clock, which may predate the previous call's end
    by the pass's length) until it ended (an open one until now)."""
    rows = await db.fetch(
        "with calls as (select id, agent_id, coalesce(ordered_at, started_at) as held_from,"
        "  coalesce(ended_at, now()) as held_until from callback.dial_attempts)"
        " select a.agent_id::text as agent, a.id::text as one, b.id::text as other"
        " from calls a join calls b on a.agent_id = b.agent_id and a.id < b.id"
        "  and a.held_from < b.held_until and b.held_from < a.held_until"
    )
    return [f"agent {r['agent']}: {r['one']} and {r['other']}" for r in rows]


async def messages_sent_twice(db: asyncpg.Connection, settings: Settings, sms: FakeSmsRu) -> list[str]:
    """(number, text) pairs the gateway received more often than the notifier has messages with that text
    for that number: each message goes to a provider at most once."""
    protector = DataProtector.from_settings(settings)
    rows = await db.fetch(
        "select m.body, r.id, r.phone_enc from notifier.messages m"
        " join notifier.recipients r on r.id = m.recipient_id"
    )
    expected: collections.Counter[tuple[str, str]] = collections.Counter()
    for row in rows:
        phone = protector.decrypt(row["phone_enc"], "notifier.recipients.phone_enc", row["id"])
        expected[("".join(c for c in phone if c.isdigit()), row["body"])] += 1
    received = collections.Counter((sent.phone, sent.text) for sent in sms.sent)
    return [
        f"{phone} got {count}x (messages: {expected[(phone, text)]}): {text[:60]!r}"
        for (phone, text), count in received.items()
        if count > expected[(phone, text)]
    ]


def consumers_of() -> list[tuple[str, str, str, frozenset[str]]]:
    """(consumer's schema, consumer, publisher's schema, event tags it applies) for outbox-fed consumers."""
    notifier_tags = set(load_router().event_tags)
    callback_tags = frozenset(t for t, cls in CATALOGUE.items() if issubclass(cls, CallbackEvent))
    return [
        ("callback", "crm_webhooks", "callback", callback_tags),
        ("notifier", "notifier_callback", "callback",
         frozenset(t for t in notifier_tags if t.startswith("callback."))),
        ("notifier", "notifier_verification", "verification",
         frozenset(t for t in notifier_tags if t.startswith("verification."))),
    ]  # fmt: skip


async def events_not_delivered(db: asyncpg.Connection) -> tuple[list[str], dict[str, int]]:
    """Outbox events of a type a consumer applies that are not in that consumer's inbox."""
    missing: list[str] = []
    counts: dict[str, int] = {}
    for schema, consumer, publisher, tags in consumers_of():
        rows = await db.fetch(
            f"select o.id::text as id, o.payload from {publisher}.outbox o"
            f" where not exists (select 1 from {schema}.inbox i"
            "  where i.consumer = $1 and i.event_id = o.id)",
            consumer,
        )
        for row in rows:
            tag = msgspec.json.decode(row["payload"])["type"]
            if tag in tags:
                missing.append(f"{consumer}: {tag} {row['id']}")
        counts[consumer] = await db.fetchval(
            f"select count(*) from {schema}.inbox where consumer = $1",
            consumer,
        )
    return missing, counts


async def audit(
    db: asyncpg.Connection, settings: Settings, ledger: Ledger, tap: DialTap, sms: FakeSmsRu
) -> Findings:
    found = Findings()
    callbacks, lost_callbacks = await callback_states(db, ledger)
    cases, lost_cases = await case_states(db, ledger)
    found.accepted = len(ledger.callbacks) + len(ledger.cases)
    found.lost = lost_callbacks + lost_cases
    for asked, state in (*callbacks.items(), *cases.items()):
        found.statuses[state] += 1
        if state.startswith("in progress"):
            found.stuck.append(f"{asked}: {state}")
    found.completed = sum(n for s, n in found.statuses.items() if s in FINAL_CALLBACK or s in FINAL_CASE)
    found.pending = found.statuses["planned"]
    found.double_dials = tap.double_dials
    found.double_calls = await agents_on_two_calls(db)
    found.double_messages = await messages_sent_twice(db, settings, sms)
    found.undelivered_events, inbox_counts = await events_not_delivered(db)
    for schema in ("callback", "verification", "notifier"):
        found.unpublished += await db.fetchval(
            f"select count(*) from {schema}.outbox where published_at is null"
        )
        found.dead_letters += await db.fetchval(f"select count(*) from {schema}.dead_letters")
    attempts = await db.fetchrow(
        "select count(*) as attempts, count(*) filter (where outcome = 'unknown') as unknown,"
        " count(distinct callback_id) as requests from callback.dial_attempts"
    )
    found.details = {
        "dialled attempts (tap)": tap.dialled,
        "dial attempts (db)": attempts["attempts"],
        "closed unknown": attempts["unknown"],
        "sms received": len(sms.sent),
        "inbox rows": inbox_counts,
        "at": dt.datetime.now(dt.UTC).strftime("%H:%M:%S"),
    }
    return found
