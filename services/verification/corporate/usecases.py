"""Corporate SIM use cases: the back office onboards companies; a company binds and unbinds its SIMs.

An employee binding opens a subscriber-verification case (reason corporate_sim) through the case use
cases, in the same transaction: the link, the SMS, the ESIA sign-in and the comparison are the subscriber
flow's own; its decision moves the SIM on (transitions.employee_case_decided).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

from services.common import db
from services.common.calendar import zone
from services.common.crypto import DataProtector, token_hash
from services.common.domain_errors import Conflict, Invalid, NotFound
from services.common.phone import PhoneRejected, parse_phone
from services.verification import store as case_store
from services.verification.corporate import store
from services.verification.corporate.domain.devices import check_imei, check_mac, needs_address
from services.verification.corporate.domain.ids import check_company_ids
from services.verification.corporate.domain.limits import LEGAL_SOURCE, NUMBER_LIMIT
from services.verification.corporate.domain.sim import COUNTED_STATUSES, Action, SimStatus, transition
from services.verification.corporate.lifecycle import CorporateFlow
from services.verification.corporate.oauth import Caller, CorporateAuth, new_client_credentials
from services.verification.corporate.schemas import (
    BindingRequest,
    ClientCreate,
    ClientCreated,
    ClientView,
    CompanyCreate,
    CompanyView,
    DeviceData,
    DeviceView,
    EmployeeData,
    KnownNumbersAdd,
    KnownNumbersAdded,
    NumberOutcome,
    NumberResult,
    NumbersAdd,
    NumbersAdded,
    PersonOverLimitView,
    RegistrationRecord,
    SimPage,
    SimView,
)
from services.verification.corporate.transitions import apply
from services.verification.domain.compare import Holder
from services.verification.domain.texts import spaced_mask
from services.verification.schemas import ACTIVE_STATUSES, CaseOpen
from services.verification.usecases import VerificationService, mask_holder

SIM_NOT_FOUND = "No SIM with this number on your contract"


def _not_found() -> NotFound:
    # One message for "not on your contract" and "not anywhere": another company's number looks like none.
    return NotFound("sim_not_found", SIM_NOT_FOUND, field="number")


def _e164(raw: str, field: str) -> str:
    try:
        return parse_phone(raw, ["RU"]).e164
    except PhoneRejected as exc:
        raise Invalid("invalid_number", f"{field}: {exc.message}", field=field) from None


def passport_key(series: str, number: str) -> str:
    """What the passport blind index is computed over (the document type is part of it)."""
    return f"RF_PASSPORT:{series}{number}"


def limit_reached(held: int) -> Conflict:
    """The refusal of a binding that would give a person more numbers than the law allows."""
    return Conflict(
        "number_limit_reached",
        f"This person already holds {held} numbers across all operators; the limit is {NUMBER_LIMIT} "
        f"({LEGAL_SOURCE})",
        field="employee.passport_number",
    )


@dataclass(slots=True)
class CorporateSims:
    """Corporate SIMs over the verification service's pool, keys and case use cases."""

    pool: db.Pool
    cases: VerificationService
    auth: CorporateAuth

    @property
    def protector(self) -> DataProtector:
        return self.cases.protector

    @property
    def flow(self) -> CorporateFlow:
        return self.cases.corporate_flow

    def _now(self) -> dt.datetime:
        return self.cases.clock.now()

    # --- back office: companies, inventory, clients ----------------------------------------------------

    async def create_company(self, data: CompanyCreate, actor: str) -> CompanyView:
        inn, ogrn, kind = check_company_ids(data.inn, data.ogrn)
        name = data.name.strip()
        if not name:
            raise Invalid("invalid_name", "name must not be blank", field="name")
        row = store.CompanyRow(
            id=uuid.uuid4(),
            name=name,
            inn=inn,
            ogrn=ogrn,
            status="active",
            created_by=actor,
            created_at=self._now(),
        )
        async with db.transaction(self.pool) as conn:
            if not await store.insert_company(conn, row):
                raise Conflict(
                    "company_exists", "A company with this INN or OGRN exists already", field="inn"
                )
        return _company_view(row, kind, 0)

    async def list_companies(self, *, limit: int, offset: int) -> list[CompanyView]:
        async with self.pool.acquire() as conn:
            rows = await store.list_companies(conn, limit=limit, offset=offset)
            return [_company_view(r, _kind(r), await store.count_sims(conn, r.id)) for r in rows]

    async def get_company(self, company_id: uuid.UUID) -> CompanyView:
        async with self.pool.acquire() as conn:
            row = await self._company(conn, company_id)
            return _company_view(row, _kind(row), await store.count_sims(conn, row.id))

    async def _company(self, conn: db.Connection, company_id: uuid.UUID) -> store.CompanyRow:
        row = await store.get_company(conn, company_id)
        if row is None:
            raise NotFound("company_not_found", f"No company {company_id}", field="company_id")
        return row

    async def add_numbers(self, company_id: uuid.UUID, data: NumbersAdd, actor: str) -> NumbersAdded:
        """Put numbers on the company's contract; each new one is an unregistered SIM. Numbers that do not
        parse or sit on another contract are reported, the rest applied."""
        now = self._now()
        results: list[NumberResult] = []
        # Each new SIM's registration deadline and timers start with it, in this transaction.
        deadline = self.flow.new_sim_deadline(now)
        new_sims: list[uuid.UUID] = []
        async with db.transaction(self.pool) as conn:
            await self._company(conn, company_id)
            for position, raw in enumerate(data.numbers):
                try:
                    e164 = parse_phone(raw, ["RU"]).e164
                except PhoneRejected as exc:
                    results.append(
                        NumberResult(index=position, number=raw[:32], outcome="invalid", reason=exc.message)
                    )
                    continue
                index = self.protector.blind_index(e164, store.MSISDN_INDEX)
                number_id = uuid.uuid4()
                number = store.NumberRow(
                    id=number_id,
                    company_id=company_id,
                    msisdn_enc=self.protector.encrypt(e164, store.MSISDN_CONTEXT, number_id),
                    msisdn_index=index,
                    msisdn_masked=spaced_mask(e164),
                    added_at=now,
                )
                if await store.insert_number(conn, number):
                    sim = store.SimRow(
                        id=uuid.uuid4(),
                        company_id=company_id,
                        number_id=number_id,
                        status="unregistered",
                        deadline=deadline.deadline,
                        created_at=now,
                        updated_at=now,
                    )
                    await store.insert_sim(conn, sim)
                    await store.add_sim_timeline(
                        conn, company_id, sim.id, at=now, kind="added_to_contract", actor=actor
                    )
                    new_sims.append(sim.id)
                    results.append(NumberResult(index=position, number=e164, outcome="added"))
                    continue
                owner = await store.number_owner(conn, index)
                outcome: NumberOutcome = (
                    "already_on_contract" if owner == company_id else "on_another_contract"
                )
                reason = "" if owner == company_id else "the number is on another company's contract"
                results.append(NumberResult(index=position, number=e164, outcome=outcome, reason=reason))
            await self.flow.new_on_contract(conn, company_id, new_sims, deadline, now)
        return NumbersAdded(added=sum(r.outcome == "added" for r in results), results=results)

    async def create_client(self, company_id: uuid.UUID, data: ClientCreate, actor: str) -> ClientCreated:
        client_id, secret = new_client_credentials()
        scopes: list[str] = sorted(set(data.scopes))
        async with db.transaction(self.pool) as conn:
            company = await self._company(conn, company_id)
            if company.status != "active":
                raise Conflict("company_not_active", f"The company is {company.status}", field="company_id")
            await store.insert_client(
                conn,
                store.ClientRow(
                    client_id=client_id,
                    company_id=company_id,
                    name=data.name.strip(),
                    secret_hash=token_hash(secret),
                    scopes=scopes,
                    created_by=actor,
                    created_at=self._now(),
                ),
            )
        return ClientCreated(
            client_id=client_id,
            client_secret=secret,
            company_id=company_id,
            scopes=scopes,
            token_url=f"{self.auth.issuer}/oauth/token",
        )

    async def list_clients(self, company_id: uuid.UUID) -> list[ClientView]:
        async with self.pool.acquire() as conn:
            await self._company(conn, company_id)
            rows = await store.list_clients(conn, company_id)
        return [
            ClientView(
                client_id=r.client_id,
                name=r.name,
                scopes=r.scopes,
                created_at=r.created_at,
                revoked_at=r.revoked_at,
            )
            for r in rows
        ]

    async def revoke_client(self, company_id: uuid.UUID, client_id: str) -> None:
        """Its tokens stop working at once (every request checks the client), not only at expiry."""
        async with db.transaction(self.pool) as conn:
            if not await store.revoke_client(conn, company_id, client_id, self._now()):
                raise NotFound("client_not_found", "No active client with this id", field="client_id")

    # --- back office: the 20-number limit --------------------------------------------------------------

    async def add_known_numbers(self, data: KnownNumbersAdd, actor: str) -> KnownNumbersAdded:
        person = self.protector.blind_index(
            passport_key(data.passport_series, data.passport_number), store.PASSPORT_INDEX
        )
        numbers = [_e164(raw, f"numbers[{i}]") for i, raw in enumerate(data.numbers)]
        now = self._now()
        added = 0
        async with db.transaction(self.pool) as conn:
            for e164 in numbers:
                index = self.protector.blind_index(e164, store.MSISDN_INDEX)
                added += await store.add_known_number(
                    conn,
                    person,
                    index,
                    spaced_mask(e164),
                    operator=data.operator.strip(),
                    added_by=actor,
                    at=now,
                )
            total = await store.count_person_numbers(conn, person, sorted(COUNTED_STATUSES))
        return KnownNumbersAdded(added=added, total_for_person=total)

    async def people_over_limit(self, *, limit: int, offset: int) -> list[PersonOverLimitView]:
        async with self.pool.acquire() as conn:
            rows = await store.people_over_limit(
                conn, sorted(COUNTED_STATUSES), NUMBER_LIMIT, page_size=limit, offset=offset
            )
        return [
            PersonOverLimitView(
                person=r.passport_index.hex()[:16],
                name=r.employee_masked,
                numbers=r.numbers,
                limit=NUMBER_LIMIT,
                companies=r.companies,
            )
            for r in rows
        ]

    # --- the company's API -----------------------------------------------------------------------------

    async def list_sims(
        self,
        caller: Caller,
        *,
        status: SimStatus | None,
        binding: str | None,
        deadline_before: dt.datetime | None,
        deadline_after: dt.datetime | None,
        number: str | None,
        page: int,
        page_size: int,
    ) -> SimPage:
        index = (
            None
            if number is None
            else self.protector.blind_index(_e164(number, "number"), store.MSISDN_INDEX)
        )
        async with self.pool.acquire() as conn:
            company = await self._company(conn, caller.company_id)
            rows = await store.list_sims(
                conn,
                caller.company_id,
                status=status,
                binding=binding,
                deadline_before=deadline_before,
                deadline_after=deadline_after,
                msisdn_index=index,
                limit=page_size + 1,
                offset=(page - 1) * page_size,
            )
            items = [await self._view(conn, company, r) for r in rows[:page_size]]
        return SimPage(
            items=items, page=page, page_size=page_size, next_page=page + 1 if len(rows) > page_size else None
        )

    async def get_sim(self, caller: Caller, number: str) -> SimView:
        index = self.protector.blind_index(_e164(number, "number"), store.MSISDN_INDEX)
        async with self.pool.acquire() as conn:
            found = await store.sim_by_number(conn, caller.company_id, index)
            if found is None:
                raise _not_found()
            return await self._view(conn, await self._company(conn, caller.company_id), found)

    async def bind(
        self, caller: Caller, number: str, data: BindingRequest, *, replace: bool
    ) -> tuple[SimView, bool]:
        """(the SIM, whether it changed). POST binds an unbound SIM (409 if bound); PUT sets the binding,
        replacing any other one, and is a no-op when the same binding is sent again."""
        e164 = _e164(number, "number")
        if (data.employee is None) == (data.device is None):
            raise Invalid("binding_kind", "send exactly one of `employee` and `device`", field="employee")
        holder = None if data.employee is None else self._check_employee(data.employee, e164)
        now = self._now()
        device: dict[str, object] | None = None
        if data.device is not None:
            device = {
                **_check_device(data.device),
                "use_from": _check_use_from(data.device, now, self.flow.tz),
            }
        index = self.protector.blind_index(e164, store.MSISDN_INDEX)
        async with db.transaction(self.pool) as conn:
            found = await store.sim_by_number(conn, caller.company_id, index, lock=True)
            if found is None:
                raise _not_found()
            company = await self._company(conn, caller.company_id)
            sim = found.sim
            if replace and self._same_binding(sim, holder, data.employee, device):
                return await self._view(conn, company, found), False
            kind = "employee" if holder is not None else "device"
            verb = "rebind" if replace and sim.status != "unregistered" else "bind"
            action: Action = f"{verb}_{kind}"  # type: ignore[assignment]  # one of the four bind actions
            outcome = transition(sim.status, sim.binding, action)  # type: ignore[arg-type]  # the check constraint
            await self._end_case(conn, sim, caller.who, "the SIM was rebound", now)
            if holder is not None and data.employee is not None:
                fields = await self._employee_fields(
                    conn, caller=caller, sim=sim, e164=e164, holder=holder, employee=data.employee, now=now
                )
            else:
                fields = {**(device or {}), "bound_at": now}
            new = await apply(conn, found, outcome, flow=self.flow, actor=caller.who, now=now, binding=fields)
            return await self._view(conn, company, msgspec.structs.replace(found, sim=new)), True

    async def unbind(self, caller: Caller, number: str) -> SimView:
        index = self.protector.blind_index(_e164(number, "number"), store.MSISDN_INDEX)
        now = self._now()
        async with db.transaction(self.pool) as conn:
            found = await store.sim_by_number(conn, caller.company_id, index, lock=True)
            if found is None:
                raise _not_found()
            outcome = transition(found.sim.status, found.sim.binding, "unbind")  # type: ignore[arg-type]
            await self._end_case(conn, found.sim, caller.who, "the SIM was unbound", now)
            new = await apply(conn, found, outcome, flow=self.flow, actor=caller.who, now=now)
            company = await self._company(conn, caller.company_id)
            return await self._view(conn, company, msgspec.structs.replace(found, sim=new))

    # --- helpers ---------------------------------------------------------------------------------------

    def _check_employee(self, employee: EmployeeData, e164: str) -> Holder:
        """The subscriber flow's own checks (names, dates, zone), with fields named under `employee.`."""
        as_case = CaseOpen(
            msisdn=e164,
            reason="regulator_request",  # irrelevant to the checks; the case is opened as corporate_sim
            **{f: getattr(employee, f) for f in HOLDER_FIELDS},
            lang=employee.lang,
            tz=employee.tz,
        )
        try:
            self.cases.check_open(as_case)
        except Invalid as exc:
            raise Invalid(exc.code, f"employee.{exc.message}", field=f"employee.{exc.field}") from None
        return Holder(
            last_name=employee.last_name.strip(),
            first_name=employee.first_name.strip(),
            middle_name=employee.middle_name.strip(),
            birth_date=employee.birth_date,
            passport_series=employee.passport_series,
            passport_number=employee.passport_number,
            passport_issue_date=employee.passport_issue_date,
            passport_issuer_code=employee.passport_issuer_code,
        )

    def _same_binding(
        self,
        sim: store.SimRow,
        holder: Holder | None,
        employee: EmployeeData | None,
        device: dict[str, object] | None,
    ) -> bool:
        if sim.status == "rejected":
            return False  # sending it again after a rejection is a new attempt
        if device is not None:
            return sim.binding == "device" and all(getattr(sim, k) == v for k, v in device.items())
        if holder is None or employee is None or sim.binding != "employee" or sim.employee_enc is None:
            return False
        stored = msgspec.json.decode(
            self.protector.decrypt(sim.employee_enc, store.EMPLOYEE_CONTEXT, sim.id), type=StoredEmployee
        )
        return stored == StoredEmployee(holder=holder, lang=employee.lang, tz=employee.tz)

    async def _employee_fields(
        self,
        conn: db.Connection,
        *,
        caller: Caller,
        sim: store.SimRow,
        e164: str,
        holder: Holder,
        employee: EmployeeData,
        now: dt.datetime,
    ) -> dict[str, object]:
        """Check the person's number limit, open their verification case; the binding's columns."""
        person = self.protector.blind_index(
            passport_key(holder.passport_series, holder.passport_number), store.PASSPORT_INDEX
        )
        # Serialise binds of this person across companies: two cannot both take the last place.
        await store.lock_person(conn, person)
        held = await store.count_person_numbers(conn, person, sorted(COUNTED_STATUSES), except_sim=sim.id)
        if held >= NUMBER_LIMIT:
            raise limit_reached(held)
        return await self.employee_binding(
            conn, caller=caller, sim=sim, e164=e164, holder=holder, employee=employee, now=now, person=person
        )

    async def employee_binding(
        self,
        conn: db.Connection,
        *,
        caller: Caller,
        sim: store.SimRow,
        e164: str,
        holder: Holder,
        employee: EmployeeData,
        now: dt.datetime,
        person: bytes,
    ) -> dict[str, Any]:
        """Open the employee's verification case; the binding's columns (the caller checked the limit)."""
        case_id, created = await self.cases.open_case_in(
            conn,
            msisdn=e164,
            holder=holder,
            reason="corporate_sim",
            lang=employee.lang,
            tz=employee.tz,
            actor=caller.who,
            now=now,
        )
        if not created:
            raise Conflict(
                "verification_case_open",
                "The number has an open subscriber-verification case; bind it once that case is closed",
                field="number",
            )
        stored = StoredEmployee(holder=holder, lang=employee.lang, tz=employee.tz)
        return {
            "employee_enc": self.protector.encrypt(
                msgspec.json.encode(stored).decode(), store.EMPLOYEE_CONTEXT, sim.id
            ),
            "employee_masked": mask_holder(holder).name,
            "passport_index": person,
            "case_id": case_id,
            "bound_at": now,
        }

    async def _end_case(
        self, conn: db.Connection, sim: store.SimRow, actor: str, why: str, now: dt.datetime
    ) -> None:
        """The employee's pending case ends with their binding (its link then says so)."""
        if sim.case_id is None:
            return
        row = await case_store.get_case(conn, sim.case_id, lock=True)
        if row is not None and row.status in ACTIVE_STATUSES:
            await self.cases.cancel_in(conn, row, actor, why, now)

    async def _view(
        self, conn: db.Connection, company: store.CompanyRow, found: store.SimWithNumber
    ) -> SimView:
        sim = found.sim
        employee = None
        if sim.employee_enc is not None:
            stored = msgspec.json.decode(
                self.protector.decrypt(sim.employee_enc, store.EMPLOYEE_CONTEXT, sim.id), type=StoredEmployee
            )
            employee = mask_holder(stored.holder)
        device = None
        if sim.binding == "device" and sim.device_type is not None:
            device = DeviceView(
                type=sim.device_type,
                name=sim.device_name or "",
                imei=sim.device_id if sim.device_id_kind == "imei" else None,
                mac=sim.device_id if sim.device_id_kind == "mac" else None,
                installation_address=sim.installation_address,
                use_from=sim.use_from,
            )
        link = None
        if sim.status == "pending_employee_confirmation" and sim.case_id is not None:
            link = await self.cases.current_link(conn, sim.case_id)
        own = self.cases.own
        return SimView(
            number=self.protector.decrypt(found.msisdn_enc, store.MSISDN_CONTEXT, sim.number_id),
            status=sim.status,  # type: ignore[arg-type]  # the table's check constraint
            status_reason=sim.status_reason,
            deadline=sim.deadline,
            version=sim.version,
            binding=sim.binding,  # type: ignore[arg-type]
            employee=employee,
            device=device,
            confirmation_link=link,
            registration=RegistrationRecord(
                owner_inn=company.inn,
                owner_name=company.name,
                operator_name=own.verification_operator_name,
                operator_ogrn=own.verification_operator_ogrn,
            ),
            bound_at=sim.bound_at,
            updated_at=sim.updated_at,
        )


