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
