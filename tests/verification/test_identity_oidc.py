"""Generic OpenID Connect against pyop, an open-source OpenID provider we did not write, over real HTTPS."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from fakes.pyop_provider import PyopServer, serve_pyop

from services.common.settings import load_section
from services.verification.identity.base import IdentityError, SignInStart
from services.verification.identity.config import IdentitySettings, build_identity_provider
from services.verification.identity.errors import callback_error

CLIENT_ID = "abonent-verification"
CLIENT_SECRET = "pyop-client-secret"
REDIRECT_URI = "https://verify.example/v/oidc-callback"


@pytest.fixture
async def pyop() -> AsyncIterator[PyopServer]:
    async with serve_pyop(CLIENT_ID, CLIENT_SECRET, REDIRECT_URI) as server:
        yield server


@pytest.fixture
async def http(pyop: PyopServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=pyop.ssl_context) as client:
        yield client


def _settings(pyop: PyopServer, **overrides: str) -> IdentitySettings:
    return load_section(
        IdentitySettings,
        {},
        identity_mode="oidc",
        oidc_discovery_url=f"{pyop.url}/.well-known/openid-configuration",
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
        **overrides,
    )


async def _authorize(http: httpx.AsyncClient, start: SignInStart) -> dict[str, str]:
    """The browser's part: the provider signs its test user in and redirects back."""
    response = await http.get(start.authorization_url)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT_URI)
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


async def test_a_real_sign_in_with_pkce_and_nonce(pyop: PyopServer, http: httpx.AsyncClient) -> None:
    provider = build_identity_provider(_settings(pyop), http)
    assert provider.name == "oidc"
    start = await provider.start(redirect_uri=REDIRECT_URI)

    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(start.authorization_url).query))
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == REDIRECT_URI
    assert query["scope"].split()[0] == "openid"
    assert query["state"] == start.state
    assert query["nonce"] == start.nonce
    assert len(start.nonce) >= 22
    assert query["code_challenge_method"] == "S256"
    assert query["code_challenge"] == create_s256_code_challenge(start.code_verifier)
    assert 43 <= len(start.code_verifier) <= 128

    callback = await _authorize(http, start)
    assert callback["state"] == start.state
    person = await provider.finish(
        code=callback["code"], returned_state=callback["state"], started=start, redirect_uri=REDIRECT_URI
    )
    assert (person.last_name, person.first_name, person.middle_name) == ("Петрова", "Анна", "Сергеевна")
    assert person.birth_date == dt.date(1990, 1, 31)
    assert person.mobile_phones == ["+79161234568"]
    assert person.subject_id
    [token_request] = pyop.token_requests
    assert token_request["code_verifier"] == start.code_verifier
    assert "client_secret" not in token_request  # client_secret_basic, as the provider asks


async def test_a_wrong_code_verifier_is_refused_by_the_provider(
    pyop: PyopServer, http: httpx.AsyncClient
) -> None:
    provider = build_identity_provider(_settings(pyop), http)
    start = await provider.start(redirect_uri=REDIRECT_URI)
    callback = await _authorize(http, start)
    forged = msgspec.structs.replace(start, code_verifier="x" * 64)
    with pytest.raises(IdentityError) as raised:
        await provider.finish(
            code=callback["code"], returned_state=callback["state"], started=forged, redirect_uri=REDIRECT_URI
        )
    assert raised.value.kind == "provider_error"


async def test_a_token_for_another_nonce_is_invalid(pyop: PyopServer, http: httpx.AsyncClient) -> None:
    provider = build_identity_provider(_settings(pyop), http)
    start = await provider.start(redirect_uri=REDIRECT_URI)
    callback = await _authorize(http, start)
    other = msgspec.structs.replace(start, nonce="another-sign-in")
    with pytest.raises(IdentityError) as raised:
        await provider.finish(
            code=callback["code"], returned_state=callback["state"], started=other, redirect_uri=REDIRECT_URI
        )
    assert raised.value.kind == "invalid_response"


async def test_another_state_is_rejected_before_the_exchange(
    pyop: PyopServer, http: httpx.AsyncClient
) -> None:
    provider = build_identity_provider(_settings(pyop), http)
    start = await provider.start(redirect_uri=REDIRECT_URI)
    callback = await _authorize(http, start)
    with pytest.raises(IdentityError) as raised:
        await provider.finish(
            code=callback["code"], returned_state="not-ours", started=start, redirect_uri=REDIRECT_URI
        )
    assert raised.value.kind == "invalid_response"
    assert pyop.token_requests == []


async def test_a_refusal_is_consent_denied(pyop: PyopServer, http: httpx.AsyncClient) -> None:
    provider = build_identity_provider(_settings(pyop), http)
    pyop.deny_next.append(True)
    start = await provider.start(redirect_uri=REDIRECT_URI)
    callback = await _authorize(http, start)
    assert callback["error"] == "access_denied"
    assert callback_error(callback["error"], callback.get("error_description", "")).kind == "consent_denied"


async def test_claim_mapping_is_configurable(pyop: PyopServer, http: httpx.AsyncClient) -> None:
    settings = _settings(pyop, oidc_claim_mapping='{"middle_name": "", "mobile_phones": ""}')
    provider = build_identity_provider(settings, http)
    start = await provider.start(redirect_uri=REDIRECT_URI)
    callback = await _authorize(http, start)
    person = await provider.finish(
        code=callback["code"], returned_state=callback["state"], started=start, redirect_uri=REDIRECT_URI
    )
    assert person.middle_name == ""
    assert person.mobile_phones == []


async def test_a_discovery_document_for_another_issuer_is_refused() -> None:
    # The document's issuer is not the URL it was fetched under (OIDC Discovery 4.3).
    async with (
        serve_pyop(CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, issuer_path="/elsewhere") as pyop,
        httpx.AsyncClient(verify=pyop.ssl_context) as http,
    ):
        settings = load_section(
            IdentitySettings,
            {},
            identity_mode="oidc",
            oidc_discovery_url=f"{pyop.url.removesuffix('/elsewhere')}/.well-known/openid-configuration",
            oidc_client_id=CLIENT_ID,
        )
        provider = build_identity_provider(settings, http)
        with pytest.raises(IdentityError) as raised:
            await provider.start(redirect_uri=REDIRECT_URI)
    assert raised.value.kind == "invalid_response"
