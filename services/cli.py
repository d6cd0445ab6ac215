"""The `abonent` command: `up` (everything, embedded servers), `run <service>`, `migrate`, `dead-letters`."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import httpx

from services.common import bus as busmod
from services.common import db, deadletters
from services.common.embedded import EmbeddedNats, EmbeddedPostgres
from services.common.logging import configure_logging
from services.common.migrate import discover, migrate
from services.common.settings import (
    SERVICE_NAMES,
    ServiceName,
    Settings,
    SettingsError,
    get_settings,
    load_settings,
)
from services.common.web import ServiceSpec


def service_spec(name: ServiceName) -> ServiceSpec:
    module = importlib.import_module(f"services.{name}.app")
    return cast(ServiceSpec, module.SPEC)


async def migrate_all(
    settings: Settings, names: Sequence[ServiceName] = SERVICE_NAMES
) -> dict[str, list[str]]:
    applied: dict[str, list[str]] = {}
    for name in names:
        spec = service_spec(name)
        applied[name] = await migrate(settings.database_url, name, discover(spec.migrations_dir))
    return applied


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = get_settings()
    if not settings.database_url:
        print("ABONENT_DATABASE_URL is not set", file=sys.stderr)
        return 2
    for name, versions in asyncio.run(migrate_all(settings, args.services or SERVICE_NAMES)).items():
        print(f"{name}: {len(versions)} applied" + (f" ({', '.join(versions)})" if versions else ""))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import uvicorn

    settings = get_settings()
    name: ServiceName = args.service
    configure_logging(name, settings.log_level, settings.log_format)
    if args.migrate:
        asyncio.run(migrate_all(settings, [name]))
    module = importlib.import_module(f"services.{name}.app")
    app = module.create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port_of(name),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=15,
        proxy_headers=True,
    )
    return 0


def _parse_refs(refs: Sequence[str], default_service: str | None) -> list[tuple[str | None, int]]:
    """`callback:17` or `17` (then --service, or every service that has that id)."""
    parsed: list[tuple[str | None, int]] = []
    for ref in refs:
        service, _, number = ref.rpartition(":")
        if not number.isdigit() or (service and service not in SERVICE_NAMES):
            raise ValueError(f"not a dead letter id: {ref!r} (expected <service>:<id> or <id>)")
        parsed.append((service or default_service, int(number)))
    return parsed


async def _dead_letters(args: argparse.Namespace, settings: Settings) -> int:
    services: Sequence[str] = [args.service] if args.service else SERVICE_NAMES
    conns: dict[str, db.Connection] = {}
    try:
        for name in services:
            conn = await db.connect(settings.database_url, name)
            if await deadletters.has_dead_letters(conn):
                conns[name] = conn
            else:
                await conn.close()
        if args.action == "list":
            letters = [
                letter
                for name, conn in conns.items()
                for letter in await deadletters.find(conn, name, consumer=args.consumer, limit=args.limit)
            ]
            _print_dead_letters(letters)
            return 0
        if args.all:
            targets = [
                letter
                for name, conn in conns.items()
                for letter in await deadletters.find(
                    conn, name, consumer=args.consumer, only_not_replayed=True
                )
            ]
        else:
            targets = []
            for service, number in _parse_refs(args.ids, args.service):
                found = [
                    letter
                    for name, conn in conns.items()
                    if service in (None, name)
                    for letter in await deadletters.find(conn, name, ids=[number])
                ]
                if len(found) != 1:
                    what = "no" if not found else "more than one (name the service)"
                    print(f"{service or ''}:{number}: {what} dead letter with that id", file=sys.stderr)
                    return 1
                targets += found
        bus = await busmod.connect(settings.nats_url, "abonent-dead-letters", settings.nats_namespace)
        failed = 0
        try:
            for letter in targets:
                try:
                    await deadletters.replay(conns[letter.schema], bus, letter)
                    print(f"replayed {letter.ref} ({letter.consumer}, event {letter.event_id or '-'})")
                except Exception as exc:
                    failed += 1
                    print(f"could not replay {letter.ref}: {exc}", file=sys.stderr)
        finally:
            await bus.close()
        print(f"{len(targets) - failed} replayed, {failed} failed")
        return 1 if failed else 0
    finally:
        for open_conn in conns.values():
            await open_conn.close()


def _print_dead_letters(letters: Sequence[deadletters.DeadLetter]) -> None:
    rows = [("ID", "CONSUMER", "EVENT", "DELIVERIES", "DEAD SINCE (UTC)", "REPLAYED (UTC)", "REASON")]
    for letter in letters:
        replayed = (
            f"{letter.replay_count}x, last {letter.replayed_at:%Y-%m-%d %H:%M:%S}"
            if letter.replay_count
            else "-"
        )
        rows.append(
            (
                letter.ref,
                letter.consumer,
                letter.event_id or "-",
                str(letter.deliveries),
                f"{letter.created_at:%Y-%m-%d %H:%M:%S}",
                replayed,
                letter.reason.replace("\n", " ")[:120],
            )
        )
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join([*(cell.ljust(width[i]) for i, cell in enumerate(row[:-1])), row[-1]]))
    print(f"{len(letters)} dead letter(s)")


def cmd_dead_letters(args: argparse.Namespace) -> int:
    settings = get_settings()
    if not settings.database_url or not settings.nats_url:
        print("ABONENT_DATABASE_URL and ABONENT_NATS_URL must be set", file=sys.stderr)
        return 2
    if args.action == "replay" and not (args.ids or (args.all and args.consumer)):
        print("replay needs dead letter ids, or --all with --consumer", file=sys.stderr)
        return 2
    if args.action == "replay" and args.ids and args.all:
        print("give ids or --all, not both", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_dead_letters(args, settings))
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2


def _ensure_data_key(data_dir: Path) -> str:
    """A dev-only key kept in the data folder, so encrypted personal data survives restarts."""
    key_file = data_dir / "data.key"
    if not key_file.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
        key_file.chmod(0o600)
    return key_file.read_text().strip()


def _wait_ready(urls: dict[str, str], timeout: float = 30.0) -> dict[str, bool]:
    deadline = time.monotonic() + timeout
    ready = dict.fromkeys(urls, False)
    with httpx.Client(timeout=1.0) as client:
        while not all(ready.values()) and time.monotonic() < deadline:
            for name, base in urls.items():
                if ready[name]:
                    continue
                with contextlib.suppress(httpx.HTTPError):
                    ready[name] = client.get(f"{base}/health/ready").status_code == 200
            time.sleep(0.2)
    return ready


def cmd_up(args: argparse.Namespace) -> int:
    settings = get_settings()
    data_dir = Path(settings.data_dir).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    started_at = time.monotonic()
    postgres: EmbeddedPostgres | None = None
    nats: EmbeddedNats | None = None
    children: dict[str, subprocess.Popen[bytes]] = {}
    stop_requested = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        overrides: dict[str, object] = {}
        if not settings.database_url:
            postgres = EmbeddedPostgres(data_dir / "postgres").start()
            overrides["database_url"] = postgres.url
        if not settings.nats_url:
            nats = EmbeddedNats(data_dir / "nats").start()
            overrides["nats_url"] = nats.url
        if not settings.data_key:
            overrides["data_key"] = _ensure_data_key(data_dir)
        settings = load_settings(None, **overrides)
        asyncio.run(migrate_all(settings))
        urls: dict[str, str] = {
            name: f"http://{settings.host}:{settings.port_of(name)}" for name in SERVICE_NAMES
        }
        seeded: list[tuple[str, str]] = []
        for name in SERVICE_NAMES:
            seed = service_spec(name).dev_seed
            if seed is not None:
                seeded += asyncio.run(seed(settings, urls[name]))

        env = dict(os.environ)
        env.update(
            {
                "ABONENT_DATABASE_URL": settings.database_url,
                "ABONENT_NATS_URL": settings.nats_url,
                "ABONENT_DATA_KEY": settings.data_key,
                "ABONENT_LOG_FORMAT": os.environ.get("ABONENT_LOG_FORMAT", "text"),
            }
        )
        for name in SERVICE_NAMES:
            # Own session: Ctrl-C reaches only us, so we stop services before the servers they use.
            children[name] = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "run", name], env=env, start_new_session=True
            )
        ready = _wait_ready(urls)
        elapsed = time.monotonic() - started_at
        rows = [("service", "url", "status")]
        rows += [(n, u, "ready" if ready[n] else "NOT READY") for n, u in urls.items()]
        rows += [(f"{n} API docs", f"{u}/schema/swagger", "") for n, u in urls.items()]
        rows += [
            (label, f"{urls[n]}{path}", "") for n in SERVICE_NAMES for label, path in service_spec(n).links
        ]
        rows += [(label, value, "") for label, value in seeded]
        rows += [
            ("postgres", settings.database_url, "embedded" if postgres else "external"),
            ("nats", settings.nats_url, "embedded" if nats else "external"),
        ]
        width = [max(len(r[i]) for r in rows) for i in range(3)]
        print()
        for row in rows:
            print("  " + "  ".join(cell.ljust(width[i]) for i, cell in enumerate(row)))
        print(
            f"\n  {'All services ready' if all(ready.values()) else 'Some services are NOT ready'}"
            f" in {elapsed:.1f}s. Data in {data_dir}. Ctrl-C stops everything.\n",
            flush=True,
        )
        if not all(ready.values()):
            return 1
        while not stop_requested:
            for child_name, child in children.items():
                if child.poll() is not None:
                    print(
                        f"{child_name} exited with {child.returncode}; stopping everything", file=sys.stderr
                    )
                    return 1
            time.sleep(0.3)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for child in children.values():
            if child.poll() is None:
                child.terminate()
        for child in children.values():
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if nats is not None:
            nats.stop()
        if postgres is not None:
            postgres.stop()
        print("Stopped.", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="abonent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start PostgreSQL, NATS and every service (embedded unless URLs are set)")
    run = sub.add_parser("run", help="run one service (as a container would)")
    run.add_argument("service", choices=SERVICE_NAMES)
    run.add_argument("--migrate", action="store_true", help="apply this service's migrations first")
    mig = sub.add_parser("migrate", help="apply migrations")
    mig.add_argument("services", nargs="*", help="services to migrate (default: all)")
    dead = sub.add_parser("dead-letters", help="list or replay events no consumer could apply")
    dead_sub = dead.add_subparsers(dest="action", required=True)
    dead_list = dead_sub.add_parser("list", help="dead letters, oldest first")
    dead_list.add_argument("--service", choices=SERVICE_NAMES, help="only this service")
    dead_list.add_argument("--consumer", help="only this consumer")
    dead_list.add_argument("--limit", type=int, default=1000, help="per service (default 1000)")
    dead_replay = dead_sub.add_parser(
        "replay", help="republish dead letters so their consumer applies them (after a fix)"
    )
    dead_replay.add_argument("ids", nargs="*", help="<service>:<id> as listed (or <id> with --service)")
    dead_replay.add_argument("--all", action="store_true", help="every not yet replayed one of --consumer")
    dead_replay.add_argument("--consumer", help="with --all: whose dead letters")
    dead_replay.add_argument("--service", choices=SERVICE_NAMES, help="only this service")
    sim = sub.add_parser("simulate-callbacks", help="replay Poisson arrivals against the promise engine")
    sim.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return cmd_up(args)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "migrate":
            return cmd_migrate(args)
        if args.command == "dead-letters":
            return cmd_dead_letters(args)
        if args.command == "simulate-callbacks":
            simulation = importlib.import_module("services.callback.simulation")
            return int(simulation.main(args.rest))
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    parser.error("unknown command")
    return 2


if __name__ == "__main__":
    sys.exit(main())
