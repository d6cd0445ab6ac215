"""The `abonent` command: `up`, `run`, `migrate`, `keys`, `tokens`, `staff`, `dead-letters`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from services.cli.access import cmd_staff, cmd_tokens
from services.cli.dead_letters import cmd_dead_letters
from services.cli.keys import cmd_keys_new, cmd_keys_rotate
from services.cli.service import cmd_migrate, cmd_run
from services.cli.simulate import cmd_simulate_callbacks
from services.cli.up import cmd_up
from services.common import auth_admin
from services.common.settings import SERVICE_NAMES, SettingsError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["simulate-callbacks"]:
        # The simulation parses its own options: argparse's REMAINDER refuses those that come first.
        return cmd_simulate_callbacks(argparse.Namespace(rest=given[1:]))
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
    args = parser.parse_args(given)
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
            return cmd_simulate_callbacks(args)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except (auth_admin.AuthAdminError, ValueError) as exc:
        print(f"abonent {args.command}: {exc}", file=sys.stderr)
        return 2
    parser.error("unknown command")
    return 2
