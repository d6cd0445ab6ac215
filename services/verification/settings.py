"""The verification service's own settings section: public URLs, the billing webhook, retention."""

from __future__ import annotations

from services.common.domain_errors import Invalid
from services.common.settings import SettingsError, SettingsSection, env_name, get_section
from services.verification.corporate.domain.ids import check_ogrn


class VerificationSettings(SettingsSection, kw_only=True, frozen=True):
    """Read from ABONENT_* like the shared section; only the verification service reads these."""

    # Where subscribers' browsers reach this service (the IdP redirects back here); empty: the local
    # http://<host>:<verification_port>.
    verification_public_url: str = ""
    # The short prefix the SMS link starts with, e.g. https://mf.ru/v (a redirect domain in front of
    # /v/); empty: <public url>/v. Link + text must fit two UCS-2 SMS segments: keep it short.
    verification_link_base: str = ""
    # Who asks, as the SMS and the page name the operator.
    verification_operator_name: str = "Abonent Mobile"
    # The operator's OGRN, in every device SIM's registration record (Decree 844). The default is a
    # placeholder with a valid control digit: set the real one in production.
    verification_operator_ogrn: str = "1027700000008"
    # Corporate API (OAuth 2.0 client credentials): access-token lifetime, and how often the signing key
    # is replaced (the new key is published in the JWKS before it signs; the old one stays published
    # until every token it signed has expired).
    verification_corporate_token_ttl_s: int = 600
    verification_corporate_key_rotation_days: int = 30
    # Also require the contract's number among the subscriber's verified mobile numbers at the IdP.
    verification_require_msisdn: bool = False
    # A link still opens this many days after the deadline (a suspended number can be restored).
    verification_link_grace_days: int = 30
    # Personal data of a closed case is erased this many days after it closed (outcome and timeline stay).
    verification_purge_days: int = 90
    # A sign-in must come back from the IdP within this many seconds.
    verification_sign_in_ttl_s: int = 900
    # Billing receives suspend/restore commands here (signed with the secret); empty: commands queue and
    # fail with "no billing endpoint" until it is set (then re-queue them).
    billing_webhook_url: str = ""
    billing_webhook_secret: str = ""

    def __post_init__(self) -> None:
        for name in ("verification_public_url", "verification_link_base", "billing_webhook_url"):
            value = getattr(self, name)
            if value and not value.startswith(("http://", "https://")):
                raise SettingsError(f"{env_name(name)} must be an http(s) URL, got {value!r}")
        for name in (
            "verification_link_grace_days",
            "verification_purge_days",
            "verification_sign_in_ttl_s",
            "verification_corporate_key_rotation_days",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{env_name(name)} must be at least 1, got {getattr(self, name)}")
        if not self.verification_operator_name.strip():
            raise SettingsError(f"{env_name('verification_operator_name')} must not be empty")
        try:
            check_ogrn(self.verification_operator_ogrn)
        except Invalid as exc:
            raise SettingsError(f"{env_name('verification_operator_ogrn')}: {exc.message}") from None
        if not 60 <= self.verification_corporate_token_ttl_s <= 86_400:
            raise SettingsError(
                f"{env_name('verification_corporate_token_ttl_s')} must be 60..86400 seconds,"
                f" got {self.verification_corporate_token_ttl_s}"
            )

    def public_url(self, host: str, port: int) -> str:
        return (self.verification_public_url or f"http://{host}:{port}").rstrip("/")

    def link_base(self, host: str, port: int) -> str:
        return (self.verification_link_base or self.public_url(host, port) + "/v").rstrip("/")


def get_verification_settings() -> VerificationSettings:
    return get_section(VerificationSettings)
