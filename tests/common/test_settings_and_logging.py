"""Settings validation names the bad variable; logs never carry phone or passport numbers."""

from __future__ import annotations

import io
import logging

import pytest

from services.common.logging import JsonFormatter, mask_phone, mask_pii
from services.common.settings import SettingsError, load_settings


def test_bad_variable_is_named() -> None:
    with pytest.raises(SettingsError, match="ABONENT_CALLBACK_PORT"):
        load_settings({"ABONENT_CALLBACK_PORT": "eighty"})
    with pytest.raises(SettingsError, match="ABONENT_NOTIFIER_PORT"):
        load_settings({"ABONENT_NOTIFIER_PORT": "70000"})
    with pytest.raises(SettingsError, match="ABONENT_LOG_LEVEL"):
        load_settings({"ABONENT_LOG_LEVEL": "LOUD"})


def test_environment_overrides_defaults() -> None:
    settings = load_settings({"ABONENT_CALLBACK_PORT": "9001", "ABONENT_STREAM_REPLICAS": "3"})
    assert settings.callback_port == 9001
    assert settings.stream_replicas == 3


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("call +7 912 345-67-89 now", "345-67"),
        ("call 89123456789 now", "23456"),
        ("passport 4512 345678 given", "345678"),
    ],
)
def test_masking_hides_personal_data(text: str, hidden: str) -> None:
    assert hidden not in mask_pii(text)


def test_masking_keeps_timestamps_and_ids_readable() -> None:
    text = "at 2026-11-22 11:36:31 request 5f0c2d"
    assert mask_pii(text) == text
    assert mask_phone("+79123456789") == "+7912*****89"


def test_json_log_lines_are_masked() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger("masking-test")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning("dialing +79123456789", extra={"phone": "+79123456789"})
    line = stream.getvalue()
    assert "+79123456789" not in line
    assert '"phone":"+7912*****89"' in line
