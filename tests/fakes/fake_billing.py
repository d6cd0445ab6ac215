"""A billing system's webhook receiver: records every POST (headers and JSON body) and acks with 200."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fakes.asgi import Receive, Scope, Send, read_body


@dataclass
class FakeBilling:
    received: list[dict[str, Any]] = field(default_factory=list)
    # Answer this status to the next N posts (to exercise retries), then 200.
    fail_next: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status = 200
        if self.fail_next > 0:
            self.fail_next -= 1
            status = 503
        else:
            self.received.append({"headers": headers, "body": json.loads(body), "raw": body})
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    def commands(self) -> list[tuple[str, str]]:
        return [(r["body"]["command"], r["body"]["case_id"]) for r in self.received]
