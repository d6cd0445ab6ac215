"""The `abonent` command: `up`, `run`, `migrate`, `keys`, `tokens`, `staff`, `dead-letters`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import getpass
import importlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import httpx

from services.common import auth, auth_admin, crypto, db, deadletters
from services.common import bus as busmod
from services.common.crypto import DataProtector
from services.common.embedded import EmbeddedNats, EmbeddedPostgres
from services.common.logging import configure_logging
from services.common.migrate import discover, migrate
from services.common.rotation import EncryptedColumn, RotationCount, rotate_column
from services.common.settings import (
    SERVICE_NAMES,
    ServiceName,
    Settings,
    SettingsError,
    get_section,
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


def validate_sections(names: Sequence[ServiceName]) -> None:
    """Read each named service's own settings section now: a bad value stops us before anything starts."""
    for name in names:
        section = service_spec(name).settings_section
        if section is not None:
            get_section(section)


def scope_catalogue() -> dict[str, str]:
    """Every back-office scope the services declare, with what it allows."""
    return {scope: text for name in SERVICE_NAMES for scope, text in service_spec(name).scopes.items()}


def _database_url() -> str:
    url = get_settings().database_url
    if not url:
        raise auth_admin.AuthAdminError("ABONENT_DATABASE_URL is not set (`abonent up` prints it)")
    return url


def _when(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


def cmd_tokens(args: argparse.Namespace) -> int:
    url = _database_url()
    if args.action == "create":
        scopes = auth.parse_scopes(args.scopes, scope_catalogue())
        token_id, token = asyncio.run(
            auth_admin.create_token(url, name=args.name, scopes=scopes, expires_days=args.expires_days)
        )
        print(f"Token {args.name!r} ({', '.join(scopes)}), id {token_id}. It is shown only now; keep it:")
        print(token)
    elif args.action == "list":
        rows = [("id", "name", "scopes", "created", "last used", "expires", "state")]
        for t in asyncio.run(auth_admin.list_tokens(url, SERVICE_NAMES)):
            state = "revoked" if t.revoked else "live"
            row = (str(t.id), t.name, ",".join(t.scopes), _when(t.created_at), _when(t.last_used_at))
            rows.append((*row, _when(t.expires_at), state))
        width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(cell.ljust(width[i]) for i, cell in enumerate(r)).rstrip())
    else:
        count = asyncio.run(auth_admin.revoke_tokens(url, args.token, SERVICE_NAMES))
        print(f"revoked {count} token{'s' if count > 1 else ''}")
    return 0


def _staff_password() -> str:
    password = os.environ.get("ABONENT_STAFF_PASSWORD") or getpass.getpass("Password: ")
    if "ABONENT_STAFF_PASSWORD" not in os.environ and getpass.getpass("Again: ") != password:
        raise auth_admin.AuthAdminError("the passwords differ")
    if len(password) < 10:
        raise auth_admin.AuthAdminError("a staff password has at least 10 characters")
    return password


def cmd_staff(args: argparse.Namespace) -> int:
    url = _database_url()
    if args.action == "add":
        scopes = auth.parse_scopes(args.scopes, scope_catalogue())
        login = auth.normalize_login(args.login)
        password = _staff_password()
        asyncio.run(
            auth_admin.add_staff(url, login=login, scopes=scopes, password=password, services=SERVICE_NAMES)
        )
        print(f"staff {login!r} can sign in at /auth/sign-in of: {', '.join(auth_admin.schemas_of(scopes))}")
    elif args.action == "list":
        for s in asyncio.run(auth_admin.list_staff(url, SERVICE_NAMES)):
            print(f"{s.login}  {','.join(s.scopes)}  sessions: {s.sessions}")
    else:
        asyncio.run(auth_admin.remove_staff(url, args.login, SERVICE_NAMES))
        print(f"removed {args.login!r} and ended its sessions")
    return 0


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
    validate_sections([name])
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


