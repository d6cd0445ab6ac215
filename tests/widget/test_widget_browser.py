"""The widget in real headless Chromium against the real callback service.

Every state people should look at is saved to test-artifacts/widget/<name>.png.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Browser, FloatRect, Locator, Page, expect
from widget_support import HostSite, Stack

pytestmark = pytest.mark.browser

expect.set_options(timeout=10_000)

# Collects CSP violations and the widget's DOM events before any page script runs.
INIT_SCRIPT = """
window.__csp = [];
window.__events = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__csp.push(e.violatedDirective + ' ' + e.blockedURI);
});
for (const name of ['abonent:submitted', 'abonent:status']) {
  document.addEventListener(name, (e) => window.__events.push({ name, detail: e.detail }));
}
"""
WITHIN = re.compile(r"We'll call you within \d+:\d\d")


class Tab:
    """One page in a fresh browser context, with what went wrong on it."""

    def __init__(self, page: Page, artifacts: Path) -> None:
        self.page = page
        self.artifacts = artifacts
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("console", lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None)

    def w(self, selector: str) -> Locator:
        """An element inside the widget's (open) shadow root."""
        return self.page.locator(f"abonent-widget {selector}")

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.artifacts / f"{name}.png"))

    def shadow_focus(self) -> str:
        """What has focus inside the widget: '#id', '.class' or the tag name; '' when focus is elsewhere."""
        return str(
            self.page.evaluate(
                """() => {
                  const host = document.querySelector('abonent-widget');
                  const el = host && document.activeElement === host ? host.shadowRoot.activeElement : null;
                  if (!el) return '';
                  return el.id ? '#' + el.id : el.name ? '[name=' + el.name + ']' : '.' + el.className;
                }"""
            )
        )

    def events(self, name: str) -> list[Any]:
        return [e["detail"] for e in self.page.evaluate("window.__events") if e["name"] == name]

    def assert_clean(self) -> None:
        assert self.page_errors == []
        assert self.page.evaluate("window.__csp") == []
        assert [m for m in self.console_errors if "Content Security Policy" in m] == []


@contextmanager
def open_tab(browser: Browser, artifacts: Path, **options: Any) -> Iterator[Tab]:
    context = browser.new_context(**{"locale": "en-US", "timezone_id": "Europe/Moscow", **options})
    context.add_init_script(INIT_SCRIPT)
    try:
        yield Tab(context.new_page(), artifacts)
    finally:
        context.close()


def box_of(locator: Locator) -> FloatRect:
    """Where an element is drawn (it must be drawn)."""
    box = locator.bounding_box()
    assert box is not None, locator
    return box


def submit_callback(tab: Tab, digits: str, submit_name: str = "Call me back") -> None:
    tab.w("#ab-phone").press_sequentially(digits)
    tab.w("#ab-consent").check()
    tab.page.get_by_role("dialog").get_by_role("button", name=submit_name).click()


# --- the demo shop ----------------------------------------------------------------------------------------


def test_widget_demo_en_promise_submit_live_status_and_reload(
    browser: Browser, stack: Stack, artifacts: Path
) -> None:
    # The service's real minimum fill time: a fast (test) submit is retried by the widget once it has passed.
    stack.put_site("w-demo-en", [], abuse={"min_fill_ms": 1500})
    with open_tab(browser, artifacts) as tab:
        page = tab.page
        page.goto(f"{stack.base}/demo?lang=en&site_key=w-demo-en")
        fab = page.get_by_role("button", name="Call me back")
        expect(fab).to_be_visible()
        expect(page.locator("h1")).to_have_text("Lighthouse desk lamp")
        tab.shot("demo-en-closed")

        fab.click()
        dialog = page.get_by_role("dialog", name="We'll call you back")
        expect(dialog).to_be_visible()
        expect(dialog).to_have_attribute("aria-modal", "true")
        # The honest promise is on screen before anything is submitted.
        expect(tab.w(".promise")).to_have_text(re.compile(r"We'll call you within \d+ (seconds|minutes?)"))
        phone = page.get_by_label("Your phone number")
        expect(phone).to_be_focused()
        phone.press_sequentially("89123456789")
        expect(phone).to_have_value("+7 (912) 345-67-89")
        page.get_by_label("I agree to the processing of my phone number for this callback").check()
        tab.shot("demo-en-form")

        dialog.get_by_role("button", name="Call me back").click()
        expect(tab.w(".status")).to_have_text(WITHIN)
        expect(tab.w(".sr[aria-live=polite]")).to_have_text(WITHIN)
        expect(dialog.get_by_role("button", name="Cancel the call")).to_be_visible()
        submitted = tab.events("abonent:submitted")
        assert len(submitted) == 1
        assert re.fullmatch(r"[0-9a-f-]{36}", submitted[0]["id"])
        assert any(v["status"] == "scheduled" for v in tab.events("abonent:status"))
        tab.shot("demo-en-status")
        tab.assert_clean()

        # A reload in the same tab keeps the request: the button says so and the dialog shows the status.
        page.reload()
        page.get_by_role("button", name="Your callback").click()
        expect(tab.w(".status")).to_have_text(WITHIN)
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        tab.assert_clean()


