"""The interface between the verification flow and an identity provider (ESIA or generic OIDC)."""

from __future__ import annotations

import datetime as dt
from typing import Literal, Protocol

import msgspec


class SignInStart(msgspec.Struct, frozen=True, kw_only=True):
    """Where to send the browser, plus what the flow must keep (bound to the case) to finish."""

    authorization_url: str
    state: str  # UUID4; single-use; checked on the callback and in the token response
    nonce: str = ""
    code_verifier: str = ""  # PKCE (generic OIDC); "" for ESIA


class PassportRecord(msgspec.Struct, frozen=True, kw_only=True):
    doc_type: str  # "RF_PASSPORT", "FID_DOC" (foreign passport), ...
    series: str = ""
    number: str = ""
    issue_date: dt.date | None = None
    issuer_code: str = ""  # NNN-NNN


class PersonRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What the provider says about the person. Held in memory for the comparison only, never stored."""

    subject_id: str  # ESIA oid / OIDC sub
    last_name: str
    first_name: str
    middle_name: str = ""
    birth_date: dt.date | None = None
    trusted: bool  # ESIA is_tru: a confirmed account
    documents: list[PassportRecord] = []
    mobile_phones: list[str] = []  # E.164, verified contacts only


IdentityErrorKind = Literal[
    "consent_denied",  # ESIA-007004, OIDC access_denied
    "account_not_confirmed",  # ESIA-007055 or is_tru=false
    "temporarily_unavailable",  # ESIA-007007/007008, timeouts, 5xx: retried with backoff first
    "invalid_response",  # garbage, bad signature, wrong iss/aud/state/nonce, another client's token
    "provider_error",  # any other typed provider code
]


class IdentityError(Exception):
    """A sign-in that did not yield a person. `code` is the provider's own (e.g. "ESIA-007053")."""

    def __init__(self, kind: IdentityErrorKind, code: str = "", detail: str = "") -> None:
        super().__init__(f"{kind} {code} {detail}".strip())
        self.kind: IdentityErrorKind = kind
        self.code = code
        self.detail = detail


class IdentityProvider(Protocol):
    name: str  # "esia" or "oidc"

    async def start(self, *, redirect_uri: str) -> SignInStart:
        """Build the authorization request (a fresh state, nonce, PKCE pair where used)."""
        ...

    async def finish(
        self, *, code: str, returned_state: str, started: SignInStart, redirect_uri: str
    ) -> PersonRecord:
        """Exchange the code, validate every token fully, read the person. Raises IdentityError only."""
        ...

    async def close(self) -> None: ...
