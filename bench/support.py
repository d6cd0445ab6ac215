"""Shared bench helpers: the machine and commit a run is recorded with, percentiles, the report file, and a
service started as its own process (as a container runs it) against the bench's embedded servers."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
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


# --- shared by the benches: flags, CPU meters, load from another process, flame graphs ------------------

FLAMES = REPO / "docs" / "bench"


def bench_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The flags every bench takes: --quick (a short smoke run, minutes → seconds), --no-report (print
    only: a run on a busy machine should not land in docs/benchmarks.md) and --no-profile."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a short smoke run with small counts")
    parser.add_argument(
        "--no-report", action="store_true", help="print the table but do not append it to docs/benchmarks.md"
    )
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the py-spy flame graph of the slowest path"
    )
    return parser.parse_args(argv)


def report(title: str, body: str, args: argparse.Namespace) -> None:
    """Print the run and append it to docs/benchmarks.md unless --no-report."""
    print(body)
    if not args.no_report:
        append_report(title, body)


def process_cpu(root: int, *, with_children: bool = False) -> dict[int, float]:
    """User+system CPU seconds of process `root` (and, with_children, of each direct child: PostgreSQL's
    backends under the postmaster) by pid, from /proc; empty where there is no /proc."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    found: dict[int, float] = {}
    proc = Path("/proc")
    for entry in proc.iterdir() if (proc / "self" / "stat").exists() else []:
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            # Fields after the ")" closing the command name: state ppid ... utime(14) stime(15).
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            pid, ppid = int(entry.name), int(fields[1])
            if pid == root or (with_children and ppid == root):
                found[pid] = (int(fields[11]) + int(fields[12])) / tick
    return found


def cpu_seconds(root: int, *, with_children: bool = False) -> float:
    """Throughput on a shared machine swings with the neighbours; CPU per request does much less."""
    return sum(process_cpu(root, with_children=with_children).values())


class CpuMeter:
    """CPU seconds spent by named processes between start() and stop(): {"service": pid, ...}; a name
    ending in "+" (like "postgres+") counts the process's direct children too.

    Counted per process: a backend that started meanwhile counts from zero; one that ended meanwhile
    counts nothing (its last figures are gone), so a delta is never negative."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, dict[int, float]] = {}
        self.used: dict[str, float] = {}
        self._started_at = 0.0
        self.elapsed = 0.0

    def _sample(self) -> dict[str, dict[int, float]]:
        return {
            name.rstrip("+"): process_cpu(pid, with_children=name.endswith("+"))
            for name, pid in self.pids.items()
        }

    def start(self) -> None:
        self._start = self._sample()
        self._started_at = time.perf_counter()

    def stop(self) -> dict[str, float]:
        self.elapsed = time.perf_counter() - self._started_at
        self.used = {
            name: sum(max(seconds - self._start[name].get(pid, 0.0), 0.0) for pid, seconds in now.items())
            for name, now in self._sample().items()
        }
        return self.used

    def per(self, count: int) -> str:
        """ "service 3.1 ms, postgres 1.2 ms" per unit of work."""
        return ", ".join(
            f"{name} {seconds / max(count, 1) * 1000:.2f} ms" for name, seconds in self.used.items()
        )


def _run_coroutine(target: Callable[..., Coroutine[Any, Any, Any]], args: tuple[Any, ...]) -> Any:
    return asyncio.run(target(*args))


async def in_load_process(target: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """Run `target(*args)` (a module-level coroutine function; picklable arguments) in a fresh process and
    return its result: the load generator's own CPU is then not the service's or this process's.

    The process is spawned (no inherited event loop or connections) and imports `target`'s module anew."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        future = pool.submit(_run_coroutine, target, args)
        result: T = await asyncio.wrap_future(future)
        return result


@contextlib.asynccontextmanager
async def flame_graph(
    pid: int, name: str, *, enabled: bool = True, rate: int = 50, out: Path | None = None
) -> AsyncIterator[Path | None]:
    """A py-spy flame graph (SVG) of process `pid` for as long as the block runs, saved as `out` (by
    default docs/bench/<name>.svg next to the report); yields that path (None when disabled or py-spy is
    missing).

    py-spy samples from outside (no change to the service, `--nonblocking` so the service is not paused),
    at `rate` Hz, and writes the file when interrupted."""
    py_spy = Path(sys.executable).with_name("py-spy")
    if not enabled or not py_spy.exists():
        yield None
        return
    out = out or FLAMES / f"{name}.svg"
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        str(py_spy),
        "record",
        "--nonblocking",
        "--rate",
        str(rate),
        "--pid",
        str(pid),
        "--output",
        str(out),
        "--format",
        "flamegraph",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield out
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes the graph on Ctrl-C
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            err = b""
        if not out.exists():
            print(f"py-spy wrote no flame graph: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
        else:
            strip_local_paths(out)


def strip_local_paths(svg: Path) -> None:
    """py-spy titles the graph with its command line: paths of this checkout become relative ones, so a
    committed graph carries nothing of the machine it was recorded on."""
    text = svg.read_text()
    svg.write_text(text.replace(f"{REPO}/", ""))


def flame_note(path: Path | None, what: str) -> str:
    """The report's line pointing at a flame graph (relative to docs/benchmarks.md), or nothing."""
    if path is None or not path.exists():
        return ""
    return f"Profile of {what}: [{path.name}](bench/{path.name}) (py-spy, 50 Hz, service process)."
