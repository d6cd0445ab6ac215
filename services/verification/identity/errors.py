"""Provider error codes (ESIA-0070xx, OAuth `error`) mapped onto IdentityError kinds."""

from __future__ import annotations

import re

from services.verification.identity.base import IdentityError

# What each ESIA code means, for logs and the audit trail (go-api-epgu's esia/aas/errors.go lists all).
ESIA_CODES = {
    "ESIA-007002": "certificate does not match the system's mnemonic",
    "ESIA-007003": "a request parameter is wrong",
    "ESIA-007004": "the person refused access",
    "ESIA-007005": "grant type not allowed",
    "ESIA-007006": "scope not allowed",
    "ESIA-007007": "ESIA internal error",
    "ESIA-007008": "ESIA overloaded",
    "ESIA-007009": "grant type not allowed",
    "ESIA-007011": "authorization code invalid or expired",
    "ESIA-007013": "scope missing",
    "ESIA-007014": "a required parameter is missing",
    "ESIA-007015": "request time is wrong (clock skew)",
    "ESIA-007019": "no permission for the scope",
    "ESIA-007023": "redirect_uri is not registered",
    "ESIA-007053": "client_secret or certificate hash is wrong",
    "ESIA-007055": "sign-in with an unconfirmed account",
}


def parse_esia_code(description: str) -> str:
    """ "ESIA-007004: Пользователь отказал…" -> "ESIA-007004"; "" when there is none."""
    match = re.match(r"\s*(ESIA-\d{6})", description or "")
    return match.group(1) if match else ""


def esia_error(code: str, error: str = "", description: str = "") -> IdentityError:
    """The IdentityError an ESIA error answer stands for (final answers only; retries happen before)."""
    detail = ESIA_CODES.get(code, "") or description[:200] or error
    if code == "ESIA-007004" or (not code and error == "access_denied"):
        return IdentityError("consent_denied", code, detail)
    if code == "ESIA-007055":
        return IdentityError("account_not_confirmed", code, detail)
    if code in ("ESIA-007007", "ESIA-007008"):
        return IdentityError("temporarily_unavailable", code, detail)
    if code:
        return IdentityError("provider_error", code, detail)
    if error in {"temporarily_unavailable", "server_error"}:
        return IdentityError("temporarily_unavailable", error, detail)
    return IdentityError("provider_error", error or "unknown", detail)


def callback_error(error: str, error_description: str = "") -> IdentityError:
    """What a redirect back with `?error=…&error_description=…` means (ESIA and generic OIDC alike).

    The flow calls this instead of finish() when the callback carries `error` (after checking `state`).
    """
    return esia_error(parse_esia_code(error_description), error, error_description)
