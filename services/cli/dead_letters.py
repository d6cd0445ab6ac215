"""`abonent dead-letters`: list or replay events no consumer could apply."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from services.common import bus as busmod
from services.common import db, deadletters
from services.common.settings import SERVICE_NAMES, Settings, get_settings


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
