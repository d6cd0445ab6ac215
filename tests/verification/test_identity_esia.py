"""ESIA sign-in against the sandbox ESIA served over real HTTP: request fields, token checks, error codes."""

from __future__ import annotations

import base64
import datetime as dt
import re
import urllib.parse
import uuid
from collections.abc import AsyncIterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from support.esia_sandbox import (
    CLIENT_ID,
    REDIRECT_URI,
    GostClient,
    Sandbox,
    gost_signer,
    new_gost_client,
    serve_sandbox,
)

from services.verification.identity.base import IdentityError, PassportRecord
from services.verification.identity.errors import callback_error
from services.verification.identity.gost_keys import (
    GostCertificate,
    GostPrivateKey,
    streebog256,
    to_pem,
)
from services.verification.identity.signers import RsaSigner

TIMESTAMP = re.compile(r"^\d{4}\.\d{2}\.\d{2} \d{2}:\d{2}:\d{2} \+0000$")
IVANOV, PETROVA, SIDOROV, SMITH = "1000000001", "1000000002", "1000000003", "1000000004"


@pytest.fixture(scope="module")
def gost_client() -> GostClient:
    return new_gost_client()


@pytest.fixture
async def sandbox(gost_client: GostClient) -> AsyncIterator[Sandbox]:
    async with serve_sandbox({CLIENT_ID: gost_client.certificate_der}) as served:
        yield served


