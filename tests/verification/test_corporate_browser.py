"""A corporate SIM's employee path in real headless Chromium, with the sandboxes `abonent up` starts: the
company binds a number to an employee, the employee confirms through the sandbox ESIA, the SIM goes to
pending_submission, the worker submits it to the sandbox registry, it is accepted, and the company gets
signed webhooks for every step; the back-office page lists the company."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fakes.asgi import serve_asgi
from fakes.fake_billing import FakeBilling
from playwright.sync_api import Browser, Page
from support.chromium import require_chromium, sync_browser
from support.harness import (
    TEST_ADMIN_TOKEN,
    make_settings,
    migrate_service,
    spawn,
    stop_process,
    wait_ready_blocking,
)
from support.served import served_in_thread
from support.verification import MATCH_CASE

from services.common.clock import ManualClock
from services.common.embedded import free_port
from services.common.settings import load_section
from services.common.webhooks import signature_header
from services.verification.app import create_app
from services.verification.corporate.settings import CorporateFlowSettings
from services.verification.identity.config import IdentitySettings
from services.verification.sandbox_idp.dev import dev_sandbox
from services.verification.sandbox_registry.dev import dev_registry
from services.verification.settings import VerificationSettings

pytestmark = pytest.mark.browser

AUTH = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}
IVANOV = "1000000001"
COMPANY = {"name": "ПАО Сбербанк", "inn": "7707083893", "ogrn": "1027700132195"}
EMPLOYEE = {"employee": {k: v for k, v in MATCH_CASE.items() if k not in ("msisdn", "reason")}}
WEBHOOK_SECRET = "company-webhook-secret-0123456789"


@dataclass
class Stack:
    base: str
    esia_url: str
    registry_url: str
    http: httpx.Client
    receiver: FakeBilling
    receiver_url: str
    clock: ManualClock


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[FakeBilling, str]]:
    """The company's webhook endpoint (records every POST), on its own thread and loop."""
    fake = FakeBilling()
    ready: queue.Queue[str] = queue.Queue()
    stop = threading.Event()

    async def serve() -> None:
        async with serve_asgi(fake) as url:
            ready.put(url)
            while not stop.is_set():
                await asyncio.sleep(0.05)

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    try:
        yield fake, ready.get(timeout=30)
    finally:
        stop.set()
        thread.join(10)


@pytest.fixture(scope="module")
def stack(
    postgres_server: Any,
    nats_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    receiver: tuple[FakeBilling, str],
) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("corporate-browser")
    port = free_port()
    settings = make_settings(
        str(postgres_server.create_database(f"cb_{uuid.uuid4().hex[:12]}")),
        nats_url,
        f"cb{uuid.uuid4().hex[:10]}",
        verification_port=port,
    )
    # Exactly what `abonent up` starts and hands the verification service (services/cli/up.py).
    esia = dev_sandbox(folder / "esia-sandbox", "127.0.0.1", free_port())
    registry = dev_registry("127.0.0.1", free_port(), delay_s=0.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABONENT_")}
    esia_log, registry_log = folder / "esia.log", folder / "registry.log"
    esia_proc = spawn(esia.command[1:], env, esia_log)
    registry_proc = spawn(registry.command[1:], env, registry_log)
    try:
        wait_ready_blocking(esia.url, esia_proc, esia_log, what="sandbox")
        wait_ready_blocking(registry.url, registry_proc, registry_log, what="sandbox")
        identity = load_section(IdentitySettings, esia.env)
        flow = load_section(
            CorporateFlowSettings,
            {
                **registry.env,
                "ABONENT_CORPSIM_WORKER_INTERVAL_S": "0.2",
                "ABONENT_CORPSIM_REGISTRY_POLL_S": "1",
            },
        )
        # Now, because the ESIA sandbox checks request timestamps against its own wall clock.
        clock = ManualClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
        app = create_app(settings, own=VerificationSettings(), identity=identity, clock=clock, flow=flow)
        with (
            served_in_thread(app, port, before=lambda: migrate_service(settings, "verification")) as base,
            httpx.Client(base_url=base, headers=AUTH, timeout=30) as http,
        ):
            yield Stack(
                base=base,
                esia_url=esia.url,
                registry_url=registry.url,
                http=http,
                receiver=receiver[0],
                receiver_url=receiver[1],
                clock=clock,
            )
    finally:
        stop_process(esia_proc)
        stop_process(registry_proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from sync_browser(require_chromium("CORPORATE BROWSER TESTS"))


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 375, "height": 740}, locale="ru-RU")
    context.set_default_timeout(20_000)
    tab = context.new_page()
    yield tab
    context.close()


