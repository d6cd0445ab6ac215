"""Helpers shared by tests: settings for a test, migrations, child processes that see those settings."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec

from services.common.migrate import discover, migrate
from services.common.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
TEST_DATA_KEYS = "t1:" + base64.urlsafe_b64encode(b"k" * 32).decode()
TEST_INDEX_KEY = base64.urlsafe_b64encode(b"i" * 32).decode()
TEST_ADMIN_TOKEN = "test-admin-token"


def make_settings(database_url: str, nats_url: str, nats_namespace: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "nats_url": nats_url,
        "nats_namespace": nats_namespace,
        "data_keys": TEST_DATA_KEYS,
        "index_key": TEST_INDEX_KEY,
        "admin_token": TEST_ADMIN_TOKEN,
        "outbox_poll_interval_s": 0.2,
        "log_format": "text",
    }
    values.update(overrides)
    return load_settings(environ={}, **values)


async def migrate_service(settings: Settings, service: str) -> None:
    spec = importlib.import_module(f"services.{service}.app").SPEC
    await migrate(settings.database_url, service, discover(spec.migrations_dir))


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment that makes a child process see exactly these settings."""

    env = {k: v for k, v in os.environ.items() if not k.startswith("ABONENT_")}
    for field in msgspec.structs.fields(Settings):
        env[f"ABONENT_{field.name.upper()}"] = str(getattr(settings, field.name))
    env.update(extra)
    return env


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # A script's own folder comes first on its sys.path, and the shared venv points `services` at another
    # checkout: put this checkout first so the child runs the code under test.
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *args], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
        )


@contextlib.asynccontextmanager
async def running_service(settings: Settings, service: str, log_dir: Path, **env: str) -> AsyncIterator[str]:
    """The real service as its own process on a free port (real HTTP: SSE, browsers); yields its base URL."""
    import httpx

    from services.common.embedded import free_port

    port = free_port()
    extra = {f"ABONENT_{service.upper()}_PORT": str(port), **env}
    proc = spawn(
        ["-m", "services.cli", "run", service, "--migrate"],
        settings_env(settings, **extra),
        log_dir / f"{service}.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                if proc.poll() is not None:
                    raise RuntimeError((log_dir / f"{service}.log").read_text())
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{base}/health/ready")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"{service} not ready:\n" + (log_dir / f"{service}.log").read_text())
        yield base
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)


def wait_ready_blocking(
    url: str, proc: subprocess.Popen[bytes], log: Path, *, what: str, timeout: float = 60
) -> None:
    """Until `url`/health/ready answers 200 (for sync fixtures); the log's tail if the process dies or is
    never ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready in {timeout:.0f}s:\n{log.read_text()[-4000:]}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL if it overruns."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