def _secret(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _is_uuid4(value: str) -> bool:
    try:
        return uuid.UUID(value).version == 4
    except ValueError:
        return False


async def test_authorization_url_carries_every_field_and_a_verifiable_gost_secret(
    sandbox: Sandbox, gost_client: GostClient
) -> None:
    provider = sandbox.provider(gost_signer(gost_client), gost_client.certificate_der)
    start = await provider.start(redirect_uri=REDIRECT_URI)

    url = urllib.parse.urlsplit(start.authorization_url)
    assert f"{url.scheme}://{url.netloc}" == sandbox.url
    assert url.path == "/aas/oauth2/v2/ac"
    query = dict(urllib.parse.parse_qsl(url.query))
    assert set(query) == {
        "client_id",
        "client_secret",
        "scope",
        "timestamp",
        "state",
        "redirect_uri",
        "client_certificate_hash",
        "response_type",
        "access_type",
    }
    assert query["client_id"] == CLIENT_ID
    assert query["scope"] == "openid fullname birthdate id_doc mobile"
    assert TIMESTAMP.match(query["timestamp"])
    sent_at = dt.datetime.strptime(query["timestamp"], "%Y.%m.%d %H:%M:%S %z")
    assert abs((dt.datetime.now(dt.UTC) - sent_at).total_seconds()) < 120
    assert _is_uuid4(query["state"])
    assert query["state"] == start.state
    assert query["redirect_uri"] == REDIRECT_URI
    assert query["response_type"] == "code"
    assert query["access_type"] == "online"
    # Streebog-256 of the certificate's DER, not of its PEM text.
    assert query["client_certificate_hash"] == streebog256(gost_client.certificate_der).hex().upper()
    assert (
        query["client_certificate_hash"]
        != streebog256(to_pem("CERTIFICATE", gost_client.certificate_der).encode()).hex().upper()
    )
    signed = "".join(
        query[name] for name in ("client_id", "scope", "timestamp", "state", "redirect_uri")
    ).encode()
    certificate = GostCertificate(gost_client.certificate_der)
    assert certificate.verify(signed, _secret(query["client_secret"]))
    assert not certificate.verify(signed + b"x", _secret(query["client_secret"]))


async def test_sign_in_reads_the_person_and_sends_a_signed_token_request(
    sandbox: Sandbox, gost_client: GostClient
) -> None:
    provider = sandbox.provider(gost_signer(gost_client), gost_client.certificate_der)
    start = await provider.start(redirect_uri=REDIRECT_URI)
    callback = await sandbox.sign_in(start, IVANOV)
    assert callback["state"] == start.state

    person = await provider.finish(
        code=callback["code"], returned_state=callback["state"], started=start, redirect_uri=REDIRECT_URI
    )

    assert person.subject_id == IVANOV
    assert (person.last_name, person.first_name, person.middle_name) == ("Иванов", "Иван", "Иванович")
    assert person.birth_date == dt.date(1985, 4, 12)
    assert person.trusted is True
    assert person.documents == [
        PassportRecord(
            doc_type="RF_PASSPORT",
            series="4510",
            number="123456",
            issue_date=dt.date(2010, 5, 20),
            issuer_code="770-001",
        )
    ]
    assert person.mobile_phones == ["+79161234567"]

    [sent] = await sandbox.recorded("te")
    assert set(sent) - {"endpoint"} == {
        "client_id",
        "code",
        "grant_type",
        "client_secret",
        "state",
        "redirect_uri",
        "scope",
        "timestamp",
        "token_type",
        "client_certificate_hash",
    }
    assert sent["grant_type"] == "authorization_code"
    assert sent["token_type"] == "Bearer"
    assert sent["code"] == callback["code"]
    assert sent["redirect_uri"] == REDIRECT_URI
    assert sent["scope"] == "openid fullname birthdate id_doc mobile"
    assert TIMESTAMP.match(sent["timestamp"])
    # A fresh state for the token request, not the one of the authorization request.
    assert _is_uuid4(sent["state"])
    assert sent["state"] != start.state
    signed = "".join(
        sent[name] for name in ("client_id", "scope", "timestamp", "state", "redirect_uri", "code")
    ).encode()
    assert GostCertificate(gost_client.certificate_der).verify(signed, _secret(sent["client_secret"]))


async def test_mismatching_and_foreign_persons_come_back_as_they_are(
    sandbox: Sandbox, gost_client: GostClient
) -> None:
    provider = sandbox.provider(gost_signer(gost_client), gost_client.certificate_der)
    for oid, doc_type, number in ((PETROVA, "RF_PASSPORT", "654322"), (SMITH, "FID_DOC", "533380006")):
        start = await provider.start(redirect_uri=REDIRECT_URI)
        callback = await sandbox.sign_in(start, oid)
        person = await provider.finish(
            code=callback["code"], returned_state=callback["state"], started=start, redirect_uri=REDIRECT_URI
        )
        assert [(d.doc_type, d.number) for d in person.documents] == [(doc_type, number)]


async def test_unconfirmed_account_is_account_not_confirmed(
    sandbox: Sandbox, gost_client: GostClient
) -> None:
    provider = sandbox.provider(gost_signer(gost_client), gost_client.certificate_der)
    start = await provider.start(redirect_uri=REDIRECT_URI)
    callback = await sandbox.sign_in(start, SIDOROV)
    with pytest.raises(IdentityError) as raised:
        await provider.finish(
            code=callback["code"], returned_state=callback["state"], started=start, redirect_uri=REDIRECT_URI
        )
    assert raised.value.kind == "account_not_confirmed"


async def test_a_secret_signed_with_another_key_is_rejected_with_007053(
    sandbox: Sandbox, gost_client: GostClient
) -> None:
    # The registered certificate, but a key that is not its own: ESIA's signature check fails.
    provider = sandbox.provider(gost_signer(new_gost_client()), gost_client.certificate_der)
    start = await provider.start(redirect_uri=REDIRECT_URI)
    callback = await sandbox.sign_in(start, IVANOV)
    assert callback["error_description"].startswith("ESIA-007053")
    error = callback_error(callback["error"], callback["error_description"])
    assert (error.kind, error.code) == ("provider_error", "ESIA-007053")


async def test_a_certificate_hash_of_another_certificate_is_rejected_with_007053(
    sandbox: Sandbox, gost_client: GostClient
) -> None:
    other = new_gost_client()
    provider = sandbox.provider(gost_signer(gost_client), other.certificate_der)
    start = await provider.start(redirect_uri=REDIRECT_URI)
    callback = await sandbox.sign_in(start, IVANOV)
    assert callback["error_description"].startswith("ESIA-007053")


async def test_the_token_step_checks_the_signature_too(sandbox: Sandbox, gost_client: GostClient) -> None:
    good = sandbox.provider(gost_signer(gost_client), gost_client.certificate_der)
    start = await good.start(redirect_uri=REDIRECT_URI)
    callback = await sandbox.sign_in(start, IVANOV)
    forged = sandbox.provider(gost_signer(new_gost_client()), gost_client.certificate_der)
    with pytest.raises(IdentityError) as raised:
        await forged.finish(
            code=callback["code"], returned_state=callback["state"], started=start, redirect_uri=REDIRECT_URI
        )
    assert (raised.value.kind, raised.value.code) == ("provider_error", "ESIA-007053")


async def test_denied_consent_is_consent_denied(sandbox: Sandbox, gost_client: GostClient) -> None:
    provider = sandbox.provider(gost_signer(gost_client), gost_client.certificate_der)
    start = await provider.start(redirect_uri=REDIRECT_URI)
    callback = await sandbox.sign_in(start, IVANOV, decision="deny")
    assert callback["state"] == start.state
    error = callback_error(callback["error"], callback["error_description"])
    assert (error.kind, error.code) == ("consent_denied", "ESIA-007004")


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("007004", "consent_denied"),
        ("007007", "temporarily_unavailable"),
        ("007015", "provider_error"),
        ("007055", "account_not_confirmed"),
    ],
)
async def test_injected_authorization_errors_map_to_their_kinds(
    sandbox: Sandbox, gost_client: GostClient, code: str, kind: str
) -> None:
    provider = sandbox.provider(gost_signer(gost_client), gost_client.certificate_der)
    await sandbox.inject(step="ac", error=code)
    start = await provider.start(redirect_uri=REDIRECT_URI)
    callback = await sandbox.sign_in(start, IVANOV)
    assert callback["state"] == start.state
    error = callback_error(callback["error"], callback["error_description"])
    assert (error.kind, error.code) == (kind, f"ESIA-{code}")


