"""The callback service and the notifier together, as `./dev up` runs them: a request that is never
answered gives the visitor the promise, "calling you now" and a rebooking link, all over NATS."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from support.callback_api import ask, put_site, sign_in_agent
from support.harness import migrate_service
from support.notifier import Harness
from support.polling import until

from services.callback.app import create_app as create_callback_app
from services.callback.settings import CallbackSettings
from services.callback.telephony import CallOutcome, SimulatedPbx
from services.common.settings import Settings

pytestmark = pytest.mark.slow
VISITOR = "+79123450001"


async def test_an_unanswered_callback_request_reaches_the_visitor_three_times(
    settings: Settings, harness_factory: Any
) -> None:
    notifier: Harness = await harness_factory()
    await migrate_service(settings, "callback")
    app = create_callback_app(settings, CallbackSettings(sim_time_scale=0.01))
    async with AsyncTestClient(app=app) as callback:
        pbx = callback.app.state.runtime.extras["dialer"].adapter
        assert isinstance(pbx, SimulatedPbx)
        await put_site(
            callback, retry_policy={"max_attempts": 1, "no_answer_retry_s": 600, "busy_retry_s": 120}
        )
        pbx.script(VISITOR, CallOutcome.VISITOR_NO_ANSWER)
        created = await ask(callback, phone=VISITOR, page_url="https://shop.example/contact")
        assert created.status_code == 201, created.text
        await sign_in_agent(callback)

        async def all_three() -> list[str] | None:
            purposes = [m["purpose"] for m in await notifier.messages() if m["state"] == "sent"]
            return purposes if len(purposes) == 3 else None

        purposes = await until(all_three, timeout=60)
    assert sorted(purposes) == ["callback_calling", "callback_missed", "callback_promise"]
    texts = [r["body"] for r in await notifier.inbox(VISITOR)]
    assert any(t.startswith("We will call you back") for t in texts)
    assert "We are calling you now." in texts
    assert "We could not reach you. Pick a new time: https://shop.example/contact" in texts
