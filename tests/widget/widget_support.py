"""Types shared by the widget tests' fixtures and tests (imported as a top-level module by pytest)."""

from __future__ import annotations

import time
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

    def agent_on_a_long_call(self, login: str, queue: str, site_key: str) -> httpx.Client:
        """An agent of `queue` at work but busy: Ready, dialed for a request of `site_key`, then talking
        (the manual simulated PBX keeps the call up until someone hangs up). A promise comes only from
        agents really there, so this is what lets the queue's visitors be promised "as soon as possible"
        while their requests stay waiting (no Ready agent to dial them) for the widget to show."""
        self.put_site(site_key, [], queue=queue)
        console = self.ready_agent(login, [queue])
        offer = self.http.get(f"/v1/sites/{site_key}/offer", params={"tz": "Europe/Moscow"})
        assert offer.status_code == 200, offer.text
        body = {
            "phone": "+7 912 345-00-00",
            "visitor_tz": "Europe/Moscow",
            "consent": True,
            "form_token": offer.json()["form_token"],
            "lang": "en",
        }
        created = self.http.post(f"/v1/sites/{site_key}/callbacks", json=body, headers={"Origin": self.base})
        assert created.status_code == 201, created.text
        # The dispatcher reserves the agent and dials their leg; it rings until answered (manual PBX).
        deadline = time.monotonic() + 60
        while console.post("/agent/api/call/answer").status_code != 200:
            assert time.monotonic() < deadline, "the agent was never dialed"
            console.post("/agent/api/heartbeat")
            time.sleep(0.3)
        answered = console.post("/agent/api/call/visitor-answer")
        assert answered.status_code == 200, answered.text
        return console


@dataclass
class HostSite:
    """Serves registered pages from 127.0.0.1:<port>, a different origin from the service."""

    origin: str
    pages: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)

    def page(self, path: str, html: str, headers: dict[str, str] | None = None) -> str:
        self.pages[path] = (html, headers or {})
        return self.origin + path
