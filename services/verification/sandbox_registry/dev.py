"""What `abonent up` needs to run the sandbox registry: the command and the env pointing the service at it."""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DevRegistry:
    url: str
    command: list[str]
    env: dict[str, str]


def dev_registry(host: str, port: int, delay_s: float) -> DevRegistry:
    url = f"http://{host}:{port}"
    command = [
        sys.executable,
        "-m",
        "services.verification.sandbox_registry",
        "--host",
        host,
        "--port",
        str(port),
        "--delay-s",
        str(delay_s),
    ]
    return DevRegistry(url=url, command=command, env={"ABONENT_CORPSIM_REGISTRY_URL": url})
