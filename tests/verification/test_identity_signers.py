"""Signers for ESIA's client_secret: published GOST vectors, round trips, a command tool, a service."""

from __future__ import annotations

import base64
import json
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fakes.asgi import Receive, Scope, Send, header_of, read_body, serve_asgi
from gostcrypto import gosthash, gostsignature
from support.esia_sandbox import REDIRECT_URI, GostClient, new_gost_client, serve_sandbox

from services.verification.identity.base import IdentityError
from services.verification.identity.gost_keys import GostCertificate, certificate_hash, streebog256
from services.verification.identity.signers import (
    CommandSigner,
    GostSigner,
    RemoteSigner,
    SignerError,
)

# GOST R 34.10-2012 appendix A.1 (also RFC 7091 appendix A.1): the 256-bit example curve, key and signature.
VECTOR_CURVE = {
    "p": 0x8000000000000000000000000000000000000000000000000000000000000431,
    "a": 0x7,
    "b": 0x5FBFF498AA938CE739B8E022FBAFEF40563F6E6A3472FC2A514C0CE9DAE23B7E,
    "m": 0x8000000000000000000000000000000150FE8A1892976154C59CFC193ACCF5B3,
    "q": 0x8000000000000000000000000000000150FE8A1892976154C59CFC193ACCF5B3,
    "x": 0x2,
    "y": 0x08E2A8A0E65147D4BD6316030E16D19C85C97F0A9CA267122B96ABBCEA7E8FC8,
}
VECTOR_D = "7A929ADE789BB9BE10ED359DD39A72C11B60961F49397EEE1D19CE9891EC3B28"
VECTOR_Q = (
    "7F2B49E270DB6D90D8595BEC458B50C58585BA1D4E9B788F6689DBD8E56FD80B"
    "26F1B489D6701DD185C8413A977B3CBBAF64D1C593D26627DFFB101A87FF77DA"
)
VECTOR_E = "2DFBC1B372D89A1188C09C52E0EEC61FCE52032AB1022E8E67ECE6672B043EE5"
VECTOR_K = "77105C9B20BCD3122823C8CF6FCC7B956DE33814E95B7FE64FED924594DCEAB3"
VECTOR_SIGNATURE = (
    "41AA28D2F1AB148280CD9ED56FEDA41974053554A42767B83AD043FD39DC0493"  # r
    "01456C64BA4642A1653C235A98A60249BCD6D3F746B631DF928014F6C5BF9C40"  # s
)


def test_gost_34_10_2012_published_vector() -> None:
    curve = gostsignature.new(gostsignature.MODE_256, VECTOR_CURVE)
    private = bytearray.fromhex(VECTOR_D)
    assert bytes(curve.public_key_generate(bytearray(private))).hex().upper() == VECTOR_Q
    signature = curve.sign(bytearray(private), bytearray.fromhex(VECTOR_E), bytearray.fromhex(VECTOR_K))
    assert bytes(signature).hex().upper() == VECTOR_SIGNATURE
    assert curve.verify(
        bytearray.fromhex(VECTOR_Q), bytearray.fromhex(VECTOR_E), bytearray.fromhex(VECTOR_SIGNATURE)
    )
    forged = bytearray.fromhex(VECTOR_SIGNATURE)
    forged[-1] ^= 1
    assert not curve.verify(bytearray.fromhex(VECTOR_Q), bytearray.fromhex(VECTOR_E), forged)


def test_streebog_256_published_vector() -> None:
    # GOST R 34.11-2012 example 1 (message M1), 256-bit hash.
    message = b"012345678901234567890123456789012345678901234567890123456789012"
    expected = "9d151eefd8590b89daa6ba6cb74af9275dd051026bb149a452fd84e5e57b5500"
    assert streebog256(message).hex() == expected
    assert gosthash.new("streebog256", data=bytearray(message)).hexdigest() == expected


@pytest.fixture(scope="module")
def client() -> GostClient:
    return new_gost_client()


async def test_gost_signer_round_trip_against_the_certificate(client: GostClient) -> None:
    signature = await GostSigner(client.key).sign(b"ABONENT_TESTopenid2026.01.01 00:00:00 +0000")
    certificate = GostCertificate(client.certificate_der)
    assert len(signature) == 64
    assert certificate.verify(b"ABONENT_TESTopenid2026.01.01 00:00:00 +0000", signature)
    assert not certificate.verify(b"ABONENT_TESTopenid2026.01.01 00:00:01 +0000", signature)
    assert not GostCertificate(new_gost_client().certificate_der).verify(
        b"ABONENT_TESTopenid2026.01.01 00:00:00 +0000", signature
    )


def test_certificate_hash_is_streebog_over_der(client: GostClient) -> None:
    digest = certificate_hash(client.certificate_der)
    assert digest == streebog256(client.certificate_der).hex().upper()
    assert len(digest) == 64


