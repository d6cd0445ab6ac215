"""The callback service's own settings section: telephony adapters, the simulated PBX, its public URL."""

from __future__ import annotations

import uuid
from typing import Literal

from services.callback.telephony import AriConfig, MangoConfig, SimConfig, TelephonySettings
from services.common.settings import SettingsError, SettingsSection, env_name, get_section


class CallbackSettings(SettingsSection, kw_only=True, frozen=True):
    """Read from the same ABONENT_* variables as the shared section; only the callback service reads these."""

    # Telephony adapter for callback dialing: sim | asterisk | mango.
    telephony: Literal["sim", "asterisk", "mango"] = "sim"
    # Simulated PBX: delays are multiplied by this (tests use 0.01); manual = people click answer/hang up.
    sim_time_scale: float = 1.0
    sim_manual: bool = False
    # Demo switch: "on" makes simulated visitors sometimes busy, on voicemail or not picking up, to show
    # retries; "off" (the default, what `abonent up` shows) has everyone pick up, so a demo call succeeds.
    sim_failures: Literal["off", "on"] = "off"
    # Asterisk ARI (ABONENT_TELEPHONY=asterisk).
    ari_url: str = ""
    ari_user: str = ""
    ari_password: str = ""
    ari_app: str = "abonent-callback"
    ari_visitor_endpoint: str = "PJSIP/{digits}@trunk"
    # Each replica registers the ARI app "<ari_app>-<ari_replica>" (Asterisk sends an app's events to one
    # WebSocket); empty: a random name per process. A stable value (the pod name) is fine, not required.
    ari_replica: str = ""
    # Mango Office VPBX (ABONENT_TELEPHONY=mango); its webhooks go to /telephony/mango/events/call etc.
    mango_api_key: str = ""
    mango_api_salt: str = ""
    mango_url: str = "https://app.mango-office.ru/vpbx"
    mango_line_number: str = ""
    # GET /v1/sites/{key}/offer: requests per minute from one client IP, counted per process. Generous:
    # mobile visitors share carrier NAT addresses.
    offer_rate_limit_per_minute: int = 300
    # A call being placed is leased this long (s); an order still unconfirmed after it is settled by any
    # replica without ringing again. Well above the providers' own request timeouts.
    placing_lease_s: float = 30.0
    # A queue read for promises (offers and requests) is reused this long (s) at most by a process; changes
    # it hears of (its own requests and presence, any replica's callback events) drop it sooner. 0: never.
    queue_cache_ttl_s: float = 1.0

    def __post_init__(self) -> None:
        if self.sim_time_scale <= 0:
            raise SettingsError(f"{env_name('sim_time_scale')} must be > 0, got {self.sim_time_scale}")
        if self.placing_lease_s <= 0:
            raise SettingsError(f"{env_name('placing_lease_s')} must be > 0, got {self.placing_lease_s}")
        if not 0 <= self.queue_cache_ttl_s <= 60:
            raise SettingsError(
                f"{env_name('queue_cache_ttl_s')} must be within [0, 60], got {self.queue_cache_ttl_s}"
            )
        if self.offer_rate_limit_per_minute < 1:
            raise SettingsError(
                f"{env_name('offer_rate_limit_per_minute')} must be >= 1,"
                f" got {self.offer_rate_limit_per_minute}"
            )
        # The chosen adapter's credentials are checked now, not at the first dial hours later.
        if self.telephony == "asterisk":
            if not self.ari_url.startswith(("http://", "https://")):
                raise SettingsError(
                    f"{env_name('ari_url')} must be an http(s) URL when telephony is asterisk"
                )
            if not self.ari_user:
                raise SettingsError(f"{env_name('ari_user')} is required when telephony is asterisk")
        if self.telephony == "mango":
            for name in ("mango_api_key", "mango_api_salt"):
                if not getattr(self, name):
                    raise SettingsError(f"{env_name(name)} is required when telephony is mango")
            if not self.mango_url.startswith(("http://", "https://")):
                raise SettingsError(f"{env_name('mango_url')} must be an http(s) URL")

    def telephony_config(self) -> TelephonySettings:
        """The simulated PBX: agents answer and visitors pick up after a few rings; with the failures switch
        on, some visitors are busy, on voicemail or let it ring out, as real ones are."""
        failures = self.sim_failures == "on"
        return TelephonySettings(
            sim=SimConfig(
                ring_s=3.0,
                visitor_answer_p=0.85 if failures else 1.0,
                busy_p=0.1 if failures else 0.0,
                voicemail_p=0.05 if failures else 0.0,
                talk_s=20.0,
                manual=self.sim_manual,
            ),
            sim_time_scale=self.sim_time_scale,
            asterisk=AriConfig(
                base_url=self.ari_url,
                username=self.ari_user,
                password=self.ari_password,
                app=self.ari_app,
                visitor_endpoint_template=self.ari_visitor_endpoint,
            ).for_replica(self.ari_replica or uuid.uuid4().hex[:8])
            if self.telephony == "asterisk"
            else None,
            mango=MangoConfig(
                api_key=self.mango_api_key,
                api_salt=self.mango_api_salt,
                base_url=self.mango_url,
                default_line_number=self.mango_line_number or None,
            )
            if self.telephony == "mango"
            else None,
        )


def get_callback_settings() -> CallbackSettings:
    """This process's callback section, read once from the environment."""
    return get_section(CallbackSettings)