def next_weekday(days_ahead: int) -> str:
    day = dt.datetime.now(ZoneInfo("Europe/Moscow")).date() + dt.timedelta(days=days_ahead)
    return ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[day.weekday()]


def test_widget_ru_closed_now_slot_picker_and_cancel(browser: Browser, stack: Stack, artifacts: Path) -> None:
    # Open only in two days, 09:00-18:00 Moscow: the promise is a time, and slots can be chosen.
    stack.put_site("w-demo-ru", [], working_hours={next_weekday(2): [["09:00", "18:00"]]})
    with open_tab(browser, artifacts, locale="ru-RU") as tab:
        page = tab.page
        page.goto(f"{stack.base}/demo?lang=ru&site_key=w-demo-ru")
        page.get_by_role("button", name="Перезвоните мне").click()
        dialog = page.get_by_role("dialog", name="Перезвоним вам")
        expect(tab.w(".promise")).to_have_text(re.compile(r"Перезвоним .*в 09:00 по вашему времени"))
        tab.shot("ru-form-closed-now")

        page.get_by_role("radio", name="В удобное время").check()
        slot = page.get_by_role("combobox", name="Время", exact=True)
        expect(slot).to_be_visible()
        slot.select_option(index=2)
        expect(tab.w(".promise")).to_have_text(re.compile(r"Перезвоним .* с 10:00 до 10:30"))
        page.get_by_label("Ваш номер телефона").press_sequentially("9123456780")
        page.get_by_label(re.compile("Я согласен")).check()
        tab.shot("ru-form-slot")
        dialog.get_by_role("button", name="Перезвоните мне").click()
        expect(tab.w(".status")).to_have_text(re.compile(r"Перезвоним .*10:00"))
        tab.shot("ru-status-scheduled")

        dialog.get_by_role("button", name="Отменить звонок").click()
        expect(tab.w(".status")).to_have_text("Звонок отменён")
        expect(dialog.get_by_role("button", name="Заказать новый звонок")).to_be_visible()
        tab.shot("ru-status-cancelled")
        tab.assert_clean()


def test_widget_keyboard_only(browser: Browser, stack: Stack, artifacts: Path) -> None:
    stack.put_site("w-keys", [])
    with open_tab(browser, artifacts) as tab:
        page = tab.page
        page.goto(f"{stack.base}/demo?lang=en&site_key=w-keys")
        expect(page.get_by_role("button", name="Call me back")).to_be_visible()
        # Tab through the shop page until the widget's button has focus.
        for _ in range(15):
            page.keyboard.press("Tab")
            if tab.shadow_focus() == ".fab":
                break
        else:
            pytest.fail("Tab never reached the widget button")
        page.keyboard.press("Enter")
        dialog = page.get_by_role("dialog", name="We'll call you back")
        expect(dialog).to_be_visible()
        expect(tab.w(".promise")).to_have_text(re.compile("We'll call you within"))
        assert tab.shadow_focus() == "#ab-phone"
        page.keyboard.type("9123456781")

        stops = []
        for _ in range(12):
            page.keyboard.press("Tab")
            stops.append(tab.shadow_focus())
            if stops[-1] == "#ab-consent":
                break
        else:
            pytest.fail(f"Tab never reached the consent box; stops: {stops}")
        assert "[name=website]" not in stops  # the honeypot is not a tab stop
        page.keyboard.press("Space")
        expect(tab.w("#ab-consent")).to_be_checked()
        page.keyboard.press("Tab")
        assert tab.shadow_focus() == ".btn"
        tab.shot("keyboard-form")
        page.keyboard.press("Enter")
        expect(tab.w(".status")).to_have_text(WITHIN)

        # Focus stays inside the open dialog both ways round.
        for key in ["Tab"] * 6 + ["Shift+Tab"] * 6:
            page.keyboard.press(key)
            focused = tab.shadow_focus()
            assert focused in {".x", ".btn2", ".status"}, f"{key} moved focus to {focused!r}"
        tab.shot("keyboard-status")
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        assert tab.shadow_focus() == ".fab"
        # Space opens it again; Esc closes; the JS API works too.
        page.keyboard.press("Space")
        expect(dialog).to_be_visible()
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        page.evaluate("window.Abonent.open()")
        expect(dialog).to_be_visible()
        page.evaluate("window.Abonent.close()")
        expect(dialog).to_be_hidden()
        tab.assert_clean()


