"""Callback seams: routes use use cases, states move through their machines, errors are domain errors."""

from __future__ import annotations

import ast
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import pytest
from support.callback_api import site_body
from support.harness import migrate_service

from services.callback.domain.attempt import (
    PROGRESS_STATES,
    AttemptState,
    IllegalAttemptTransition,
    can_move,
    final_outcome,
    move,
    plan_after_failed_attempt,
)
from services.callback.domain.calendar import CalleeWindow, SiteCalendar, TimeRange
from services.callback.domain.retry import RetrySpacing
from services.callback.schemas import CallbackCreate, Reschedule, SiteSettings
from services.callback.store import sites as site_store
from services.callback.usecases.intake import Intake
from services.callback.usecases.orgs import PLATFORM
from services.callback.usecases.requests import Requests
from services.callback.usecases.sites import SiteAdmin, SiteDirectory
from services.common import db as dbmod
from services.common.crypto import DataProtector
from services.common.domain_errors import Conflict, Forbidden, Invalid, NotFound
from services.common.errors import ApiError
from services.common.settings import Settings

CALLBACK = Path(__file__).resolve().parents[2] / "services" / "callback"


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _imported_modules(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _store_aliases(tree: ast.Module) -> set[str]:
    """Local names bound to store modules (`from services.callback.store import sites as site_store`)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "services.callback.store":
            names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "services.callback":
            names.update(alias.asname or alias.name for alias in node.names if alias.name == "store")
    return names


def _store_calls(tree: ast.AST, aliases: set[str]) -> list[str]:
    return [
        f"{node.func.value.id}.{node.func.attr} (line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in aliases
    ]


def test_routes_call_use_cases_not_the_store() -> None:
    for name in ("app.py", "console.py"):
        tree = _tree(CALLBACK / name)
        assert _store_calls(tree, _store_aliases(tree)) == [], f"{name} calls the store directly"
    # webhooks.py also holds the consumer and the sender's resolver (store reads in the caller's
    # transaction); its HTTP routes must not touch the store.
    tree = _tree(CALLBACK / "webhooks.py")
    routes = [
        node
        for node in tree.body
        if isinstance(node, ast.AsyncFunctionDef)
        and node.name in {"list_webhook_deliveries", "retry_webhook_delivery"}
    ]
    assert len(routes) == 2
    for route in routes:
        assert _store_calls(route, _store_aliases(tree)) == [], f"webhooks.{route.name} calls the store"


def test_the_dialer_does_not_reach_into_use_case_modules() -> None:
    internals = {
        "services.callback.usecases.intake",
        "services.callback.usecases.requests",
        "services.callback.usecases.presence",
    }
    for name in ("dispatcher.py", "attempts.py"):
        imported = _imported_modules(_tree(CALLBACK / name))
        assert not imported & internals, f"{name} imports {sorted(imported & internals)}"


def test_callback_state_changes_only_through_the_state_machine() -> None:
    """Only advance_callback writes a request's status; everyone else asks it (and the machine)."""
    offenders = []
    for path in sorted(CALLBACK.rglob("*.py")):
        for node in ast.walk(_tree(path)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute | ast.Name)
                and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
                == "update_callback"
                and any(keyword.arg == "status" for keyword in node.keywords)
            ):
                offenders.append(f"{path.relative_to(CALLBACK)}:{node.lineno}")
    assert len(offenders) == 1, offenders
    assert offenders[0].startswith("usecases/common.py:"), offenders


def test_use_cases_raise_no_http_errors() -> None:
    for path in sorted((CALLBACK / "usecases").glob("*.py")):
        imported = _imported_modules(_tree(path))
        assert "services.common.errors.ApiError" not in imported, f"{path.name} raises HTTP errors"


# --- attempt states -------------------------------------------------------------------------------------


def test_attempt_states_move_only_forward_to_the_end() -> None:
    assert can_move("placing", AttemptState.PLACED)
    assert not can_move("agent_ringing", AttemptState.PLACED), "'placed' is only ever the first mark"
    # A fast provider's events overtake the 'placed' mark, and arrive out of order or twice.
    for step in PROGRESS_STATES:
        assert can_move("placing", step)
        assert all(can_move(other, step) for other in PROGRESS_STATES)
    assert can_move("visitor_answered", AttemptState.CONNECTED)
    assert not can_move("connected", AttemptState.AGENT_RINGING), "a late ringing event after the bridge"
    assert not can_move("connected", AttemptState.CONNECTED)
    assert can_move("connected", AttemptState.ENDED)
    assert not any(can_move("ended", state) for state in AttemptState)
    with pytest.raises(IllegalAttemptTransition):
        move("ended", AttemptState.CONNECTED)


