"""Signers for ESIA's client_secret: GOST in-process, RSA (legacy/sandbox), a command-line tool, a service."""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import tempfile
from pathlib import Path
from typing import Literal, Protocol

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from services.verification.identity.gost_keys import GostPrivateKey

SignatureAlgorithm = Literal["GOST3410_2012_256", "RS256"]


class SignerError(Exception):
    """The signer could not produce a signature (tool failed, service down, bad key)."""


class Signer(Protocol):
    """Produces the raw signature ESIA verifies against the ИС certificate."""

    algorithm: SignatureAlgorithm

    async def sign(self, data: bytes) -> bytes: ...


class GostSigner:
    """GOST R 34.10-2012 (256) over Streebog-256 in pure Python (gostcrypto): r||s, 64 bytes."""

    algorithm: SignatureAlgorithm = "GOST3410_2012_256"

    def __init__(self, key: GostPrivateKey) -> None:
        self._key = key

    @classmethod
    def from_pem_file(cls, path: str | Path) -> GostSigner:
        return cls(GostPrivateKey.from_pem(Path(path).read_bytes()))

    async def sign(self, data: bytes) -> bytes:
        # Pure-Python curve arithmetic takes tens of milliseconds: keep it off the event loop.
        return await asyncio.to_thread(self._key.sign, data)


class RsaSigner:
    """RSA PKCS#1 v1.5 with SHA-256: the legacy algorithm older ESIA clients use; the sandbox accepts it."""

    algorithm: SignatureAlgorithm = "RS256"

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._key = key

    @classmethod
    def from_pem_file(cls, path: str | Path) -> RsaSigner:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise SignerError(f"{path} does not hold an RSA private key")
        return cls(key)

    async def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())


class CommandSigner:
    """Runs a signing tool (CryptoPro `cryptcp`/`csptest`, OpenSSL with gost-engine) as an argument list.

    Never a shell string: the data goes through a temporary file named by `{in}`; the tool writes the
    signature to `{out}` (or to stdout when the arguments name no `{out}`). `{outdir}` is the temporary
    folder, for tools that choose their own output name (cryptcp writes `<in>.sgn` there).
    """

    def __init__(
        self,
        argv: list[str],
        *,
        algorithm: SignatureAlgorithm = "GOST3410_2012_256",
        output: Literal["raw", "base64"] = "raw",
        timeout_s: float = 10.0,
    ) -> None:
        if not argv:
            raise SignerError("the signing command is empty")
        self._argv = argv
        self.algorithm = algorithm
        self._output = output
        self._timeout_s = timeout_s

    async def sign(self, data: bytes) -> bytes:
        with tempfile.TemporaryDirectory(prefix="abonent-sign-") as folder:
            source = os.path.join(folder, "data.bin")
            target = os.path.join(folder, "signature.bin")
            await asyncio.to_thread(Path(source).write_bytes, data)
            argv = [
                arg.replace("{in}", source).replace("{out}", target).replace("{outdir}", folder)
                for arg in self._argv
            ]
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
            except OSError as exc:
                raise SignerError(f"cannot run {argv[0]}: {exc}") from None
            try:
                stdout, stderr = await asyncio.wait_for(process.communicate(), self._timeout_s)
            except TimeoutError:
                process.kill()
                await process.wait()
                raise SignerError(f"{argv[0]} did not finish within {self._timeout_s} s") from None
            if process.returncode != 0:
                message = stderr.decode(errors="replace").strip()[-300:]
                raise SignerError(f"{argv[0]} exited with {process.returncode}: {message}")
            if any("{out}" in a or "{outdir}" in a for a in self._argv):
                output = await asyncio.to_thread(_written_signature, folder, argv[0])
            else:
                output = stdout
        return _decode_output(output, self._output)


class RemoteSigner:
    """A signing service over HTTP (the "crypto-service" pattern): POST bytes, get the raw signature back.

    Request: `POST url`, body = the bytes to sign (application/octet-stream), `Authorization: Bearer
    <token>` when a token is set. Response 200 with the raw signature (application/octet-stream) or its
    base64 (text/plain).
    """

    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        *,
        token: str = "",
        algorithm: SignatureAlgorithm = "GOST3410_2012_256",
        timeout_s: float = 10.0,
    ) -> None:
        self._url = url
        self._http = http
        self._token = token
        self.algorithm = algorithm
        self._timeout_s = timeout_s

    async def sign(self, data: bytes) -> bytes:
        headers = {"Content-Type": "application/octet-stream", "Accept": "application/octet-stream"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            response = await self._http.post(
                self._url, content=data, headers=headers, timeout=self._timeout_s
            )
        except httpx.HTTPError as exc:
            raise SignerError(f"signing service unreachable: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise SignerError(f"signing service answered {response.status_code}")
        kind = response.headers.get("content-type", "").split(";")[0].strip()
        return _decode_output(response.content, "base64" if kind.startswith("text/") else "raw")


def _written_signature(folder: str, tool: str) -> bytes:
    written = sorted(p for p in Path(folder).iterdir() if p.name != "data.bin")
    if not written:
        raise SignerError(f"{tool} wrote no signature file")
    return written[0].read_bytes()


def _decode_output(output: bytes, form: Literal["raw", "base64"]) -> bytes:
    if form == "raw":
        if not output:
            raise SignerError("the signer returned an empty signature")
        return output
    try:
        decoded = base64.b64decode(b"".join(output.split()), validate=True)
    except (binascii.Error, ValueError):
        raise SignerError("the signer's output is not base64") from None
    if not decoded:
        raise SignerError("the signer returned an empty signature")
    return decoded


def base64url(signature: bytes) -> str:
    """How ESIA's v2/ac and v3/te take client_secret: base64url (padded, as go-api-epgu sends it)."""
    return base64.urlsafe_b64encode(signature).decode()
