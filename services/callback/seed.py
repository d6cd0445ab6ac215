"""Demo data for `abonent up`: a site for the demo shop page and an agent to sign in with."""

from __future__ import annotations

import uuid

from services.callback.schemas import CallingWindow, SiteSettings, StaffingShift
from services.callback.store import agents as agent_store
from services.callback.store import orgs as org_store
from services.callback.store import sites as site_store
from services.common import db
from services.common.crypto import hash_password
from services.common.settings import Settings

DEMO_SITE = "demo"
DEMO_AGENT = ("demo", "demo-password")


async def seed_demo(settings: Settings, callback_url: str) -> list[tuple[str, str]]:
    """Idempotent: re-running `abonent up` refreshes the demo site but keeps what people changed elsewhere."""
    conn = await db.connect(settings.database_url, "callback")
    try:
        site = SiteSettings(
            name="Demo shop",
            allowed_origins=[callback_url],
            working_hours={
                day: [["00:00", "24:00"]] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
            },
            calling_window=CallingWindow(start="08:00", end="22:00"),
            allowed_countries=["RU", "KZ"],
            # The demo agent works the calling hours: promises for later times and slots come from here.
            staffing=[StaffingShift(days=["mon-sun"], start="08:00", end="22:00", agents=1)],
        )
        # One organisation: the demo shop and its agent both belong to the default one.
        await site_store.upsert_site(conn, DEMO_SITE, site, org_id=org_store.DEFAULT_ORG)
        if await agent_store.agent_by_login(conn, DEMO_AGENT[0]) is None:
            await agent_store.upsert_agent(
                conn,
                agent_store.AgentRow(
                    id=uuid.uuid4(),
                    login=DEMO_AGENT[0],
                    name="Demo agent",
                    password_hash=hash_password(DEMO_AGENT[1]),
                    queues=["default"],
                    endpoint="sim",
                    org_id=org_store.DEFAULT_ORG,
                ),
            )
    finally:
        await conn.close()
    return [("demo agent login", f"{DEMO_AGENT[0]} / {DEMO_AGENT[1]}")]
