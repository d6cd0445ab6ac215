"""The subscriber's journey in real headless Chromium: link → page → sandbox ESIA sign-in → outcome page.

The sandbox runs as `abonent up` runs it (its dev command, key and settings), the service in process on a
real port with a clock the tests move. A 375 px screenshot of every page, in ru and en, is saved under
the pytest basetemp in verification-screens/ (e.g. /tmp/pt-x/verification-screens/confirmed-ru.png).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from playwright.sync_api import Browser, Page
from support.chromium import require_chromium, sync_browser
from support.harness import TEST_ADMIN_TOKEN, make_settings, migrate_service, spawn, wait_ready_blocking
from support.served import served_in_thread

from services.common.clock import ManualClock
from services.common.embedded import free_port
from services.common.settings import load_section
from services.verification.app import create_app
from services.verification.identity.config import IdentitySettings
from services.verification.sandbox_idp.dev import dev_sandbox
from services.verification.seed import DEMO_CASES
from services.verification.settings import VerificationSettings

pytestmark = pytest.mark.browser

AUTH = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}
WIDTH = 375
IVANOV, PETROVA, SIDOROV = "1000000001", "1000000002", "1000000003"
CONTRACT = {  # the contract data the sandbox person signing in is compared with
    "match": DEMO_CASES[0][1],
    "mismatch": DEMO_CASES[1][1],
    "unconfirmed": DEMO_CASES[2][1],
}
TITLES = {
    "active": ("Подтвердите паспортные данные", "Confirm your passport data"),
    "confirmed": ("Данные подтверждены", "Your data is confirmed"),
    "mismatch": ("Данные не совпали", "The data did not match"),
    "consent_denied": ("Вы не дали согласие", "You did not give consent"),
    "account_not_confirmed": (
        "Учётная запись на Госуслугах не подтверждена",
        "Your Gosuslugi account is not confirmed",
    ),
    "used": ("Ссылка уже использована", "This link has already been used"),
    "forged": ("Ссылка не работает", "This link does not work"),
    "cancelled": ("Проверка отменена", "This check was cancelled"),
    "expired": ("Срок действия ссылки истёк", "This link has expired"),
}
BUTTON = {"ru": "Подтвердить через Госуслуги", "en": "Confirm via Gosuslugi"}

# Contrast of every text element against the first opaque background behind it (WCAG 2.1 AA: 4.5:1),
# whether anything overflows the viewport, and form controls without a label.
AUDIT_SCRIPT = """() => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] === 1)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const lowContrast = [];
  for (const el of document.querySelectorAll('h1, p, a, li, button')) {
    if (!el.textContent.trim()) continue;
    const a = lum(rgb(getComputedStyle(el).color)), b = lum(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) lowContrast.push(el.textContent.trim().slice(0, 40) + ' ' + ratio.toFixed(2));
  }
  const unlabelled = [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
    .filter((el) => !el.labels || el.labels.length === 0).length;
  return {
    lang: document.documentElement.lang,
    title: document.title,
    h1: [...document.querySelectorAll('h1')].map((h) => h.textContent.trim()),
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    nameless: [...document.querySelectorAll('a, button')].filter((el) => !el.textContent.trim()).length,
    links: document.querySelectorAll('a[href]').length,
    lowContrast, unlabelled,
  };
}"""
FOCUS_SCRIPT = """() => {
  const el = document.activeElement;
  const style = getComputedStyle(el);
  return { tag: el.tagName, outline: style.outlineStyle, width: parseFloat(style.outlineWidth) };
}"""


@dataclass
class Stack:
    base: str
    sandbox_url: str
    http: httpx.Client
    clock: ManualClock
    shots: Path

    def open_case(self, contract: str, lang: str) -> tuple[str, str]:
        """A new case with a demo contract for a number of its own; (case id, the subscriber's link)."""
        body = msgspec.to_builtins(CONTRACT[contract])
        body.update(msisdn=f"+7916{random.randrange(10**7):07d}", lang=lang, tz="Europe/Moscow")
        response = self.http.post("/v1/cases", json=body)
        assert response.status_code == 201, response.text
        view = response.json()
        assert view["link"].startswith(f"{self.base}/v/"), view
        return view["id"], view["link"]


@pytest.fixture(scope="module")
def stack(postgres_server: Any, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("verification-browser")
    port = free_port()
    settings = make_settings(
        str(postgres_server.create_database(f"vb_{uuid.uuid4().hex[:12]}")),
        nats_url,
        f"vb{uuid.uuid4().hex[:10]}",
        verification_port=port,
    )
    # Exactly what `abonent up` starts and hands the verification service (services/cli/up.py).
    sandbox = dev_sandbox(folder / "esia-sandbox", "127.0.0.1", free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABONENT_")}
    log = folder / "sandbox.log"
    proc = spawn(sandbox.command[1:], env, log)
    try:
        wait_ready_blocking(sandbox.url, proc, log, what="sandbox")
        identity = load_section(IdentitySettings, sandbox.env)
        # Now, because the sandbox checks the request timestamps against its own wall clock.
        clock = ManualClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
        app = create_app(settings, own=VerificationSettings(), identity=identity, clock=clock)
        with (
            served_in_thread(app, port, before=lambda: migrate_service(settings, "verification")) as base,
            httpx.Client(base_url=base, headers=AUTH, timeout=30) as http,
        ):
            yield Stack(
                base=base,
                sandbox_url=sandbox.url,
                http=http,
                clock=clock,
                shots=tmp_path_factory.mktemp("verification-screens", numbered=False),
            )
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium per module (the sync API holds this thread's event loop while it is open)."""
    yield from sync_browser(require_chromium("VERIFICATION BROWSER TESTS"))


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A phone-sized tab in a fresh context (its own cookies)."""
    context = browser.new_context(viewport={"width": WIDTH, "height": 740}, locale="ru-RU")
    context.set_default_timeout(20_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    # Refused links answer 404/410 on purpose, and Chromium asks every origin for /favicon.ico (neither the
    # pages nor the sandbox have one): only a failed subresource (the stylesheet) is a fault.
    tab.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource")
            else None
        ),
    )
    tab.on(
        "response",
        lambda r: (
            errors.append(f"{r.status} {r.url}")
            if r.status >= 400
            and r.request.resource_type != "document"
            and not r.url.endswith("/favicon.ico")
            else None
        ),
    )
    yield tab
    context.close()
    assert errors == [], errors


def check_page(page: Page, stack: Stack, kind: str, lang: str, name: str) -> None:
    """Our page in this language: the WCAG 2.1 AA basics we can measure, and its screenshot."""
    title = TITLES[kind][0 if lang == "ru" else 1]
    page.screenshot(path=str(stack.shots / f"{name}-{lang}.png"), full_page=True)
    audit = page.evaluate(AUDIT_SCRIPT)
    assert audit["lang"] == lang, audit
    assert audit["h1"] == [title], audit
    assert audit["title"] == title, audit
    assert audit["innerWidth"] == WIDTH, audit
    assert audit["scrollWidth"] <= WIDTH, f"{name}-{lang} scrolls sideways: {audit}"
    assert audit["nameless"] == 0, audit
    assert audit["unlabelled"] == 0, audit
    assert audit["lowContrast"] == [], audit
    if audit["links"]:
        # Keyboard users see where they are: the first Tab lands on a link with a visible outline.
        page.keyboard.press("Tab")
        focus = page.evaluate(FOCUS_SCRIPT)
        assert focus["tag"] == "A", focus
        assert focus["outline"] != "none", focus
        assert focus["width"] >= 2, focus


def sign_in(page: Page, stack: Stack, *, link: str, lang: str, name: str, oid: str, decision: str) -> None:
    """What a person does: open the link, press the button, pick the test person, answer the consent."""
    page.goto(link)
    check_page(page, stack, "active", lang, f"{name}-1-link")
    page.get_by_role("link", name=BUTTON[lang]).click()
    page.wait_for_url(f"{stack.sandbox_url}/aas/oauth2/v2/ac?*")
    page.screenshot(path=str(stack.shots / f"{name}-2-sandbox-login-{lang}.png"), full_page=True)
    page.locator(f"button[name=oid][value='{oid}']").click()
    page.locator(f"button[name=decision][value='{decision}']").wait_for()
    page.screenshot(path=str(stack.shots / f"{name}-3-sandbox-consent-{lang}.png"), full_page=True)
    page.locator(f"button[name=decision][value='{decision}']").click()
    page.wait_for_url(f"{stack.base}/v/*/result?*")


def case_of(stack: Stack, case_id: str) -> dict[str, Any]:
    response = stack.http.get(f"/v1/cases/{case_id}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["case"]
    return result


@pytest.mark.parametrize("lang", ["ru", "en"])
def test_confirmed_then_the_link_is_used(page: Page, stack: Stack, lang: str) -> None:
    case_id, link = stack.open_case("match", lang)
    sign_in(page, stack, link=link, lang=lang, name="confirmed", oid=IVANOV, decision="allow")
    check_page(page, stack, "confirmed", lang, "confirmed-4-outcome")
    assert case_of(stack, case_id)["status"] == "confirmed"
    page.goto(link)
    check_page(page, stack, "used", lang, "used-after-confirmed")
    text = page.locator("main").inner_text()
    assert ("Данные уже подтверждены" if lang == "ru" else "already confirmed") in text


@pytest.mark.parametrize("lang", ["ru", "en"])
def test_mismatch_names_the_fields_never_the_values(page: Page, stack: Stack, lang: str) -> None:
    case_id, link = stack.open_case("mismatch", lang)
    sign_in(page, stack, link=link, lang=lang, name="mismatch", oid=PETROVA, decision="allow")
    check_page(page, stack, "mismatch", lang, "mismatch-4-outcome")
    text = page.locator("main").inner_text()
    assert ("серия и номер паспорта" if lang == "ru" else "passport series and number") in text
    assert "654321" not in text
    assert "4511" not in text
    assert case_of(stack, case_id)["status"] == "mismatch"
    page.goto(link)
    check_page(page, stack, "used", lang, "used-after-mismatch")
    assert ("не совпали" if lang == "ru" else "did not match") in page.locator("main").inner_text()


@pytest.mark.parametrize("lang", ["ru", "en"])
def test_consent_denied_offers_to_try_again(page: Page, stack: Stack, lang: str) -> None:
    case_id, link = stack.open_case("match", lang)
    sign_in(page, stack, link=link, lang=lang, name="consent-denied", oid=IVANOV, decision="deny")
    check_page(page, stack, "consent_denied", lang, "consent-denied-4-outcome")
    assert case_of(stack, case_id)["status"] == "open"
    # Trying again leads back to the sandbox, and this time the person allows it.
    page.get_by_role("link", name="Попробовать ещё раз" if lang == "ru" else "Try again").click()
    page.wait_for_url(f"{stack.sandbox_url}/aas/oauth2/v2/ac?*")
    page.locator(f"button[name=oid][value='{IVANOV}']").click()
    page.locator("button[name=decision][value='allow']").click()
    page.wait_for_url(f"{stack.base}/v/*/result?*")
    check_page(page, stack, "confirmed", lang, "consent-denied-5-retried")


@pytest.mark.parametrize("lang", ["ru", "en"])
def test_account_not_confirmed_says_what_to_do(page: Page, stack: Stack, lang: str) -> None:
    case_id, link = stack.open_case("unconfirmed", lang)
    sign_in(page, stack, link=link, lang=lang, name="account-not-confirmed", oid=SIDOROV, decision="allow")
    check_page(page, stack, "account_not_confirmed", lang, "account-not-confirmed-4-outcome")
    assert ("МФЦ" if lang == "ru" else "MFC") in page.locator("main").inner_text()
    assert case_of(stack, case_id)["status"] == "open"


@pytest.mark.parametrize("lang", ["ru", "en"])
def test_forged_link_is_a_clear_page(page: Page, stack: Stack, lang: str) -> None:
    _case_id, link = stack.open_case("match", lang)
    token = link.rsplit("/", 1)[1]
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    response = page.goto(f"{stack.base}/v/{forged}?lang={lang}")
    assert response is not None
    assert response.status == 404
    check_page(page, stack, "forged", lang, "forged")


@pytest.mark.parametrize("lang", ["ru", "en"])
def test_cancelled_case_link_is_a_clear_page(page: Page, stack: Stack, lang: str) -> None:
    case_id, link = stack.open_case("match", lang)
    cancelled = stack.http.post(f"/v1/cases/{case_id}/cancel", json={"reason": "contract closed"})
    assert cancelled.status_code == 200, cancelled.text
    page.goto(link)
    check_page(page, stack, "cancelled", lang, "cancelled")


@pytest.mark.parametrize("lang", ["ru", "en"])
def test_link_replaced_by_a_reissued_one_is_a_neutral_page(page: Page, stack: Stack, lang: str) -> None:
    case_id, link = stack.open_case("match", lang)
    reissued = stack.http.post(f"/v1/cases/{case_id}/link", json={"reason": "SMS lost"})
    assert reissued.status_code == 200, reissued.text
    page.goto(link)
    check_page(page, stack, "used", lang, "used-replaced")
    assert ("больше не действует" if lang == "ru" else "no longer works") in page.locator("main").inner_text()
    page.goto(reissued.json()["link"])
    check_page(page, stack, "active", lang, "reissued-link")


def test_language_switch_keeps_the_page(page: Page, stack: Stack) -> None:
    _case_id, link = stack.open_case("match", "ru")
    page.goto(link)
    page.get_by_role("link", name="English").click()
    check_page(page, stack, "active", "en", "switched-to")
    page.get_by_role("link", name="Русский").click()
    check_page(page, stack, "active", "ru", "switched-to")


def test_the_whole_flow_works_without_javascript(browser: Browser, stack: Stack) -> None:
    context = browser.new_context(viewport={"width": WIDTH, "height": 740}, java_script_enabled=False)
    context.set_default_timeout(20_000)
    try:
        page = context.new_page()
        case_id, link = stack.open_case("match", "ru")
        page.goto(link)
        page.get_by_role("link", name=BUTTON["ru"]).click()
        page.locator(f"button[name=oid][value='{IVANOV}']").click()
        page.locator("button[name=decision][value='allow']").click()
        page.wait_for_url(f"{stack.base}/v/*/result?*")
        assert page.locator("h1").inner_text() == TITLES["confirmed"][0]
        page.screenshot(path=str(stack.shots / "no-javascript-confirmed-ru.png"), full_page=True)
        assert case_of(stack, case_id)["status"] == "confirmed"
    finally:
        context.close()


# Last in the module: the clock moves past every case's deadline and link grace period.
@pytest.mark.parametrize("lang", ["ru", "en"])
def test_expired_link_is_a_clear_page(page: Page, stack: Stack, lang: str) -> None:
    case_id, link = stack.open_case("match", lang)
    deadline = dt.datetime.fromisoformat(case_of(stack, case_id)["deadline"])
    grace = dt.timedelta(days=VerificationSettings().verification_link_grace_days)
    stack.clock.set(max(stack.clock.now(), deadline + grace + dt.timedelta(days=1)))
    page.goto(link)
    check_page(page, stack, "expired", lang, "expired")