def test_an_attempt_that_ends_unbridged_failed() -> None:
    assert final_outcome("connected", "connected") == "connected"
    assert final_outcome("connected", "visitor_ringing") == "failed"
    assert final_outcome("busy", "visitor_ringing") == "busy"


def test_after_a_failed_attempt() -> None:
    spacing = RetrySpacing(max_attempts=3, busy_retry_s=120, no_answer_retry_s=600, failed_retry_s=60)
    site = SiteCalendar(
        tz="Europe/Moscow",
        weekly={day: [TimeRange.parse("00:00", "24:00")] for day in range(7)},
    )
    callee = CalleeWindow(tz="Europe/Moscow", window=TimeRange.parse("00:00", "24:00"), not_before=None)
    now = dt.datetime(2026, 3, 2, 12, 0, tzinfo=ZoneInfo("Europe/Moscow"))
    ours = plan_after_failed_attempt("agent_no_answer", 1, spacing, now=now, site=site, callee=callee)
    assert (ours.attempts, ours.next_at) == (0, now), "our agent's miss costs the visitor no attempt"
    busy = plan_after_failed_attempt("busy", 1, spacing, now=now, site=site, callee=callee)
    assert busy.attempts == 1
    assert busy.next_at == now + dt.timedelta(seconds=120)
    assert busy.last_attempt_by == busy.next_at + dt.timedelta(seconds=600)
    last = plan_after_failed_attempt("visitor_no_answer", 3, spacing, now=now, site=site, callee=callee)
    assert last.next_at is None, "attempts exhausted: the request fails"


# --- domain errors from the use cases (real PostgreSQL) -------------------------------------------------


class Services(msgspec.Struct):
    intake: Intake
    requests: Requests
    site_admin: SiteAdmin


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    await migrate_service(settings, "callback")
    pool = await dbmod.create_pool(settings.database_url, "callback")
    protector = DataProtector.from_settings(settings)
    sites = SiteDirectory(pool)
    async with pool.acquire() as conn:
        await site_store.upsert_site(conn, "shop", msgspec.convert(site_body(), SiteSettings))
    try:
        yield Services(
            Intake(pool, protector, sites), Requests(pool, sites), SiteAdmin(pool, protector, sites)
        )
    finally:
        await pool.close()


async def test_use_cases_refuse_with_domain_errors(services: Services) -> None:
    with pytest.raises(NotFound) as missing:
        await services.site_admin.get("nowhere", PLATFORM)
    assert (missing.value.code, missing.value.field) == ("site_not_found", "site_key")
    offer = await services.intake.offer("shop", "Europe/Moscow", "en", None)
    bot = CallbackCreate(
        phone="+79120000001", visitor_tz="Europe/Moscow", form_token=offer.form_token, website="x"
    )
    with pytest.raises(Forbidden):
        await services.intake.create("shop", bot, client_ip="10.0.0.1", idempotency_key=None)
    body = CallbackCreate(
        phone="+79120000001", visitor_tz="Europe/Moscow", form_token=offer.form_token, consent=True
    )
    _, created = await services.intake.create("shop", body, client_ip="10.0.0.1", idempotency_key=None)
    again = msgspec.structs.replace(body, phone="+79120000002")
    with pytest.raises(Invalid) as spent:
        await services.intake.create("shop", again, client_ip="10.0.0.1", idempotency_key=None)
    assert spent.value.code == "form_token_spent"
    with pytest.raises(NotFound):
        await services.requests.status(uuid.UUID(str(created.id)), "not-the-token")
    await services.requests.cancel(uuid.UUID(str(created.id)), created.status_token)
    with pytest.raises(Conflict) as finished:
        await services.requests.reschedule(
            uuid.UUID(str(created.id)), created.status_token, Reschedule(not_before="10:00")
        )
    assert finished.value.code == "not_reschedulable"
    assert not isinstance(finished.value, ApiError)
