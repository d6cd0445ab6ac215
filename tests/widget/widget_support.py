"""Types shared by the widget tests' fixtures and tests (imported as a top-level module by pytest)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from support.callback_api import ADMIN, site_body


@dataclass
class Stack:
    base: str
    http: httpx.Client
    log: Path

    def put_site(self, key: str, allowed_origins: list[str], **overrides: Any) -> dict[str, Any]:
        body = site_body(
            **{"name": "Widget test shop", "allowed_origins": [self.base, *allowed_origins], **overrides}
        )
        response = self.http.put(f"/v1/admin/sites/{key}", json=body, headers=ADMIN)
        assert response.status_code in (200, 201), response.text
        result: dict[str, Any] = response.json()
        return result

    def ready_agent(self, login: str, queues: list[str]) -> httpx.Client:
        """An agent signed in to the console and Ready (the simulated PBX then waits for its actions)."""
        agent = {"name": "Widget test agent", "password": "agent-password", "queues": queues}
        response = self.http.put(f"/v1/admin/agents/{login}", json=agent, headers=ADMIN)
        assert response.status_code in (200, 201), response.text
        console = httpx.Client(base_url=self.base, timeout=15)
        response = console.post("/agent/login", data={"login": login, "password": "agent-password"})
        assert response.status_code == 303, response.text
        response = console.post("/agent/api/presence", json={"status": "ready"})
        assert response.status_code == 200, response.text
        return console


@dataclass
class HostSite:
    """Serves registered pages from 127.0.0.1:<port>, a different origin from the service."""

    origin: str
    pages: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)

    def page(self, path: str, html: str, headers: dict[str, str] | None = None) -> str:
        self.pages[path] = (html, headers or {})
        return self.origin + path
