"""Company auth: OAuth 2.0 client credentials on authlib's authorization server, JWT access tokens (ES256)
signed by rotating keys published as a JWKS, and the bearer check every corporate SIM route runs."""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Request
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from services.common import db
from services.common.clock import Clock
from services.common.crypto import DataProtector, token_hash
from services.common.errors import ApiError
from services.verification.corporate import store
from services.verification.corporate.domain.keys import KeyPlan, KeyTimes, plan_keys, published

log = logging.getLogger(__name__)

SCOPE_READ = "corporate-sims:read"
SCOPE_WRITE = "corporate-sims:write"
SCOPES: tuple[str, ...] = (SCOPE_READ, SCOPE_WRITE)
ALG = "ES256"
# The resource the tokens are for (their `aud`): only the corporate SIM API accepts them.
AUDIENCE = "abonent:corporate-sims"
REALM = "abonent-corporate"
# Resource servers may cache the JWKS this long; a new key is published longer than that before it signs.
JWKS_MAX_AGE_S = 300
KEY_LEAD = dt.timedelta(seconds=JWKS_MAX_AGE_S + 60)
# Clock skew tolerated between replicas (iat/nbf a little in the future, exp a little in the past).
LEEWAY = dt.timedelta(seconds=30)


def new_client_credentials() -> tuple[str, str]:
    """(client_id, secret). The secret has 256 random bits, so a plain SHA-256 of it is safe to store
    (a slow password hash guards guessable passwords; nobody guesses this)."""
    return f"cs_{secrets.token_urlsafe(12)}", secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a valid access token speaks for: every corporate SIM query is confined to `company_id`."""

    company_id: uuid.UUID
    client_id: str
    scopes: frozenset[str]

    @property
    def who(self) -> str:
        return f"client:{self.client_id}"


class CorporateClient(ClientMixin):  # type: ignore[misc]  # authlib is untyped
    """An API client as authlib's server sees it: confidential, client credentials only, secret by
    HTTP Basic or in the form."""

    def __init__(self, row: store.ClientRow) -> None:
        self.row = row

    def get_client_id(self) -> str:
        return self.row.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        allowed = [s for s in SCOPES if s in self.row.scopes]
        if not scope:
            return " ".join(allowed)  # no scope asked: everything the client was given
        asked = scope.split()
        # Asking for a scope the client lacks is an error (invalid_scope), not a silent narrowing.
        return " ".join(s for s in allowed if s in asked) if set(asked) <= set(allowed) else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(token_hash(client_secret), self.row.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


class _TokenGenerator(JWTBearerTokenGenerator):  # type: ignore[misc]
    """RFC 9068 access tokens, timed by the service's clock (authlib's own reads time.time())."""

    def __init__(self, issuer: str, ttl_s: int, key: ECKey, now: dt.datetime) -> None:
        super().__init__(issuer=issuer, alg=ALG, expires_generator=ttl_s)
        self._key = key
        self._now = now

    def get_audiences(self, client: CorporateClient, user: Any, scope: str) -> str:
        return AUDIENCE

    def access_token_generator(self, client: CorporateClient, grant_type: str, user: Any, scope: str) -> str:
        now = int(self._now.timestamp())
        claims = {
            "iss": self.issuer,
            "sub": client.get_client_id(),
            "aud": AUDIENCE,
            "client_id": client.get_client_id(),
            "company_id": str(client.row.company_id),
            "scope": scope,
            "iat": now,
            "nbf": now,
            "exp": now + self._get_expires_in(client, grant_type),
            "jti": secrets.token_urlsafe(16),
        }
        header = {"alg": ALG, "typ": "at+jwt", "kid": self._key.kid}
        return str(jwt.encode(header, claims, self._key))


class _ClientCredentials(ClientCredentialsGrant):  # type: ignore[misc]
    # authlib's grant allows only HTTP Basic by default; many HR systems post the secret in the form.
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]  # noqa: RUF012


class _FormRequest(OAuth2Request):  # type: ignore[misc]
    def __init__(self, url: str, headers: Mapping[str, str], form: dict[str, str]) -> None:
        super().__init__("POST", url, headers=dict(headers))
        self.payload = BasicOAuth2Payload(form)
        self._form = form

    @property
    def form(self) -> dict[str, str]:
        return self._form


class _TokenServer(AuthorizationServer):  # type: ignore[misc]
    """One request's authorization server: the client was loaded (async) before authlib runs (sync)."""

    def __init__(self, client: CorporateClient | None, generator: _TokenGenerator) -> None:
        super().__init__(scopes_supported=list(SCOPES))
        self._client = client
        self.register_grant(_ClientCredentials)
        self.register_token_generator("default", generator)

    def query_client(self, client_id: str) -> CorporateClient | None:
        if self._client is not None and hmac.compare_digest(client_id, self._client.get_client_id()):
            return self._client
        return None

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """Access tokens are self-contained JWTs; nothing is stored (the issue is logged)."""
        log.info(
            "corporate access token issued to %s (scope %s)", request.client.get_client_id(), token["scope"]
        )

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    def create_oauth2_request(self, request: _FormRequest) -> _FormRequest:
        return request

    def handle_response(
        self, status: int, body: Any, headers: list[tuple[str, str]]
    ) -> tuple[int, Any, list[tuple[str, str]]]:
        return status, body, headers