def test_widget_mobile_viewport(browser: Browser, stack: Stack, artifacts: Path) -> None:
    stack.put_site("w-mobile", [])
    viewport = {"width": 375, "height": 667}
    mobile = {"viewport": viewport, "is_mobile": True, "has_touch": True, "reduced_motion": "reduce"}
    with open_tab(browser, artifacts, locale="ru-RU", **mobile) as tab:
        page = tab.page
        page.goto(f"{stack.base}/demo?lang=ru&site_key=w-mobile")
        page.get_by_role("button", name="Перезвоните мне").click()
        dialog = page.get_by_role("dialog")
        expect(tab.w(".promise")).to_have_text(re.compile("Перезвоним в течение"))
        # Reduced motion: the sheet appears without sliding in.
        assert dialog.evaluate("e => getComputedStyle(e).animationName") == "none"
        box = box_of(dialog)
        # A full-width bottom sheet that fits the screen.
        assert (box["x"], box["width"]) == (0, 375), box
        assert box["y"] >= 0, box
        assert abs(box["y"] + box["height"] - 667) < 1, box
        no_sideways = "e => e.scrollWidth <= e.clientWidth"
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert dialog.evaluate(no_sideways)
        page.get_by_label("Ваш номер телефона").press_sequentially("9123456782")
        tab.shot("mobile-form")
        tab.w("#ab-consent").check()
        dialog.get_by_role("button", name="Перезвоните мне").click()
        expect(tab.w(".status")).to_have_text(re.compile(r"Перезвоним в течение \d+:\d\d"))
        assert dialog.evaluate(no_sideways)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        tab.shot("mobile-status")
        tab.assert_clean()


def test_widget_invalid_phone_keeps_what_was_typed(browser: Browser, stack: Stack, artifacts: Path) -> None:
    stack.put_site("w-phone", [], allowed_countries=["RU", "DE"])
    with open_tab(browser, artifacts) as tab:
        page = tab.page
        page.goto(f"{stack.base}/demo?lang=en&site_key=w-phone")
        page.get_by_role("button", name="Call me back").click()
        dialog = page.get_by_role("dialog")
        phone = tab.w("#ab-phone")
        error = tab.w("#ab-phone-err")
        submit = dialog.get_by_role("button", name="Call me back")
        tab.w("#ab-consent").check()

        # Too short: caught in the browser.
        phone.press_sequentially("91234")
        submit.click()
        expect(error).to_have_text("Enter the full phone number")
        expect(phone).to_have_attribute("aria-invalid", "true")
        expect(phone).to_have_attribute("aria-describedby", "ab-phone-err")
        expect(phone).to_have_value("+7 (912) 34")
        expect(phone).to_be_focused()

        # Complete but not a number: the server says invalid_phone.
        phone.fill("")
        phone.press_sequentially("0000000000")
        expect(phone).to_have_value("+7 (000) 000-00-00")
        expect(error).to_be_empty()
        submit.click()
        expect(error).to_have_text("This doesn't look like a valid phone number")
        expect(phone).to_have_value("+7 (000) 000-00-00")
        tab.shot("phone-invalid")

        # A Kazakh number on a site that calls Russia and Germany: refused by the country's name.
        phone.fill("")
        phone.press_sequentially("+77011234567")
        expect(phone).to_have_value("+7 (701) 123-45-67")
        submit.click()
        expect(error).to_have_text("We don't call numbers in Kazakhstan")
        expect(phone).to_have_value("+7 (701) 123-45-67")
        tab.shot("phone-country-not-allowed")

        # Other countries are typed freely after a "+", the visitor's own spacing kept.
        phone.fill("")
        phone.press_sequentially("+49 30 1234567")
        expect(phone).to_have_value("+49 30 1234567")
        tab.assert_clean()


