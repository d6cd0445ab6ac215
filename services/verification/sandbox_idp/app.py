"""The sandbox ESIA: v2/ac, v3/te and /rs/prns as ESIA answers them, checking our signed client_secret."""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hmac
import html
import json
import re
import secrets
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from joserfc import jwt
from joserfc.jwk import RSAKey
from litestar import Litestar, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody, URLEncodedBody

from services.verification.identity.gost_keys import (
    GostCertificate,
    GostKeyError,
    certificate_hash,
    from_pem,
)
from services.verification.sandbox_idp.persons import PERSONS, SandboxPerson, person_by_oid

ISSUER = "http://esia.gosuslugi.ru/"
Form = URLEncodedBody[dict[str, str]]
TIMESTAMP_SKEW_S = 300  # how far the request timestamp may be from our clock before ESIA-007015
CODE_TTL_S = 300
TOKEN_TTL_S = 3600
# Faults a test or a person can inject: an ESIA error at a step, a slow answer, or a broken token.
FAULT_STEPS = ("ac", "te", "prns")
TOKEN_FAULTS = ("expired", "other_client", "tampered", "wrong_state", "garbage", "wrong_issuer")

ERROR_TEXT = {
    "ESIA-007002": "Несоответствие сертификата и мнемоники",
    "ESIA-007004": "Владелец ресурса отклонил запрос",
    "ESIA-007005": "Тип запроса не поддерживается",
    "ESIA-007007": "Внутренняя ошибка ЕСИА",
    "ESIA-007008": "Сервис временно недоступен",
    "ESIA-007011": "Неверный авторизационный код",
    "ESIA-007013": "Не указана область доступа",
    "ESIA-007014": "Не указан обязательный параметр",
    "ESIA-007015": "Неверное время запроса",
    "ESIA-007023": "Адрес перенаправления не зарегистрирован",
    "ESIA-007053": "Неверная подпись запроса (client_secret) или хэш сертификата",
    "ESIA-007055": "Вход в систему осуществляется с неподтвержденной учетной записью",
}
OAUTH_ERROR = {
    "ESIA-007004": "access_denied",
    "ESIA-007007": "server_error",
    "ESIA-007008": "temporarily_unavailable",
    "ESIA-007055": "access_denied",
}


@dataclass
class Fault:
    step: str
    error: str = ""  # an ESIA code, e.g. "ESIA-007007"
    delay_s: float = 0.0
    token: str = ""  # one of TOKEN_FAULTS (te step)
    times: int = 1  # how many requests it hits; then it is gone


@dataclass
class Authorization:
    client_id: str
    scope: str
    state: str
    redirect_uri: str
    oid: str = ""


@dataclass
class Grant:
    client_id: str
    scope: str
    redirect_uri: str
    oid: str
    expires_at: float


@dataclass
class SandboxState:
    """In memory on purpose: this is a stand-in with one process, restarted at will."""

    clients: dict[str, bytes]  # client_id -> certificate DER
    key: RSAKey
    issuer: str = ISSUER
    pending: dict[str, Authorization] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)  # what clients sent, for tests

    def take_fault(self, step: str) -> Fault | None:
        for fault in self.faults:
            if fault.step == step:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None


class EsiaRejection(Exception):
    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail or ERROR_TEXT.get(code, "")


def _state(request: Request[Any, Any, Any]) -> SandboxState:
    sandbox: SandboxState = request.app.state.sandbox
    return sandbox


