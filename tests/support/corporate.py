"""Corporate SIM test data made through the store (the corpsim-api use cases are another branch's): a
company, a number on its contract (encrypted like the API does) and a SIM bound to a device or a person."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec

from services.common import db
from services.common.crypto import DataProtector
from services.common.phone import mask_phone
from services.verification.corporate import store

EMPLOYEE: dict[str, Any] = {
    "last_name": "Иванов",
    "first_name": "Иван",
    "middle_name": "Иванович",
    "birth_date": "1985-04-12",
    "passport_series": "4510",
    "passport_number": "123456",
    "passport_issue_date": "2010-05-20",
    "passport_issuer_code": "770-001",
}


async def make_company(
    conn: db.Connection, *, name: str = "ООО Ромашка", inn: str = "7707083893", ogrn: str = "1027700132195"
) -> uuid.UUID:
    row = store.CompanyRow(
        id=uuid.uuid4(),
        name=name,
        inn=inn,
        ogrn=ogrn,
        status="active",
        created_by="test",
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )
    assert await store.insert_company(conn, row)
    return row.id


async def make_sim(
    conn: db.Connection,
    protector: DataProtector,
    company_id: uuid.UUID,
    msisdn: str,
    *,
    now: dt.datetime,
    binding: str | None = "device",
    imei: str = "490154203237518",
    employee: dict[str, Any] | None = None,
) -> store.SimRow:
    """A SIM on the contract: unbound, bound to a device (pending_submission) or to a person."""
    number_id = uuid.uuid4()
    assert await store.insert_number(
        conn,
        store.NumberRow(
            id=number_id,
            company_id=company_id,
            msisdn_enc=protector.encrypt(msisdn, store.MSISDN_CONTEXT, number_id),
            msisdn_index=protector.blind_index(msisdn, store.MSISDN_INDEX),
            msisdn_masked=mask_phone(msisdn),
            added_at=now,
        ),
    )
    sim_id = uuid.uuid4()
    fields: dict[str, Any] = {}
    status = "unregistered"
    if binding == "device":
        status = "pending_submission"
        fields = {
            "device_type": "payment_terminal",
            "device_name": "POS 1",
            "device_id_kind": "imei",
            "device_id": imei,
            "installation_address": "Москва, ул. Тверская, 1",
        }
    elif binding == "employee":
        status = "pending_submission"
        holder = employee or EMPLOYEE
        fields = {
            "employee_enc": protector.encrypt(
                msgspec.json.encode({"holder": holder, "lang": "ru", "tz": "Europe/Moscow"}).decode(),
                store.EMPLOYEE_CONTEXT,
                sim_id,
            ),
            "employee_masked": "Иванов И. И.",
            "passport_index": protector.blind_index(
                holder["passport_series"] + holder["passport_number"], store.PASSPORT_INDEX
            ),
        }
    row = store.SimRow(
        id=sim_id,
        company_id=company_id,
        number_id=number_id,
        status=status,
        binding=binding,
        created_at=now,
        bound_at=now if binding else None,
        updated_at=now,
        **fields,
    )
    await store.insert_sim(conn, row)
    return row
