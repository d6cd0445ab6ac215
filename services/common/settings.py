"""Settings from ABONENT_* environment variables, validated once at start-up."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Literal

import msgspec

ENV_PREFIX = "ABONENT_"

ServiceName = Literal["callback", "verification", "notifier"]
SERVICE_NAMES: tuple[ServiceName, ...] = ("callback", "verification", "notifier")


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the environment variable."""


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """Everything configurable. Each field is read from ABONENT_<FIELD_NAME_UPPER>."""

    # Where to find the servers. Empty means "start the embedded ones" (`abonent up` only).
    database_url: str = ""
    nats_url: str = ""
    # Folder for embedded server data, logs and generated secrets; kept across restarts.
    data_dir: str = ".abonent"
    host: str = "127.0.0.1"
    callback_port: int = 8001
    verification_port: int = 8002
    notifier_port: int = 8003
    # Public base URL of the callback service as seen by browsers (widget, SSE, links).
    public_callback_url: str = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    # JetStream stream replicas: 1 on one server, 3 in a cluster.
    stream_replicas: int = 1
    # Prefix for stream and subject names, so tests (or tenants of one NATS) never see each other's events.
    nats_namespace: str = ""
    # Connections for HTTP handlers, per process.
    db_pool_max: int = 10
    # A request waits this long for one of them, then gets 503 with Retry-After instead of hanging.
    db_acquire_timeout_s: float = 5.0
    # A separate small pool for background work (outbox relay, consumers, dialer, timers), so HTTP
    # traffic can never starve it.
    db_worker_pool_max: int = 4
    outbox_poll_interval_s: float = 1.0
    # Ack timeout and redelivery policy for consumers.
    consumer_ack_wait_s: float = 30.0
    consumer_max_deliver: int = 8
    # Base64 (urlsafe) 32-byte key for personal-data encryption; generated into data_dir when empty.
    data_key: str = ""
    # Bearer token for the operator's back-office admin API.
    admin_token: str = ""
    # Telephony adapter for callback dialing: sim | asterisk | mango.
    telephony: Literal["sim", "asterisk", "mango"] = "sim"
    # Simulated PBX: delays are multiplied by this (tests use 0.01); manual = people click answer/hang up.
    sim_time_scale: float = 1.0
    sim_manual: bool = False
    # Asterisk ARI (ABONENT_TELEPHONY=asterisk).
    ari_url: str = ""
    ari_user: str = ""
    ari_password: str = ""
    ari_app: str = "abonent-callback"
    ari_visitor_endpoint: str = "PJSIP/{digits}@trunk"
    # Mango Office VPBX (ABONENT_TELEPHONY=mango); its webhooks go to /telephony/mango/events/call etc.
    mango_api_key: str = ""
    mango_api_salt: str = ""
    mango_url: str = "https://app.mango-office.ru/vpbx"
    mango_line_number: str = ""

    def port_of(self, service: ServiceName) -> int:
        ports: dict[ServiceName, int] = {
            "callback": self.callback_port,
            "verification": self.verification_port,
            "notifier": self.notifier_port,
        }
        return ports[service]

    def __post_init__(self) -> None:
        for name in ("callback_port", "verification_port", "notifier_port"):
            port = getattr(self, name)
            if not 0 < port < 65536:
                raise SettingsError(f"{env_name(name)} must be a TCP port (1-65535), got {port}")
        if self.stream_replicas not in (1, 3, 5):
            raise SettingsError(
                f"{env_name('stream_replicas')} must be 1, 3 or 5, got {self.stream_replicas}"
            )
        for name in ("db_pool_max", "db_worker_pool_max"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{env_name(name)} must be at least 1, got {getattr(self, name)}")
        if not self.db_acquire_timeout_s > 0:
            raise SettingsError(
                f"{env_name('db_acquire_timeout_s')} must be positive, got {self.db_acquire_timeout_s}"
            )
        if self.nats_namespace and not re.fullmatch(r"[a-z0-9_]+", self.nats_namespace):
            raise SettingsError(f"{env_name('nats_namespace')} may hold only a-z, 0-9 and _")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build Settings from the environment; raise SettingsError naming the bad variable."""
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    for field in msgspec.structs.fields(Settings):
        name = env_name(field.name)
        if name in env:
            raw[field.name] = env[name]
    raw.update(overrides)
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        # msgspec says "... - at `$.callback_port`"; translate the path into the variable name.
        match = re.search(r"at `\$\.(\w+)`", str(exc))
        bad_field = match.group(1) if match else "?"
        reason = str(exc).split(" - at ")[0]
        raise SettingsError(f"{env_name(bad_field)}: {reason}") from None


@functools.cache
def get_settings() -> Settings:
    """Settings of this process, read once."""
    return load_settings()
