"""`abonent tokens` and `abonent staff`: who may use the back office."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import os

from services.cli.service import scope_catalogue
from services.common import auth, auth_admin
from services.common.settings import SERVICE_NAMES, get_settings


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