def test_widget_rate_limited_says_when_to_retry(browser: Browser, stack: Stack, artifacts: Path) -> None:
    stack.put_site("w-limit", [], abuse={"min_fill_ms": 0, "per_ip_10min": 1})
    # Another request from this machine's address spends the site's per-IP budget.
    token = stack.http.get("/v1/sites/w-limit/offer", params={"tz": "Europe/Moscow"}).json()["form_token"]
    body = {"phone": "+79123450000", "visitor_tz": "Europe/Moscow", "consent": True, "form_token": token}
    assert stack.http.post("/v1/sites/w-limit/callbacks", json=body).status_code == 201
    with open_tab(browser, artifacts) as tab:
        page = tab.page
        page.goto(f"{stack.base}/demo?lang=en&site_key=w-limit")
        page.get_by_role("button", name="Call me back").click()
        expect(tab.w(".promise")).to_have_text(re.compile("We'll call you within"))
        submit_callback(tab, "9123450001")
        expect(tab.w("form .alert")).to_have_text(re.compile(r"Too many requests, try again in 1\d minutes"))
        expect(tab.w("#ab-phone")).to_have_value("+7 (912) 345-00-01")
        tab.shot("rate-limited")
        assert tab.page_errors == []


def test_widget_live_updates_over_sse_and_polling(browser: Browser, stack: Stack, artifacts: Path) -> None:
    stack.put_site("w-live", [])

    def cancel_from_elsewhere(tab: Tab, stream_open: bool = True) -> None:
        if stream_open:
            # The 201 gives the first status; a second one is the stream's first event, so the stream
            # is listening before the change is made.
            tab.page.wait_for_function(
                "() => window.__events.filter((e) => e.name === 'abonent:status').length >= 2",
                timeout=10_000,
            )
        saved = json.loads(tab.page.evaluate("sessionStorage.getItem('abonent:w-live')"))
        response = stack.http.post(f"/v1/callbacks/{saved['id']}/cancel", params={"token": saved["token"]})
        assert response.status_code == 200, response.text

    with open_tab(browser, artifacts) as tab:
        tab.page.goto(f"{stack.base}/demo?lang=en&site_key=w-live")
        tab.page.get_by_role("button", name="Call me back").click()
        expect(tab.w(".promise")).to_have_text(re.compile("We'll call you within"))
        submit_callback(tab, "9123450002")
        expect(tab.w(".status")).to_have_text(WITHIN)
        cancel_from_elsewhere(tab)
        expect(tab.w(".status")).to_have_text("Callback cancelled")  # pushed over SSE
        assert tab.events("abonent:status")[-1]["status"] == "cancelled"
        tab.assert_clean()

    with open_tab(browser, artifacts) as tab:
        # A proxy that breaks event streams: the widget polls every 5 s instead.
        tab.page.route("**/events?*", lambda route: route.abort())
        tab.page.goto(f"{stack.base}/demo?lang=en&site_key=w-live")
        tab.page.get_by_role("button", name="Call me back").click()
        expect(tab.w(".promise")).to_have_text(re.compile("We'll call you within"))
        submit_callback(tab, "9123450003")
        expect(tab.w(".status")).to_have_text(WITHIN)
        cancel_from_elsewhere(tab, stream_open=False)
        expect(tab.w(".status")).to_have_text("Callback cancelled", timeout=12_000)
        assert tab.page_errors == []


# --- on a customer's site (another origin) ------------------------------------------------------------------

HOSTILE_CSS = """
* { all: unset !important; font-size: 2px }
button { display: none !important }
div, p, span, form, label, input, select, h2 { display: none !important }
html body * { visibility: hidden !important; opacity: .05 !important; pointer-events: none !important;
              z-index: -1 !important; position: static !important; transform: scale(.2) !important }
*::before, *::after { content: "!" !important }
body > :last-child, abonent-widget { display: none !important }
"""


