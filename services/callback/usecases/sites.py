"""Sites: the cached directory hot paths read, the calendars a site implies, the back office's use cases."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import msgspec

from services.callback.domain.calendar import CalleeWindow, SiteCalendar, TimeRange
from services.callback.domain.staffing import Shift, StaffingSchedule
from services.callback.schemas import WEEKDAYS, Site, SiteSettings, weekdays_of
from services.callback.store import callbacks as callback_store
from services.callback.store import orgs as org_store
from services.callback.store import sites as site_store
from services.callback.store import stats
from services.callback.usecases.orgs import Tenancy, target_org
from services.common import db
from services.common.crypto import DataProtector
from services.common.domain_errors import Conflict, NotFound

# How far back the punctuality figures look.
PUNCTUALITY_WINDOW = dt.timedelta(days=30)


def site_calendar(settings: SiteSettings) -> SiteCalendar:
    return SiteCalendar(
        tz=settings.timezone,
        weekly={
            WEEKDAYS.index(day): [TimeRange.parse(start, end) for start, end in ranges]
            for day, ranges in settings.working_hours.items()
        },
        holidays=frozenset(settings.holidays),
        production_calendar=settings.production_calendar,
    )


def staffing_schedule(settings: SiteSettings) -> StaffingSchedule:
    """The site's shifts on its own calendar (its holidays and production calendar close them too)."""
    return StaffingSchedule(
        tz=settings.timezone,
        shifts=tuple(
            Shift(
                days=weekdays_of(shift.days),
                hours=TimeRange.parse(shift.start, shift.end),
                agents=shift.agents,
            )
            for shift in settings.staffing
        ),
        holidays=frozenset(settings.holidays),
        production_calendar=settings.production_calendar,
    )


def callee_window(settings: SiteSettings, visitor_tz: str, not_before: dt.time | None) -> CalleeWindow:
    window = settings.calling_window
    return CalleeWindow(
        tz=visitor_tz, window=TimeRange.parse(window.start, window.end), not_before=not_before
    )


def site_not_found(site_key: str) -> NotFound:
    return NotFound("site_not_found", f"No site with key {site_key!r}", field="site_key")


class SiteDirectory:
    """Sites by key with a short in-process cache: the widget's hot paths read them on every request."""

    def __init__(self, pool: db.Pool, ttl_s: float = 5.0) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, Site | None]] = {}

    async def get(self, site_key: str, conn: db.Connection | None = None) -> Site | None:
        """The site, from the cache or the database. A caller holding a connection (inside a transaction)
        passes it: a miss then reads through it instead of taking a second one from the pool."""
        cached = self._cache.get(site_key)
        if cached is not None and time.monotonic() - cached[0] < self.ttl_s:
            return cached[1]
        if conn is not None:
            site = await site_store.get_site(conn, site_key)
        else:
            async with self.pool.acquire() as own:
                site = await site_store.get_site(own, site_key)
        self._cache[site_key] = (time.monotonic(), site)
        return site

    async def require(self, site_key: str, conn: db.Connection | None = None) -> Site:
        site = await self.get(site_key, conn)
        if site is None:
            raise site_not_found(site_key)
        return site

    def forget(self, site_key: str) -> None:
        self._cache.pop(site_key, None)


async def require_site(conn: db.Connection, site_key: str, tenancy: Tenancy) -> None:
    """NotFound unless the site exists in the caller's organisation (read uncached: the back office must
    see a site it just made). Another organisation's site gets the very answer a missing one gets."""
    if not tenancy.sees(await org_store.site_org(conn, site_key)):
        raise site_not_found(site_key)


class SiteAdmin:
    """The back office's site use cases; writes drop the directory's cached copy."""

    def __init__(self, pool: db.Pool, protector: DataProtector, directory: SiteDirectory) -> None:
        self.pool = pool
        self.protector = protector
        self.directory = directory

    async def put(
        self, site_key: str, settings: SiteSettings, tenancy: Tenancy, org: str | None = None
    ) -> tuple[Site, bool]:
        """Create or replace a site in the caller's organisation (`org` lets the platform admin choose);
        True when created. `crm_webhook_secret` is write-only: absent keeps the current one, "" clears it.
        A key another organisation's site holds is a conflict: sites never change organisation."""
        secret = settings.crm_webhook_secret
        secret_enc: bytes | msgspec.UnsetType | None = msgspec.UNSET
        if isinstance(secret, str):
            secret_enc = (
                self.protector.encrypt(secret, site_store.WEBHOOK_SECRET_CONTEXT, site_key)
                if secret
                else None
            )
        async with self.pool.acquire() as conn:
            org_id = await target_org(conn, tenancy, org)
            try:
                site, created = await site_store.upsert_site(
                    conn, site_key, settings, webhook_secret_enc=secret_enc, org_id=org_id
                )
            except site_store.SiteInAnotherOrg:
                raise Conflict(
                    "site_key_taken", f"The site key {site_key!r} is taken; choose another", field="site_key"
                ) from None
        self.directory.forget(site_key)
        return site, created

    async def get(self, site_key: str, tenancy: Tenancy) -> Site:
        async with self.pool.acquire() as conn:
            site = await site_store.get_site(conn, site_key)
        if site is None or not tenancy.sees(site.org_id):
            raise site_not_found(site_key)
        return site

    async def list_sites(self, tenancy: Tenancy) -> list[Site]:
        async with self.pool.acquire() as conn:
            return await site_store.list_sites(conn, tenancy.org_id)

    async def punctuality(self, site_key: str, now: dt.datetime, tenancy: Tenancy) -> stats.Punctuality:
        async with self.pool.acquire() as conn:
            await require_site(conn, site_key, tenancy)
            return await stats.punctuality(conn, site_key, now - PUNCTUALITY_WINDOW)

    async def punctuality_of_org(self, org_id: str, now: dt.datetime) -> list[stats.Punctuality]:
        """The dashboard: every site of one organisation (an agent's), never another's."""
        async with self.pool.acquire() as conn:
            return [
                await stats.punctuality(conn, site.site_key, now - PUNCTUALITY_WINDOW)
                for site in await site_store.list_sites(conn, org_id)
            ]

    async def seal_plain_webhook_secrets(self) -> int:
        """Encrypt secrets an older version stored in plaintext; run once at start-up."""
        async with db.transaction(self.pool) as conn:
            return await site_store.seal_plain_webhook_secrets(conn, self.protector)

    async def site_of_callback(self, callback_id: uuid.UUID) -> str | None:
        async with self.pool.acquire() as conn:
            return await callback_store.site_of_callback(conn, callback_id)