# Stands in for cryptcp / openssl-gost: signs {in} with the key given as hex, writes {out}, records argv.
FAKE_TOOL = textwrap.dedent(
    """
    import json, sys
    from gostcrypto import gosthash, gostsignature
    args = sys.argv[1:]
    with open(args[args.index("--log") + 1], "w") as log:
        json.dump(args, log)
    if "--fail" in args:
        print("CSP error 0x8009001d", file=sys.stderr)
        sys.exit(3)
    key = bytearray.fromhex(args[args.index("--key") + 1])
    data = open(args[args.index("--in") + 1], "rb").read()
    digest = gosthash.new("streebog256", data=bytearray(data)).digest()
    curve = gostsignature.new(
        gostsignature.MODE_256,
        gostsignature.CURVES_R_1323565_1_024_2019["id-tc26-gost-3410-2012-256-paramSetB"],
    )
    signature = bytes(curve.sign(key, digest))
    if "--out" in args:
        open(args[args.index("--out") + 1], "wb").write(signature)
    else:
        import base64
        sys.stdout.write(base64.b64encode(signature).decode())
    """
)


@pytest.fixture
def tool(tmp_path: Path) -> Path:
    script = tmp_path / "fake_cryptcp.py"
    script.write_text(FAKE_TOOL)
    return script


async def test_command_signer_runs_an_argument_list_with_files(
    client: GostClient, tool: Path, tmp_path: Path
) -> None:
    log = tmp_path / "argv.json"
    marker = tmp_path / "injected"
    hostile = f"$(touch {marker}); touch {marker}"
    argv = [sys.executable, str(tool), "--key", client.key.secret.hex(), "--in", "{in}", "--out", "{out}"]
    signer = CommandSigner([*argv, "--log", str(log), "--label", hostile])
    signature = await signer.sign(b"data to sign")
    assert GostCertificate(client.certificate_der).verify(b"data to sign", signature)
    # The hostile argument arrived as one literal argument and no shell ever ran it.
    assert json.loads(log.read_text())[-1] == hostile
    assert not marker.exists()


async def test_command_signer_reads_base64_from_stdout(
    client: GostClient, tool: Path, tmp_path: Path
) -> None:
    argv = [sys.executable, str(tool), "--key", client.key.secret.hex(), "--in", "{in}"]
    signer = CommandSigner([*argv, "--log", str(tmp_path / "argv.json")], output="base64")
    signature = await signer.sign(b"stdout please")
    assert GostCertificate(client.certificate_der).verify(b"stdout please", signature)


async def test_command_signer_failures_are_signer_errors(tool: Path, tmp_path: Path) -> None:
    failing = CommandSigner([sys.executable, str(tool), "--fail", "--log", str(tmp_path / "a.json")])
    with pytest.raises(SignerError, match="exited with 3: CSP error"):
        await failing.sign(b"x")
    missing = CommandSigner([str(tmp_path / "no-such-cryptcp"), "{in}"])
    with pytest.raises(SignerError, match="cannot run"):
        await missing.sign(b"x")


def _signing_service(client: GostClient, token: str, *, as_text: bool = False, broken: bool = False):  # type: ignore[no-untyped-def]
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        if broken or header_of(scope, "authorization") != f"Bearer {token}":
            await send({"type": "http.response.start", "status": 503 if broken else 401, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        signature = client.key.sign(body)
        kind, payload = (
            (b"text/plain", base64.b64encode(signature))
            if as_text
            else (b"application/octet-stream", signature)
        )
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]})
        await send({"type": "http.response.body", "body": payload})

    return app


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.mark.parametrize("as_text", [False, True])
async def test_remote_signer_posts_the_bytes_and_reads_the_signature(
    client: GostClient, http: httpx.AsyncClient, as_text: bool
) -> None:
    async with serve_asgi(_signing_service(client, "s3cret", as_text=as_text)) as url:
        signature = await RemoteSigner(f"{url}/sign", http, token="s3cret").sign(b"remote bytes")
        assert GostCertificate(client.certificate_der).verify(b"remote bytes", signature)
        with pytest.raises(SignerError, match="401"):
            await RemoteSigner(f"{url}/sign", http, token="wrong").sign(b"remote bytes")


async def test_an_unavailable_signing_service_makes_sign_in_temporarily_unavailable(
    client: GostClient, http: httpx.AsyncClient
) -> None:
    async with (
        serve_asgi(_signing_service(client, "t", broken=True)) as url,
        serve_sandbox({"ABONENT_TEST": client.certificate_der}) as sandbox,
    ):
        provider = sandbox.provider(RemoteSigner(f"{url}/sign", http, token="t"), client.certificate_der)
        with pytest.raises(IdentityError) as raised:
            await provider.start(redirect_uri=REDIRECT_URI)
    assert raised.value.kind == "temporarily_unavailable"


async def test_a_sign_in_completes_with_the_remote_signer(
    client: GostClient, http: httpx.AsyncClient
) -> None:
    async with (
        serve_asgi(_signing_service(client, "t")) as url,
        serve_sandbox({"ABONENT_TEST": client.certificate_der}) as sandbox,
    ):
        provider = sandbox.provider(RemoteSigner(f"{url}/sign", http, token="t"), client.certificate_der)
        start = await provider.start(redirect_uri=REDIRECT_URI)
        callback = await sandbox.sign_in(start, "1000000001")
        person = await provider.finish(
            code=callback["code"], returned_state=callback["state"], started=start, redirect_uri=REDIRECT_URI
        )
    assert person.last_name == "Иванов"