def _b64(value: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise EsiaRejection("ESIA-007053", "client_secret is not base64url") from None


def verify_client_secret(cert_der: bytes, message: bytes, secret: str) -> bool:
    """ESIA's check: the signature verifies against the registered certificate (GOST, or legacy RSA)."""
    signature = _b64(secret)
    try:
        return GostCertificate(cert_der).verify(message, signature)
    except GostKeyError:
        pass
    public = x509.load_der_x509_certificate(cert_der).public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        return False
    try:
        public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def _check_client(sandbox: SandboxState, params: dict[str, str], signed: list[str]) -> None:
    required = [*signed, "client_certificate_hash", "client_secret"]
    missing = [name for name in required if not params.get(name)]
    if missing:
        raise EsiaRejection("ESIA-007014", f"missing {', '.join(missing)}")
    cert = sandbox.clients.get(params["client_id"])
    if cert is None:
        raise EsiaRejection("ESIA-007002", "unknown client_id")
    try:
        moment = dt.datetime.strptime(params["timestamp"], "%Y.%m.%d %H:%M:%S %z")
    except ValueError:
        raise EsiaRejection("ESIA-007015", "timestamp is not yyyy.MM.dd HH:mm:ss ±hhmm") from None
    if abs(moment.timestamp() - time.time()) > TIMESTAMP_SKEW_S:
        raise EsiaRejection("ESIA-007015")
    try:
        uuid.UUID(params["state"], version=4)
    except ValueError:
        raise EsiaRejection("ESIA-007003", "state is not a UUID") from None
    # The hash is of the certificate's DER form: a hash of the PEM text is the classic 007053.
    if not hmac.compare_digest(params["client_certificate_hash"].upper(), certificate_hash(cert)):
        raise EsiaRejection("ESIA-007053", "client_certificate_hash does not match the certificate")
    message = "".join(params[name] for name in signed).encode()
    if not verify_client_secret(cert, message, params["client_secret"]):
        raise EsiaRejection("ESIA-007053")


def _error_redirect(redirect_uri: str, code: str, state: str, detail: str = "") -> Response[str]:
    query = {
        "error": OAUTH_ERROR.get(code, "invalid_request"),
        "error_description": f"{code}: {detail or ERROR_TEXT.get(code, '')}",
        "state": state,
    }
    return _redirect(redirect_uri, query)


def _redirect(base: str, query: dict[str, str]) -> Response[str]:
    joiner = "&" if "?" in base else "?"
    return Response("", status_code=302, headers={"Location": base + joiner + urllib.parse.urlencode(query)})


def _page(title: str, body: str, status_code: int = 200) -> Response[str]:
    document = (
        '<!doctype html><html lang="ru"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:1rem auto;padding:0 1rem}"
        "button{font-size:1rem;padding:.6rem 1rem;margin:.25rem 0;width:100%;text-align:left}"
        ".note{color:#555;font-size:.9rem}</style></head>"
        "<body><p class=note>Песочница ЕСИА · ESIA sandbox</p>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return Response(document, status_code=status_code, media_type="text/html; charset=utf-8")


async def _apply_delay(fault: Fault | None) -> None:
    if fault is not None and fault.delay_s > 0:
        await asyncio.sleep(fault.delay_s)


@get("/aas/oauth2/v2/ac")
async def authorize(request: Request[Any, Any, Any]) -> Response[str]:
    sandbox = _state(request)
    params = dict(request.query_params)
    sandbox.requests.append({"endpoint": "ac", **params})
    redirect_uri = params.get("redirect_uri", "")
    if not redirect_uri.startswith(("http://", "https://")):
        # Nowhere safe to send the browser back to: ESIA shows its own error page.
        return _page("Ошибка ESIA-007023", "<p>Адрес перенаправления не указан или неверен.</p>", 400)
    state = params.get("state", "")
    try:
        if params.get("response_type") != "code":
            raise EsiaRejection("ESIA-007003", "response_type must be code")
        if "openid" not in params.get("scope", "").split():
            raise EsiaRejection("ESIA-007013")
        _check_client(sandbox, params, ["client_id", "scope", "timestamp", "state", "redirect_uri"])
    except EsiaRejection as rejection:
        return _error_redirect(redirect_uri, rejection.code, state, rejection.detail)
    fault = sandbox.take_fault("ac")
    await _apply_delay(fault)
    if fault is not None and fault.error:
        return _error_redirect(redirect_uri, fault.error, state)
    auth_id = secrets.token_urlsafe(16)
    sandbox.pending[auth_id] = Authorization(
        client_id=params["client_id"], scope=params["scope"], state=state, redirect_uri=redirect_uri
    )
    return _login_page(auth_id)


def _login_page(auth_id: str) -> Response[str]:
    buttons = "".join(
        f'<button name="oid" value="{p.oid}">{html.escape(p.display_name)}'
        f" <span class=note>({html.escape(p.note)})</span></button>"
        for p in PERSONS
    )
    errors = "".join(
        f'<button name="error" value="{code}">{code}: {html.escape(ERROR_TEXT[code])}</button>'
        for code in ("ESIA-007004", "ESIA-007007", "ESIA-007015", "ESIA-007055")
    )
    body = (
        f'<form method="post" action="/sandbox/login"><input type="hidden" name="auth_id" value="{auth_id}">'
        f"<h2>Войти как · Sign in as</h2>{buttons}"
        f"<h2>Или ответить ошибкой · Or answer with an error</h2>{errors}</form>"
    )
    return _page("Вход через Госуслуги", body)


@post("/sandbox/login")
async def login(
    request: Request[Any, Any, Any],
    data: Form,
) -> Response[str]:
    sandbox = _state(request)
    pending = sandbox.pending.get(data.get("auth_id", ""))
    if pending is None:
        return _page("Сессия истекла", "<p>Начните вход заново.</p>", 400)
    if data.get("error") in ERROR_TEXT:
        del sandbox.pending[data["auth_id"]]
        return _error_redirect(pending.redirect_uri, data["error"], pending.state)
    person = person_by_oid(data.get("oid", ""))
    if person is None:
        return _login_page(data["auth_id"])
    pending.oid = person.oid
    scopes = "".join(f"<li>{html.escape(s)}</li>" for s in pending.scope.split())
    body = (
        f"<p>{html.escape(person.display_name)}</p>"
        f"<p>Система <b>{html.escape(pending.client_id)}</b> запрашивает доступ к данным:</p>"
        f"<ul>{scopes}</ul>"
        f'<form method="post" action="/sandbox/consent"><input type="hidden" name="auth_id" '
        f'value="{html.escape(data["auth_id"])}">'
        '<button name="decision" value="allow">Предоставить · Allow</button>'
        '<button name="decision" value="deny">Отказать · Deny</button></form>'
    )
    return _page("Предоставление прав доступа", body)


@post("/sandbox/consent")
async def consent(
    request: Request[Any, Any, Any],
    data: Form,
) -> Response[str]:
    sandbox = _state(request)
    pending = sandbox.pending.pop(data.get("auth_id", ""), None)
    if pending is None or not pending.oid:
        return _page("Сессия истекла", "<p>Начните вход заново.</p>", 400)
    if data.get("decision") != "allow":
        return _error_redirect(pending.redirect_uri, "ESIA-007004", pending.state)
    code = secrets.token_urlsafe(24)
    sandbox.grants[code] = Grant(
        client_id=pending.client_id,
        scope=pending.scope,
        redirect_uri=pending.redirect_uri,
        oid=pending.oid,
        expires_at=time.time() + CODE_TTL_S,
    )
    return _redirect(pending.redirect_uri, {"code": code, "state": pending.state})


def _token_error(code: str, detail: str = "", status_code: int = 400) -> Response[dict[str, str]]:
    body = {
        "error": OAUTH_ERROR.get(code, "invalid_request"),
        "error_description": f"{code}: {detail or ERROR_TEXT.get(code, '')}",
    }
    return Response(body, status_code=status_code)


def _sign(sandbox: SandboxState, claims: dict[str, Any]) -> str:
    return jwt.encode({"alg": "RS256", "kid": sandbox.key.kid, "typ": "JWT"}, claims, sandbox.key)


def _tokens(sandbox: SandboxState, grant: Grant, person: SandboxPerson, fault: str) -> dict[str, str]:
    now = int(time.time())
    if fault == "expired":
        now -= 2 * TOKEN_TTL_S
    client_id = "another-system" if fault == "other_client" else grant.client_id
    issuer = "http://evil.example/" if fault == "wrong_issuer" else sandbox.issuer
    sid = str(uuid.uuid4())
    oid = int(person.oid)
    id_claims = {
        "iss": issuer,
        "sub": oid,
        "aud": client_id,
        "iat": now,
        "nbf": now,
        "exp": now + TOKEN_TTL_S,
        "auth_time": now,
        "amr": "PWD",
        "urn:esia:amd": "PWD",
        "urn:esia:sid": sid,
        "urn:esia:sbj": {
            "urn:esia:sbj:typ": "P",
            "urn:esia:sbj:is:tru": person.trusted,
            "urn:esia:sbj:oid": oid,
            "urn:esia:sbj:nam": f"OID.{oid}",
        },
    }
    access_claims = {
        "iss": issuer,
        "nbf": now,
        "iat": now,
        "exp": now + TOKEN_TTL_S,
        "scope": " ".join(f"{s}?oid={oid}" if s != "openid" else s for s in grant.scope.split()),
        "client_id": client_id,
        "urn:esia:sid": sid,
        "urn:esia:sbj_id": oid,
    }
    id_token = _sign(sandbox, id_claims)
    if fault == "tampered":
        # Swap in another person's payload and keep the original signature.
        header, _, signature = id_token.split(".")
        forged = dict(id_claims, sub=oid + 1)
        payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
        id_token = f"{header}.{payload}.{signature}"
    return {"id_token": id_token, "access_token": _sign(sandbox, access_claims)}


@post("/aas/oauth2/v3/te")
async def token(
    request: Request[Any, Any, Any],
    data: Form,
) -> Response[Any]:
    sandbox = _state(request)
    sandbox.requests.append({"endpoint": "te", **data})
    fault = sandbox.take_fault("te")
    await _apply_delay(fault)
    if fault is not None and fault.error:
        retryable = fault.error in ("ESIA-007007", "ESIA-007008")
        return _token_error(fault.error, status_code=500 if retryable else 400)
    if data.get("grant_type") != "authorization_code":
        return _token_error("ESIA-007005")
    signed = ["client_id", "scope", "timestamp", "state", "redirect_uri", "code"]
    try:
        _check_client(sandbox, data, signed)
    except EsiaRejection as rejection:
        return _token_error(rejection.code, rejection.detail)
    grant = sandbox.grants.pop(data["code"], None)
    if (
        grant is None
        or grant.expires_at < time.time()
        or grant.client_id != data["client_id"]
        or grant.redirect_uri != data["redirect_uri"]
    ):
        return _token_error("ESIA-007011")
    person = person_by_oid(grant.oid)
    assert person is not None  # grants are made for listed persons only
    broken = fault.token if fault is not None else ""
    if broken == "garbage":
        return Response("<html>502 Bad Gateway</html>", status_code=200, media_type="text/html")
    tokens = _tokens(sandbox, grant, person, broken)
    state = str(uuid.uuid4()) if broken == "wrong_state" else data["state"]
    return Response(
        {**tokens, "state": state, "token_type": "Bearer", "expires_in": TOKEN_TTL_S}, status_code=200
    )


def _bearer_oid(request: Request[Any, Any, Any], oid: str) -> SandboxPerson:
    sandbox = _state(request)
    header = request.headers.get("authorization", "")
    if not header.startswith("Bearer "):
        raise _RestError(401, "ESIA-008010", "no bearer token")
    try:
        claims = jwt.decode(header[7:], sandbox.key, algorithms=["RS256"]).claims
    except Exception:
        raise _RestError(401, "ESIA-008010", "invalid token") from None
    if claims.get("exp", 0) < time.time() or str(claims.get("urn:esia:sbj_id")) != oid:
        raise _RestError(403, "ESIA-007019", "token is not for this person")
    person = person_by_oid(oid)
    if person is None:
        raise _RestError(404, "ESIA-007003", "no such person")
    return person


class _RestError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _rest_error(_: Request[Any, Any, Any], exc: _RestError) -> Response[dict[str, str]]:
    return Response({"code": exc.code, "message": exc.message}, status_code=exc.status)


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
    fault = _state(request).take_fault("prns")
    await _apply_delay(fault)
    if fault is not None and fault.error:
        raise _RestError(
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
    raise _RestError(404, "ESIA-007003", "no such document")


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
    raise _RestError(404, "ESIA-007003", "no such contact")


@get(["/jwks", "/.well-known/jwks.json"])
async def jwks(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Not an ESIA endpoint: the sandbox publishes its token key so clients can pin it."""
    return {"keys": [_state(request).key.as_dict(private=False)]}


@post("/sandbox/faults", status_code=201)
async def add_fault(request: Request[Any, Any, Any], data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
    """Inject a fault: {"step": "ac|te|prns", "error": "ESIA-007007", "delay_s": 2, "token": "expired",
    "times": 1}. Errors may be given as "007007" too."""
    step = str(data.get("step", ""))
    error = str(data.get("error", "") or "")
    if error and not error.startswith("ESIA-"):
        error = f"ESIA-{error}"
    token_fault = str(data.get("token", "") or "")
    if step not in FAULT_STEPS or (error and not re.fullmatch(r"ESIA-\d{6}", error)):
        raise _RestError(400, "invalid", f"step must be one of {FAULT_STEPS}; error like ESIA-007007")
    if token_fault and (step != "te" or token_fault not in TOKEN_FAULTS):
        raise _RestError(400, "invalid", f"token faults are for step te: {TOKEN_FAULTS}")
    fault = Fault(
        step=step,
        error=error,
        delay_s=float(data.get("delay_s", 0) or 0),
        token=token_fault,
        times=int(data.get("times", 1) or 1),
    )
    _state(request).faults.append(fault)
    return {
        "step": fault.step,
        "error": fault.error,
        "delay_s": fault.delay_s,
        "token": fault.token,
        "times": fault.times,
    }


@delete("/sandbox/faults")
async def clear_faults(request: Request[Any, Any, Any]) -> None:
    _state(request).faults.clear()


@get("/sandbox/requests")
async def recorded_requests(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    """What clients sent to v2/ac and v3/te, oldest first (tests parse them field by field)."""
    return _state(request).requests


@get("/")
async def index(request: Request[Any, Any, Any]) -> Response[str]:
    rows = "".join(
        f"<li>{html.escape(p.display_name)}, {p.birth_date:%d.%m.%Y}, {html.escape(p.mobile)} — "
        f"{html.escape(p.note)}</li>"
        for p in PERSONS
    )
    body = (
        f"<p>Тестовые лица · Test persons:</p><ul>{rows}</ul>"
        f"<p class=note>Registered systems: {html.escape(', '.join(_state(request).clients))}</p>"
    )
    return _page("ESIA sandbox", body)


def load_certificate(data: bytes) -> bytes:
    """DER of a PEM or DER certificate file."""
    return from_pem(data, "CERTIFICATE") if data.lstrip().startswith(b"-----") else data


def create_sandbox_app(
    clients: dict[str, bytes], *, key: RSAKey | None = None, issuer: str = ISSUER
) -> Litestar:
    """The sandbox for these registered systems (client_id -> certificate, PEM or DER)."""
    signing_key = key or RSAKey.generate_key(2048, parameters={"kid": "sandbox-1", "use": "sig"})
    sandbox = SandboxState(
        clients={client_id: load_certificate(cert) for client_id, cert in clients.items()},
        key=signing_key,
        issuer=issuer,
    )
    return Litestar(
        route_handlers=[
            authorize,
            login,
            consent,
            token,
            person_resource,
            documents_resource,
            document_resource,
            contacts_resource,
            contact_resource,
            jwks,
            add_fault,
            clear_faults,
            recorded_requests,
            index,
        ],
        state=State({"sandbox": sandbox}),
        exception_handlers={_RestError: _rest_error},
        openapi_config=None,
    )
