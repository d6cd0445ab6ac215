"""Test persons the sandbox IdP signs in, one per demo outcome (verify-core opens matching cases)."""

from __future__ import annotations

import datetime as dt

import msgspec


class SandboxDocument(msgspec.Struct, frozen=True, kw_only=True):
    """One identity document as ESIA's /rs/prns/{oid}/docs element carries it."""

    doc_id: int
    doc_type: str  # "RF_PASSPORT", "FID_DOC"
    series: str = ""
    number: str = ""
    issue_date: dt.date | None = None
    issuer_code: str = ""  # ESIA's issueId, NNN-NNN
    issued_by: str = ""


class SandboxPerson(msgspec.Struct, frozen=True, kw_only=True):
    oid: str
    last_name: str
    first_name: str
    middle_name: str = ""
    birth_date: dt.date
    trusted: bool  # ESIA is_tru / trusted
    mobile: str  # E.164, a verified MBT contact
    documents: tuple[SandboxDocument, ...] = ()
    note: str = ""  # what the login page says this person demonstrates

    @property
    def display_name(self) -> str:
        return " ".join(part for part in (self.last_name, self.first_name, self.middle_name) if part)


PERSONS: tuple[SandboxPerson, ...] = (
    SandboxPerson(
        oid="1000000001",
        last_name="Иванов",
        first_name="Иван",
        middle_name="Иванович",
        birth_date=dt.date(1985, 4, 12),
        trusted=True,
        mobile="+79161234567",
        documents=(
            SandboxDocument(
                doc_id=20000001,
                doc_type="RF_PASSPORT",
                series="4510",
                number="123456",
                issue_date=dt.date(2010, 5, 20),
                issuer_code="770-001",
                issued_by="ОВД района Арбат г. Москвы",
            ),
        ),
        note="matches the demo case",
    ),
    SandboxPerson(
        oid="1000000002",
        last_name="Петрова",
        first_name="Анна",
        middle_name="Сергеевна",
        birth_date=dt.date(1990, 1, 31),
        trusted=True,
        mobile="+79161234568",
        documents=(
            SandboxDocument(
                doc_id=20000002,
                doc_type="RF_PASSPORT",
                series="4511",
                # The demo case says 654321: this person is the mismatch.
                number="654322",
                issue_date=dt.date(2015, 3, 3),
                issuer_code="770-002",
                issued_by="ОУФМС России по г. Москве",
            ),
        ),
        note="passport number differs from the case (mismatch)",
    ),
    SandboxPerson(
        oid="1000000003",
        last_name="Сидоров",
        first_name="Пётр",
        middle_name="Ильич",
        birth_date=dt.date(1979, 7, 7),
        trusted=False,
        mobile="+79161234569",
        documents=(
            SandboxDocument(
                doc_id=20000003,
                doc_type="RF_PASSPORT",
                series="4512",
                number="111222",
                issue_date=dt.date(2009, 9, 9),
                issuer_code="770-003",
                issued_by="ОВД района Хамовники г. Москвы",
            ),
        ),
        note="account not confirmed (is_tru=false)",
    ),
    SandboxPerson(
        oid="1000000004",
        last_name="Smith",
        first_name="John",
        birth_date=dt.date(1980, 2, 2),
        trusted=True,
        mobile="+79161234570",
        documents=(
            SandboxDocument(
                doc_id=20000004,
                doc_type="FID_DOC",
                series="",
                number="533380006",
                issue_date=dt.date(2018, 6, 1),
                issued_by="United Kingdom",
            ),
        ),
        note="foreign passport only",
    ),
)


def person_by_oid(oid: str) -> SandboxPerson | None:
    return next((person for person in PERSONS if person.oid == oid), None)
