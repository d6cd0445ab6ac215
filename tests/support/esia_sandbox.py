"""The sandbox ESIA served for real (uvicorn on a free port) and an ESIA provider pointed at it, for tests."""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fakes.asgi import serve_asgi

from services.verification.identity.base import SignInStart
from services.verification.identity.esia import EsiaClientConfig, EsiaProvider
from services.verification.identity.gost_keys import GostPrivateKey, self_signed_certificate
from services.verification.identity.signers import GostSigner, Signer
from services.verification.identity.tokens import TokenKeys
from services.verification.sandbox_idp.app import create_sandbox_app

CLIENT_ID = "ABONENT_TEST"
REDIRECT_URI = "https://verify.example/v/callback"


@dataclass(frozen=True)
class GostClient:
    key: GostPrivateKey
    certificate_der: bytes


def new_gost_client(name: str = CLIENT_ID) -> GostClient:
    key = GostPrivateKey.generate()
    return GostClient(key=key, certificate_der=self_signed_certificate(key, name))


@dataclass
class Sandbox:
    url: str
    http: httpx.AsyncClient

    async def inject(self, **fault: Any) -> None:
        response = await self.http.post(f"{self.url}/sandbox/faults", json=fault)
        assert response.status_code == 201, response.text

    async def recorded(self, endpoint: str) -> list[dict[str, str]]:
        response = await self.http.get(f"{self.url}/sandbox/requests")
        return [r for r in response.json() if r["endpoint"] == endpoint]

    def provider(
        self,
        signer: Signer,
        certificate_der: bytes,
        *,
        client_id: str = CLIENT_ID,
        jwks_url: str = "",
        timeout_s: float = 10.0,
        retry_attempts: int = 3,
    ) -> EsiaProvider:
        config = EsiaClientConfig(
            base_url=self.url,
            client_id=client_id,
            scopes="openid fullname birthdate id_doc mobile",
            issuer="http://esia.gosuslugi.ru/",
            certificate_der=certificate_der,
            timeout_s=timeout_s,
            retry_attempts=retry_attempts,
            retry_base_delay_s=0.05,
        )
        keys = TokenKeys(jwks_url=jwks_url or f"{self.url}/jwks", http=self.http)
        return EsiaProvider(config, signer, keys, self.http)

    async def sign_in(self, start: SignInStart, oid: str, decision: str = "allow") -> dict[str, str]:
        """What a person does in the browser: open the URL, pick a test person, answer the consent page.
        Returns the query the browser is sent back to redirect_uri with."""
        page = await self.http.get(start.authorization_url)
        if page.status_code == 302:
            return callback_query(page)
        assert page.status_code == 200, page.text
        auth_id = re.search(r'name="auth_id" value="([^"]+)"', page.text)
        assert auth_id is not None, page.text
        consent = await self.http.post(
            f"{self.url}/sandbox/login", data={"auth_id": auth_id.group(1), "oid": oid}
        )
        assert consent.status_code == 200, consent.text
        answer = await self.http.post(
            f"{self.url}/sandbox/consent", data={"auth_id": auth_id.group(1), "decision": decision}
        )
        assert answer.status_code == 302, answer.text
        return callback_query(answer)


def callback_query(response: httpx.Response) -> dict[str, str]:
    location = response.headers["location"]
    assert location.startswith(REDIRECT_URI), location
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


@contextlib.asynccontextmanager
async def serve_sandbox(clients: dict[str, bytes]) -> AsyncIterator[Sandbox]:
    async with serve_asgi(create_sandbox_app(clients)) as url, httpx.AsyncClient() as http:
        yield Sandbox(url=url, http=http)


def gost_signer(client: GostClient) -> GostSigner:
    return GostSigner(client.key)