async def test_token_endpoint_overload_is_retried_then_succeeds(
    sandbox: Sandbox, gost_client: GostClient
) -> None:
    provider = sandbox.provider(gost_signer(gost_client), gost_client.certificate_der, retry_attempts=3)
    start = await provider.start(redirect_uri=REDIRECT_URI)
    callback = await sandbox.sign_in(start, IVANOV)
    await sandbox.inject(step="te", error="007007", times=1)
    await sandbox.inject(step="te", error="007008", times=1)
    person = await provider.finish(
        code=callback["code"], returned_state=callback["state"], started=start, redirect_uri=REDIRECT_URI
    )
    assert person.subject_id == IVANOV
    sent = await sandbox.recorded("te")
    assert len(sent) == 3
    assert len({r["state"] for r in sent}) == 3  # a fresh state and signature on every attempt


async def test_token_endpoint_down_for_good_is_temporarily_unavailable(
    sandbox: Sandbox, gost_client: GostClient
) -> None:
    provider = sandbox.provider(gost_signer(gost_client), gost_client.certificate_der, retry_attempts=2)
    start = await provider.start(redirect_uri=REDIRECT_URI)
    callback = await sandbox.sign_in(start, IVANOV)
    await sandbox.inject(step="te", error="007007", times=5)
    with pytest.raises(IdentityError) as raised:
        await provider.finish(
            code=callback["code"], returned_state=callback["state"], started=start, redirect_uri=REDIRECT_URI
        )
    assert (raised.value.kind, raised.value.code) == ("temporarily_unavailable", "ESIA-007007")
    assert len(await sandbox.recorded("te")) == 2


async def test_a_slow_token_endpoint_times_out_as_temporarily_unavailable(
    sandbox: Sandbox, gost_client: GostClient
) -> None:
    provider = sandbox.provider(
        gost_signer(gost_client), gost_client.certificate_der, timeout_s=0.3, retry_attempts=1
    )
    start = await provider.start(redirect_uri=REDIRECT_URI)
    callback = await sandbox.sign_in(start, IVANOV)
    # Far beyond the timeout, so the outcome does not depend on machine load.
    await sandbox.inject(step="te", delay_s=5)
    with pytest.raises(IdentityError) as raised:
        await provider.finish(
            code=callback["code"], returned_state=callback["state"], started=start, redirect_uri=REDIRECT_URI
        )
    assert raised.value.kind == "temporarily_unavailable"


async def test_a_failing_person_resource_is_retried(sandbox: Sandbox, gost_client: GostClient) -> None:
    provider = sandbox.provider(gost_signer(gost_client), gost_client.certificate_der)
    start = await provider.start(redirect_uri=REDIRECT_URI)
    callback = await sandbox.sign_in(start, IVANOV)
    await sandbox.inject(step="prns", error="007007", times=1)
    person = await provider.finish(
        code=callback["code"], returned_state=callback["state"], started=start, redirect_uri=REDIRECT_URI
    )
    assert person.subject_id == IVANOV


