"""`python -m services.verification.sandbox_registry --port N --delay-s S`: serve the sandbox registry."""

from __future__ import annotations

import argparse

import uvicorn

from services.verification.sandbox_registry.app import create_registry_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.verification.sandbox_registry")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--delay-s", type=float, default=2.0, help="seconds before a record is decided")
    args = parser.parse_args(argv)
    uvicorn.run(
        create_registry_app(delay_s=args.delay_s), host=args.host, port=args.port, log_level="warning"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
