"""Settings of the corporate SIM flow: the registry adapter, its worker, and the zone deadlines live in."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.common.settings import SettingsError, SettingsSection, env_name, get_section


class CorporateFlowSettings(SettingsSection, kw_only=True, frozen=True):
    """Read from ABONENT_CORPSIM_*; only the verification service reads these."""

    # The registry's base URL. Empty: `abonent up` starts the sandbox registry and points here at it;
    # elsewhere nothing is submitted (SIMs wait in pending_submission) and the service logs why.
    corpsim_registry_url: str = ""
    corpsim_registry_timeout_s: float = 10.0
    # How often a sent submission is asked about until the registry decides it.
    corpsim_registry_poll_s: float = 30.0
    # Backoff after a transient failure: base × 2^(attempts-1), capped; the same submission id every time.
    corpsim_registry_retry_base_s: float = 5.0
    corpsim_registry_retry_max_s: float = 3600.0
    # A claimed submission is "in flight" this long; must outlast one call.
    corpsim_registry_lease_s: float = 60.0
    # How often the worker looks for work when idle.
    corpsim_worker_interval_s: float = 2.0
    # `abonent up`: the sandbox registry's port and how long it takes to decide a record.
    corpsim_registry_sandbox_port: int = 8011
    corpsim_registry_sandbox_delay_s: float = 2.0
    # Deadlines are whole working days in this zone (the operator's; the RU production calendar).
    corpsim_zone: str = "Europe/Moscow"

    def __post_init__(self) -> None:
        url = self.corpsim_registry_url
        if url and not url.startswith(("http://", "https://")):
            raise SettingsError(f"{env_name('corpsim_registry_url')} must be an http(s) URL, got {url!r}")
        for name in (
            "corpsim_registry_timeout_s",
            "corpsim_registry_poll_s",
            "corpsim_registry_retry_base_s",
            "corpsim_registry_retry_max_s",
            "corpsim_worker_interval_s",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{env_name(name)} must be positive, got {getattr(self, name)}")
        if self.corpsim_registry_lease_s <= self.corpsim_registry_timeout_s:
            raise SettingsError(
                f"{env_name('corpsim_registry_lease_s')} must exceed {env_name('corpsim_registry_timeout_s')}"
            )
        try:
            ZoneInfo(self.corpsim_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise SettingsError(f"{env_name('corpsim_zone')}: unknown zone {self.corpsim_zone!r}") from None


def get_flow_settings() -> CorporateFlowSettings:
    return get_section(CorporateFlowSettings)
