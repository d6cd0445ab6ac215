"""A real OpenID provider for tests: pyop (which we did not write) behind a small ASGI app on a local port.

pyop does the protocol (discovery, authorization requests, PKCE, codes, signed id_tokens, userinfo); this
app only adds HTTP plumbing and the part pyop leaves to its host: who is signed in. Here a fixed test user
is signed in at once, as if they had typed their password; `deny_next` answers the next authorization
with access_denied, as a person pressing "Deny" would.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import ssl
import tempfile
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from Cryptodome.PublicKey import RSA
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from jwkest.jwk import RSAKey
from oic.oic.message import AuthorizationErrorResponse
from pyop.authz_state import AuthorizationState
from pyop.exceptions import InvalidAuthenticationRequest, OAuthError
from pyop.provider import Provider
from pyop.subject_identifier import HashBasedSubjectIdentifierFactory
from pyop.userinfo import Userinfo

from fakes.asgi import Receive, Scope, Send, _stop, read_body

USER_ID = "anna"
USER = {
    "family_name": "Петрова",
    "given_name": "Анна",
    "middle_name": "Сергеевна",
    "name": "Анна Сергеевна Петрова",
    "birthdate": "1990-01-31",
    "phone_number": "+79161234568",
    "phone_number_verified": True,
}


@dataclass
class PyopServer:
    url: str
    provider: Provider
    # Trust for the provider's self-signed TLS certificate (OpenID issuers must be https).
    ssl_context: ssl.SSLContext
    deny_next: list[bool] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, payload: Any) -> None:
    await _respond(send, status, json.dumps(payload).encode(), [(b"content-type", b"application/json")])


def _app(server: PyopServer):  # type: ignore[no-untyped-def]
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        provider = server.provider
        path = scope["path"]
        query = scope.get("query_string", b"").decode()
        # pyop reads the header as "Authorization", exactly so spelt.
        headers = {k.decode().title(): v.decode() for k, v in scope.get("headers", [])}
        if path == "/.well-known/openid-configuration":
            await _json(send, 200, provider.provider_configuration.to_dict())
        elif path == "/jwks":
            await _json(send, 200, provider.jwks)
        elif path == "/authorize":
            try:
                request = provider.parse_authentication_request(query)
            except InvalidAuthenticationRequest as exc:
                await _respond(send, 400, str(exc).encode(), [])
                return
            if server.deny_next:
                server.deny_next.pop()
                error = AuthorizationErrorResponse(
                    error="access_denied", error_description="the user said no", state=request["state"]
                )
                location = error.request(request["redirect_uri"])
            else:
                location = provider.authorize(request, USER_ID).request(request["redirect_uri"])
            await _respond(send, 302, b"", [(b"location", location.encode())])
        elif path == "/token":
            body = (await read_body(receive)).decode()
            server.token_requests.append(dict(urllib.parse.parse_qsl(body)))
            try:
                response = provider.handle_token_request(body, headers)
            except OAuthError as exc:
                await _json(send, 400, {"error": exc.oauth_error, "error_description": str(exc)})
                return
            await _json(send, 200, response.to_dict())
        elif path == "/userinfo":
            try:
                response = provider.handle_userinfo_request(query, headers)
            except OAuthError as exc:
                await _json(send, 401, {"error": exc.oauth_error})
                return
            await _json(send, 200, response.to_dict())
        else:
            await _respond(send, 404, b"", [])

    return app


@contextlib.asynccontextmanager
async def serve_pyop(
    client_id: str, client_secret: str, redirect_uri: str, *, issuer_path: str = ""
) -> AsyncIterator[PyopServer]:
    """pyop on a free port with one registered client and one user; yields once it answers."""
    server = PyopServer(url="", provider=None, ssl_context=ssl.create_default_context())  # type: ignore[arg-type]
    async with _serve_tls(_app(server)) as (url, context):
        server.ssl_context = context
        base = url + issuer_path
        signing_key = RSAKey(key=RSA.generate(2048), alg="RS256", kid="pyop-test")
        configuration = {
            "issuer": base,
            "authorization_endpoint": f"{url}/authorize",
            "token_endpoint": f"{url}/token",
            "userinfo_endpoint": f"{url}/userinfo",
            "jwks_uri": f"{url}/jwks",
            "response_types_supported": ["code"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "subject_types_supported": ["public"],
            "grant_types_supported": ["authorization_code"],
            "scopes_supported": ["openid", "profile", "phone"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "code_challenge_methods_supported": ["S256"],
        }
        clients = {
            client_id: {
                "client_secret": client_secret,
                "redirect_uris": [redirect_uri],
                "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_basic",
            }
        }
        state = AuthorizationState(HashBasedSubjectIdentifierFactory("salt"))
        server.provider = Provider(
            signing_key, configuration, state, clients, Userinfo({USER_ID: dict(USER)})
        )
        server.url = base
        yield server


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@contextlib.asynccontextmanager
async def _serve_tls(app: Any) -> AsyncIterator[tuple[str, ssl.SSLContext]]:
    """Like fakes.asgi.serve_asgi, over HTTPS with a fresh self-signed certificate."""
    with tempfile.TemporaryDirectory(prefix="pyop-tls-") as folder:
        cert_path, key_path = _self_signed(Path(folder))
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="off",
            ssl_certfile=str(cert_path),
            ssl_keyfile=str(key_path),
            timeout_graceful_shutdown=1,
            access_log=False,
        )
        server = uvicorn.Server(config)
        config.load()
        server.lifespan = config.lifespan_class(config)
        await server.startup()
        context = ssl.create_default_context(cafile=str(cert_path))
        try:
            port = server.servers[0].sockets[0].getsockname()[1]
            yield f"https://127.0.0.1:{port}", context
        finally:
            await _stop(server)