def _dev_key_file(path: Path, make: Callable[[], str]) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(make() + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def dev_keys(data_dir: Path) -> dict[str, str]:
    """Dev-only keys kept in the data folder, so encrypted personal data survives restarts.

    `data.keys` holds the keyring (one `id:key` per line, the first is active), `index.key` the blind-index
    key. A folder from before the keyring has `data.key`: it stays readable as the legacy key, and the new
    index key is the one it derived, so stored lookup hashes keep matching.
    """
    legacy_file = data_dir / "data.key"
    legacy = legacy_file.read_text().strip() if legacy_file.exists() else ""
    ring = _dev_key_file(data_dir / "data.keys", lambda: f"k1:{crypto.new_key()}").split()
    index = _dev_key_file(
        data_dir / "index.key", lambda: crypto.legacy_index_key(legacy) if legacy else crypto.new_key()
    )
    keys = {"data_keys": ",".join(ring), "data_key_id": ring[0].partition(":")[0], "index_key": index}
    if legacy:
        keys["data_key"] = legacy
    return keys


def _ensure_secret(path: Path, make: Callable[[], str]) -> str:
    """A dev secret kept in the data folder (owner-only), so it stays the same across restarts."""
    if not path.exists():
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


DEV_STAFF_LOGIN = "admin"


def seed_back_office(settings: Settings, data_dir: Path) -> tuple[str, str]:
    """The bootstrap admin token and a demo staff account with every scope; returns (token, password)."""
    token = settings.admin_token or _ensure_secret(data_dir / "admin.token", auth.new_token)
    password = _ensure_secret(data_dir / "staff.password", lambda: secrets.token_urlsafe(12))
    asyncio.run(
        auth_admin.add_staff(
            settings.database_url,
            login=DEV_STAFF_LOGIN,
            scopes=sorted(scope_catalogue()),
            password=password,
            services=SERVICE_NAMES,
            keep_existing_password=True,
        )
    )
    return token, password


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
    validate_sections(SERVICE_NAMES)
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
        if not settings.data_keys:
            overrides.update(dev_keys(data_dir))
        settings = load_settings(None, **overrides)
        asyncio.run(migrate_all(settings))
        admin_token, staff_password = seed_back_office(settings, data_dir)
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
                "ABONENT_DATA_KEYS": settings.data_keys,
                "ABONENT_DATA_KEY_ID": settings.data_key_id,
                "ABONENT_INDEX_KEY": settings.index_key,
                "ABONENT_DATA_KEY": settings.data_key,
                "ABONENT_ADMIN_TOKEN": admin_token,
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
            ("staff sign-in", f"{urls['callback']}/auth/sign-in", f"{DEV_STAFF_LOGIN} / {staff_password}"),
            ("admin token", admin_token, "all scopes; also in ABONENT_ADMIN_TOKEN"),
            (
                "try it",
                f"curl -H 'Authorization: Bearer {admin_token}' {urls['callback']}/v1/admin/sites",
                "",
            ),
        ]
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


def cmd_keys_new(args: argparse.Namespace) -> int:
    if args.index:
        print(crypto.new_key())
    else:
        key_id = args.id or time.strftime("k%Y%m%d%H%M%S", time.gmtime())
        if not crypto.KEY_ID_PATTERN.fullmatch(key_id):
            print("--id may hold 1-32 letters, digits, _ . -", file=sys.stderr)
            return 2
        print(f"{key_id}:{crypto.new_key()}")
    return 0


def _print_progress(column: EncryptedColumn, count: RotationCount) -> None:
    print(f"  {column.label}: {count.rotated} re-encrypted so far, {count.failed} failed", flush=True)


