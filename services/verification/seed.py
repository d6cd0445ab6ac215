"""Demo data for `abonent up`: one open case per sandbox test person, with the link to open, and the
corporate SIM demo company with its API client."""

from __future__ import annotations

import datetime as dt

from services.common import db
from services.common.clock import SystemClock
from services.common.crypto import DataProtector
from services.common.settings import Settings
from services.verification.corporate.oauth import CorporateAuth
from services.verification.corporate.seed import seed_demo_company
from services.verification.corporate.settings import get_flow_settings
from services.verification.corporate.usecases import CorporateSims
from services.verification.domain.policy import validate_policies
from services.verification.schemas import CaseOpen
from services.verification.settings import get_verification_settings
from services.verification.usecases import VerificationService

# The contract data of each sandbox person (services/verification/sandbox_idp/persons.py): signing in as
# that person gives the outcome in the label.
DEMO_CASES: tuple[tuple[str, CaseOpen], ...] = (
    (
        "match (Иванов Иван Иванович)",
        CaseOpen(
            msisdn="+79161234567",
            reason="regulator_request",
            last_name="Иванов",
            first_name="Иван",
            middle_name="Иванович",
            birth_date=dt.date(1985, 4, 12),
            passport_series="4510",
            passport_number="123456",
            passport_issue_date=dt.date(2010, 5, 20),
            passport_issuer_code="770-001",
            lang="ru",
        ),
    ),
    (
        "mismatch (Петрова Анна Сергеевна)",
        CaseOpen(
            msisdn="+79161234568",
            reason="outdated_data",
            last_name="Петрова",
            first_name="Анна",
            middle_name="Сергеевна",
            birth_date=dt.date(1990, 1, 31),
            passport_series="4511",
            passport_number="654321",
            passport_issue_date=dt.date(2015, 3, 3),
            passport_issuer_code="770-002",
            lang="ru",
        ),
    ),
    (
        "unconfirmed account (Сидоров Пётр Ильич)",
        CaseOpen(
            msisdn="+79161234569",
            reason="used_by_other_person",
            last_name="Сидоров",
            first_name="Пётр",
            middle_name="Ильич",
            birth_date=dt.date(1979, 7, 7),
            passport_series="4512",
            passport_number="111222",
            passport_issue_date=dt.date(2009, 9, 9),
            passport_issuer_code="770-003",
            lang="ru",
        ),
    ),
    (
        "foreign passport (Smith John), English",
        CaseOpen(
            msisdn="+79161234570",
            reason="regulator_request",
            last_name="Smith",
            first_name="John",
            birth_date=dt.date(1980, 2, 2),
            passport_series="0000",
            passport_number="000000",
            passport_issue_date=dt.date(2000, 1, 1),
            passport_issuer_code="000-000",
            lang="en",
            tz="Europe/London",
        ),
    ),
)


async def open_demo_cases(settings: Settings, base_url: str) -> list[tuple[str, str]]:
    """Idempotent: a number that already has an active case keeps it (and its link)."""
    own = get_verification_settings()
    pool = await db.create_pool(settings.database_url, "verification", max_size=1, name="seed")
    service = VerificationService(
        pool=pool,
        protector=DataProtector.from_settings(settings),
        own=own,
        policies=validate_policies(),
        clock=SystemClock(),
        public_url=own.verification_public_url.rstrip("/") or base_url,
        link_base=(own.verification_link_base or f"{own.verification_public_url or base_url}/v").rstrip("/"),
        corpsim_zone=get_flow_settings().corpsim_zone,
    )
    lines: list[tuple[str, str]] = []
    try:
        for label, data in DEMO_CASES:
            view, _created = await service.open_case(data, "dev-seed", None)
            lines.append((f"verification demo: {label}", view.link or f"(case {view.status})"))
        auth = CorporateAuth(
            pool=pool,
            protector=service.protector,
            clock=service.clock,
            issuer=service.public_url,
            token_ttl_s=own.verification_corporate_token_ttl_s,
            rotation=dt.timedelta(days=own.verification_corporate_key_rotation_days),
        )
        corporate = CorporateSims(pool=pool, cases=service, auth=auth)
        lines += await seed_demo_company(corporate, service.clock.now())
    finally:
        await pool.close()
    return lines


seed_demo = open_demo_cases
