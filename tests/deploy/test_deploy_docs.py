"""docs/deploy.md keeps up with the code: every setting the services declare and every vendored CRD."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import msgspec

from services.common.settings import ENV_PREFIX, SERVICE_NAMES, SettingsSection

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "deploy.md").read_text()


def _sections() -> set[type[SettingsSection]]:
    """Every settings section class, after importing each service (sections live beside their code)."""
    for name in SERVICE_NAMES:
        importlib.import_module(f"services.{name}.app")
    found: set[type[SettingsSection]] = set()
    pending = list(SettingsSection.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls.__module__.startswith("services.") and cls not in found:
            found.add(cls)
            pending.extend(cls.__subclasses__())
    return found


def test_every_setting_is_documented() -> None:
    names = {ENV_PREFIX + field.name.upper() for cls in _sections() for field in msgspec.structs.fields(cls)}
    assert len(names) > 50  # the sections were found
    missing = sorted(name for name in names if f"`{name}`" not in DOC)
    assert not missing, f"docs/deploy.md does not describe: {missing}"


def test_every_vendored_crd_is_named_with_its_version() -> None:
    for path in (Path(__file__).resolve().parent / "crds").glob("*.json"):
        crd = json.loads(path.read_text())
        project = crd["source"].rsplit("/", 1)[1]
        assert f"{project} {crd['version']}" in DOC, (crd["kind"], project, crd["version"])