async def rotate_keys(
    settings: Settings, names: Sequence[ServiceName], batch: int
) -> dict[str, RotationCount]:
    """Re-encrypt the declared columns of `names` onto the active key; {"service table.column": counts}."""
    protector = DataProtector.from_settings(settings)
    results: dict[str, RotationCount] = {}
    for name in names:
        columns = service_spec(name).encrypted_columns
        if not columns:
            continue
        pool = await db.create_pool(settings.database_url, name, max_size=2)
        try:
            for column in columns:
                results[f"{name} {column.label}"] = await rotate_column(
                    pool, protector, column, batch=batch, progress=_print_progress
                )
        finally:
            await pool.close()
    return results


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    settings = get_settings()
    if not settings.database_url:
        print("ABONENT_DATABASE_URL is not set", file=sys.stderr)
        return 2
    if args.batch < 1:
        print("--batch must be at least 1", file=sys.stderr)
        return 2
    names = [args.service] if args.service else list(SERVICE_NAMES)
    active = DataProtector.from_settings(settings).keyring.active_id
    results = asyncio.run(rotate_keys(settings, names, args.batch))
    for label, count in results.items():
        print(
            f"{label}: {count.rotated} re-encrypted under {active}, {count.failed} failed,"
            f" {count.remaining} not under {active}"
        )
    # Non-zero while anything is left, so a script retires the old key only after a clean run.
    return 0 if all(c.remaining == 0 for c in results.values()) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="abonent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start PostgreSQL, NATS and every service (embedded unless URLs are set)")
    run = sub.add_parser("run", help="run one service (as a container would)")
    run.add_argument("service", choices=SERVICE_NAMES)
    run.add_argument("--migrate", action="store_true", help="apply this service's migrations first")
    mig = sub.add_parser("migrate", help="apply migrations")
    mig.add_argument("services", nargs="*", help="services to migrate (default: all)")
    keys = sub.add_parser("keys", help="data-encryption keys").add_subparsers(
        dest="keys_command", required=True
    )
    new_key = keys.add_parser("new", help="print a fresh key line for ABONENT_DATA_KEYS (id:key)")
    new_key.add_argument("--id", help="key id (default: k<UTC timestamp>)")
    new_key.add_argument("--index", action="store_true", help="print a bare key for ABONENT_INDEX_KEY")
    rotate = keys.add_parser(
        "rotate", help="re-encrypt stored values onto the active key (ABONENT_DATA_KEY_ID)"
    )
    rotate.add_argument("--service", choices=SERVICE_NAMES, help="only this service (default: all)")
    rotate.add_argument("--batch", type=int, default=500, help="rows per transaction (default 500)")
    tokens = sub.add_parser("tokens", help="bearer tokens for systems (scoped, stored hashed)")
    tokens_sub = tokens.add_subparsers(dest="action", required=True)
    create = tokens_sub.add_parser("create", help="make a token and print it once")
    create.add_argument("--name", required=True, help="who uses it, e.g. crm-sync")
    create.add_argument("--scopes", required=True, help="comma-separated, e.g. callback:admin")
    create.add_argument("--expires-days", type=float, default=None, help="expire after this many days")
    tokens_sub.add_parser("list", help="tokens with scopes, last use, expiry and state (never the token)")
    revoke = tokens_sub.add_parser("revoke", help="revoke a token at once, by id or name")
    revoke.add_argument("token", help="the token's id or name")
    staff = sub.add_parser("staff", help="staff accounts that sign in to the back office")
    staff_sub = staff.add_subparsers(dest="action", required=True)
    add = staff_sub.add_parser(
        "add", help="create or update (password from ABONENT_STAFF_PASSWORD or a prompt)"
    )
    add.add_argument("--login", required=True)
    add.add_argument("--scopes", required=True, help="comma-separated, e.g. callback:admin")
    staff_sub.add_parser("list", help="staff accounts, their scopes and live sessions")
    remove = staff_sub.add_parser("remove", help="delete an account and end its sessions")
    remove.add_argument("--login", required=True)
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
        if args.command == "keys":
            return cmd_keys_new(args) if args.keys_command == "new" else cmd_keys_rotate(args)
        if args.command == "tokens":
            return cmd_tokens(args)
        if args.command == "staff":
            return cmd_staff(args)
        if args.command == "dead-letters":
            return cmd_dead_letters(args)
        if args.command == "simulate-callbacks":
            simulation = importlib.import_module("services.callback.simulation")
            return int(simulation.main(args.rest))
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except (auth_admin.AuthAdminError, ValueError) as exc:
        print(f"abonent {args.command}: {exc}", file=sys.stderr)
        return 2
    parser.error("unknown command")
    return 2


if __name__ == "__main__":
    sys.exit(main())
