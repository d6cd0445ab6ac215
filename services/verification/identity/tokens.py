"""JWT signature and claim checks for provider tokens: JOSE via joserfc, ESIA's GOST via gostcrypto."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, import_key

from services.verification.identity.base import IdentityError
from services.verification.identity.gost_keys import GostCertificate, GostKeyError, from_pem

GOST_JWT_ALGORITHM = "GOST3410_2012_256"
# Asymmetric JOSE algorithms only: "none" and HMAC (a key the verifier would share) are never accepted.
JOSE_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")


def _invalid(detail: str) -> IdentityError:
    return IdentityError("invalid_response", "", detail)


def _b64decode(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise _invalid("token is not base64url") from None


class TokenKeys:
    """The keys a provider's tokens must verify against: a JWKS (inline or fetched), pinned certificates."""

    def __init__(
        self,
        *,
        jwks: dict[str, Any] | None = None,
        jwks_url: str = "",
        certificates: Sequence[bytes] = (),
        http: httpx.AsyncClient | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._static = KeySet.import_key_set(jwks) if jwks else KeySet([])  # type: ignore[arg-type]
        self._fetched = KeySet([])
        self._jwks_url = jwks_url
        self._http = http
        self._timeout_s = timeout_s
        self._gost: list[GostCertificate] = []
        for pem in certificates:
            self._add_certificate(pem)
        self._fetched_at = 0.0

    def _add_certificate(self, data: bytes) -> None:
        der = from_pem(data, "CERTIFICATE") if data.lstrip().startswith(b"-----") else data
        try:
            self._gost.append(GostCertificate(der))
            return
        except GostKeyError:
            pass
        public = x509.load_der_x509_certificate(der).public_key()
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self._static.keys.append(import_key(pem))

    @classmethod
    def from_files(cls, paths: Sequence[str], **kwargs: Any) -> TokenKeys:
        return cls(certificates=[Path(p).read_bytes() for p in paths], **kwargs)

    async def _refresh(self) -> None:
        if not self._jwks_url or self._http is None:
            return
        # A provider rotating keys publishes the new one first; re-read at most once a minute.
        if time.monotonic() - self._fetched_at < 60 and self._fetched.keys:
            return
        try:
            response = await self._http.get(self._jwks_url, timeout=self._timeout_s)
            response.raise_for_status()
            self._fetched = KeySet.import_key_set(response.json())
        except (httpx.HTTPError, ValueError, JoseError) as exc:
            raise IdentityError(
                "temporarily_unavailable", "", f"cannot read the provider's keys: {type(exc).__name__}"
            ) from None
        self._fetched_at = time.monotonic()

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims once its signature verifies against one of our keys."""
        parts = token.split(".")
        if len(parts) != 3:
            raise _invalid("token is not a JWS compact serialization")
        try:
            header = json.loads(_b64decode(parts[0]))
        except ValueError:
            raise _invalid("token header is not JSON") from None
        if not isinstance(header, dict):
            raise _invalid("token header is not an object")
        algorithm = header.get("alg")
        if algorithm == GOST_JWT_ALGORITHM:
            payload = self._verify_gost(parts)
        elif algorithm in JOSE_ALGORITHMS:
            payload = await self._verify_jose(token)
        else:
            raise _invalid(f"token algorithm {algorithm!r} is not accepted")
        try:
            claims = json.loads(payload)
        except ValueError:
            raise _invalid("token payload is not JSON") from None
        if not isinstance(claims, dict):
            raise _invalid("token payload is not an object")
        return claims

    def _verify_gost(self, parts: list[str]) -> bytes:
        signing_input = f"{parts[0]}.{parts[1]}".encode()
        signature = _b64decode(parts[2])
        if not any(cert.verify(signing_input, signature) for cert in self._gost):
            raise _invalid("token signature does not verify against the pinned GOST certificates")
        return _b64decode(parts[1])

    async def _verify_jose(self, token: str) -> bytes:
        for attempt in range(2):
            keys = KeySet([*self._static.keys, *self._fetched.keys])
            try:
                return jws.deserialize_compact(token, keys, algorithms=list(JOSE_ALGORITHMS)).payload
            except JoseError:
                # An unknown kid may be a key the provider rotated in since we last read its JWKS.
                if attempt == 0 and self._jwks_url:
                    self._fetched_at = 0.0
                    await self._refresh()
                    continue
                raise _invalid("token signature does not verify against the provider's keys") from None
        raise AssertionError("unreachable")


def check_time_claims(
    claims: dict[str, Any], *, leeway_s: int, now: Callable[[], dt.datetime] | None = None
) -> None:
    """exp must lie ahead and nbf/iat behind (within the leeway); exp is required."""
    moment = (now or (lambda: dt.datetime.now(dt.UTC)))().timestamp()
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise _invalid("token has no exp")
    if exp + leeway_s < moment:
        raise _invalid("token has expired")
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _invalid(f"token {name} is not a number")
        if value - leeway_s > moment:
            raise _invalid(f"token {name} lies in the future")


def audience_includes(claims: dict[str, Any], client_id: str) -> bool:
    audience = claims.get("aud")
    if isinstance(audience, str):
        return audience == client_id
    if isinstance(audience, list):
        return client_id in audience
    return False
