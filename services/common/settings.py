"""Settings from ABONENT_* environment variables: a shared section and each service's own, validated once."""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Literal, TypeVar

import msgspec

ENV_PREFIX = "ABONENT_"

ServiceName = Literal["callback", "verification", "notifier"]
SERVICE_NAMES: tuple[ServiceName, ...] = ("callback", "verification", "notifier")


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the environment variable."""


class SettingsSection(msgspec.Struct, kw_only=True, frozen=True):
    """Base of every settings section: each field is read from ABONENT_<FIELD_NAME_UPPER>.

    Field names are global across sections (they become environment variable names), so a service's
    section must not reuse a shared field's name.
    """


SectionT = TypeVar("SectionT", bound=SettingsSection)


class Settings(SettingsSection, kw_only=True, frozen=True):
    """What every service reads: where the servers are, ports, logs, the bus, the pool, keys."""

    # Where to find the servers. Empty means "start the embedded ones" (`abonent up` only).
    database_url: str = ""
    nats_url: str = ""
    # Folder for embedded server data, logs and generated secrets; kept across restarts.
    data_dir: str = ".abonent"
    host: str = "127.0.0.1"
    callback_port: int = 8001
    verification_port: int = 8002
    notifier_port: int = 8003
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
    db_worker_pool_max: int = 6
    outbox_poll_interval_s: float = 1.0
    # How long a relay holds the outbox rows it claimed before another relay may take them over; keep it
    # well inside JetStream's 2-minute duplicate window so a takeover's republish is deduplicated.
    outbox_lease_s: float = 30.0
    # Data-encryption keyring: "id:<urlsafe-base64 32 bytes>,…" (every key decrypts) and the id of the one
    # that encrypts (may be left empty while the ring holds one key). `abonent up` generates them into
    # data_dir when empty; `abonent keys rotate` moves stored values onto the active key.
    data_keys: str = ""
    data_key_id: str = ""
    # Blind-index (lookup hash) and token-signing key, urlsafe-base64 32 bytes; independent of data keys.
    index_key: str = ""
    # Legacy single key (before the keyring): only reads values written in the old format; drop it once
    # `abonent keys rotate` has moved everything onto the ring.
    data_key: str = ""
    # Bootstrap bearer token for the back office: every service accepts it with all the scopes it declares.
    admin_token: str = ""
    # Staff sessions end after this long without a request, and at the latest this long after sign-in.
    session_idle_timeout_s: int = 1800
    session_max_age_s: int = 43200
    # Failed sign-ins allowed per (login, client address) within the window before answering 429.
    sign_in_max_failures: int = 5
    sign_in_window_s: int = 900
    # Durable scheduler: how often runners look for due jobs when no NOTIFY wakes them.
    scheduler_poll_interval_s: float = 1.0
    # Retention (ISSUE8 §8), run hourly by the scheduler. JetStream drops messages older than this.
    stream_max_age_days: int = 7
    # Published outbox rows; their payloads may hold phones, so they go soon.
    retention_outbox_hours: int = 24
    # Inbox rows must outlive the stream's messages: a redelivery after pruning would apply twice.
    retention_inbox_days: int = 14
    # Dead letters may be replayed; their inbox rows must still exist then, so at most the inbox's age.
    retention_dead_letters_days: int = 14
    # Scheduler jobs that are done or failed.
    retention_jobs_days: int = 7
    # Outbound webhook deliveries once delivered or given up, with their attempt log.
    retention_webhooks_days: int = 30
    # Spent idempotency keys (a retry after this is a new request) and used form tokens.
    retention_idempotency_keys_hours: int = 48
    retention_form_tokens_hours: int = 24
    # Rows deleted per table per transaction, so pruning never holds long locks.
    retention_batch_size: int = 1000

    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (IPs or CIDRs, comma-separated; "*" for
    # any): the ingress or load balancer in front. The client address every per-IP budget and rate limit
    # counts is the forwarded one only when the immediate peer is listed; anyone else could write the header.
    trusted_proxies: str = "127.0.0.1,::1"

    def trusted_proxy_list(self) -> list[str]:
        return [part.strip() for part in self.trusted_proxies.split(",") if part.strip()]

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
        positive = ("session_idle_timeout_s", "session_max_age_s", "sign_in_max_failures", "sign_in_window_s")
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingsError(f"{env_name(name)} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.outbox_lease_s <= 90:
            raise SettingsError(
                f"{env_name('outbox_lease_s')} must be in (0, 90] seconds, got {self.outbox_lease_s}"
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
        for proxy in self.trusted_proxy_list():
            if proxy == "*":
                continue
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise SettingsError(
                    f"{env_name('trusted_proxies')} must list IPs or CIDRs (or *), got {proxy!r}"
                ) from None
        self._check_keys()
        self._check_retention()

    def _check_keys(self) -> None:
        # Imported here: crypto builds on these settings, so a module-level import would be circular.
        from services.common import crypto

        ring = crypto.parse_key_list(self.data_keys, env_name("data_keys"))
        if self.data_key_id and ring and self.data_key_id not in ring:
            raise SettingsError(
                f"{env_name('data_key_id')}: {self.data_key_id!r} is not among the ids in"
                f" {env_name('data_keys')} ({', '.join(ring)})"
            )
        if self.index_key:
            crypto.decode_key(self.index_key, env_name("index_key"))
        if self.data_key:
            crypto.decode_key(self.data_key, env_name("data_key"))

    def _check_retention(self) -> None:
        positive = [f.name for f in msgspec.structs.fields(self) if f.name.startswith("retention_")]
        for name in [*positive, "stream_max_age_days", "scheduler_poll_interval_s"]:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{env_name(name)} must be positive, got {getattr(self, name)}")
        if self.retention_inbox_days <= self.stream_max_age_days:
            raise SettingsError(
                f"{env_name('retention_inbox_days')} ({self.retention_inbox_days}) must be longer than "
                f"{env_name('stream_max_age_days')} ({self.stream_max_age_days}): a message redelivered "
                "after its inbox row was pruned would be applied twice"
            )
        if self.retention_dead_letters_days > self.retention_inbox_days:
            raise SettingsError(
                f"{env_name('retention_dead_letters_days')} ({self.retention_dead_letters_days}) must not "
                f"exceed {env_name('retention_inbox_days')} ({self.retention_inbox_days}): replaying a dead "
                "letter whose inbox rows were pruned would apply it twice for the consumers that had it"
            )


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_section(
    section: type[SectionT], environ: Mapping[str, str] | None = None, **overrides: object
) -> SectionT:
    """Build one settings section from the environment; raise SettingsError naming the bad variable.

    `overrides` are field values (not variable names) that win over the environment.
    """
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    for field in msgspec.structs.fields(section):
        name = env_name(field.name)
        if name in env:
            raw[field.name] = env[name]
    # A misspelt override would otherwise be dropped without a word.
    unknown = set(overrides) - {field.name for field in msgspec.structs.fields(section)}
    if unknown:
        raise SettingsError(f"{section.__name__} has no setting {', '.join(sorted(unknown))}")
    raw.update(overrides)
    try:
        return msgspec.convert(raw, section, strict=False)
    except msgspec.ValidationError as exc:
        # msgspec says "... - at `$.callback_port`"; translate the path into the variable name.
        # Checks in __post_init__ already name their variable and arrive here as "... - at `$`".
        reason = str(exc).split(" - at ")[0]
        match = re.search(r"at `\$\.(\w+)`", str(exc))
        if match is None:
            raise SettingsError(reason) from None
        raise SettingsError(f"{env_name(match.group(1))}: {reason}") from None


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """The shared section from the environment; raise SettingsError naming the bad variable."""
    return load_section(Settings, environ, **overrides)


@functools.cache
def get_settings() -> Settings:
    """Shared settings of this process, read once."""
    return load_settings()


_sections: dict[type[SettingsSection], SettingsSection] = {}


def get_section(section: type[SectionT]) -> SectionT:
    """A service's own settings section of this process, read once."""
    if section not in _sections:
        _sections[section] = load_section(section)
    loaded = _sections[section]
    assert isinstance(loaded, section)  # keyed by its own type above
    return loaded
