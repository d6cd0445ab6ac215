"""Three (or more) nats-server processes clustered with JetStream, each killable and restartable in place."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path

import httpx

from services.common.embedded import free_port, nats_server_binary


class ClusterNode:
    """One nats-server of the cluster: fixed client, route and monitoring ports and its own store, so a
    restart after SIGKILL comes back as the same member with what it had written to disk."""

    def __init__(self, name: str, data_dir: Path, cluster_name: str) -> None:
        self.name = name
        self.data_dir = data_dir
        self.cluster_name = cluster_name
        self.port = free_port()
        self.route_port = free_port()
        self.http_port = free_port()
        self.peers: list[ClusterNode] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def route_url(self) -> str:
        return f"nats://127.0.0.1:{self.route_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        routes = ",".join(peer.route_url for peer in self.peers if peer is not self)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    nats_server_binary(),
                    "-js",
                    "-a", "127.0.0.1",
                    "-p", str(self.port),
                    "-m", str(self.http_port),
                    "-sd", str(self.data_dir),
                    "--server_name", self.name,
                    "--cluster_name", self.cluster_name,
                    "--cluster", self.route_url,
                    "--routes", routes,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye to the peers (what a node crash or an OOM kill looks like)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 15) -> None:
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def healthy(self) -> bool:
        """The server's own health check: listening, routed, and JetStream (meta and streams) current."""
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=2).status_code == 200
        return False

    def wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.name} exited; see {self.log}")
            if self.healthy():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not healthy within {timeout}s; see {self.log}")


class NatsCluster:
    """`size` JetStream servers routed to each other on loopback ports."""

    def __init__(self, root: Path, size: int = 3, cluster_name: str = "abonent") -> None:
        self.nodes = [ClusterNode(f"n{i + 1}", root / f"n{i + 1}", cluster_name) for i in range(size)]
        for node in self.nodes:
            node.peers = self.nodes

    @property
    def urls(self) -> str:
        """All client URLs, comma-separated: what ABONENT_NATS_URL holds in a cluster."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> ClusterNode:
        (found,) = (node for node in self.nodes if node.name == name)
        return found

    def start(self, timeout: float = 90) -> NatsCluster:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_healthy(timeout)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