@dataclass(slots=True)
class TokenAnswer:
    """What POST /oauth/token answers: the token JSON, or an OAuth error (code, description)."""

    status: int
    token: dict[str, Any] | None
    error: str = ""
    description: str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class CorporateAuth:
    """Issues and checks company access tokens; owns the signing keys (in PostgreSQL, private halves
    encrypted by the DataProtector)."""

    pool: db.Pool
    protector: DataProtector
    clock: Clock
    issuer: str
    token_ttl_s: int
    rotation: dt.timedelta
    # Keys by kid, decrypted once: a key's material never changes (only its times do).
    _keys: dict[str, ECKey] = field(default_factory=dict)

    @property
    def keep_after_retire(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.token_ttl_s) + LEEWAY

    # --- keys -------------------------------------------------------------------------------------------

    def _key_of(self, row: store.SigningKeyRow) -> ECKey:
        key = self._keys.get(row.kid)
        if key is None:
            private = self.protector.decrypt(row.private_enc, store.SIGNING_KEY_CONTEXT, row.kid)
            key = ECKey.import_key(json.loads(private))
            self._keys[row.kid] = key
        return key

    def _plan(self, rows: list[store.SigningKeyRow], now: dt.datetime) -> KeyPlan:
        return plan_keys(
            _times(rows), now, rotation=self.rotation, lead=KEY_LEAD, keep_after_retire=self.keep_after_retire
        )

    async def signing_key(self) -> ECKey:
        """The key that signs now, rotating first when due (under a lock, so replicas agree)."""
        now = self.clock.now()
        async with self.pool.acquire() as conn:
            rows = await store.signing_keys(conn)
        plan = self._plan(rows, now)
        if plan.changes:
            async with db.transaction(self.pool) as conn:
                await store.lock_signing_keys(conn)
                rows = await store.signing_keys(conn)
                plan = self._plan(rows, now)
                if plan.create is not None:
                    row = self._new_key(now, plan.create_not_before or now)
                    await store.insert_signing_key(conn, row)
                    rows.insert(0, row)
                    if plan.signer is None:
                        plan = self._plan(rows, now)
                for kid in plan.retire:
                    await store.retire_signing_key(conn, kid, now)
                if plan.drop_retired_before is not None:
                    await store.drop_signing_keys(conn, plan.drop_retired_before)
        signer = next(r for r in rows if r.kid == plan.signer)
        return self._key_of(signer)

    def _new_key(self, now: dt.datetime, not_before: dt.datetime) -> store.SigningKeyRow:
        kid = f"{now:%Y%m%d}-{secrets.token_hex(4)}"
        key = ECKey.generate_key("P-256", parameters={"kid": kid, "alg": ALG, "use": "sig"})
        private = json.dumps(key.as_dict(private=True))
        log.info("corporate token signing key %s created, signs from %s", kid, not_before.isoformat())
        return store.SigningKeyRow(
            kid=kid,
            alg=ALG,
            private_enc=self.protector.encrypt(private, store.SIGNING_KEY_CONTEXT, kid),
            public_jwk=key.as_dict(private=False),
            created_at=now,
            not_before=not_before,
        )

    async def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The published keys: the signing one, the next one (before it signs) and the recently retired."""
        now = self.clock.now()
        async with self.pool.acquire() as conn:
            rows = await store.signing_keys(conn)
        if not any(r.retired_at is None for r in rows):
            await self.signing_key()  # the very first key, so the JWKS is never empty
            async with self.pool.acquire() as conn:
                rows = await store.signing_keys(conn)
        shown = set(published(_times(rows), now, self.keep_after_retire))
        return {"keys": [r.public_jwk for r in rows if r.kid in shown]}

    async def _verification_key(self, kid: str) -> ECKey | None:
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self.pool.acquire() as conn:
            rows = await store.signing_keys(conn)
        row = next((r for r in rows if r.kid == kid), None)
        return None if row is None else self._key_of(row)

    # --- the token endpoint -----------------------------------------------------------------------------

    async def issue_token(self, url: str, headers: Mapping[str, str], form: dict[str, str]) -> TokenAnswer:
        """POST /oauth/token: authlib decides (client auth, grant type, scope); we load the client first."""
        basic_id, _ = extract_basic_authorization({"Authorization": headers.get("authorization", "")})
        client_id = basic_id or form.get("client_id") or ""
        client = await self._client(client_id) if client_id else None
        generator = _TokenGenerator(self.issuer, self.token_ttl_s, await self.signing_key(), self.clock.now())
        server = _TokenServer(client, generator)
        request_headers = (
            {"Authorization": headers.get("authorization", "")} if "authorization" in headers else {}
        )
        status, body, answer_headers = server.create_token_response(_FormRequest(url, request_headers, form))
        extra = dict(answer_headers)
        if status == 200:
            return TokenAnswer(status=200, token=dict(body), headers=extra)
        fields = dict(body)
        return TokenAnswer(
            status=status,
            token=None,
            error=str(fields.get("error", "invalid_request")),
            description=str(fields.get("error_description", "")),
            headers=extra,
        )

    async def _client(self, client_id: str) -> CorporateClient | None:
        """The client if it may get tokens: known, not revoked, its company active."""
        async with self.pool.acquire() as conn:
            row = await store.get_client(conn, client_id[:100])
            company = None if row is None else await store.get_company(conn, row.company_id)
        if row is None or row.revoked_at is not None or company is None or company.status != "active":
            return None
        return CorporateClient(row)

    # --- the bearer check -------------------------------------------------------------------------------

    async def authenticate(self, authorization: str | None, scope: str) -> Caller:
        """The caller of a corporate SIM route; 401/403 with WWW-Authenticate as RFC 6750 words them."""
        if not authorization:
            raise _challenge(
                401, "unauthorized", "Send `Authorization: Bearer <access token>` (POST /oauth/token)"
            )
        kind, _, token = authorization.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise _challenge(
                401,
                "invalid_request",
                "Send the token as `Authorization: Bearer <access token>`",
                "invalid_request",
            )
        claims = await self._claims(token.strip())
        client = await self._client(str(claims.get("client_id", "")))
        if client is None or str(client.row.company_id) != claims.get("company_id"):
            raise _challenge(401, "invalid_token", "The client behind this token is revoked", "invalid_token")
        granted = frozenset(str(claims.get("scope", "")).split())
        if scope not in granted:
            raise _challenge(
                403,
                "insufficient_scope",
                f"This needs the scope {scope}",
                "insufficient_scope",
                scope=scope,
            )
        return Caller(company_id=client.row.company_id, client_id=client.row.client_id, scopes=granted)

    async def _claims(self, token: str) -> dict[str, Any]:
        invalid = "invalid_token"
        try:
            header = jws.extract_compact(token.encode()).protected
        except (JoseError, ValueError, UnicodeError):
            raise _challenge(401, invalid, "The access token is malformed", invalid) from None
        if not isinstance(header, dict) or header.get("alg") != ALG or header.get("typ") != "at+jwt":
            raise _challenge(401, invalid, "The access token is not one of ours", invalid)
        key = await self._verification_key(str(header.get("kid", ""))[:64])
        if key is None:
            raise _challenge(401, invalid, "The access token's signing key is unknown or retired", invalid)
        try:
            claims: dict[str, Any] = jwt.decode(token, key, algorithms=[ALG]).claims
        except (JoseError, ValueError):
            raise _challenge(401, invalid, "The access token's signature does not verify", invalid) from None
        now = self.clock.now().timestamp()
        audience = claims.get("aud")
        if claims.get("iss") != self.issuer or (audience != AUDIENCE and AUDIENCE not in (audience or [])):
            raise _challenge(401, invalid, "The access token was issued for something else", invalid)
        if not isinstance(claims.get("exp"), int) or claims["exp"] + LEEWAY.total_seconds() <= now:
            raise _challenge(401, invalid, "The access token expired; get a new one", invalid)
        if not isinstance(claims.get("nbf"), int) or claims["nbf"] - LEEWAY.total_seconds() > now:
            raise _challenge(401, invalid, "The access token is not valid yet", invalid)
        return claims


def _times(rows: list[store.SigningKeyRow]) -> list[KeyTimes]:
    return [
        KeyTimes(kid=r.kid, created_at=r.created_at, not_before=r.not_before, retired_at=r.retired_at)
        for r in rows
    ]


def _challenge(
    status: int, code: str, message: str, error: str | None = None, *, scope: str = ""
) -> ApiError:
    parts = [f'Bearer realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
        parts.append(f'error_description="{message.replace(chr(34), chr(39))}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return ApiError(status, code, message, headers={"WWW-Authenticate": ", ".join(parts)})
