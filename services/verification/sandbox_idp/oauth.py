"""ESIA's OAuth endpoints (v2/ac, the login and consent pages, v3/te, the token key); signature checks."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import html
import json
import secrets
import time
import urllib.parse
import uuid
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from joserfc import jwt
from litestar import Request, Response, get, post
from litestar.params import URLEncodedBody

from services.verification.identity.gost_keys import GostCertificate, GostKeyError, certificate_hash
from services.verification.sandbox_idp.persons import PERSONS, SandboxPerson, person_by_oid
from services.verification.sandbox_idp.state import (
    CODE_TTL_S,
    ERROR_TEXT,
    OAUTH_ERROR,
    TIMESTAMP_SKEW_S,
    TOKEN_TTL_S,
    Authorization,
    EsiaRejection,
    Grant,
    SandboxState,
    apply_delay,
    html_page,
    sandbox_of,
)

Form = URLEncodedBody[dict[str, str]]


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


@get("/aas/oauth2/v2/ac")
async def authorize(request: Request[Any, Any, Any]) -> Response[str]:
    sandbox = sandbox_of(request)
    params = dict(request.query_params)
    sandbox.requests.append({"endpoint": "ac", **params})
    redirect_uri = params.get("redirect_uri", "")
    if not redirect_uri.startswith(("http://", "https://")):
        # Nowhere safe to send the browser back to: ESIA shows its own error page.
        return html_page("Ошибка ESIA-007023", "<p>Адрес перенаправления не указан или неверен.</p>", 400)
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
    await apply_delay(fault)
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
    return html_page("Вход через Госуслуги", body)


@post("/sandbox/login")
async def login(
    request: Request[Any, Any, Any],
    data: Form,
) -> Response[str]:
    sandbox = sandbox_of(request)
    pending = sandbox.pending.get(data.get("auth_id", ""))
    if pending is None:
        return html_page("Сессия истекла", "<p>Начните вход заново.</p>", 400)
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
    return html_page("Предоставление прав доступа", body)


@post("/sandbox/consent")
async def consent(
    request: Request[Any, Any, Any],
    data: Form,
) -> Response[str]:
    sandbox = sandbox_of(request)
    pending = sandbox.pending.pop(data.get("auth_id", ""), None)
    if pending is None or not pending.oid:
        return html_page("Сессия истекла", "<p>Начните вход заново.</p>", 400)
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
    sandbox = sandbox_of(request)
    sandbox.requests.append({"endpoint": "te", **data})
    fault = sandbox.take_fault("te")
    await apply_delay(fault)
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


@get(["/jwks", "/.well-known/jwks.json"])
async def jwks(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Not an ESIA endpoint: the sandbox publishes its token key so clients can pin it."""
    return {"keys": [sandbox_of(request).key.as_dict(private=False)]}


ROUTES = [authorize, login, consent, token]  # jwks is not ESIA's: the factory lists it apart
