"""A process supervisor for fault tests: PostgreSQL, NATS and each service as child processes, restarted
when they die the way Kubernetes restarts a container (with a capped back-off), and killable on purpose.

A child is SIGKILLed with its whole process group (a container's cgroup dies as one: PostgreSQL's backends
go with the postmaster). A failpoint can be armed for a child's next start only (ABONENT_FAILPOINTS): the
process dies at that step once and its restart runs clean, as a crash-looping pod's fixed successor would.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from support.harness import REPO
from support.nats_cluster import ClusterNode

from services.common.embedded import EmbeddedPostgres, free_port, nats_server_binary

# Restart back-off: Kubernetes waits 10 s, doubling to 5 min; scaled down so a test sees several cycles.
BACKOFF_FIRST_S = 0.3
BACKOFF_MAX_S = 4.0
# A child that ran this long without dying gets its back-off reset (Kubernetes: 10 min).
BACKOFF_RESET_AFTER_S = 10.0
WATCH_INTERVAL_S = 0.2


def _die_with_parent() -> None:
    # Between fork and exec: if the test process dies, nothing it supervised outlives it.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass(eq=False)
class Child:
    """One supervised process: how to start it, where it logs, how to tell it is ready."""

    name: str
    command: list[str]
    env: dict[str, str]
    log: Path
    ready_url: str = ""  # GET answering 200 = ready (a service's /health/ready)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0  # deliberate SIGKILLs
    crashes: int = 0  # exits nobody asked for (failpoints, start-up failures)
    armed: str = ""  # failpoint for the next start only
    hold_until: float = 0.0  # the supervisor leaves it down until then (monotonic)
    stopping: bool = False
    started_at: float = 0.0
    backoff_s: float = BACKOFF_FIRST_S
    dead_since: float = 0.0  # when the watcher first found it dead (0: not dead)
    killed: bool = False  # the last exit was our SIGKILL (a failpoint's SIGKILL is a crash)
    history: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def launch(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            return subprocess.Popen(
                self.command,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,  # its own process group: a kill takes every process it forked
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads in the child before exec
            )

    def start(self) -> None:
        env = dict(self.env)
        if self.armed:
            env["ABONENT_FAILPOINTS"] = self.armed
            self.history.append(f"start armed {self.armed}")
            self.armed = ""
        self.proc = self.launch(env)
        self.starts += 1
        self.started_at = time.monotonic()
        self.dead_since = 0.0
        self.killed = False

    def kill(self) -> None:
        """SIGKILL the child's process group: no flush, no goodbye (an OOM kill or a node loss)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.kills += 1
        self.killed = True

    def stop(self, timeout: float = 20) -> None:
        self.stopping = True
        if not self.running:
            return
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    async def ready(self, http: httpx.AsyncClient) -> bool:
        if not self.running:
            return False
        if not self.ready_url:
            return True
        with contextlib.suppress(httpx.HTTPError):
            return (await http.get(self.ready_url, timeout=2)).status_code == 200
        return False

    def tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""


class PostgresChild(Child):
    """PostgreSQL from the pgserver wheel on a fixed port and data folder: a restart after SIGKILL runs crash
    recovery on the same files, as a pod with its volume does."""

    def __init__(self, name: str, data_dir: Path) -> None:
        self.server = EmbeddedPostgres(data_dir, port=free_port(), fsync=True)
        super().__init__(name=name, command=[], env={}, log=self.server.log)

    @property
    def url(self) -> str:
        return self.server.url

    def launch(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        # Blocks until it accepts connections (crash recovery included); the watcher runs it in a thread.
        try:
            self.server.start()
        except Exception:
            # Started but never ready: not left running beside the next try on the same port and files.
            if self.server.proc is not None and self.server.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.server.proc.pid, signal.SIGKILL)
                self.server.proc.wait()
            raise
        assert self.server.proc is not None
        return self.server.proc


