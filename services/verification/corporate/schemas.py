"""What the corporate SIM API and its back office accept and answer (personal data leaves masked)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

import msgspec

from services.verification.corporate.domain.devices import DeviceType
from services.verification.corporate.domain.sim import SimStatus
from services.verification.schemas import HolderView, IssuerCode, Lang, Name, Number, OptionalName, Series

Scope = Literal["corporate-sims:read", "corporate-sims:write"]
Binding = Literal["employee", "device"]

# --- back office ----------------------------------------------------------------------------------------


class CompanyCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A legal entity (10-digit INN, 13-digit OGRN) or an entrepreneur (12-digit INN, 15-digit OGRNIP)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=300, description="As in the state register")]
    inn: Annotated[str, msgspec.Meta(max_length=20, description="10 or 12 digits, control digits checked")]
    ogrn: Annotated[str, msgspec.Meta(max_length=20, description="OGRN (13) or OGRNIP (15), control digit")]


class CompanyView(msgspec.Struct, kw_only=True, frozen=True):
    id: uuid.UUID
    name: str
    inn: str
    ogrn: str
    kind: Literal["legal_entity", "entrepreneur"]
    status: str
    created_at: dt.datetime
    sims: int = 0


class NumbersAdd(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Numbers on the company's contract (each becomes an unregistered SIM)."""

    numbers: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=32)]], msgspec.Meta(min_length=1, max_length=1000)
    ]


NumberOutcome = Literal["added", "already_on_contract", "on_another_contract", "invalid"]


class NumberResult(msgspec.Struct, kw_only=True, frozen=True):
    index: int  # position in the request
    number: str  # E.164 when it parsed, else as given
    outcome: NumberOutcome
    reason: str = ""


class NumbersAdded(msgspec.Struct, kw_only=True, frozen=True):
    added: int
    results: list[NumberResult]


class ClientCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(max_length=200, description="What the client is, e.g. 'HR system'")] = (
        ""
    )
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["corporate-sims:read", "corporate-sims:write"]
    )


class ClientCreated(msgspec.Struct, kw_only=True, frozen=True):
    """The secret is shown this once; only its hash is stored."""

    client_id: str
    client_secret: str
    company_id: uuid.UUID
    scopes: list[str]
    token_url: str


class ClientView(msgspec.Struct, kw_only=True, frozen=True):
    client_id: str
    name: str
    scopes: list[str]
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None


