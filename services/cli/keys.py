"""`abonent keys`: make data-encryption keys and re-encrypt stored values onto the active one."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

from services.cli.service import service_spec
from services.common import crypto, db
from services.common.crypto import DataProtector
from services.common.rotation import EncryptedColumn, RotationCount, rotate_column
from services.common.settings import SERVICE_NAMES, ServiceName, Settings, get_settings


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