class StoredEmployee(msgspec.Struct, frozen=True, kw_only=True):
    """What sims.employee_enc holds (one encrypted JSON value)."""

    holder: Holder
    lang: str = "ru"
    tz: str = "Europe/Moscow"


# The employee's fields a binding carries, in the order a person reads them (the bulk CSV's columns too).
HOLDER_FIELDS = (
    "last_name",
    "first_name",
    "middle_name",
    "birth_date",
    "passport_series",
    "passport_number",
    "passport_issue_date",
    "passport_issuer_code",
)


# How far ahead a device's start date may be: further than this is a typo, not a plan (and the deadline
# it would set is later than any policy's anyway).
USE_FROM_HORIZON = dt.timedelta(days=3 * 366)


def _check_device(device: DeviceData) -> dict[str, str | None]:
    """The device binding's columns, each value checked (IMEI Luhn, MAC form, address where required)."""
    if (device.imei is None) == (device.mac is None):
        raise Invalid(
            "device_identifier", "send exactly one of device.imei and device.mac", field="device.imei"
        )
    if device.imei is not None:
        kind, identifier = "imei", check_imei(device.imei)
    else:
        kind, identifier = "mac", check_mac(device.mac or "")
    name = device.name.strip()
    if not name:
        raise Invalid("invalid_device_name", "device.name must not be blank", field="device.name")
    address = (device.installation_address or "").strip() or None
    if needs_address(device.type) and address is None:
        raise Invalid(
            "installation_address_required",
            f"a {device.type} is stationary equipment: its installation address is required (Decree 844)",
            field="device.installation_address",
        )
    return {
        "device_type": device.type,
        "device_name": name,
        "device_id_kind": kind,
        "device_id": identifier,
        "installation_address": address,
    }


