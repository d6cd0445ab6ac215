"""The person resources under /rs/prns as ESIA answers them (bearer token checked, faults applied)."""

from __future__ import annotations

import datetime as dt
import secrets
import time
from typing import Any

from joserfc import jwt
from litestar import Request, get
from litestar.params import FromPath

from services.verification.sandbox_idp.persons import SandboxPerson, person_by_oid
from services.verification.sandbox_idp.state import RestError, apply_delay, sandbox_of


def _bearer_oid(request: Request[Any, Any, Any], oid: str) -> SandboxPerson:
    sandbox = sandbox_of(request)
    header = request.headers.get("authorization", "")
    if not header.startswith("Bearer "):
        raise RestError(401, "ESIA-008010", "no bearer token")
    try:
        claims = jwt.decode(header[7:], sandbox.key, algorithms=["RS256"]).claims
    except Exception:
        raise RestError(401, "ESIA-008010", "invalid token") from None
    if claims.get("exp", 0) < time.time() or str(claims.get("urn:esia:sbj_id")) != oid:
        raise RestError(403, "ESIA-007019", "token is not for this person")
    person = person_by_oid(oid)
    if person is None:
        raise RestError(404, "ESIA-007003", "no such person")
    return person


def _esia_date(value: dt.date | None) -> str:
    return value.strftime("%d.%m.%Y") if value else ""


def _documents(person: SandboxPerson) -> list[dict[str, Any]]:
    return [
        {
            "stateFacts": ["EntityRoot"],
            "id": doc.doc_id,
            "type": doc.doc_type,
            "vrfStu": "VERIFIED",
            "series": doc.series,
            "number": doc.number,
            "issueDate": _esia_date(doc.issue_date),
            "issueId": doc.issuer_code.replace("-", ""),
            "issuedBy": doc.issued_by,
            "eTag": f"doc-{doc.doc_id}",
        }
        for doc in person.documents
    ]


def _contacts(person: SandboxPerson) -> list[dict[str, Any]]:
    digits = person.mobile.lstrip("+")
    # ESIA writes Russian mobiles as +7(916)1234567.
    value = f"+{digits[0]}({digits[1:4]}){digits[4:]}" if digits.startswith("7") else person.mobile
    return [
        {
            "stateFacts": ["Identifiable"],
            "id": int(person.oid) * 10 + 1,
            "type": "MBT",
            "vrfStu": "VERIFIED",
            "value": value,
            "eTag": f"ctt-{person.oid}",
        }
    ]


def _collection(request: Request[Any, Any, Any], path: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    embed = "elements" in request.query_params.get("embed", "")
    base = str(request.base_url).rstrip("/")
    elements: list[Any] = items if embed else [f"{base}{path}/{item['id']}" for item in items]
    return {"stateFacts": ["hasSize"], "size": len(items), "eTag": secrets.token_hex(8), "elements": elements}


async def _prns_fault(request: Request[Any, Any, Any]) -> None:
    fault = sandbox_of(request).take_fault("prns")
    await apply_delay(fault)
    if fault is not None and fault.error:
        raise RestError(
            500 if fault.error in ("ESIA-007007", "ESIA-007008") else 400, fault.error, "injected"
        )


@get("/rs/prns/{oid:str}")
async def person_resource(request: Request[Any, Any, Any], oid: FromPath[str]) -> dict[str, Any]:
    await _prns_fault(request)
    person = _bearer_oid(request, oid)
    body: dict[str, Any] = {
        "stateFacts": ["EntityRoot"],
        "eTag": f"prn-{person.oid}",
        "firstName": person.first_name,
        "lastName": person.last_name,
        "middleName": person.middle_name,
        "birthDate": _esia_date(person.birth_date),
        "gender": "M",
        "trusted": person.trusted,
        "verifying": False,
        "citizenship": "RUS" if any(d.doc_type == "RF_PASSPORT" for d in person.documents) else "GBR",
        "status": "REGISTERED",
        "rIdDoc": person.documents[0].doc_id if person.documents else None,
        "containsUpCfmCode": False,
    }
    embed = request.query_params.get("embed", "")
    if "documents.elements" in embed:
        body["documents"] = {
            "stateFacts": ["hasSize"],
            "size": len(person.documents),
            "elements": _documents(person),
        }
    if "contacts.elements" in embed:
        body["contacts"] = {"stateFacts": ["hasSize"], "size": 1, "elements": _contacts(person)}
    return body


@get("/rs/prns/{oid:str}/docs")
async def documents_resource(request: Request[Any, Any, Any], oid: FromPath[str]) -> dict[str, Any]:
    await _prns_fault(request)
    person = _bearer_oid(request, oid)
    return _collection(request, f"/rs/prns/{oid}/docs", _documents(person))


@get("/rs/prns/{oid:str}/docs/{doc_id:int}")
async def document_resource(
    request: Request[Any, Any, Any], oid: FromPath[str], doc_id: FromPath[int]
) -> dict[str, Any]:
    person = _bearer_oid(request, oid)
    for doc in _documents(person):
        if doc["id"] == doc_id:
            return doc
    raise RestError(404, "ESIA-007003", "no such document")


@get("/rs/prns/{oid:str}/ctts")
async def contacts_resource(request: Request[Any, Any, Any], oid: FromPath[str]) -> dict[str, Any]:
    await _prns_fault(request)
    person = _bearer_oid(request, oid)
    return _collection(request, f"/rs/prns/{oid}/ctts", _contacts(person))


@get("/rs/prns/{oid:str}/ctts/{ctt_id:int}")
async def contact_resource(
    request: Request[Any, Any, Any], oid: FromPath[str], ctt_id: FromPath[int]
) -> dict[str, Any]:
    person = _bearer_oid(request, oid)
    for contact in _contacts(person):
        if contact["id"] == ctt_id:
            return contact
    raise RestError(404, "ESIA-007003", "no such contact")


ROUTES = [person_resource, documents_resource, document_resource, contacts_resource, contact_resource]
