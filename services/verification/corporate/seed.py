"""Demo data for `abonent up`: a company with numbers on its contract and an API client to try the API."""

from __future__ import annotations

import base64
import datetime as dt

from services.common import db
from services.common.crypto import DataProtector, token_hash
from services.verification.corporate import store
from services.verification.corporate.oauth import SCOPES
from services.verification.corporate.schemas import CompanyCreate, NumbersAdd
from services.verification.corporate.usecases import CorporateSims

# A made-up company whose INN and OGRN pass their control digits (no real company is meant).
DEMO_COMPANY = CompanyCreate(name="ООО «Демо Корп»", inn="7710000008", ogrn="1167700000005")
DEMO_NUMBERS = [f"+7916130000{i}" for i in range(1, 6)]
DEMO_CLIENT_ID = "cs_demo"


def demo_secret(protector: DataProtector) -> str:
    """Derived from this installation's signing key: `abonent up` can print it again on every start
    while only its hash is stored, and it is worthless against any other installation."""
    return base64.urlsafe_b64encode(protector.sign(b"abonent/corpsim/demo-client")).decode().rstrip("=")


async def seed_demo_company(corporate: CorporateSims, now: dt.datetime) -> list[tuple[str, str]]:
    """Idempotent: an existing demo company keeps its SIMs; its client's secret is set to the derived one."""
    async with corporate.pool.acquire() as conn:
        company = await store.company_by_inn(conn, DEMO_COMPANY.inn)
    company_id = (
        company.id if company is not None else (await corporate.create_company(DEMO_COMPANY, "dev-seed")).id
    )
    await corporate.add_numbers(company_id, NumbersAdd(numbers=DEMO_NUMBERS), "dev-seed")
    secret = demo_secret(corporate.protector)
    async with db.transaction(corporate.pool) as conn:
        if await store.get_client(conn, DEMO_CLIENT_ID) is None:
            await store.insert_client(
                conn,
                store.ClientRow(
                    client_id=DEMO_CLIENT_ID,
                    company_id=company_id,
                    name="demo",
                    secret_hash=token_hash(secret),
                    scopes=list(SCOPES),
                    created_by="dev-seed",
                    created_at=now,
                ),
            )
        else:
            await store.set_client_secret(conn, company_id, DEMO_CLIENT_ID, token_hash(secret))
    return [
        (
            "corporate demo company",
            f"{DEMO_COMPANY.name}, INN {DEMO_COMPANY.inn}, numbers {DEMO_NUMBERS[0]}…5",
        ),
        ("corporate demo client_id", DEMO_CLIENT_ID),
        ("corporate demo client_secret", secret),
    ]
