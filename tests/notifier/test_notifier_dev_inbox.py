"""The dev inbox in headless Chromium: messages per phone, a receipt button, binding a messenger."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from fakes.asgi import serve_asgi
from support.chromium import CHROMIUM_ARGS, require_chromium
from support.harness import REPO
from support.notifier import PHONE, T0, Harness, requested
from support.polling import until

pytestmark = pytest.mark.browser
ARTIFACTS = REPO / "test-artifacts" / "notifier"


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
            page = await browser.new_page(viewport={"width": 900, "height": 700})
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
