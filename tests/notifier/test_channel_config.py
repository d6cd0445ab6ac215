"""ChannelSettings stops start-up naming the variable when a channel is unknown or lacks its credentials."""

from __future__ import annotations

import pytest

from services.common.settings import SettingsError, load_section
from services.notifier.channels.config import ChannelSettings


def test_defaults_run_only_the_sandbox() -> None:
    assert load_section(ChannelSettings, {}).enabled() == ["sandbox"]


def test_unknown_channel_is_named() -> None:
    with pytest.raises(SettingsError, match="ABONENT_NOTIFY_CHANNELS: unknown channel pigeon"):
        load_section(ChannelSettings, {"ABONENT_NOTIFY_CHANNELS": "telegram, pigeon"})


def test_enabled_channel_needs_its_credentials() -> None:
    with pytest.raises(SettingsError, match="ABONENT_TELEGRAM_BOT_TOKEN is required when telegram"):
        load_section(ChannelSettings, {"ABONENT_NOTIFY_CHANNELS": "telegram"})
    settings = load_section(
        ChannelSettings,
        {
            "ABONENT_NOTIFY_CHANNELS": "telegram,sandbox",
            "ABONENT_TELEGRAM_BOT_TOKEN": "123:abc",
            "ABONENT_TELEGRAM_WEBHOOK_SECRET": "s3cret",
        },
    )
    assert settings.enabled() == ["telegram", "sandbox"]


def test_bad_number_is_named() -> None:
    with pytest.raises(SettingsError, match="ABONENT_SMPP_PORT"):
        load_section(ChannelSettings, {"ABONENT_SMPP_PORT": "many"})


async def test_build_channels_builds_what_is_enabled() -> None:
    import httpx

    from services.notifier.channels.config import build_channels

    env = {
        "ABONENT_NOTIFY_CHANNELS": "sms_ru,smsc,smpp,telegram,max,sandbox",
        "ABONENT_SMS_RU_API_ID": "k",
        "ABONENT_SMSC_PASSWORD": "p",
        "ABONENT_SMS_RECEIPT_SECRET": "s",
        "ABONENT_SMPP_HOST": "127.0.0.1",
        "ABONENT_SMPP_SYSTEM_ID": "abonent",
        "ABONENT_TELEGRAM_BOT_TOKEN": "1:t",
        "ABONENT_TELEGRAM_WEBHOOK_SECRET": "w",
        "ABONENT_MAX_BOT_TOKEN": "m",
        "ABONENT_MAX_WEBHOOK_SECRET": "w",
    }
    async with httpx.AsyncClient() as http:
        channels = build_channels(load_section(ChannelSettings, env), http)
        assert [(c.name, c.kind) for c in channels] == [
            ("sms_ru", "sms"),
            ("smsc", "sms"),
            ("smpp", "sms"),
            ("telegram", "messenger"),
            ("max", "messenger"),
        ]
        for channel in channels:
            await channel.close()
