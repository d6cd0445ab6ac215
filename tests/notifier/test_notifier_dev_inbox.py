"""The dev inbox in headless Chromium: messages per phone, a receipt button, binding a messenger."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from fakes.asgi import serve_asgi
from support.chromium import CHROMIUM_ARGS, require_chromium
from support.harness import REPO
from support.notifier import BEARER, PHONE, T0, Harness, requested
from support.polling import until

ARTIFACTS = REPO / "test-artifacts" / "notifier"


async def test_the_dev_inbox_needs_the_back_office_sign_in(harness: Harness) -> None:
    h = harness
    await h.publish(requested(uuid.uuid4(), lang="en"))
    message = await h.message("callback_promise", "sent")
    [sms] = await h.inbox(PHONE)

    anonymous = await h.client.get("/dev/inbox")
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/auth/sign-in?next=%2Fdev%2Finbox"
    for path, form in (
        ("/dev/inbox/receipts", {"provider_message_id": sms["provider_message_id"], "status": "delivered"}),
        ("/dev/inbox/bind", {"phone": PHONE}),
        ("/dev/inbox/stop", {"phone": PHONE}),
    ):
        assert (await h.client.post(path, data=form)).status_code == 401, path
    assert (await h.inbox(PHONE))[0]["status"] == "sent"
    assert await h.conn.fetchval("select count(*) from bindings") == 0

    signed_in = await h.client.get("/dev/inbox", headers=BEARER)
    assert signed_in.status_code == 200
    assert "We will call you back" in signed_in.text
    await h.receipt(sms["provider_message_id"])
    assert "delivered" in await h.timeline(message["id"])


@pytest.mark.browser
async def test_dev_inbox_shows_the_phone_and_sends_receipts_and_binds(harness: Harness) -> None:
    from playwright.async_api import async_playwright

    executable = require_chromium("DEV INBOX BROWSER TEST")
    h = harness
    await h.publish(requested(uuid.uuid4(), lang="en"))
    await h.message("callback_promise", "sent")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with serve_asgi(h.app) as base, async_playwright() as pw:  # type: ignore[arg-type]
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            # Signed in as the back office's other pages are (here by the test's admin token).
            page = await browser.new_page(viewport={"width": 900, "height": 700}, extra_http_headers=BEARER)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{base}/dev/inbox")
            phone = page.locator(f'section.phone[data-phone="{PHONE}"]')
            await phone.locator(".sms .bubble").first.wait_for()
            assert "We will call you back" in await phone.locator(".sms .bubble").first.inner_text()

            # The person binds the pretend messenger; the next message arrives there.
            await phone.get_by_role("button", name="bind messenger").click()
            await page.wait_for_url(f"{base}/dev/inbox")
            await h.publish(requested(uuid.uuid4(), at=T0 + dt.timedelta(minutes=1), lang="en"))

            async def chat_arrived() -> bool:
                return len(await h.inbox("chat:" + PHONE)) == 1

            await until(chat_arrived)
            await page.reload()
            bubble = phone.locator(".chat .bubble").first
            await bubble.get_by_role("button", name="delivered").click()
            await page.wait_for_url(f"{base}/dev/inbox")
            assert "delivered" in await phone.locator(".chat .bubble .meta").first.inner_text()
            await page.screenshot(path=str(ARTIFACTS / "dev_inbox.png"), full_page=True)
            assert errors == []
        finally:
            await browser.close()
    delivered = [m for m in await h.messages("callback_promise") if m["state"] == "delivered"]
    assert len(delivered) == 1
    assert "delivered" in await h.timeline(delivered[0]["id"])
