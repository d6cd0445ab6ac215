"""Callback's own settings section: same ABONENT_* names, bad values stop `abonent run`/`up` by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from support.harness import REPO

from services.callback.app import SPEC
from services.callback.settings import CallbackSettings
from services.common.settings import Settings, SettingsError, load_section


def test_callback_section_reads_its_variables() -> None:
    section = load_section(
        CallbackSettings,
        {
            "ABONENT_TELEPHONY": "asterisk",
            "ABONENT_ARI_URL": "http://pbx:8088",
            "ABONENT_ARI_USER": "abonent",
            "ABONENT_SIM_TIME_SCALE": "0.5",
            "ABONENT_OFFER_RATE_LIMIT_PER_MINUTE": "30",
        },
    )
    assert section.telephony == "asterisk"
    assert section.sim_time_scale == 0.5
    assert section.offer_rate_limit_per_minute == 30
    config = section.telephony_config()
    assert config.asterisk is not None
    assert config.asterisk.base_url == "http://pbx:8088"
    assert config.mango is None


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"ABONENT_TELEPHONY": "fax"}, "ABONENT_TELEPHONY"),
        ({"ABONENT_SIM_TIME_SCALE": "fast"}, "ABONENT_SIM_TIME_SCALE"),
        ({"ABONENT_SIM_TIME_SCALE": "0"}, "ABONENT_SIM_TIME_SCALE"),
        ({"ABONENT_TELEPHONY": "asterisk"}, "ABONENT_ARI_URL"),
        ({"ABONENT_TELEPHONY": "mango", "ABONENT_MANGO_API_KEY": "k"}, "ABONENT_MANGO_API_SALT"),
        ({"ABONENT_OFFER_RATE_LIMIT_PER_MINUTE": "0"}, "ABONENT_OFFER_RATE_LIMIT_PER_MINUTE"),
    ],
)
def test_bad_callback_value_names_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_section(CallbackSettings, environ)


def test_sections_never_share_a_variable() -> None:
    shared = {field.name for field in msgspec.structs.fields(Settings)}
    own = {field.name for field in msgspec.structs.fields(CallbackSettings)}
    assert not shared & own
    assert SPEC.settings_section is CallbackSettings
    # Telephony no longer sits in the settings every service shares.
    assert not {"telephony", "ari_url", "mango_api_key", "sim_manual", "public_callback_url"} & shared


def test_misspelt_override_is_refused() -> None:
    with pytest.raises(SettingsError, match="sim_manul"):
        load_section(CallbackSettings, {}, sim_manul=True)


@pytest.mark.parametrize("command", [["run", "callback"], ["up"]])
def test_cli_stops_on_a_bad_callback_value(command: list[str], tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "ABONENT_DATA_DIR": str(tmp_path / "data"),
        "ABONENT_TELEPHONY": "fax",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *command],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "configuration error: ABONENT_TELEPHONY" in done.stderr
    # Stopped before starting anything: no embedded server data was created.
    assert not (tmp_path / "data" / "postgres").exists()