def test_widget_survives_hostile_css_without_crypto_subtle(
    browser: Browser, stack: Stack, host_site: HostSite, artifacts: Path
) -> None:
    # Proof of work on, and crypto.subtle missing as on a plain-http page: the built-in SHA-256 must be right.
    stack.put_site("w-hostile", [host_site.origin], abuse={"min_fill_ms": 0, "proof_of_work_bits": 10})
    url = host_site.page(
        "/hostile.html",
        f"""<!doctype html><html lang="en"><head><title>Hostile</title><style>{HOSTILE_CSS}</style></head>
        <body><h1>A site with terrible CSS</h1><button>Buy</button><p>Lorem ipsum</p>
        <script src="{stack.base}/widget/v1/widget.js" data-site-key="w-hostile" async></script>
        </body></html>""",
    )
    with open_tab(browser, artifacts) as tab:
        tab.page.add_init_script(
            "Object.defineProperty(Crypto.prototype, 'subtle', { get: () => undefined })"
        )
        tab.page.goto(url)
        fab = tab.page.get_by_role("button", name="Call me back")
        expect(fab).to_be_visible()
        box = box_of(fab)
        assert box["height"] >= 44, box
        assert box["width"] >= 120, box
        assert fab.evaluate("e => getComputedStyle(e).fontSize") == "15px"
        tab.shot("hostile-closed")
        fab.click()
        dialog = tab.page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        box = box_of(dialog)
        assert box["width"] >= 300, box
        expect(tab.w(".promise")).to_have_text(re.compile("We'll call you within"))
        submit_callback(tab, "9123450004")
        expect(tab.w(".status")).to_have_text(WITHIN)
        tab.shot("hostile-status")
        tab.assert_clean()


def test_widget_under_strict_csp_cross_origin(
    browser: Browser, stack: Stack, host_site: HostSite, artifacts: Path
) -> None:
    stack.put_site("w-csp", [host_site.origin], abuse={"min_fill_ms": 0, "proof_of_work_bits": 14})
    csp = (
        f"default-src 'none'; script-src {stack.base}; connect-src {stack.base}; style-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
        # The loader adds the content-hashed script through the one policy it creates.
        "require-trusted-types-for 'script'; trusted-types abonent-widget"
    )
    url = host_site.page(
        "/csp.html",
        f"""<!doctype html><html lang="en"><head><title>Strict CSP shop</title></head>
        <body><h1>Strict CSP: no inline anything</h1>
        <script src="{stack.base}/widget/v1/widget.js" data-site-key="w-csp" async></script></body></html>""",
        {"Content-Security-Policy": csp},
    )
    with open_tab(browser, artifacts) as tab:
        tab.page.goto(url)
        tab.page.get_by_role("button", name="Call me back").click()
        expect(tab.w(".promise")).to_have_text(re.compile("We'll call you within"))
        tab.shot("csp-form")
        submit_callback(tab, "9123450005")
        expect(tab.w(".status")).to_have_text(WITHIN)
        tab.shot("csp-status")
        tab.assert_clean()
        assert tab.console_errors == []


def test_widget_unavailable_and_offline_keep_the_form_and_the_idempotency_key(
    browser: Browser, stack: Stack, artifacts: Path
) -> None:
    stack.put_site("w-flaky", [])
    with open_tab(browser, artifacts) as tab:
        page = tab.page
        keys: list[str] = []
        page.on(
            "request",
            lambda r: keys.append(r.headers.get("idempotency-key", "")) if r.method == "POST" else None,
        )
        page.route(
            "**/v1/sites/w-flaky/callbacks",
            lambda route: route.fulfill(
                status=503, json={"error": {"code": "unavailable", "message": "down", "field": None}}
            ),
        )
        page.goto(f"{stack.base}/demo?lang=en&site_key=w-flaky")
        page.get_by_role("button", name="Call me back").click()
        expect(tab.w(".promise")).to_have_text(re.compile("We'll call you within"))
        submit_callback(tab, "9123450006")
        alert = tab.w("form .alert")
        # One automatic retry, then plain words; the number stays.
        expect(alert).to_have_text("Our service is unavailable right now, please try again shortly")
        expect(tab.w("#ab-phone")).to_have_value("+7 (912) 345-00-06")
        tab.shot("unavailable")

        page.unroute("**/v1/sites/w-flaky/callbacks")
        page.context.set_offline(True)
        submit = page.get_by_role("dialog").get_by_role("button", name="Call me back")
        submit.click()
        expect(alert).to_have_text("You seem to be offline. Check your connection and try again")
        tab.shot("offline")

        page.context.set_offline(False)
        submit.click()
        expect(tab.w(".status")).to_have_text(WITHIN)
        # Every attempt at this one submission carried the same key, so the server can deduplicate them.
        assert len(keys) == 3, keys
        assert len(set(keys)) == 1, keys
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", keys[0])
        assert tab.page_errors == []


