"""Fixtures for widget tests: headless Chromium, the real callback service (a child process on its own
database and NATS namespace), and a "customer site" on another port serving host pages cross-origin."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.chromium import require_chromium, sync_browser
from support.harness import REPO, make_settings, settings_env, spawn, wait_ready_blocking
from widget_support import HostSite, Stack

from services.common.embedded import free_port

ARTIFACTS = REPO / "test-artifacts" / "widget"


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    return require_chromium("WIDGET BROWSER TESTS")


@pytest.fixture(scope="module")
def browser(chromium_executable: str) -> Iterator[Any]:
    """One Chromium per module (see sync_browser for why); each test gets a new context (no shared
    storage or cache)."""
    yield from sync_browser(chromium_executable)


# --- the callback service -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def stack(postgres_server: Any, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The real callback service as a container runs it (`abonent run callback --migrate`), once per
    session; tests isolate themselves by using their own site keys."""
    database_url = str(postgres_server.create_database(f"w_{uuid.uuid4().hex[:12]}"))
    # Manual simulated PBX: calls ring until a test answers or hangs up through the agent console API.
    settings = make_settings(database_url, nats_url, f"w{uuid.uuid4().hex[:10]}")
    port = free_port()
    log = tmp_path_factory.mktemp("widget-service") / "callback.log"
    proc = spawn(
        ["-m", "services.cli", "run", "callback", "--migrate"],
        settings_env(settings, ABONENT_CALLBACK_PORT=str(port), ABONENT_SIM_MANUAL="true"),
        log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready_blocking(base, proc, log, what="callback service")
        paths = httpx.get(f"{base}/schema/openapi.json", timeout=10).json().get("paths", {})
        probe = httpx.get(f"{base}/widget/v1/widget.js", timeout=10)
        if "/v1/sites/{site_key}/offer" not in paths or probe.status_code != 200:
            pytest.fail(
                "the callback service does not serve the widget API and assets yet: "
                "services/callback/app.py must include WIDGET_ROUTES from services/callback/widget_assets.py"
            )
        with httpx.Client(base_url=base, timeout=15) as http:
            stack = Stack(base=base, http=http, log=log)
            # Sites that name no queue share `default`: one agent there at work, on a call for the whole
            # session, so they promise "within …" and their requests wait (nobody Ready dials them).
            busy = stack.agent_on_a_long_call("w-default-agent", "default", "w-default-busy")
            try:
                yield stack
            finally:
                busy.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the customer's site (another origin) ----------------------------------------------------------------


@pytest.fixture(scope="session")
def host_site() -> Iterator[HostSite]:
    port = free_port()
    site = HostSite(origin=f"http://127.0.0.1:{port}")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = site.pages.get(self.path.split("?", 1)[0])
            if found is None:
                self.send_error(404)
                return
            html, headers = found
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="widget-host-site", daemon=True)
    thread.start()
    yield site
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
