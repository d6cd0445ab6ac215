"""The notifier's own settings section: fallback delay, quiet hours, fatigue budget, send leases."""

from __future__ import annotations

import datetime as dt

from services.common.retention import RetentionRule
from services.common.settings import SettingsError, env_name, get_section
from services.notifier.channels.config import ChannelSettings


def _parse_hhmm(value: str, field: str) -> dt.time:
    try:
        return dt.time.fromisoformat(value)
    except ValueError:
        raise SettingsError(f"{env_name(field)} must be HH:MM, got {value!r}") from None


class NotifierSettings(ChannelSettings, kw_only=True, frozen=True):
    """The notifier's whole section: the engine's ABONENT_NOTIFY_* and the channels' (channels/config.py)."""

    # SMS goes out only when a messenger message has no delivery receipt after this many minutes.
    notify_fallback_minutes: float = 10.0
    # Quiet hours in the recipient's local time: non-urgent messages wait until they end.
    notify_quiet_start: str = "21:00"
    notify_quiet_end: str = "09:00"
    # Non-critical (not urgent, not legally required) SMS per recipient per local day.
    notify_sms_daily_budget: int = 2
    # How long a sender holds an attempt while it calls the provider; past it, the outcome is unknown.
    notify_send_lease_s: float = 60.0
    # Ready attempts one sender pass claims, calls (several SMS per request where the gateway allows) and
    # records in one transaction.
    notify_send_batch: int = 100
    # Provider calls per attempt before a transient error (429, timeout) becomes a failure.
    notify_max_tries: int = 8
    # Deep-link tokens for binding a messenger stay valid this long.
    notify_bind_token_hours: int = 24
    # Messenger bots' usernames for deep links (t.me/<bot>?start=..., max.ru/<bot>?start=...).
    notify_telegram_bot: str = "abonent_bot"
    notify_max_bot: str = "abonent_bot"
    # Retention (services/common/retention.py), pruned hourly in bounded batches. Messages untouched this
    # long go with their attempts and timeline; they are the dedupe key of "never twice", so start-up
    # refuses an age not longer than ABONENT_STREAM_MAX_AGE_DAYS.
    notify_retention_messages_days: int = 30
    # Receipts whose send never got recorded (a sender that crashed in the window).
    notify_retention_early_receipts_hours: int = 72
    # Whom a callback's later events concern: needed while the callback lives.
    notify_retention_contacts_days: int = 30
    # Deep links opened whose contact never came (valid for an hour).
    notify_retention_pending_binds_hours: int = 24
    # Binds, unbinds and refused contacts, for support.
    notify_retention_binding_log_days: int = 180
    # What the sandbox's pretend phones received (dev only).
    notify_retention_sandbox_days: int = 7

    def __post_init__(self) -> None:
        super().__post_init__()
        start = _parse_hhmm(self.notify_quiet_start, "notify_quiet_start")
        end = _parse_hhmm(self.notify_quiet_end, "notify_quiet_end")
        if start == end:
            raise SettingsError(
                f"{env_name('notify_quiet_start')} and {env_name('notify_quiet_end')} must differ"
            )
        for name in ("notify_fallback_minutes", "notify_send_lease_s"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{env_name(name)} must be positive, got {getattr(self, name)}")
        for name in ("notify_sms_daily_budget",):
            if getattr(self, name) < 0:
                raise SettingsError(f"{env_name(name)} must be >= 0, got {getattr(self, name)}")
        retention = [f for f in type(self).__struct_fields__ if f.startswith("notify_retention_")]
        for name in ("notify_max_tries", "notify_bind_token_hours", "notify_send_batch", *retention):
            if getattr(self, name) < 1:
                raise SettingsError(f"{env_name(name)} must be at least 1, got {getattr(self, name)}")

    @property
    def quiet_start(self) -> dt.time:
        return _parse_hhmm(self.notify_quiet_start, "notify_quiet_start")

    @property
    def quiet_end(self) -> dt.time:
        return _parse_hhmm(self.notify_quiet_end, "notify_quiet_end")

    @property
    def fallback_after(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.notify_fallback_minutes)

    def retention_rules(self) -> list[RetentionRule]:
        """The notifier's own tables (attempts and timeline go with their message: on delete cascade).
        Recipients, their opt-outs and bindings are people's choices and are not aged out."""
        days, hours = dt.timedelta(days=1), dt.timedelta(hours=1)
        return [
            RetentionRule(
                "messages",
                "updated_at",
                "notify_retention_messages_days",
                keep=days * self.notify_retention_messages_days,
                outlive_stream=True,
            ),
            RetentionRule(
                "early_receipts",
                "received_at",
                "notify_retention_early_receipts_hours",
                keep=hours * self.notify_retention_early_receipts_hours,
            ),
            RetentionRule(
                "callback_contacts",
                "created_at",
                "notify_retention_contacts_days",
                keep=days * self.notify_retention_contacts_days,
            ),
            RetentionRule(
                "pending_binds",
                "started_at",
                "notify_retention_pending_binds_hours",
                keep=hours * self.notify_retention_pending_binds_hours,
                # Younger ones may still be completed by the shared contact (engine.BIND_CONTACT_WITHIN).
                minimum=hours,
            ),
            RetentionRule(
                "binding_log",
                "at",
                "notify_retention_binding_log_days",
                keep=days * self.notify_retention_binding_log_days,
            ),
            RetentionRule(
                "sandbox_messages",
                "sent_at",
                "notify_retention_sandbox_days",
                keep=days * self.notify_retention_sandbox_days,
            ),
        ]


def get_notifier_settings() -> NotifierSettings:
    """This process's notifier section, read once from the environment."""
    return get_section(NotifierSettings)
