"""ESIA (Gosuslugi) sign-in: v2/ac authorization, v3/te exchange with a signed client_secret, /rs/prns."""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import re
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from services.verification.identity.base import (
    IdentityError,
    PassportRecord,
    PersonRecord,
    SignInStart,
)
from services.verification.identity.errors import esia_error, parse_esia_code
from services.verification.identity.gost_keys import certificate_hash
from services.verification.identity.signers import Signer, SignerError, base64url
from services.verification.identity.tokens import TokenKeys, audience_includes, check_time_claims

AUTHORIZATION_PATH = "/aas/oauth2/v2/ac"
TOKEN_PATH = "/aas/oauth2/v3/te"  # noqa: S105 - a path, not a secret
PERSON_PATH = "/rs/prns/{oid}"
# ESIA's timestamp: "2025.06.01 10:15:00 +0000" (Go layout "2006.01.02 15:04:05 -0700").
TIMESTAMP_FORMAT = "%Y.%m.%d %H:%M:%S %z"
# Only these ESIA codes mean "try again shortly"; every other one is final.
RETRYABLE_CODES = frozenset({"ESIA-007007", "ESIA-007008"})


def esia_timestamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime(TIMESTAMP_FORMAT)


class EsiaClientConfig:
    """What the ESIA client needs besides its signer and keys."""

    def __init__(
        self,
        *,
        base_url: str,
        client_id: str,
        scopes: str,
        issuer: str,
        certificate_der: bytes,
        timeout_s: float = 10.0,
        retry_attempts: int = 3,
        retry_base_delay_s: float = 0.5,
        leeway_s: int = 60,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.scopes = " ".join(scopes.split())
        self.issuer = issuer
        self.certificate_hash = certificate_hash(certificate_der)
        self.timeout_s = timeout_s
        self.retry_attempts = retry_attempts
        self.retry_base_delay_s = retry_base_delay_s
        self.leeway_s = leeway_s


class _Retry(Exception):
    """One attempt failed in a way worth repeating (ESIA-007007/007008, 5xx, timeout)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class EsiaProvider:
    """An IdentityProvider speaking ESIA's v2/ac + v3/te protocol; tokens live only inside finish()."""

    name = "esia"

    def __init__(
        self,
        config: EsiaClientConfig,
        signer: Signer,
        keys: TokenKeys,
        http: httpx.AsyncClient,
        *,
        now: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self._config = config
        self._signer = signer
        self._keys = keys
        self._http = http
        self._now = now or (lambda: dt.datetime.now(dt.UTC))

    async def _client_secret(self, *parts: str) -> str:
        try:
            return base64url(await self._signer.sign("".join(parts).encode()))
        except SignerError as exc:
            raise IdentityError("temporarily_unavailable", "", f"signer: {exc}") from None

    async def start(self, *, redirect_uri: str) -> SignInStart:
        config = self._config
        state = str(uuid.uuid4())
        timestamp = esia_timestamp(self._now())
        secret = await self._client_secret(config.client_id, config.scopes, timestamp, state, redirect_uri)
        query = {
            "client_id": config.client_id,
            "client_secret": secret,
            "scope": config.scopes,
            "timestamp": timestamp,
            "state": state,
            "redirect_uri": redirect_uri,
            "client_certificate_hash": config.certificate_hash,
            "response_type": "code",
            "access_type": "online",
        }
        url = config.base_url + AUTHORIZATION_PATH + "?" + urllib.parse.urlencode(query)
        return SignInStart(authorization_url=url, state=state)

    async def finish(
        self, *, code: str, returned_state: str, started: SignInStart, redirect_uri: str
    ) -> PersonRecord:
        if not returned_state or not hmac.compare_digest(returned_state, started.state):
            raise IdentityError("invalid_response", "", "the callback's state is not the one we sent")
        if not code:
            raise IdentityError("invalid_response", "", "the callback carries no code")
        tokens = await self._with_retries(lambda: self._exchange(code, redirect_uri))
        oid, trusted = await self._check_tokens(tokens)
        if not trusted:
            raise IdentityError("account_not_confirmed", "", "is_tru=false in the id_token")
        access_token = tokens["access_token"]
        # The tokens go out of scope when this returns: nothing stores them.
        person: PersonRecord = await self._with_retries(lambda: self._read_person(oid, access_token))
        return person

    async def close(self) -> None:
        return None

    async def _with_retries(self, attempt: Callable[[], Any]) -> Any:
        config = self._config
        last: _Retry | None = None
        for number in range(config.retry_attempts):
            if number:
                await asyncio.sleep(config.retry_base_delay_s * 2 ** (number - 1))
            try:
                return await attempt()
            except _Retry as retry:
                last = retry
        assert last is not None
        raise IdentityError("temporarily_unavailable", last.code, last.detail)

    async def _exchange(self, code: str, redirect_uri: str) -> dict[str, Any]:
        config = self._config
        # A fresh state and timestamp for every /te request, including retries.
        state = str(uuid.uuid4())
        timestamp = esia_timestamp(self._now())
        secret = await self._client_secret(
            config.client_id, config.scopes, timestamp, state, redirect_uri, code
        )
        form = {
            "client_id": config.client_id,
            "code": code,
            "grant_type": "authorization_code",
            "client_secret": secret,
            "state": state,
            "redirect_uri": redirect_uri,
            "scope": config.scopes,
            "timestamp": timestamp,
            "token_type": "Bearer",
            "client_certificate_hash": config.certificate_hash,
        }
        try:
            response = await self._http.post(
                config.base_url + TOKEN_PATH,
                data=form,
                headers={"Accept": "application/json"},
                timeout=config.timeout_s,
            )
        except httpx.TimeoutException:
            raise _Retry("", "token endpoint timed out") from None
        except httpx.TransportError as exc:
            raise _Retry("", f"token endpoint unreachable: {type(exc).__name__}") from None
        body = _json_object(response)
        if response.status_code >= 400 or (body is not None and "error" in body):
            description = str((body or {}).get("error_description", ""))
            error = str((body or {}).get("error", ""))
            esia_code = parse_esia_code(description)
            if esia_code in RETRYABLE_CODES or (response.status_code >= 500 and not esia_code):
                raise _Retry(esia_code, f"token endpoint: {response.status_code} {description}".strip())
            raise esia_error(esia_code, error, description)
        if body is None:
            raise IdentityError("invalid_response", "", "token response is not a JSON object")
        for name in ("access_token", "id_token", "state"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise IdentityError("invalid_response", "", f"token response has no {name}")
        if not hmac.compare_digest(body["state"], state):
            raise IdentityError("invalid_response", "", "token response state is not the one we sent")
        return body

    async def _check_tokens(self, tokens: dict[str, Any]) -> tuple[str, bool]:
        config = self._config
        id_claims = await self._keys.verify(tokens["id_token"])
        access_claims = await self._keys.verify(tokens["access_token"])
        for claims, what in ((id_claims, "id_token"), (access_claims, "access token")):
            if claims.get("iss") != config.issuer:
                raise IdentityError("invalid_response", "", f"{what} issuer is not {config.issuer}")
            check_time_claims(claims, leeway_s=config.leeway_s, now=self._now)
        if not audience_includes(id_claims, config.client_id):
            raise IdentityError("invalid_response", "", "id_token was issued to another client")
        if access_claims.get("client_id") != config.client_id:
            raise IdentityError("invalid_response", "", "access token was issued to another client")
        subject = id_claims.get("urn:esia:sbj")
        subject = subject if isinstance(subject, dict) else {}
        oid = str(subject.get("urn:esia:sbj:oid", id_claims.get("sub", "")))
        if not re.fullmatch(r"\d{1,20}", oid):
            raise IdentityError("invalid_response", "", "id_token carries no oid")
        if str(id_claims.get("sub", oid)) != oid or str(access_claims.get("urn:esia:sbj_id")) != oid:
            raise IdentityError("invalid_response", "", "the tokens name different persons")
        trusted = subject.get("urn:esia:sbj:is:tru", True)
        return oid, trusted is True

    async def _get(self, path: str, access_token: str) -> dict[str, Any]:
        config = self._config
        try:
            response = await self._http.get(
                config.base_url + path,
                headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
                timeout=config.timeout_s,
            )
        except httpx.TimeoutException:
            raise _Retry("", f"{path} timed out") from None
        except httpx.TransportError as exc:
            raise _Retry("", f"{path} unreachable: {type(exc).__name__}") from None
        if response.status_code >= 500:
            raise _Retry("", f"{path} answered {response.status_code}")
        body = _json_object(response)
        if response.status_code >= 400:
            code = str((body or {}).get("code", "")) or f"HTTP-{response.status_code}"
            raise IdentityError("provider_error", code, f"{path} answered {response.status_code}")
        if body is None:
            raise IdentityError("invalid_response", "", f"{path} did not answer a JSON object")
        return body

    async def _read_person(self, oid: str, access_token: str) -> PersonRecord:
        base = PERSON_PATH.format(oid=oid)
        person = await self._get(base, access_token)
        documents = await self._get(base + "/docs?embed=(elements)", access_token)
        contacts = await self._get(base + "/ctts?embed=(elements)", access_token)
        return person_from_esia(oid, person, documents, contacts)


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _esia_date(value: object) -> dt.date | None:
    """ESIA writes dates as dd.mm.yyyy."""
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.strptime(value, "%d.%m.%Y").date()
    except ValueError:
        return None


def _elements(collection: dict[str, Any]) -> list[dict[str, Any]]:
    """The items of a `size/elements` collection (embedded, so objects rather than links)."""
    elements = collection.get("elements")
    if not isinstance(elements, list):
        raise IdentityError("invalid_response", "", "collection has no elements")
    return [item for item in elements if isinstance(item, dict)]


def _issuer_code(value: object) -> str:
    digits = re.sub(r"\D", "", str(value or ""))
    return f"{digits[:3]}-{digits[3:]}" if len(digits) == 6 else str(value or "")


def _e164(value: object) -> str:
    """ESIA writes mobiles as "+7(916)1234567"."""
    digits = re.sub(r"\D", "", str(value or ""))
    return "+" + digits if digits else ""


def person_from_esia(
    oid: str, person: dict[str, Any], documents: dict[str, Any], contacts: dict[str, Any]
) -> PersonRecord:
    """Map ESIA's /rs/prns shapes onto PersonRecord: verified identity documents and mobiles only."""
    last_name, first_name = person.get("lastName"), person.get("firstName")
    if not isinstance(last_name, str) or not isinstance(first_name, str):
        raise IdentityError("invalid_response", "", "person has no name")
    records = [
        PassportRecord(
            doc_type=str(doc.get("type", "")),
            series=str(doc.get("series", "")),
            number=str(doc.get("number", "")),
            issue_date=_esia_date(doc.get("issueDate")),
            issuer_code=_issuer_code(doc.get("issueId")),
        )
        for doc in _elements(documents)
        if doc.get("vrfStu", "VERIFIED") == "VERIFIED"
    ]
    mobiles = [
        _e164(contact.get("value"))
        for contact in _elements(contacts)
        if contact.get("type") == "MBT" and contact.get("vrfStu") == "VERIFIED"
    ]
    trusted = person.get("trusted")
    if trusted is False:
        raise IdentityError("account_not_confirmed", "", "the person's account is not confirmed")
    return PersonRecord(
        subject_id=oid,
        last_name=last_name,
        first_name=first_name,
        middle_name=str(person.get("middleName", "") or ""),
        birth_date=_esia_date(person.get("birthDate")),
        trusted=True,
        documents=records,
        mobile_phones=[m for m in mobiles if m],
    )
