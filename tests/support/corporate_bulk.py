"""Bulk-upload test setup: a company's numbers put on its contract by COPY (the back-office API adds them a
statement at a time, which for 100 000 numbers would be most of a test's time)."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg

from services.common.crypto import DataProtector
from services.verification.corporate import store
from services.verification.domain.texts import spaced_mask


async def put_on_contract(
    conn: asyncpg.Connection, protector: DataProtector, company: uuid.UUID, numbers: list[str]
) -> None:
    """Each E.164 number on the company's contract as an unregistered SIM (what the API would write)."""
    now = dt.datetime.now(dt.UTC)
    rows, sims = [], []
    for e164 in numbers:
        number_id = uuid.uuid4()
        rows.append(
            (
                number_id,
                company,
                protector.encrypt(e164, store.MSISDN_CONTEXT, number_id),
                protector.blind_index(e164, store.MSISDN_INDEX),
                spaced_mask(e164),
                now,
            )
        )
        sims.append((uuid.uuid4(), company, number_id, "unregistered", now, now))
    columns = ("id", "company_id", "msisdn_enc", "msisdn_index", "msisdn_masked", "added_at")
    await conn.copy_records_to_table(
        "company_numbers", schema_name="verification", records=rows, columns=columns
    )
    columns = ("id", "company_id", "number_id", "status", "created_at", "updated_at")
    await conn.copy_records_to_table("sims", schema_name="verification", records=sims, columns=columns)
