"""The message log per owner: two sites (and verification) message one phone; a view for one of them
shows only its messages, its cost and its recipients, never another's."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec
from support.notifier import BEARER, PHONE, T0, Harness, link_issued, requested
from support.polling import until

OTHER_PHONE = "+79161112233"


async def test_the_log_the_recipient_view_and_the_page_filter_by_tenant(harness: Harness) -> None:
    h = harness
    later = T0 + dt.timedelta(minutes=1)  # another promise, so the texts differ between the sites
    await h.publish(requested(uuid.uuid4()))  # site "shop"
    await h.publish(msgspec.structs.replace(requested(uuid.uuid4(), at=later), site_key="rival"))
    await h.publish(msgspec.structs.replace(requested(uuid.uuid4(), phone=OTHER_PHONE), site_key="rival"))
    await h.publish(link_issued())  # tenant "verification", same phone

    async def all_sent() -> bool:
        return [m["state"] for m in await h.messages()] == ["sent"] * 4

    await until(all_sent)

    everything = (await h.client.get("/v1/messages", headers=BEARER)).json()
    assert sorted(m["tenant"] for m in everything) == ["rival", "rival", "shop", "verification"]
    for tenant, expected in (("shop", 1), ("rival", 2), ("verification", 1), ("nobody", 0)):
        logged = (await h.client.get("/v1/messages", params={"tenant": tenant}, headers=BEARER)).json()
        assert [m["tenant"] for m in logged] == [tenant] * expected

    lookup = await h.client.post("/v1/recipients/lookup", json={"phone": PHONE}, headers=BEARER)
    person = lookup.json()["id"]
    whole = (await h.client.get(f"/v1/recipients/{person}", headers=BEARER)).json()
    assert sorted(m["tenant"] for m in whole["messages"]) == ["rival", "shop", "verification"]
    shop = (await h.client.get(f"/v1/recipients/{person}", params={"tenant": "shop"}, headers=BEARER)).json()
    assert [m["tenant"] for m in shop["messages"]] == ["shop"]
    assert shop["cost_minor"] == shop["messages"][0]["cost_minor"] < whole["cost_minor"]

    page = await h.client.get(f"/back-office/recipients/{person}", params={"tenant": "shop"}, headers=BEARER)
    assert page.status_code == 200
    shop_text = shop["messages"][0]["text"]
    others = [m["text"] for m in whole["messages"] if m["tenant"] != "shop"]
    assert shop_text in page.text
    assert not [text for text in others if text in page.text]

    # The other phone was only ever messaged by "rival": for "shop" it does not exist.
    other = await h.client.post(
        "/v1/recipients/lookup", json={"phone": OTHER_PHONE, "tenant": "shop"}, headers=BEARER
    )
    assert other.status_code == 404
    found = await h.client.post(
        "/v1/recipients/lookup", json={"phone": OTHER_PHONE, "tenant": "rival"}, headers=BEARER
    )
    assert found.status_code == 200
    stranger = found.json()["id"]
    for path in (f"/v1/recipients/{stranger}", f"/back-office/recipients/{stranger}"):
        response = await h.client.get(path, params={"tenant": "shop"}, headers=BEARER)
        assert response.status_code == 404, path
