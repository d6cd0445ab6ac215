"""Identity settings (ESIA or generic OIDC, the signer, token keys) and the provider factory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import httpx

from services.common.settings import SettingsError, SettingsSection, env_name
from services.verification.identity.base import IdentityProvider

DEFAULT_CLAIM_MAPPING = {
    "subject_id": "sub",
    "last_name": "family_name",
    "first_name": "given_name",
    "middle_name": "middle_name",
    "birth_date": "birthdate",
    "trusted": "",  # no standard claim: every account the provider signs in counts as confirmed
    "mobile_phones": "phone_number",
    "documents": "",
}


class IdentitySettings(SettingsSection, kw_only=True, frozen=True):
    """Read from ABONENT_* like every section; only the verification service reads these.

    Field names carry an `identity_`, `esia_` or `oidc_` prefix because they become environment variable
    names shared with every other section.
    """

    # Which provider subscribers sign in with: ESIA (Gosuslugi) or any OpenID Connect provider.
    identity_mode: Literal["esia", "oidc"] = "esia"
    # Public base URL the provider redirects the browser back to (the verification service's own).
    identity_redirect_base: str = ""
    # HTTP timeout for every call to the provider, and how often 007007/007008/5xx/timeouts are retried.
    identity_timeout_s: float = 10.0
    identity_retry_attempts: int = 3
    identity_retry_base_delay_s: float = 0.5

    # ESIA: the test environment by default; production is https://esia.gosuslugi.ru.
    esia_base_url: str = "https://esia-portal1.test.gosuslugi.ru"
    esia_client_id: str = ""  # the ИС mnemonic
    # Minimal scopes: name, birth date, identity document, mobile number.
    esia_scopes: str = "openid fullname birthdate id_doc mobile"
    # The issuer the id_token must carry. ESIA writes it with a trailing slash.
    esia_issuer: str = "http://esia.gosuslugi.ru/"
    # How client_secret is produced: a GOST key in this process, an RSA key (legacy / sandbox), a
    # command-line tool (CryptoPro cryptcp, OpenSSL with gost-engine) or a remote signing service.
    esia_signer: Literal["gost", "rsa", "command", "remote"] = "gost"
    # The ИС private key (gost: PKCS#8 PEM of a GOST R 34.10-2012 256-bit key; rsa: PKCS#8 PEM).
    esia_private_key_path: str = ""
    # The ИС certificate registered at ESIA (PEM or DER file), or its PEM inline; its DER is hashed
    # into client_certificate_hash.
    esia_certificate_path: str = ""
    esia_certificate_pem: str = ""
    # command signer: a JSON array of arguments; "{in}" and "{out}" are replaced by file paths
    # (never run through a shell), e.g. ["cryptcp", "-signf", "-nochain", "-der", "-strict",
    # "-detached", "-thumbprint", "THUMB", "-dir", "{outdir}", "{in}"].
    esia_signer_command: str = ""
    esia_signer_output: Literal["raw", "base64"] = "raw"
    # remote signer: POST of the bytes to this URL with a bearer token; answers the raw signature.
    esia_signer_url: str = ""
    esia_signer_token: str = ""
    # Keys the id_token / access token must verify against: a JWKS document inline (JSON), a JWKS URL,
    # and/or PEM certificate files (comma-separated), e.g. ESIA's published test and production certs.
    esia_jwks: str = ""
    esia_jwks_url: str = ""
    esia_jwt_certificates: str = ""
    # Allowed clock difference when checking exp/nbf/iat.
    esia_jwt_leeway_s: int = 60

    # Generic OpenID Connect (ABONENT_IDENTITY_MODE=oidc).
    oidc_discovery_url: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    oidc_scopes: str = "openid profile phone"
    # JSON object: PersonRecord field -> claim name ("" = not provided). Unlisted fields keep the
    # defaults (standard claims: sub, family_name, given_name, middle_name, birthdate, phone_number).
    oidc_claim_mapping: str = ""

    def __post_init__(self) -> None:
        for name in ("identity_timeout_s", "identity_retry_base_delay_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{env_name(name)} must be positive, got {getattr(self, name)}")
        if self.identity_retry_attempts < 1:
            raise SettingsError(f"{env_name('identity_retry_attempts')} must be at least 1")
        for name in ("esia_base_url", "esia_signer_url", "esia_jwks_url", "oidc_discovery_url"):
            value = getattr(self, name)
            if value and not value.startswith(("http://", "https://")):
                raise SettingsError(f"{env_name(name)} must be an http(s) URL, got {value!r}")
        if self.esia_signer_command:
            self.signer_command()
        if self.oidc_claim_mapping:
            self.claim_mapping()
        if self.esia_jwks:
            try:
                keys = json.loads(self.esia_jwks)
            except ValueError:
                raise SettingsError(f"{env_name('esia_jwks')} must be a JWKS JSON document") from None
            if not isinstance(keys, dict) or not isinstance(keys.get("keys"), list):
                raise SettingsError(f"{env_name('esia_jwks')} must be a JWKS JSON document")

    def signer_command(self) -> list[str]:
        try:
            command = json.loads(self.esia_signer_command)
        except ValueError:
            command = None
        if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
            raise SettingsError(
                f"{env_name('esia_signer_command')} must be a JSON array of strings (an argument list,"
                " never a shell string)"
            )
        return command

    def claim_mapping(self) -> dict[str, str]:
        mapping = dict(DEFAULT_CLAIM_MAPPING)
        if not self.oidc_claim_mapping:
            return mapping
        try:
            given = json.loads(self.oidc_claim_mapping)
        except ValueError:
            given = None
        if not isinstance(given, dict) or not all(isinstance(v, str) for v in given.values()):
            raise SettingsError(
                f"{env_name('oidc_claim_mapping')} must be a JSON object of field -> claim name"
            )
        unknown = set(given) - set(DEFAULT_CLAIM_MAPPING)
        if unknown:
            raise SettingsError(
                f"{env_name('oidc_claim_mapping')}: unknown fields {', '.join(sorted(unknown))}"
                f" (known: {', '.join(DEFAULT_CLAIM_MAPPING)})"
            )
        mapping.update(given)
        return mapping


def build_identity_provider(settings: IdentitySettings, http: httpx.AsyncClient) -> IdentityProvider:
    """The provider the settings choose; missing credentials stop here, naming the variable."""
    if settings.identity_mode == "oidc":
        from services.verification.identity.oidc import OidcProvider

        for name in ("oidc_discovery_url", "oidc_client_id"):
            if not getattr(settings, name):
                raise SettingsError(f"{env_name(name)} is required when identity_mode is oidc")
        return OidcProvider(
            discovery_url=settings.oidc_discovery_url,
            client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret,
            scopes=settings.oidc_scopes,
            claim_mapping=settings.claim_mapping(),
            http=http,
            timeout_s=settings.identity_timeout_s,
            leeway_s=settings.esia_jwt_leeway_s,
        )
    return _build_esia(settings, http)


def _build_esia(settings: IdentitySettings, http: httpx.AsyncClient) -> IdentityProvider:
    # Imported here so settings can be read (and validated) without loading the crypto stack.
    from services.verification.identity.esia import EsiaClientConfig, EsiaProvider
    from services.verification.identity.gost_keys import GostCertificate, GostKeyError, from_pem
    from services.verification.identity.signers import (
        CommandSigner,
        GostSigner,
        RemoteSigner,
        RsaSigner,
        Signer,
    )
    from services.verification.identity.tokens import TokenKeys

    if not settings.esia_client_id:
        raise SettingsError(f"{env_name('esia_client_id')} is required when identity_mode is esia")
    if settings.esia_certificate_pem:
        certificate = from_pem(settings.esia_certificate_pem, "CERTIFICATE")
    elif settings.esia_certificate_path:
        raw = _read(settings.esia_certificate_path, "esia_certificate_path")
        certificate = from_pem(raw, "CERTIFICATE") if raw.lstrip().startswith(b"-----") else raw
    else:
        raise SettingsError(
            f"{env_name('esia_certificate_path')} or {env_name('esia_certificate_pem')} is required:"
            " ESIA checks client_certificate_hash on every request"
        )
    try:
        GostCertificate(certificate)
        algorithm: Literal["GOST3410_2012_256", "RS256"] = "GOST3410_2012_256"
    except GostKeyError:
        algorithm = "RS256"
    signer: Signer
    if settings.esia_signer in ("gost", "rsa"):
        if not settings.esia_private_key_path:
            raise SettingsError(
                f"{env_name('esia_private_key_path')} is required when esia_signer is {settings.esia_signer}"
            )
        _read(settings.esia_private_key_path, "esia_private_key_path")
        if settings.esia_signer == "gost":
            signer = GostSigner.from_pem_file(settings.esia_private_key_path)
        else:
            signer = RsaSigner.from_pem_file(settings.esia_private_key_path)
    elif settings.esia_signer == "command":
        if not settings.esia_signer_command:
            raise SettingsError(f"{env_name('esia_signer_command')} is required when esia_signer is command")
        signer = CommandSigner(
            settings.signer_command(),
            algorithm=algorithm,
            output=settings.esia_signer_output,
            timeout_s=settings.identity_timeout_s,
        )
    else:
        if not settings.esia_signer_url:
            raise SettingsError(f"{env_name('esia_signer_url')} is required when esia_signer is remote")
        signer = RemoteSigner(
            settings.esia_signer_url,
            http,
            token=settings.esia_signer_token,
            algorithm=algorithm,
            timeout_s=settings.identity_timeout_s,
        )
    if not (settings.esia_jwks or settings.esia_jwks_url or settings.esia_jwt_certificates):
        raise SettingsError(
            f"one of {env_name('esia_jwks')}, {env_name('esia_jwks_url')} or "
            f"{env_name('esia_jwt_certificates')} is required: ESIA's tokens are checked against them"
        )
    certificates = [
        _read(path.strip(), "esia_jwt_certificates")
        for path in settings.esia_jwt_certificates.split(",")
        if path.strip()
    ]
    keys = TokenKeys(
        jwks=json.loads(settings.esia_jwks) if settings.esia_jwks else None,
        jwks_url=settings.esia_jwks_url,
        certificates=certificates,
        http=http,
        timeout_s=settings.identity_timeout_s,
    )
    config = EsiaClientConfig(
        base_url=settings.esia_base_url,
        client_id=settings.esia_client_id,
        scopes=settings.esia_scopes,
        issuer=settings.esia_issuer,
        certificate_der=certificate,
        timeout_s=settings.identity_timeout_s,
        retry_attempts=settings.identity_retry_attempts,
        retry_base_delay_s=settings.identity_retry_base_delay_s,
        leeway_s=settings.esia_jwt_leeway_s,
    )
    return EsiaProvider(config, signer, keys, http)


def _read(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{env_name(field)}: cannot read {path}: {exc.strerror}") from None