def test_widget_live_call_connected_retry_plan_and_missed(
    browser: Browser, stack: Stack, artifacts: Path
) -> None:
    """A real dial through the simulated PBX, driven by an agent: every status the visitor can see."""
    queue = "w-call-q"  # its own queue: this agent never picks up other tests' requests
    stack.put_site("w-call", [], queue=queue, retry_policy={"max_attempts": 3, "failed_retry_s": 10})
    stack.put_site("w-miss", [], queue=queue, retry_policy={"max_attempts": 1})
    agent = stack.ready_agent("w-agent", [queue])

    def console(action: str) -> None:
        response = agent.post(f"/agent/api/call/{action}")
        assert response.status_code == 200, response.text

    try:
        with open_tab(browser, artifacts) as tab:
            page = tab.page
            status = tab.w(".status")
            detail = tab.w(".detail")
            page.goto(f"{stack.base}/demo?lang=en&site_key=w-call")
            page.get_by_role("button", name="Call me back").click()
            dialog = page.get_by_role("dialog")
            expect(tab.w(".promise")).to_have_text(re.compile("We'll call you within"))
            submit_callback(tab, "9123450007")
            expect(status).to_have_text("Calling you now")
            tab.shot("call-dialing")
            console("answer")
            console("visitor-answer")
            expect(status).to_have_text("Connected")
            tab.shot("call-connected")
            console("hangup")
            expect(status).to_have_text("Thank you for the call!")

            # Again, and this time the call drops before the bridge: a retry is planned and shown.
            agent.post("/agent/api/heartbeat")
            dialog.get_by_role("button", name="Request another call").click()
            expect(tab.w(".promise")).to_have_text(re.compile("We'll call you within"))
            dialog.get_by_role("button", name="Call me back").click()
            expect(status).to_have_text("Calling you now")
            console("hangup")
            expect(status).to_have_text("We couldn't reach you")
            expect(detail).to_have_text(
                re.compile(r"Next try in 0:\d\d\. 2 more tries, the last by \d\d:\d\d")
            )
            tab.shot("call-retry-plan")
            dialog.get_by_role("button", name="Cancel the call").click()
            expect(status).to_have_text("Callback cancelled")
            statuses = [v["status"] for v in tab.events("abonent:status")]
            for seen in ("dialing", "connected", "completed", "scheduled", "cancelled"):
                assert seen in statuses, statuses

            # One attempt only: the visitor is told and picks another time, which becomes a new request.
            agent.post("/agent/api/heartbeat")
            page.goto(f"{stack.base}/demo?lang=en&site_key=w-miss")
            page.get_by_role("button", name="Call me back").click()
            expect(tab.w(".promise")).to_have_text(re.compile("We'll call you within"))
            submit_callback(tab, "9123450008")
            expect(status).to_have_text("Calling you now")
            console("hangup")
            expect(status).to_have_text("We missed you — choose another time")
            dialog.get_by_role("radio", name="At a time that suits me").check()
            dialog.get_by_role("combobox", name="Time").select_option(index=1)
            tab.shot("call-missed")
            dialog.get_by_role("button", name="Call me at this time").click()
            expect(status).to_have_text(re.compile(r"We'll call you .*(at|between) \d\d:\d\d"))
            tab.shot("call-rescheduled")
            assert len(tab.events("abonent:submitted")) == 2
            assert tab.page_errors == []
    finally:
        agent.post("/agent/api/presence", json={"status": "offline"})
        agent.close()


# --- foreign numbers (issue 9 §1) ---------------------------------------------------------------------------


def posted_phones(tab: Tab) -> list[str]:
    """Collects the phone of every callback the page POSTs, as the server receives it."""
    phones: list[str] = []

    def on_request(request: Any) -> None:
        if request.method == "POST" and request.url.endswith("/callbacks"):
            phones.append(json.loads(request.post_data or "{}").get("phone", ""))

    tab.page.on("request", on_request)
    return phones


