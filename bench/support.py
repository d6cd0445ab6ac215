"""Shared bench helpers: the machine and commit a run is recorded with, percentiles, the report file, and a
service started as its own process (as a container runs it) against the bench's embedded servers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "docs" / "benchmarks.md"
_REPORT_HEADER = (
    "# Benchmarks\n\nEvery run of `./dev bench`, newest last; each figure sits beside a baseline"
    " measured in the same run.\n"
)


def machine() -> str:
    """OS, CPU count and model, Python: enough to tell two runs' machines apart."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    cpu = f"{os.cpu_count()} CPU ({model or platform.machine()})"
    # Other work on the machine skews absolutes (ratios less): say how busy it was.
    load = "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{platform.system()} {platform.release()}, {cpu}, Python {platform.python_version()}, {load}"


def commit() -> str:
    """The checkout's short commit, with +dirty when the working tree has changes."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of `values`; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def append_report(title: str, body: str) -> None:
    """Append one run (title, date, commit, machine, then `body`) to docs/benchmarks.md."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if not REPORT.exists():
        REPORT.write_text(_REPORT_HEADER)
    with REPORT.open("a") as report:
        report.write(f"\n## {title} ({stamp}, commit {commit()})\n\nMachine: {machine()}.\n\n{body}\n")


def service_env(**values: str) -> dict[str, str]:
    """This process's environment without any ABONENT_* of the caller's, plus `values`, with this checkout
    first on the path (so its `services` is imported, not the venv's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABONENT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.update(values)
    return env


def start_service(service: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """The real service process, as deployed: `python -m services.cli run <service> --migrate`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", service, "--migrate"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else ""


async def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60.0) -> None:
    """Until GET /health/ready answers 200; exits with the log's tail if the process dies or never is."""
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit("service exited:\n" + tail(log))
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{base}/health/ready")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise SystemExit(f"service not ready after {timeout_s:.0f} s:\n" + tail(log))


async def stop_service(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """SIGTERM (a graceful stop), then SIGKILL if it overruns."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        await asyncio.to_thread(proc.wait, timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        await asyncio.to_thread(proc.wait)