class NatsChild(Child):
    """One nats-server: alone (fixed port and store), or a member of a NatsCluster (its ports, store and
    routes; restarted in place it rejoins as the same member with what it had written)."""

    def __init__(self, name: str, data_dir: Path, node: ClusterNode | None = None) -> None:
        self.node = node
        self.port = node.port if node else free_port()
        command = [
            nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(data_dir),
            "--server_name", node.name if node else name,
        ]  # fmt: skip
        if node is not None:
            routes = ",".join(peer.route_url for peer in node.peers if peer is not node)
            command += ["-m", str(node.http_port), "--cluster_name", node.cluster_name,
                        "--cluster", node.route_url, "--routes", routes]  # fmt: skip
        data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            name=name,
            command=command,
            env={},
            log=node.log if node else data_dir.parent / f"{name}.log",
            # A cluster member is ready once routed and current (its own health check); one node can only
            # be lost at a time, so the next fault waits for this.
            ready_url=f"http://127.0.0.1:{node.http_port}/healthz" if node else "",
        )

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


def service_child(name: str, service: str, env: dict[str, str], log: Path, port: int) -> Child:
    """`abonent run <service> --migrate`, as a container runs it, with this checkout's code first."""
    env = {
        **env,
        f"ABONENT_{service.upper()}_PORT": str(port),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
    }
    return Child(
        name=name,
        command=[sys.executable, "-m", "services.cli", "run", service, "--migrate"],
        env=env,
        log=log,
        ready_url=f"http://127.0.0.1:{port}/health/ready",
    )


class Supervisor:
    """Starts children in order, restarts any that dies (unless held down or stopping), stops them in
    reverse order. `watch()` is the restart loop; run it as a task."""

    def __init__(self) -> None:
        self.children: dict[str, Child] = {}
        self._order: list[str] = []
        self._stop = asyncio.Event()
        self.watching = False
        self.events: list[str] = []
        self._t0 = time.monotonic()

    def add(self, child: Child) -> Child:
        self.children[child.name] = child
        self._order.append(child.name)
        return child

    def __getitem__(self, name: str) -> Child:
        return self.children[name]

    def note(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self._t0:.0f}s {what}")

    async def start(self, names: Sequence[str], timeout: float = 120) -> None:
        """Start these children and wait until each is ready (a service's readiness needs its servers)."""
        for name in names:
            await asyncio.to_thread(self.children[name].start)
        await self.wait_ready(names, timeout)

    async def wait_ready(self, names: Sequence[str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as http:
            for name in names:
                child = self.children[name]
                while not await child.ready(http):
                    if not self.watching and child.proc is not None and child.proc.poll() is not None:
                        raise AssertionError(f"{name} exited ({child.proc.returncode}):\n{child.tail()}")
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{name} not ready within {timeout:.0f}s:\n{child.tail()}")
                    await asyncio.sleep(0.2)

    def kill(self, name: str, *, down_for_s: float = 0.0) -> None:
        """SIGKILL a child; the watcher restarts it after its back-off (and after `down_for_s`)."""
        child = self.children[name]
        child.hold_until = time.monotonic() + down_for_s
        child.kill()
        self.note(f"kill {name}")

    def arm(self, name: str, failpoint: str) -> None:
        """Restart the child now with a failpoint armed: it dies there once, then runs clean."""
        child = self.children[name]
        child.armed = failpoint
        child.backoff_s = 0.0  # a deliberate restart, not a crash loop
        child.kill()
        self.note(f"arm {name} at {failpoint}")

    async def watch(self) -> None:
        """The restart loop (a kubelet's): each dead child comes back after its back-off."""
        self.watching = True
        while not self._stop.is_set():
            for name in self._order:
                child = self.children[name]
                if child.stopping or child.proc is None or child.running:
                    continue
                now = time.monotonic()
                if child.dead_since == 0.0:
                    child.dead_since = now
                if child.started_at and child.dead_since - child.started_at > BACKOFF_RESET_AFTER_S:
                    child.backoff_s = BACKOFF_FIRST_S
                if now < max(child.hold_until, child.dead_since) + child.backoff_s:
                    continue
                if not child.killed:
                    child.crashes += 1
                child.backoff_s = min(max(child.backoff_s * 2, BACKOFF_FIRST_S), BACKOFF_MAX_S)
                try:
                    await asyncio.to_thread(child.start)
                except Exception as exc:  # a failed start is one more crash; the loop tries again
                    child.crashes += 1
                    self.note(f"{name} failed to start: {exc!r}")
                    child.dead_since = time.monotonic()
                    continue
                self.note(f"restart {name}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), WATCH_INTERVAL_S)

    def stop_watching(self) -> None:
        self._stop.set()

    def stop_all(self) -> None:
        self._stop.set()
        for name in reversed(self._order):
            self.children[name].stop()
