"""Generic OpenID Connect sign-in: discovery, authorization code with PKCE (S256) and nonce, claim mapping."""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from services.verification.identity.base import (
    IdentityError,
    IdentityErrorKind,
    PassportRecord,
    PersonRecord,
    SignInStart,
)
from services.verification.identity.errors import esia_error
from services.verification.identity.tokens import TokenKeys, audience_includes, check_time_claims

DISCOVERY_SUFFIX = "/.well-known/openid-configuration"


class _Metadata:
    def __init__(self, document: dict[str, Any]) -> None:
        self.issuer = str(document["issuer"])
        self.authorization_endpoint = str(document["authorization_endpoint"])
        self.token_endpoint = str(document["token_endpoint"])
        self.jwks_uri = str(document["jwks_uri"])
        self.userinfo_endpoint = str(document.get("userinfo_endpoint") or "")
        methods = document.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        self.auth_methods = [str(m) for m in methods] if isinstance(methods, list) else []


class OidcProvider:
    """Any standards OpenID provider; tokens are validated and dropped inside finish()."""

    name = "oidc"

    def __init__(
        self,
        *,
        discovery_url: str,
        client_id: str,
        client_secret: str,
        scopes: str,
        claim_mapping: dict[str, str],
        http: httpx.AsyncClient,
        timeout_s: float = 10.0,
        leeway_s: int = 60,
        now: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self._discovery_url = discovery_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._scopes = " ".join(scopes.split())
        if "openid" not in self._scopes.split():
            self._scopes = f"openid {self._scopes}".strip()
        self._mapping = claim_mapping
        self._http = http
        self._timeout_s = timeout_s
        self._leeway_s = leeway_s
        self._now = now or (lambda: dt.datetime.now(dt.UTC))
        self._metadata: _Metadata | None = None
        self._keys: TokenKeys | None = None

    async def _discover(self) -> tuple[_Metadata, TokenKeys]:
        if self._metadata is not None and self._keys is not None:
            return self._metadata, self._keys
        try:
            response = await self._http.get(self._discovery_url, timeout=self._timeout_s)
        except httpx.HTTPError as exc:
            raise IdentityError(
                "temporarily_unavailable", "", f"discovery unreachable: {type(exc).__name__}"
            ) from None
        if response.status_code != 200:
            kind: IdentityErrorKind = (
                "temporarily_unavailable" if response.status_code >= 500 else "invalid_response"
            )
            raise IdentityError(kind, "", f"discovery answered {response.status_code}")
        try:
            metadata = _Metadata(response.json())
        except (ValueError, KeyError, TypeError):
            raise IdentityError("invalid_response", "", "discovery document is malformed") from None
        # OIDC Discovery §4.3: the issuer must be the URL the document was fetched under.
        expected = self._discovery_url.removesuffix(DISCOVERY_SUFFIX).rstrip("/")
        if metadata.issuer.rstrip("/") != expected:
            raise IdentityError("invalid_response", "", "discovery issuer does not match its URL")
        self._metadata = metadata
        self._keys = TokenKeys(jwks_url=metadata.jwks_uri, http=self._http, timeout_s=self._timeout_s)
        return metadata, self._keys

    async def start(self, *, redirect_uri: str) -> SignInStart:
        metadata, _ = await self._discover()
        state = str(uuid.uuid4())
        nonce = secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)  # 64 characters, inside RFC 7636's 43-128
        query = {
            "response_type": "code",
            "client_id": self._client_id,
            "redirect_uri": redirect_uri,
            "scope": self._scopes,
            "state": state,
            "nonce": nonce,
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        }
        joiner = "&" if "?" in metadata.authorization_endpoint else "?"
        url = metadata.authorization_endpoint + joiner + urllib.parse.urlencode(query)
        return SignInStart(authorization_url=url, state=state, nonce=nonce, code_verifier=verifier)

    async def finish(
        self, *, code: str, returned_state: str, started: SignInStart, redirect_uri: str
    ) -> PersonRecord:
        if not returned_state or not hmac.compare_digest(returned_state, started.state):
            raise IdentityError("invalid_response", "", "the callback's state is not the one we sent")
        if not code:
            raise IdentityError("invalid_response", "", "the callback carries no code")
        metadata, keys = await self._discover()
        tokens = await self._exchange(metadata, code, redirect_uri, started.code_verifier)
        claims = await keys.verify(tokens["id_token"])
        self._check_id_token(metadata, claims, started.nonce)
        if metadata.userinfo_endpoint and isinstance(tokens.get("access_token"), str):
            userinfo = await self._userinfo(metadata, tokens["access_token"])
            if userinfo.get("sub") != claims.get("sub"):
                raise IdentityError("invalid_response", "", "userinfo names another subject")
            claims = {**userinfo, **claims}
        return self._person(claims)

    async def close(self) -> None:
        return None

    async def _exchange(
        self, metadata: _Metadata, code: str, redirect_uri: str, verifier: str
    ) -> dict[str, Any]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        auth: tuple[str, str] | None = None
        if self._client_secret and "client_secret_basic" in metadata.auth_methods:
            auth = (self._client_id, self._client_secret)
        else:
            form["client_id"] = self._client_id
            if self._client_secret:
                form["client_secret"] = self._client_secret
        try:
            response = await self._http.post(
                metadata.token_endpoint,
                data=form,
                auth=auth or httpx.USE_CLIENT_DEFAULT,
                headers={"Accept": "application/json"},
                timeout=self._timeout_s,
            )
        except httpx.HTTPError as exc:
            raise IdentityError(
                "temporarily_unavailable", "", f"token endpoint unreachable: {type(exc).__name__}"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            kind: IdentityErrorKind = (
                "temporarily_unavailable" if response.status_code >= 500 else "invalid_response"
            )
            raise IdentityError(kind, "", f"token endpoint answered {response.status_code}, not JSON")
        if response.status_code >= 400 or "error" in body:
            raise esia_error("", str(body.get("error", "")), str(body.get("error_description", "")))
        if not isinstance(body.get("id_token"), str):
            raise IdentityError("invalid_response", "", "token response has no id_token")
        return body

    def _check_id_token(self, metadata: _Metadata, claims: dict[str, Any], nonce: str) -> None:
        if claims.get("iss") != metadata.issuer:
            raise IdentityError("invalid_response", "", "id_token issuer is not the provider's")
        if not audience_includes(claims, self._client_id):
            raise IdentityError("invalid_response", "", "id_token was issued to another client")
        audience = claims.get("aud")
        if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != self._client_id:
            raise IdentityError("invalid_response", "", "id_token azp is not ours")
        check_time_claims(claims, leeway_s=self._leeway_s, now=self._now)
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise IdentityError("invalid_response", "", "id_token nonce is not the one we sent")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise IdentityError("invalid_response", "", "id_token has no sub")

    async def _userinfo(self, metadata: _Metadata, access_token: str) -> dict[str, Any]:
        try:
            response = await self._http.get(
                metadata.userinfo_endpoint,
                headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
                timeout=self._timeout_s,
            )
        except httpx.HTTPError as exc:
            raise IdentityError(
                "temporarily_unavailable", "", f"userinfo unreachable: {type(exc).__name__}"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict):
            raise IdentityError("invalid_response", "", f"userinfo answered {response.status_code}")
        return body

    def _claim(self, claims: dict[str, Any], field: str) -> Any:
        name = self._mapping.get(field, "")
        return claims.get(name) if name else None

    def _person(self, claims: dict[str, Any]) -> PersonRecord:
        def text(field: str) -> str:
            value = self._claim(claims, field)
            return value if isinstance(value, str) else ""

        last_name, first_name = text("last_name"), text("first_name")
        if not last_name or not first_name:
            raise IdentityError("invalid_response", "", "the provider gave no full name")
        trusted_claim = self._mapping.get("trusted", "")
        if trusted_claim and claims.get(trusted_claim) is not True:
            raise IdentityError("account_not_confirmed", "", f"{trusted_claim} is not true")
        phones = self._claim(claims, "mobile_phones")
        phone_list = [phones] if isinstance(phones, str) else phones if isinstance(phones, list) else []
        # An unverified phone number proves nothing about the subscriber.
        if claims.get("phone_number_verified") is False:
            phone_list = []
        return PersonRecord(
            subject_id=text("subject_id") or str(claims["sub"]),
            last_name=last_name,
            first_name=first_name,
            middle_name=text("middle_name"),
            birth_date=_iso_date(self._claim(claims, "birth_date")),
            trusted=True,
            documents=_documents(self._claim(claims, "documents")),
            mobile_phones=[p for p in phone_list if isinstance(p, str) and p],
        )


def _iso_date(value: object) -> dt.date | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return None


def _documents(value: object) -> list[PassportRecord]:
    """A custom claim holding [{type, series, number, issue_date, issuer_code}], when mapped."""
    if not isinstance(value, list):
        return []
    return [
        PassportRecord(
            doc_type=str(item.get("type", "")),
            series=str(item.get("series", "")),
            number=str(item.get("number", "")),
            issue_date=_iso_date(item.get("issue_date")),
            issuer_code=str(item.get("issuer_code", "")),
        )
        for item in value
        if isinstance(item, dict)
    ]
