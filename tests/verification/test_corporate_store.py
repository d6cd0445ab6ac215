"""Corporate SIM store on real PostgreSQL: the migration, tenant filters, optimistic versions, the count."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from support.harness import migrate_service

from services.common import db as dbmod
from services.common.settings import Settings
from services.verification.corporate import store

NOW = dt.datetime(2026, 11, 30, 7, 0, tzinfo=dt.UTC)


@pytest.fixture
async def conn(settings: Settings) -> AsyncIterator[dbmod.Connection]:
    await migrate_service(settings, "verification")
    connection = await dbmod.connect(settings.database_url, "verification")
    yield connection
    await connection.close()


async def company(conn: dbmod.Connection, inn: str, ogrn: str) -> uuid.UUID:
    row = store.CompanyRow(
        id=uuid.uuid4(),
        name=f"Company {inn}",
        inn=inn,
        ogrn=ogrn,
        status="active",
        created_by="t",
        created_at=NOW,
    )
    assert await store.insert_company(conn, row)
    return row.id


async def sim(conn: dbmod.Connection, company_id: uuid.UUID, number: str) -> store.SimRow:
    number_row = store.NumberRow(
        id=uuid.uuid4(),
        company_id=company_id,
        msisdn_enc=b"enc-" + number.encode(),
        msisdn_index=number.encode(),
        msisdn_masked=number[:4] + "***",
        added_at=NOW,
    )
    assert await store.insert_number(conn, number_row)
    row = store.SimRow(
        id=uuid.uuid4(),
        company_id=company_id,
        number_id=number_row.id,
        status="unregistered",
        created_at=NOW,
        updated_at=NOW,
    )
    await store.insert_sim(conn, row)
    return row


async def test_tenant_filters_and_versions(conn: dbmod.Connection) -> None:
    a = await company(conn, "7707083893", "1027700132195")
    b = await company(conn, "7736050003", "1027700070518")
    assert not await store.insert_company(
        conn,
        store.CompanyRow(
            id=uuid.uuid4(),
            name="dup",
            inn="7707083893",
            ogrn="1",
            status="active",
            created_by="t",
            created_at=NOW,
        ),
    )
    sim_a = await sim(conn, a, "+79160000001")
    await sim(conn, b, "+79160000002")

    # A number is on one live contract only.
    taken = store.NumberRow(
        id=uuid.uuid4(),
        company_id=b,
        msisdn_enc=b"x",
        msisdn_index=b"+79160000001",
        msisdn_masked="m",
        added_at=NOW,
    )
    assert not await store.insert_number(conn, taken)
    assert await store.number_owner(conn, b"+79160000001") == a

    # Company B sees nothing of A's, by id or by number.
    assert await store.get_sim(conn, b, sim_a.id) is None
    assert await store.sim_by_number(conn, b, b"+79160000001") is None
    found = await store.sim_by_number(conn, a, b"+79160000001")
    assert found is not None
    assert found.sim.id == sim_a.id
    assert found.msisdn_masked == "+791***"
    assert [s.sim.company_id for s in await store.list_sims(conn, a)] == [a]
    assert await store.count_sims(conn, b) == 1

    # Optimistic version: the second writer from the same read loses.
    bound = msgspec.structs.replace(
        sim_a,
        status="pending_submission",
        binding="device",
        device_type="meter",
        device_id="490154203237518",
        device_id_kind="imei",
    )
    assert await store.save_sim(conn, bound, expected_version=1) == 2
    assert await store.save_sim(conn, bound, expected_version=1) is None
    wrong_tenant = msgspec.structs.replace(bound, company_id=b)
    assert await store.save_sim(conn, wrong_tenant, expected_version=2) is None
    listed = await store.list_sims(conn, a, status="pending_submission", binding="device")
    assert [(s.sim.version, s.sim.device_type) for s in listed] == [(2, "meter")]

    await store.add_sim_timeline(conn, a, sim_a.id, at=NOW, kind="bound", actor="client:x", detail={"k": 1})
    assert [e.kind for e in await store.sim_timeline(conn, a, sim_a.id)] == ["bound"]
    assert await store.sim_timeline(conn, b, sim_a.id) == []


async def test_person_count_spans_companies_and_operators(conn: dbmod.Connection) -> None:
    a = await company(conn, "7707083893", "1027700132195")
    b = await company(conn, "7736050003", "1027700070518")
    person = b"passport-index"
    counted = ["pending_employee_confirmation", "pending_submission", "submitted", "accepted", "rejected"]
    for owner, number in ((a, "+79160000001"), (b, "+79160000002"), (b, "+79160000003")):
        row = await sim(conn, owner, number)
        employee = msgspec.structs.replace(
            row,
            status="pending_employee_confirmation",
            binding="employee",
            employee_enc=b"enc",
            employee_masked="Иванов И.",
            passport_index=person,
        )
        assert await store.save_sim(conn, employee, expected_version=1) == 2
    assert await store.add_known_number(
        conn, person, b"+79990000001", "+7999***", operator="other", added_by="t", at=NOW
    )
    # The same number known elsewhere counts once.
    assert await store.add_known_number(
        conn, person, b"+79160000001", "+7916***", operator="other", added_by="t", at=NOW
    )
    assert await store.count_person_numbers(conn, person, counted) == 4
    over = await store.people_over_limit(conn, counted, 3, page_size=10, offset=0)
    assert [(p.numbers, p.employee_masked, sorted(p.companies)) for p in over] == [
        (4, "Иванов И.", sorted([a, b]))
    ]
    assert await store.people_over_limit(conn, counted, 4, page_size=10, offset=0) == []
