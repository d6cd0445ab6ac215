"""`abonent up` as a person runs it: the sandbox ESIA starts, a demo case's link signs in to "confirmed"."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from support.harness import REPO

from services.common.embedded import free_port

pytestmark = pytest.mark.slow


def _wait_for(log: Path, proc: subprocess.Popen[bytes], marker: str, timeout: float = 150) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if marker in text:
            return text
        if proc.poll() is not None:
            raise AssertionError(f"`abonent up` exited with {proc.returncode}:\n{text[-6000:]}")
        time.sleep(0.5)
    raise AssertionError(f"`abonent up` did not print {marker!r}:\n{log.read_text()[-6000:]}")


def _follow_sign_in(http: httpx.Client, link: str, sandbox: str, oid: str) -> httpx.Response:
    """Press the button, choose the person on the sandbox's login page, allow, come back."""
    page = http.get(link)
    assert page.status_code == 200, page.text
    start = http.get(f"{link}/start")
    assert start.status_code == 303, start.text
    login = http.get(start.headers["location"])
    assert str(login.url).startswith(f"{sandbox}/aas/oauth2/v2/ac"), login.url
    auth_id = re.search(r'name="auth_id" value="([^"]+)"', login.text)
    assert auth_id is not None, login.text
    consent = http.post(f"{sandbox}/sandbox/login", data={"auth_id": auth_id.group(1), "oid": oid})
    assert consent.status_code == 200, consent.text
    back = http.post(f"{sandbox}/sandbox/consent", data={"auth_id": auth_id.group(1), "decision": "allow"})
    assert back.status_code == 302, back.text
    callback = http.get(back.headers["location"])
    assert callback.status_code == 303, callback.text
    return http.get(callback.url.join(callback.headers["location"]))


def _try_the_corporate_demo(text: str, base: str) -> None:
    """The README's curl lines: a token for the printed demo client, bind a device, list the SIMs."""
    client_id = re.search(r"corporate demo client_id\s+(\S+)", text)
    secret = re.search(r"corporate demo client_secret\s+(\S+)", text)
    assert client_id is not None, text[-6000:]
    assert secret is not None, text[-6000:]
    with httpx.Client(base_url=base, timeout=30) as http:
        token = http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(client_id.group(1), secret.group(1)),
        )
        assert token.status_code == 200, token.text
        bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
        device = {
            "type": "meter",
            "name": "Meter",
            "imei": "490154203237518",
            "installation_address": "Moscow",
        }
        bound = http.put("/v1/corporate/sims/+79161300001/binding", json={"device": device}, headers=bearer)
        assert bound.status_code == 200, bound.text
        listed = http.get("/v1/corporate/sims", params={"binding": "device"}, headers=bearer)
        assert [s["number"] for s in listed.json()["items"]] == ["+79161300001"]


def test_up_serves_the_sandbox_and_a_demo_link_signs_in(tmp_path: Path) -> None:
    names = ("callback", "verification", "notifier", "esia_sandbox", "corpsim_registry_sandbox")
    ports = {name: free_port() for name in names}
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABONENT_")}
    env.update({f"ABONENT_{name.upper()}_PORT": str(port) for name, port in ports.items()})
    env.update(ABONENT_DATA_DIR=str(tmp_path / "data"), ABONENT_LOG_FORMAT="text")
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "up"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        text = _wait_for(log, proc, "Ctrl-C stops everything")
        assert "All services ready" in text, text[-6000:]
        sandbox = f"http://127.0.0.1:{ports['esia_sandbox']}"
        assert re.search(rf"esia sandbox\s+{re.escape(sandbox)}\s+ready", text), text[-6000:]
        registry = f"http://127.0.0.1:{ports['corpsim_registry_sandbox']}"
        assert re.search(rf"registry sandbox\s+{re.escape(registry)}\s+ready", text), text[-6000:]
        base = f"http://127.0.0.1:{ports['verification']}"
        assert f"verification case API docs  {base}/schema/swagger#/cases" in re.sub(r" {2,}", "  ", text)
        demo = dict(re.findall(rf"verification demo: (\w[^\n]*?)\s+({re.escape(base)}/v/\S+)", text))
        assert len(demo) == 4, text[-6000:]
        match = next(link for label, link in demo.items() if label.startswith("match"))
        with httpx.Client(timeout=30) as http:
            result = _follow_sign_in(http, match, sandbox, "1000000001")
        assert result.status_code == 200
        assert "<h1>Данные подтверждены</h1>" in result.text
        _try_the_corporate_demo(text, base)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-6000:]
    assert "Stopped." in log.read_text()
    # Every child (services and the sandbox) is gone with it: their ports are free again.
    for port in ports.values():
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2)
