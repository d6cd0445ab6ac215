"""Retention: old rows are deleted per table in bounded batches by recurring scheduler jobs."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from prometheus_client import Counter

from services.common import db
from services.common.scheduler import Job, Recurring, Scheduler
from services.common.settings import Settings, SettingsError, env_name

log = logging.getLogger(__name__)

RETENTION_DELETED = Counter("abonent_retention_deleted_total", "Rows deleted by retention", ["table"])

RETENTION_KIND = "retention"
# How often each table is pruned; a full batch makes the job run again at once until the table is done.
RETENTION_EVERY = dt.timedelta(hours=1)

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
_UNITS = {"_hours": dt.timedelta(hours=1), "_days": dt.timedelta(days=1)}


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """Rows of `table` whose `column` is older than the setting's age are deleted; null never is."""

    table: str
    column: str
    # A Settings field ending in _hours or _days (env ABONENT_RETENTION_..._HOURS/_DAYS).
    setting: str
    # The shortest age that stays correct (e.g. how long a spent token could still be presented);
    # start-up refuses a setting below it.
    minimum: dt.timedelta = dt.timedelta(0)
    # The age itself, when `setting` lives in a service's own settings section (then `setting` only names
    # the variable in errors, and its value was read there). None: `setting` is a shared Settings field.
    keep: dt.timedelta | None = None
    # A dedupe window, like the inbox: rows must outlive the stream's messages (ABONENT_STREAM_MAX_AGE_DAYS),
    # or a message redelivered or replayed after its row was pruned would be applied again.
    outlive_stream: bool = False

    def __post_init__(self) -> None:
        # Identifiers cannot be bound as parameters; these come from code, and are checked to be plain.
        for identifier in (self.table, self.column):
            if not _IDENTIFIER.fullmatch(identifier):
                raise ValueError(f"retention rule: {identifier!r} is not a plain SQL identifier")


# Plumbing tables every service has (services/common/migrations).
PLUMBING_RULES: tuple[RetentionRule, ...] = (
    RetentionRule("outbox", "published_at", "retention_outbox_hours"),
    RetentionRule("inbox", "processed_at", "retention_inbox_days"),
    RetentionRule("dead_letters", "created_at", "retention_dead_letters_days"),
    RetentionRule("scheduled_jobs", "finished_at", "retention_jobs_days"),
    # Delivered or given-up outbound webhooks; their attempt log goes with them (on delete cascade).
    RetentionRule("outbound_webhooks", "finished_at", "retention_webhooks_days"),
)


def keep_for(settings: Settings, rule: RetentionRule) -> dt.timedelta:
    """How long rows of the rule's table are kept, from its setting (validated)."""
    if rule.keep is not None:
        keep = rule.keep
        if keep <= dt.timedelta(0):
            raise SettingsError(f"{env_name(rule.setting)} must be positive, got {keep}")
    else:
        names = {f.name for f in msgspec.structs.fields(Settings)}
        unit = next((u for suffix, u in _UNITS.items() if rule.setting.endswith(suffix)), None)
        if rule.setting not in names or unit is None:
            raise ValueError(f"retention rule for {rule.table}: no _hours/_days setting {rule.setting!r}")
        value = getattr(settings, rule.setting)
        if not isinstance(value, int | float) or value <= 0:
            raise SettingsError(f"{env_name(rule.setting)} must be positive, got {value}")
        keep = unit * value
    stream_age = dt.timedelta(days=settings.stream_max_age_days)
    if rule.outlive_stream and keep <= stream_age:
        raise SettingsError(
            f"{env_name(rule.setting)} ({keep}) must keep {rule.table} longer than "
            f"{env_name('stream_max_age_days')} ({settings.stream_max_age_days} days): a message "
            "redelivered after its row was pruned would be applied twice"
        )
    if keep < rule.minimum:
        raise SettingsError(
            f"{env_name(rule.setting)} ({keep}) must keep {rule.table} at least {rule.minimum}: "
            "rows pruned sooner could be accepted again"
        )
    return keep


def validate(settings: Settings, rules: Sequence[RetentionRule]) -> dict[str, dt.timedelta]:
    """Check every rule against the settings at start-up; table → how long its rows are kept."""
    keeps: dict[str, dt.timedelta] = {}
    for rule in rules:
        if rule.table in keeps:
            raise ValueError(f"two retention rules for table {rule.table!r}")
        keeps[rule.table] = keep_for(settings, rule)
    return keeps


async def prune(conn: db.Connection, rule: RetentionRule, cutoff: dt.datetime, limit: int) -> int:
    """Delete up to `limit` rows of the rule's table older than `cutoff`; return how many went."""
    # Identifiers are checked plain in RetentionRule; the values are bound.
    status = await conn.execute(
        f'delete from "{rule.table}" where ctid = any(array('
        f'  select ctid from "{rule.table}" where "{rule.column}" < $1 limit $2))',
        cutoff,
        limit,
    )
    return int(status.split()[-1])


def install(
    scheduler: Scheduler, settings: Settings, rules: Sequence[RetentionRule] = PLUMBING_RULES
) -> None:
    """Register the retention handler and one hourly job per table on the scheduler."""
    keeps = validate(settings, rules)
    by_table = {rule.table: rule for rule in rules}
    batch = settings.retention_batch_size

    async def run(conn: db.Connection, job: Job) -> dt.datetime | None:
        rule = by_table.get(job.key)
        if rule is None:
            # A table dropped from the rules (an older row); nothing to do.
            return None
        deleted = await prune(conn, rule, job.now - keeps[rule.table], batch)
        if deleted:
            RETENTION_DELETED.labels(rule.table).inc(deleted)
            log.info("retention pruned rows", extra={"table": rule.table, "deleted": deleted})
        # A full batch: more is probably waiting, so go again now (a fresh, short transaction).
        return job.now if deleted >= batch else None

    scheduler.register(RETENTION_KIND, run, max_attempts=3)
    for rule in rules:
        scheduler.every(Recurring(RETENTION_KIND, RETENTION_EVERY, key=rule.table))
