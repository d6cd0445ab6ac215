"""The notifier's own settings section: fallback delay, quiet hours, fatigue budget, send leases."""

from __future__ import annotations

import datetime as dt

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
    # Provider calls per attempt before a transient error (429, timeout) becomes a failure.
    notify_max_tries: int = 8
    # Deep-link tokens for binding a messenger stay valid this long.
    notify_bind_token_hours: int = 24
    # Messenger bots' usernames for deep links (t.me/<bot>?start=..., max.ru/<bot>?start=...).
    notify_telegram_bot: str = "abonent_bot"
    notify_max_bot: str = "abonent_bot"

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
        for name in ("notify_max_tries", "notify_bind_token_hours"):
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


def get_notifier_settings() -> NotifierSettings:
    """This process's notifier section, read once from the environment."""
    return get_section(NotifierSettings)
