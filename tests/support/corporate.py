"""Corporate SIM test data made through the store (the corpsim-api use cases are another branch's): a
company, a number on its contract (encrypted like the API does) and a SIM bound to a device or a person."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from fakes.asgi import serve_asgi
from support.harness import migrate_service

from services.common import db
from services.common.clock import ManualClock
from services.common.crypto import DataProtector
from services.common.events import decode_event
from services.common.phone import mask_phone
from services.common.settings import Settings
from services.verification.corporate import store
from services.verification.corporate.lifecycle import CorporateFlow
from services.verification.corporate.registry.http import HttpRegistry
from services.verification.corporate.registry.worker import RegistryWorker
from services.verification.corporate.settings import CorporateFlowSettings
from services.verification.sandbox_registry.app import create_registry_app

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


class Env:
    """A pool, the keyring, the sandbox registry's URL, a manual clock and a worker factory."""

    def __init__(
        self, pool: db.Pool, protector: DataProtector, url: str, http: httpx.AsyncClient, now: dt.datetime
    ) -> None:
        self.pool = pool
        self.protector = protector
        self.url = url
        self.http = http
        self.clock = ManualClock(now)
        self.settings = CorporateFlowSettings(
            corpsim_registry_url=url,
            corpsim_registry_timeout_s=0.5,
            corpsim_registry_lease_s=30,
            corpsim_registry_retry_base_s=5,
            corpsim_registry_poll_s=30,
        )
        self.flow = CorporateFlow(protector=protector, tz="Europe/Moscow")

    def worker(self) -> RegistryWorker:
        return RegistryWorker(
            pool=self.pool,
            protector=self.protector,
            registry=HttpRegistry(self.http, self.url, timeout_s=self.settings.corpsim_registry_timeout_s),
            flow=self.flow,
            settings=self.settings,
            clock=self.clock,
            operator_name="Abonent Mobile",
            operator_ogrn="1027700000008",
        )

    async def sandbox(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, self.url + path, **kwargs)
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    async def sim(self, company_id: uuid.UUID, sim_id: uuid.UUID) -> store.SimRow:
        async with self.pool.acquire() as conn:
            found = await store.get_sim(conn, company_id, sim_id)
        assert found is not None
        return found.sim

    async def events(self, sim_id: uuid.UUID) -> list[Any]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("select payload from outbox order by seq")
        events = [decode_event(bytes(r["payload"])) for r in rows]
        return [e for e in events if getattr(e, "sim_id", None) == sim_id]


@contextlib.asynccontextmanager
async def corporate_env(settings: Settings, now: dt.datetime) -> AsyncIterator[Env]:
    """The migrated schema, a pool, and the sandbox registry (deciding nothing until told) on a real port."""
    await migrate_service(settings, "verification")
    pool = await db.create_pool(settings.database_url, "verification", max_size=4)
    try:
        async with serve_asgi(create_registry_app(delay_s=3600)) as url, httpx.AsyncClient() as http:
            yield Env(pool, DataProtector.from_settings(settings), url, http, now)
    finally:
        await pool.close()