@pytest.mark.parametrize(
    "fault", ["expired", "other_client", "tampered", "wrong_state", "garbage", "wrong_issuer"]
)
async def test_bad_tokens_are_invalid_responses(
    sandbox: Sandbox, gost_client: GostClient, fault: str
) -> None:
    provider = sandbox.provider(gost_signer(gost_client), gost_client.certificate_der)
    start = await provider.start(redirect_uri=REDIRECT_URI)
    callback = await sandbox.sign_in(start, IVANOV)
    await sandbox.inject(step="te", token=fault)
    with pytest.raises(IdentityError) as raised:
        await provider.finish(
            code=callback["code"], returned_state=callback["state"], started=start, redirect_uri=REDIRECT_URI
        )
    assert raised.value.kind == "invalid_response", raised.value


async def test_tokens_signed_by_an_unknown_key_are_invalid(sandbox: Sandbox, gost_client: GostClient) -> None:
    async with serve_sandbox({CLIENT_ID: gost_client.certificate_der}) as impostor:
        # Keys pinned from another sandbox: this one's tokens must not verify.
        provider = sandbox.provider(
            gost_signer(gost_client), gost_client.certificate_der, jwks_url=f"{impostor.url}/jwks"
        )
        start = await provider.start(redirect_uri=REDIRECT_URI)
        callback = await sandbox.sign_in(start, IVANOV)
        with pytest.raises(IdentityError) as raised:
            await provider.finish(
                code=callback["code"],
                returned_state=callback["state"],
                started=start,
                redirect_uri=REDIRECT_URI,
            )
    assert raised.value.kind == "invalid_response"


async def test_a_callback_with_another_state_or_a_replayed_code_is_rejected(
    sandbox: Sandbox, gost_client: GostClient
) -> None:
    provider = sandbox.provider(gost_signer(gost_client), gost_client.certificate_der)
    start = await provider.start(redirect_uri=REDIRECT_URI)
    other = await provider.start(redirect_uri=REDIRECT_URI)
    callback = await sandbox.sign_in(start, IVANOV)
    with pytest.raises(IdentityError) as raised:
        await provider.finish(
            code=callback["code"], returned_state=other.state, started=start, redirect_uri=REDIRECT_URI
        )
    assert raised.value.kind == "invalid_response"
    assert await sandbox.recorded("te") == []  # rejected before anything was sent

    await provider.finish(
        code=callback["code"], returned_state=callback["state"], started=start, redirect_uri=REDIRECT_URI
    )
    with pytest.raises(IdentityError) as replayed:
        await provider.finish(
            code=callback["code"], returned_state=callback["state"], started=start, redirect_uri=REDIRECT_URI
        )
    assert (replayed.value.kind, replayed.value.code) == ("provider_error", "ESIA-007011")


async def test_the_sandbox_accepts_a_legacy_rsa_signature() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ABONENT_RSA")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    async with serve_sandbox({"ABONENT_RSA": pem}) as sandbox:
        der = certificate.public_bytes(serialization.Encoding.DER)
        provider = sandbox.provider(RsaSigner(key), der, client_id="ABONENT_RSA")
        start = await provider.start(redirect_uri=REDIRECT_URI)
        callback = await sandbox.sign_in(start, PETROVA)
        person = await provider.finish(
            code=callback["code"], returned_state=callback["state"], started=start, redirect_uri=REDIRECT_URI
        )
        assert person.subject_id == PETROVA
        # The same client signing with a GOST key it was not registered with fails ESIA's check.
        wrong = sandbox.provider(gost_signer(new_gost_client()), der, client_id="ABONENT_RSA")
        start = await wrong.start(redirect_uri=REDIRECT_URI)
        callback = await sandbox.sign_in(start, PETROVA)
        assert callback["error_description"].startswith("ESIA-007053")


def test_gost_private_key_pem_round_trip() -> None:
    key = GostPrivateKey.generate()
    assert GostPrivateKey.from_pem(key.to_pem()).secret == key.secret
