"""`python -m services.verification.sandbox_idp --port N --client ID=CERT.pem`: serve the sandbox ESIA."""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from services.verification.sandbox_idp.app import create_sandbox_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.verification.sandbox_idp")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="CLIENT_ID=CERT",
        help="a registered system and its certificate file (PEM or DER; GOST or RSA); repeatable",
    )
    args = parser.parse_args(argv)
    clients: dict[str, bytes] = {}
    for item in args.client:
        client_id, _, path = item.partition("=")
        if not client_id or not path:
            parser.error(f"--client wants CLIENT_ID=CERT, got {item!r}")
        clients[client_id] = Path(path).read_bytes()
    uvicorn.run(create_sandbox_app(clients), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
