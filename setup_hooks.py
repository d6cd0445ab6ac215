"""Build step for the wheel: the widget's sources become package data (services/callback/widget_dist)."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# What services/callback/widget_assets.py reads, relative to widget/ (a checkout) or widget_dist/ (a wheel).
WIDGET_FILES = ("src/widget.js", "src/widget.css", "demo/shop.css")


class BuildPy(build_py):
    """build_py that also copies widget/ into the built package.

    The widget lives beside services/ because it is a front-end project of its own; a wheel has no
    "beside", so the files travel inside services.callback. A checkout (and an editable install) keeps
    reading widget/ itself, so an edit shows up without a build step.
    """

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install serves the checkout's widget/ directly
        target = Path(self.build_lib) / "services" / "callback" / "widget_dist"
        for relative in WIDGET_FILES:
            source = ROOT / "widget" / relative
            if not source.is_file():
                raise FileNotFoundError(f"{source} is missing: the wheel must carry the widget")
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
