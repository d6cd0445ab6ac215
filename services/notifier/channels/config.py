"""Which delivery channels run and with what credentials: the ChannelSettings section and build_channels."""

from __future__ import annotations

from typing import Final

import httpx

from services.common.settings import SettingsError, SettingsSection, env_name
from services.notifier.channels.base import Channel, ReceiptSink

# Channels this module builds; "sandbox" is built by the engine itself (it needs its database).
PROVIDER_CHANNELS: Final = ("sms_ru", "smsc", "smpp", "telegram", "max")
KNOWN_CHANNELS: Final = (*PROVIDER_CHANNELS, "sandbox")


class ChannelSettings(SettingsSection, kw_only=True, frozen=True):
    """Provider endpoints and credentials (ABONENT_* like every section); only the notifier reads it."""

    # Comma-separated channels to run: sms_ru, smsc, smpp, telegram, max, sandbox.
    notify_channels: str = "sandbox"
    # Default SMS sender (alpha name registered with the operators); "" lets the gateway pick its default.
    sms_sender: str = ""
    # Seconds an HTTP provider call may take before it counts as a (transient) timeout.
    channel_http_timeout_s: float = 10.0
    # SMS.ru-style gateway.
    sms_ru_url: str = "https://sms.ru"
    sms_ru_api_id: str = ""
    # SMS per SMS.ru request (1 to 100, SMS.ru's limit): due messages go out together, each number with
    # its own text (`to[<number>]=<text>`). 1: one request per SMS.
    sms_ru_batch: int = 100
    # SMSC.ru-style gateway: login + password, or an empty login and the API key as the password.
    smsc_url: str = "https://smsc.ru"
    smsc_login: str = ""
    smsc_password: str = ""
    # SMPP 3.4 (bind_transceiver).
    smpp_host: str = ""
    smpp_port: int = 2775
    smpp_system_id: str = ""
    smpp_password: str = ""
    smpp_system_type: str = ""
    # submit_sm PDUs in flight without their response; the SMSC's agreed window.
    smpp_window: int = 10
    smpp_enquire_link_s: float = 30.0
    # Telegram Bot API.
    telegram_api_url: str = "https://api.telegram.org"
    telegram_bot_token: str = ""
    telegram_bot_username: str = ""
    # Compared with X-Telegram-Bot-Api-Secret-Token on every webhook call (set it in setWebhook).
    telegram_webhook_secret: str = ""
    # MAX bot API.
    max_api_url: str = "https://platform-api.max.ru"
    max_bot_token: str = ""
    max_bot_username: str = ""
    # Compared with X-Max-Bot-Api-Secret on every webhook call (set it in POST /subscriptions).
    max_webhook_secret: str = ""
    # Key of the HMAC that SMS gateways' delivery-report URLs carry (receipt_path() builds them).
    sms_receipt_secret: str = ""

    def enabled(self) -> list[str]:
        return [part.strip() for part in self.notify_channels.split(",") if part.strip()]

    def __post_init__(self) -> None:
        enabled = self.enabled()
        unknown = sorted(set(enabled) - set(KNOWN_CHANNELS))
        if unknown:
            raise SettingsError(
                f"{env_name('notify_channels')}: unknown channel {', '.join(unknown)}"
                f" (known: {', '.join(KNOWN_CHANNELS)})"
            )
        # An enabled channel's credentials are checked at start-up, not at the first message hours later.
        required = {
            "sms_ru": ("sms_ru_api_id", "sms_receipt_secret"),
            "smsc": ("smsc_password", "sms_receipt_secret"),
            "smpp": ("smpp_host", "smpp_system_id"),
            "telegram": ("telegram_bot_token", "telegram_webhook_secret"),
            "max": ("max_bot_token", "max_webhook_secret"),
        }
        for channel in enabled:
            for name in required.get(channel, ()):
                if not getattr(self, name):
                    raise SettingsError(f"{env_name(name)} is required when {channel} is enabled")
        for name in ("sms_ru_url", "smsc_url", "telegram_api_url", "max_api_url"):
            if not getattr(self, name).startswith(("http://", "https://")):
                raise SettingsError(f"{env_name(name)} must be an http(s) URL")
        if not 0 < self.smpp_port < 65536:
            raise SettingsError(f"{env_name('smpp_port')} must be a TCP port, got {self.smpp_port}")
        if not 1 <= self.sms_ru_batch <= 100:
            raise SettingsError(f"{env_name('sms_ru_batch')} must be 1 to 100, got {self.sms_ru_batch}")
        if self.smpp_window < 1:
            raise SettingsError(f"{env_name('smpp_window')} must be at least 1, got {self.smpp_window}")
        for name in ("smpp_enquire_link_s", "channel_http_timeout_s"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{env_name(name)} must be positive")


def build_channels(
    settings: ChannelSettings, http: httpx.AsyncClient, receipt_sink: ReceiptSink | None = None
) -> list[Channel]:
    """The enabled provider adapters (not the sandbox), sharing the service's httpx client.

    SMPP receipts arrive on its session, not over HTTP: they go to `receipt_sink`. Call `start()` on
    an SmppChannel (it binds in the background) and `close()` on every channel at shutdown.

    Imported here, not at the top: each adapter module pulls its own libraries, and a deployment that
    runs only the sandbox should not need them to import this module.
    """
    from services.notifier.channels.max import MaxChannel
    from services.notifier.channels.smpp import SmppChannel
    from services.notifier.channels.sms_http import SmscChannel, SmsRuChannel
    from services.notifier.channels.telegram import TelegramChannel

    channels: list[Channel] = []
    enabled = settings.enabled()
    timeout = settings.channel_http_timeout_s
    if "sms_ru" in enabled:
        channels.append(
            SmsRuChannel(
                http,
                base_url=settings.sms_ru_url,
                api_id=settings.sms_ru_api_id,
                sender=settings.sms_sender,
                timeout_s=timeout,
                batch_limit=settings.sms_ru_batch,
            )
        )
    if "smsc" in enabled:
        channels.append(
            SmscChannel(
                http,
                base_url=settings.smsc_url,
                login=settings.smsc_login,
                password=settings.smsc_password,
                sender=settings.sms_sender,
                timeout_s=timeout,
            )
        )
    if "smpp" in enabled:
        channels.append(
            SmppChannel(
                host=settings.smpp_host,
                port=settings.smpp_port,
                system_id=settings.smpp_system_id,
                password=settings.smpp_password,
                system_type=settings.smpp_system_type,
                sender=settings.sms_sender,
                window=settings.smpp_window,
                enquire_link_s=settings.smpp_enquire_link_s,
                receipt_sink=receipt_sink,
            )
        )
    if "telegram" in enabled:
        channels.append(
            TelegramChannel(
                http, base_url=settings.telegram_api_url, token=settings.telegram_bot_token, timeout_s=timeout
            )
        )
    if "max" in enabled:
        channels.append(
            MaxChannel(http, base_url=settings.max_api_url, token=settings.max_bot_token, timeout_s=timeout)
        )
    return channels