def until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll with a generous deadline (CPU-loaded CI), never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_employee_confirms_in_chromium_and_the_registry_accepts(stack: Stack, page: Page) -> None:
    http = stack.http
    created = http.post("/v1/companies", json=COMPANY)
    assert created.status_code == 201, created.text
    company_id = created.json()["id"]
    number = "+79163334455"
    assert http.post(f"/v1/companies/{company_id}/numbers", json={"numbers": [number]}).status_code == 200
    made = http.post(f"/v1/companies/{company_id}/clients", json={"name": "HR"}).json()
    hook = http.put(
        f"/v1/admin/companies/{company_id}/webhook",
        json={"url": stack.receiver_url + "/hooks", "secret": WEBHOOK_SECRET},
    )
    assert hook.status_code == 200, hook.text
    basic = base64.b64encode(f"{made['client_id']}:{made['client_secret']}".encode()).decode()
    token = http.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers={"Authorization": f"Basic {basic}"}
    ).json()["access_token"]
    company = {"Authorization": f"Bearer {token}"}

    bound = http.post(f"/v1/corporate/sims/{number}/binding", json=EMPLOYEE, headers=company)
    assert bound.status_code == 200, bound.text
    link = bound.json()["confirmation_link"]
    assert bound.json()["status"] == "pending_employee_confirmation"

    # The employee: opens the link, signs in at the sandbox ESIA as Иванов, allows.
    page.goto(link)
    page.get_by_role("link", name="Подтвердить через Госуслуги").click()
    page.wait_for_url(f"{stack.esia_url}/aas/oauth2/v2/ac?*")
    page.locator(f"button[name=oid][value='{IVANOV}']").click()
    page.locator("button[name=decision][value='allow']").click()
    page.wait_for_url(f"{stack.base}/v/*/result?*")
    assert page.locator("h1").inner_text() == "Данные подтверждены"

    def status() -> str:
        return str(http.get(f"/v1/corporate/sims/{number}", headers=company).json()["status"])

    # Then the worker submits it to the sandbox registry, which accepts it.
    until(lambda: status() == "accepted", "the SIM to be accepted")
    [submission] = httpx.get(f"{stack.registry_url}/sandbox/submissions").json()
    record = submission["record"]
    assert record["msisdn"] == number
    assert record["company_inn"] == COMPANY["inn"]
    assert (record["employee"]["last_name"], record["employee"]["passport_number"]) == ("Иванов", "123456")

    # The company saw every step, signed with its secret.
    def states() -> list[str]:
        return [r["body"]["state"] for r in stack.receiver.received if r["body"]["sim_id"]]

    def delivered() -> bool:
        # Deliveries are due at the database's now(); the app's manual clock must catch up with it.
        stack.clock.set(dt.datetime.now(dt.UTC))
        return "accepted" in states() and len(states()) >= 4

    until(delivered, "the accepted webhook")
    # Delivery is at least once and unordered (the company orders by `version`).
    by_version = sorted((r["body"]["version"], r["body"]["state"]) for r in stack.receiver.received)
    assert [state for _, state in by_version] == [
        "pending_employee_confirmation",
        "pending_submission",
        "submitted",
        "accepted",
    ]
    for delivery in stack.receiver.received:
        signature = delivery["headers"]["x-abonent-signature"]
        stamp = int(signature.split(",")[0].removeprefix("t="))
        assert signature == signature_header(WEBHOOK_SECRET, stamp, delivery["raw"])
        assert delivery["body"]["msisdn"] == number
        # No personal data of the employee goes to the webhook.
        assert "Иванов" not in delivery["raw"].decode()

    # The back office sees the company on its page (signed in as staff or with an admin token).
    overview = http.get("/back-office/corporate")
    assert overview.status_code == 200
    assert COMPANY["name"] in overview.text
    assert "Nobody is over the limit." in overview.text
    assert httpx.get(f"{stack.base}/back-office/corporate").status_code == 401