class KnownNumbersAdd(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Numbers another operator (or our own subscriber contracts) holds for one person, by passport."""

    passport_series: Series
    passport_number: Number
    operator: Annotated[
        str, msgspec.Meta(min_length=1, max_length=200, description="Whose numbers these are")
    ]
    numbers: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=32)]], msgspec.Meta(min_length=1, max_length=100)
    ]


class KnownNumbersAdded(msgspec.Struct, kw_only=True, frozen=True):
    added: int
    total_for_person: int


class PersonOverLimitView(msgspec.Struct, kw_only=True, frozen=True):
    """A person holding more numbers than the law allows (masked; the passport never leaves the service)."""

    person: str  # a stable pseudonymous id (a prefix of the passport's blind index)
    name: str  # masked, from a corporate binding ("" if known only from other operators)
    numbers: int
    limit: int
    companies: list[uuid.UUID]


# --- the company's API ----------------------------------------------------------------------------------


class EmployeeData(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The employee who uses the SIM, as in their passport; they then confirm through Gosuslugi."""

    last_name: Name
    first_name: Name
    middle_name: OptionalName = ""
    birth_date: dt.date
    passport_series: Series
    passport_number: Number
    passport_issue_date: dt.date
    passport_issuer_code: IssuerCode
    lang: Lang = "ru"
    tz: Annotated[str, msgspec.Meta(max_length=64, description="The employee's IANA zone")] = "Europe/Moscow"


class DeviceData(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The equipment that uses the SIM (Decree 844): exactly one of imei and mac."""

    type: DeviceType
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200, description="Model or purpose")]
    imei: Annotated[str, msgspec.Meta(max_length=32, description="15 digits, Luhn-checked")] | None = None
    mac: Annotated[str, msgspec.Meta(max_length=32, description="AA:BB:CC:DD:EE:FF")] | None = None
    installation_address: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=500,
                description="Required for stationary types (all but tracker, vehicle_telematics and "
                "other_mobile)",
            ),
        ]
        | None
    ) = None
    use_from: (
        Annotated[
            dt.date,
            msgspec.Meta(
                description="The day the device starts service (ISO date, today or later, in the "
                "operator's zone). Decree 844: it must be registered 3 working days before, on the Russian "
                "production calendar; the SIM's `deadline` becomes the end of that day if earlier. A date "
                "sooner than that makes the SIM overdue at once (it is reported `suspension_due` until the "
                "registry accepts it).",
                examples=["2026-12-15"],
            ),
        ]
        | None
    ) = None


class BindingRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Exactly one of `employee` and `device`."""

    employee: EmployeeData | None = None
    device: DeviceData | None = None


class DeviceView(msgspec.Struct, kw_only=True, frozen=True):
    type: str
    name: str
    imei: str | None = None
    mac: str | None = None
    installation_address: str | None = None
    use_from: dt.date | None = None


class RegistrationRecord(msgspec.Struct, kw_only=True, frozen=True):
    """The Decree 844 fields that come from the company and the operator, not from the request."""

    owner_inn: str
    owner_name: str
    operator_name: str
    operator_ogrn: str


class SimView(msgspec.Struct, kw_only=True, frozen=True):
    number: str  # E.164: the company's own number
    status: SimStatus
    status_reason: str = ""
    deadline: dt.datetime | None = None
    version: int
    binding: Binding | None = None
    employee: HolderView | None = None
    device: DeviceView | None = None
    # While the employee has not confirmed: the link they follow (also sent to the number by SMS).
    confirmation_link: str | None = None
    registration: RegistrationRecord
    bound_at: dt.datetime | None = None
    updated_at: dt.datetime


class SimPage(msgspec.Struct, kw_only=True, frozen=True):
    items: list[SimView]
    page: int
    page_size: int
    next_page: int | None = None


EMPLOYEE_EXAMPLE: dict[str, Any] = {
    "employee": {
        "last_name": "Иванов",
        "first_name": "Иван",
        "middle_name": "Иванович",
        "birth_date": "1985-04-12",
        "passport_series": "4510",
        "passport_number": "123456",
        "passport_issue_date": "2010-05-20",
        "passport_issuer_code": "770-001",
    }
}
DEVICE_EXAMPLE: dict[str, Any] = {
    "device": {
        "type": "meter",
        "name": "Меркурий 234 ARTM",
        "imei": "490154203237518",
        "installation_address": "г. Москва, ул. Тверская, д. 1, щитовая",
    }
}
# A device that starts service on a known day: registered 3 working days before it (Decree 844).
DEVICE_FROM_EXAMPLE: dict[str, Any] = {
    "device": {
        "type": "payment_terminal",
        "name": "Ingenico Move/5000",
        "imei": "356938035643809",
        "installation_address": "г. Москва, ул. Тверская, д. 1, касса 2",
        "use_from": "2026-12-15",
    }
}
SIM_EXAMPLE: dict[str, Any] = {
    "number": "+79161234567",
    "status": "pending_submission",
    "status_reason": "",
    "deadline": "2026-12-10T21:00:00Z",
    "version": 2,
    "binding": "device",
    "employee": None,
    "device": {
        "type": "meter",
        "name": "Меркурий 234 ARTM",
        "imei": "490154203237518",
        "mac": None,
        "installation_address": "г. Москва, ул. Тверская, д. 1, щитовая",
        "use_from": "2026-12-15",
    },
    "confirmation_link": None,
    "registration": {
        "owner_inn": "7707083893",
        "owner_name": "ПАО Сбербанк",
        "operator_name": "Abonent Mobile",
        "operator_ogrn": "1027700000008",
    },
    "bound_at": "2026-11-30T07:00:00Z",
    "updated_at": "2026-11-30T07:00:00Z",
}
