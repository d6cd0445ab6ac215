"""Headless Chromium for browser tests: where it is, how to start it, and what happens without it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def sync_browser(executable: str) -> Iterator[Any]:
    """A headless Chromium through Playwright's sync API, for a module-scoped fixture to yield from.

    Module scope, not session: the sync API keeps an event loop running in this thread while it is open,
    and async tests that run after it (pytest-asyncio) would find that loop and fail. A plain launch runs
    on a fresh temporary profile that Playwright creates and deletes itself."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