def test_widget_pasted_foreign_number_keeps_its_country_and_is_refused_by_name(
    browser: Browser, stack: Stack, artifacts: Path
) -> None:
    stack.put_site("w-foreign", [], allowed_countries=["RU"])
    for lang, locale, refusals in (
        (
            "en",
            "en-US",
            {
                "+49 30 12345678": "We don't call numbers in Germany",
                "+1 202 555 0123": "We don't call numbers in the United States",
            },
        ),
        ("ru", "ru-RU", {"+49 30 12345678": "Мы не звоним на номера в Германии"}),
    ):
        with open_tab(browser, artifacts, locale=locale) as tab:
            phones = posted_phones(tab)
            page = tab.page
            page.goto(f"{stack.base}/demo?lang={lang}&site_key=w-foreign")
            page.get_by_role("button", name=re.compile("Call me back|Перезвоните мне")).click()
            expect(tab.w(".promise")).not_to_have_text(re.compile("Checking|Проверяем"))
            # One country only: no picker.
            expect(tab.w("#ab-cc")).to_have_count(0)
            phone = tab.w("#ab-phone")
            tab.w("#ab-consent").check()
            for pasted, refusal in refusals.items():
                phone.fill("")
                phone.focus()
                page.keyboard.insert_text(pasted)  # what a paste delivers: one input event
                # Not turned into a Russian "+7 (493) 012-34-56" (a stranger's number).
                expect(phone).to_have_value(pasted)
                tab.w("form:has(#ab-phone) > .btn").click()
                expect(tab.w("#ab-phone-err")).to_have_text(refusal)
                expect(phone).to_have_value(pasted)
                expect(phone).to_have_attribute("aria-invalid", "true")
                tab.shot(f"foreign-refused-{lang}-{pasted[1:3].strip()}")
            assert phones == ["+" + re.sub(r"\D", "", p) for p in refusals], phones
            # A Russian number typed the usual way still gets the RU mask.
            phone.fill("")
            phone.press_sequentially("89123456789")
            expect(phone).to_have_value("+7 (912) 345-67-89")
            tab.assert_clean()


def test_widget_country_picker_and_plus_one_on_a_multi_country_site(
    browser: Browser, stack: Stack, artifacts: Path
) -> None:
    stack.put_site("w-world", [], allowed_countries=["RU", "DE", "US"])
    with open_tab(browser, artifacts) as tab:
        phones = posted_phones(tab)
        page = tab.page
        page.goto(f"{stack.base}/demo?lang=en&site_key=w-world")
        page.get_by_role("button", name="Call me back").click()
        expect(tab.w(".promise")).to_have_text(re.compile("We'll call you within"))
        picker = page.get_by_role("combobox", name="Country")
        expect(picker).to_have_value("RU")
        assert picker.locator("option").all_inner_texts() == ["+7 Russia", "+49 Germany", "+1 United States"]
        phone = tab.w("#ab-phone")
        expect(phone).to_have_attribute("placeholder", "+7 (___) ___-__-__")
        # A German number typed the national way, after picking Germany.
        picker.select_option("DE")
        expect(phone).to_be_focused()
        expect(phone).to_have_attribute("placeholder", "+49")
        phone.press_sequentially("030 12345678")
        expect(phone).to_have_value("030 12345678")
        tab.w("#ab-consent").check()
        tab.shot("picker-germany")
        tab.w("form:has(#ab-phone) > .btn").click()
        expect(tab.w(".status")).to_have_text(WITHIN)
        assert phones == ["+4903012345678"]
        tab.assert_clean()

    with open_tab(browser, artifacts) as tab:
        phones = posted_phones(tab)
        page = tab.page
        page.goto(f"{stack.base}/demo?lang=en&site_key=w-world")
        page.get_by_role("button", name="Call me back").click()
        expect(tab.w(".promise")).to_have_text(re.compile("We'll call you within"))
        picker = page.get_by_role("combobox", name="Country")
        phone = tab.w("#ab-phone")
        # "+" then the number: the picker follows the calling code.
        phone.press_sequentially("+1 202 555 0123")
        expect(phone).to_have_value("+1 202 555 0123")
        expect(picker).to_have_value("US")
        # Switching the picker swaps the calling code and keeps the rest.
        picker.select_option("DE")
        expect(phone).to_have_value("+49 202 555 0123")
        picker.select_option("US")
        expect(phone).to_have_value("+1 202 555 0123")
        tab.w("#ab-consent").check()
        tab.shot("picker-plus-one")
        tab.w("form:has(#ab-phone) > .btn").click()
        expect(tab.w(".status")).to_have_text(WITHIN)
        assert phones == ["+12025550123"]
        tab.shot("plus-one-accepted")
        tab.assert_clean()


# --- page styles do not leak in (issue 9 §15) --------------------------------------------------------------

SHIFTING_PAGES = {
    "rtl-transformed-body": """<!doctype html><html lang="en" dir="rtl"><head><title>RTL shop</title><style>
      html { direction: rtl }
      body { transform: translateX(25vw) scale(.6); height: 3000px; margin: 0 }
    </style></head><body><h1>متجر</h1><p>A right-to-left page whose body is transformed.</p>""",
    "transformed-html": """<!doctype html><html lang="en"><head><title>Odd shop</title><style>
      html { transform: translateY(-400px) rotate(2deg); filter: blur(0); contain: paint }
      body { will-change: transform; perspective: 100px }
    </style></head><body><h1>Transforms everywhere</h1>""",
}


