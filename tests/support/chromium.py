"""Headless Chromium for browser tests: where it is, how to start it, and what happens without it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# What Chromium needs to start headless on a machine with no network and no GPU (GUIDE.md, section 3).
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("ABONENT_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_chromium(suite: str) -> str:
    """The Chromium binary; without one the suite fails under CI (CI installs it) and is skipped, saying
    so loudly, on a developer's machine."""
    path = chromium_path()
    if path is None:
        reason = (
            f"{suite} NOT RUN: headless Chromium not found at /usr/bin/chromium "
            "(install it with `apt-get install -y chromium`, or point ABONENT_CHROMIUM at a binary)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path
