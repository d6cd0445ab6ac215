"""`abonent up`: embedded servers, dev keys and back-office seeding, and every service as a child."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from services.cli.service import migrate_all, scope_catalogue, service_spec, validate_sections
from services.common import auth, auth_admin, crypto
from services.common.embedded import EmbeddedNats, EmbeddedPostgres
from services.common.settings import SERVICE_NAMES, Settings, get_section, get_settings, load_settings
from services.verification.corporate.settings import CorporateFlowSettings
from services.verification.identity.config import IdentitySettings
from services.verification.sandbox_idp.dev import dev_sandbox
from services.verification.sandbox_registry.dev import dev_registry


def _dev_key_file(path: Path, make: Callable[[], str]) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(make() + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def dev_keys(data_dir: Path) -> dict[str, str]:
    """Dev-only keys kept in the data folder, so encrypted personal data survives restarts.

    `data.keys` holds the keyring (one `id:key` per line, the first is active), `index.key` the blind-index
    key. A folder from before the keyring has `data.key`: it stays readable as the legacy key, and the new
    index key is the one it derived, so stored lookup hashes keep matching.
    """
    legacy_file = data_dir / "data.key"
    legacy = legacy_file.read_text().strip() if legacy_file.exists() else ""
    ring = _dev_key_file(data_dir / "data.keys", lambda: f"k1:{crypto.new_key()}").split()
    index = _dev_key_file(
        data_dir / "index.key", lambda: crypto.legacy_index_key(legacy) if legacy else crypto.new_key()
    )
    keys = {"data_keys": ",".join(ring), "data_key_id": ring[0].partition(":")[0], "index_key": index}
    if legacy:
        keys["data_key"] = legacy
    return keys


def _ensure_secret(path: Path, make: Callable[[], str]) -> str:
    """A dev secret kept in the data folder (owner-only), so it stays the same across restarts."""
    if not path.exists():
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


DEV_STAFF_LOGIN = "admin"


def seed_back_office(settings: Settings, data_dir: Path) -> tuple[str, str]:
    """The bootstrap admin token and a demo staff account with every scope; returns (token, password)."""
    token = settings.admin_token or _ensure_secret(data_dir / "admin.token", auth.new_token)
    password = _ensure_secret(data_dir / "staff.password", lambda: secrets.token_urlsafe(12))
    asyncio.run(
        auth_admin.add_staff(
            settings.database_url,
            login=DEV_STAFF_LOGIN,
            scopes=sorted(scope_catalogue()),
            password=password,
            services=SERVICE_NAMES,
            keep_existing_password=True,
        )
    )
    return token, password


def _wait_ready(urls: dict[str, str], timeout: float = 30.0) -> dict[str, bool]:
    deadline = time.monotonic() + timeout
    ready = dict.fromkeys(urls, False)
    with httpx.Client(timeout=1.0) as client:
        while not all(ready.values()) and time.monotonic() < deadline:
            for name, base in urls.items():
                if ready[name]:
                    continue
                with contextlib.suppress(httpx.HTTPError):
                    ready[name] = client.get(f"{base}/health/ready").status_code == 200
            time.sleep(0.2)
    return ready


def cmd_up(args: argparse.Namespace) -> int:
    settings = get_settings()
    validate_sections(SERVICE_NAMES)
    data_dir = Path(settings.data_dir).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    started_at = time.monotonic()
    postgres: EmbeddedPostgres | None = None
    nats: EmbeddedNats | None = None
    children: dict[str, subprocess.Popen[bytes]] = {}
    stop_requested = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        overrides: dict[str, object] = {}
        if not settings.database_url:
            postgres = EmbeddedPostgres(data_dir / "postgres").start()
            overrides["database_url"] = postgres.url
        if not settings.nats_url:
            nats = EmbeddedNats(data_dir / "nats").start()
            overrides["nats_url"] = nats.url
        if not settings.data_keys:
            overrides.update(dev_keys(data_dir))
        settings = load_settings(None, **overrides)
        asyncio.run(migrate_all(settings))
        admin_token, staff_password = seed_back_office(settings, data_dir)
        urls: dict[str, str] = {
            name: f"http://{settings.host}:{settings.port_of(name)}" for name in SERVICE_NAMES
        }
        seeded: list[tuple[str, str]] = []
        for name in SERVICE_NAMES:
            seed = service_spec(name).dev_seed
            if seed is not None:
                seeded += asyncio.run(seed(settings, urls[name]))

        env = dict(os.environ)
        env.update(
            {
                "ABONENT_DATABASE_URL": settings.database_url,
                "ABONENT_NATS_URL": settings.nats_url,
                "ABONENT_DATA_KEYS": settings.data_keys,
                "ABONENT_DATA_KEY_ID": settings.data_key_id,
                "ABONENT_INDEX_KEY": settings.index_key,
                "ABONENT_DATA_KEY": settings.data_key,
                "ABONENT_ADMIN_TOKEN": admin_token,
                "ABONENT_LOG_FORMAT": os.environ.get("ABONENT_LOG_FORMAT", "text"),
            }
        )
        probes = dict(urls)
        identity = get_section(IdentitySettings)
        if identity.identity_mode == "esia" and not identity.esia_client_id:
            # No real ESIA configured: the sandbox stands in, and the verification service signs in there.
            sandbox = dev_sandbox(data_dir / "esia-sandbox", settings.host, identity.esia_sandbox_port)
            env.update(sandbox.env)
            children["esia sandbox"] = subprocess.Popen(sandbox.command, env=env, start_new_session=True)
            probes["esia sandbox"] = sandbox.url
        flow = get_section(CorporateFlowSettings)
        if not flow.corpsim_registry_url:
            # No registry configured: the sandbox registry stands in (the same one the tests use).
            registry = dev_registry(
                settings.host, flow.corpsim_registry_sandbox_port, flow.corpsim_registry_sandbox_delay_s
            )
            env.update(registry.env)
            children["registry sandbox"] = subprocess.Popen(registry.command, env=env, start_new_session=True)
            probes["registry sandbox"] = registry.url
        for name in SERVICE_NAMES:
            # Own session: Ctrl-C reaches only us, so we stop services before the servers they use.
            children[name] = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "run", name], env=env, start_new_session=True
            )
        ready = _wait_ready(probes)
        elapsed = time.monotonic() - started_at
        rows = [("service", "url", "status")]
        rows += [(n, u, "ready" if ready[n] else "NOT READY") for n, u in probes.items()]
        rows += [(f"{n} API docs", f"{u}/schema/swagger", "") for n, u in urls.items()]
        rows += [
            (label, f"{urls[n]}{path}", "") for n in SERVICE_NAMES for label, path in service_spec(n).links
        ]
        rows += [(label, value, "") for label, value in seeded]
        rows += [
            ("staff sign-in", f"{urls['callback']}/auth/sign-in", f"{DEV_STAFF_LOGIN} / {staff_password}"),
            ("admin token", admin_token, "all scopes; also in ABONENT_ADMIN_TOKEN"),
            (
                "try it",
                f"curl -H 'Authorization: Bearer {admin_token}' {urls['callback']}/v1/admin/sites",
                "",
            ),
            (
                "verification cases",
                f"curl -H 'Authorization: Bearer {admin_token}' {urls['verification']}/v1/cases",
                "",
            ),
        ]
        rows += [
            ("postgres", settings.database_url, "embedded" if postgres else "external"),
            ("nats", settings.nats_url, "embedded" if nats else "external"),
        ]
        width = [max(len(r[i]) for r in rows) for i in range(3)]
        print()
        for row in rows:
            print("  " + "  ".join(cell.ljust(width[i]) for i, cell in enumerate(row)))
        print(
            f"\n  {'All services ready' if all(ready.values()) else 'Some services are NOT ready'}"
            f" in {elapsed:.1f}s. Data in {data_dir}. Ctrl-C stops everything.\n",
            flush=True,
        )
        if not all(ready.values()):
            return 1
        while not stop_requested:
            for child_name, child in children.items():
                if child.poll() is not None:
                    print(
                        f"{child_name} exited with {child.returncode}; stopping everything", file=sys.stderr
                    )
                    return 1
            time.sleep(0.3)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for child in children.values():
            if child.poll() is None:
                child.terminate()
        for child in children.values():
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if nats is not None:
            nats.stop()
        if postgres is not None:
            postgres.stop()
        print("Stopped.", flush=True)