@pytest.mark.parametrize("name", sorted(SHIFTING_PAGES))
def test_widget_stays_in_the_viewport_ltr_whatever_the_page_does(
    browser: Browser, stack: Stack, host_site: HostSite, artifacts: Path, name: str
) -> None:
    key = f"w-{name}"
    stack.put_site(key, [host_site.origin])
    url = host_site.page(
        f"/{name}.html",
        SHIFTING_PAGES[name]
        + f'<script src="{stack.base}/widget/v1/widget.js" data-site-key="{key}" async></script>'
        + "</body></html>",
    )
    viewport = {"width": 1024, "height": 700}
    with open_tab(browser, artifacts, viewport=viewport) as tab:
        page = tab.page
        page.goto(url)
        fab = page.get_by_role("button", name="Call me back")
        expect(fab).to_be_visible()
        box = box_of(fab)
        # Bottom-right, 20 px from the edges, as designed, and not scaled.
        assert abs(viewport["width"] - (box["x"] + box["width"]) - 20) < 1, box
        assert abs(viewport["height"] - (box["y"] + box["height"]) - 20) < 1, box
        assert box["height"] >= 50, box
        # Left to right inside: the icon comes before the words.
        icon = box_of(tab.w(".fab svg"))
        words = box_of(tab.w(".fab span"))
        assert icon["x"] < words["x"], (icon, words)
        assert fab.evaluate("e => getComputedStyle(e).direction") == "ltr"
        # Clickable where it is drawn: nothing of the page sits above it.
        assert page.evaluate(
            "([x, y]) => document.elementFromPoint(x, y) === document.querySelector('abonent-widget')",
            [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2],
        )
        tab.shot(f"{name}-closed")
        fab.click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        expect(tab.w(".promise")).to_have_text(re.compile("We'll call you within"))
        box = box_of(dialog)
        assert box["x"] >= 0, box
        assert box["y"] >= 0, box
        assert abs(viewport["width"] - (box["x"] + box["width"]) - 20) < 1, box
        assert box["width"] >= 300, box
        title = box_of(tab.w(".title"))
        close = box_of(tab.w(".x"))
        assert title["x"] < close["x"], (title, close)
        tab.shot(f"{name}-open")
        tab.assert_clean()


# --- loader, hashed script, caching and encodings (issue 9 §14) ------------------------------------------


def test_widget_loader_adds_the_hashed_script_with_cache_headers(
    browser: Browser, stack: Stack, artifacts: Path
) -> None:
    stack.put_site("w-cache", [])
    with open_tab(browser, artifacts) as tab:
        responses: dict[str, Any] = {}
        tab.page.on("response", lambda r: responses.setdefault(r.url, r) if "/widget/" in r.url else None)
        tab.page.goto(f"{stack.base}/demo?lang=en&site_key=w-cache")
        expect(tab.page.get_by_role("button", name="Call me back")).to_be_visible()
        loader = responses[f"{stack.base}/widget/v1/widget.js"]
        hashed = [url for url in responses if re.search(r"/widget/v1/widget\.[0-9a-f]{16}\.js$", url)]
        assert len(hashed) == 1, list(responses)
        script = responses[hashed[0]]
        loader_headers = loader.all_headers()
        script_headers = script.all_headers()
        assert loader_headers["cache-control"] == "public, max-age=300"
        assert script_headers["cache-control"] == "public, max-age=31536000, immutable"
        for headers in (loader_headers, script_headers):
            assert headers["content-type"] == "text/javascript; charset=utf-8"
            assert headers["vary"] == "Accept-Encoding"
            assert headers["content-encoding"] == "br"  # Chromium accepts brotli; served pre-compressed
        # The widget runs from the hashed script, configured by the loader's tag.
        assert tab.page.evaluate(
            "document.querySelector('script[src*=\"/widget/v1/widget.\"][data-site-key]').dataset.siteKey"
        ) in ("w-cache",)
        tab.assert_clean()

    # Revalidation against the real service: the loader answers 304 to its ETag, per encoding.
    for encoding in ("gzip", "identity"):
        first = stack.http.get("/widget/v1/widget.js", headers={"Accept-Encoding": encoding})
        again = stack.http.get(
            "/widget/v1/widget.js",
            headers={"Accept-Encoding": encoding, "If-None-Match": first.headers["etag"]},
        )
        assert again.status_code == 304, again.headers
        assert again.headers["etag"] == first.headers["etag"]
    path = re.sub(r"^https?://[^/]+", "", hashed[0])
    assert path in stack.http.get("/widget/v1/widget.js").text
