"""Per-IP budgets behind a proxy: X-Forwarded-For counts only from peers in ABONENT_TRUSTED_PROXIES."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from support.callback_api import ask, put_site
from support.harness import running_service

from services.common.settings import Settings, SettingsError

ONE_PER_IP = {"min_fill_ms": 0, "per_ip_10min": 1, "per_phone_day": 50, "daily_cap": 100}


@pytest.mark.parametrize(
    ("trusted", "forwarded_counts"),
    [
        pytest.param({}, True, id="loopback-proxy-trusted-by-default"),
        pytest.param({"ABONENT_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.7"}, False, id="peer-not-trusted"),
    ],
)
async def test_forwarded_client_counts_only_from_a_trusted_proxy(
    settings: Settings, tmp_path: Path, trusted: dict[str, str], forwarded_counts: bool
) -> None:
    async with (
        running_service(settings, "callback", tmp_path, **trusted) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        await put_site(http, abuse=ONE_PER_IP)
        first = await ask(http, phone="+79123456789", headers={"X-Forwarded-For": "203.0.113.10"})
        assert first.status_code == 201, first.text
        # Another visitor behind the same proxy (we are the proxy: the peer is 127.0.0.1).
        second = await ask(http, phone="+79990001122", headers={"X-Forwarded-For": "203.0.113.20"})
        if forwarded_counts:
            assert second.status_code == 201, "each visitor has a budget of their own"
            # The same visitor again is over their budget.
            third = await ask(http, phone="+79990003344", headers={"X-Forwarded-For": "203.0.113.10"})
            assert third.status_code == 429, third.text
        else:
            # An untrusted peer's header is ignored: both requests come from the peer's one address.
            assert second.status_code == 429, second.text
            assert second.json()["error"]["code"] == "rate_limited"


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    assert Settings(trusted_proxies="10.0.0.0/8, ::1,*").trusted_proxy_list() == ["10.0.0.0/8", "::1", "*"]
    with pytest.raises(SettingsError, match="ABONENT_TRUSTED_PROXIES"):
        Settings(trusted_proxies="ingress.local")