def _check_use_from(device: DeviceData, now: dt.datetime, tz: str) -> dt.date | None:
    """The device's start date: not in the past, not absurdly far ahead."""
    if device.use_from is None:
        return None
    # "Today" is the operator's calendar day, the one deadlines are counted in.
    today = now.astimezone(zone(tz)).date()
    if device.use_from < today:
        raise Invalid(
            "use_from_in_past",
            f"device.use_from {device.use_from.isoformat()} is in the past (today is {today.isoformat()} "
            f"in {tz}); send the day the device starts service",
            field="device.use_from",
        )
    if device.use_from > today + USE_FROM_HORIZON:
        raise Invalid(
            "use_from_too_far",
            f"device.use_from {device.use_from.isoformat()} is more than 3 years ahead",
            field="device.use_from",
        )
    return device.use_from


def _kind(row: store.CompanyRow) -> str:
    return "entrepreneur" if len(row.ogrn) == 15 else "legal_entity"


def _company_view(row: store.CompanyRow, kind: str, sims: int) -> CompanyView:
    return CompanyView(
        id=row.id,
        name=row.name,
        inn=row.inn,
        ogrn=row.ogrn,
        kind=kind,  # type: ignore[arg-type]
        status=row.status,
        created_at=row.created_at,
        sims=sims,
    )
