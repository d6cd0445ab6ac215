"""GOST R 34.10-2012 (256-bit) keys and certificates in DER/PEM, without an ASN.1 library or OpenSSL engine.

`cryptography` knows no GOST algorithms, so the few structures ESIA needs are written and read here:
PKCS#8 private keys and X.509 certificates as OpenSSL's gost-engine and CryptoPro exchange them
(RFC 4491 / RFC 9215 layouts), plus the Streebog-256 certificate hash ESIA calls client_certificate_hash.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import re

from gostcrypto import gosthash, gostsignature  # type: ignore[import-untyped]  # no py.typed

# GOST R 34.10-2012 256-bit public key / signature-with-Streebog-256 algorithm identifiers.
OID_GOST2012_256 = "1.2.643.7.1.1.1.1"
OID_SIGN_GOST2012_256 = "1.2.643.7.1.1.3.2"
OID_STREEBOG_256 = "1.2.643.7.1.1.2.2"
# CryptoPro-A: the parameter set CryptoPro certificates (ESIA's among them) use for 256-bit keys.
OID_CRYPTOPRO_A = "1.2.643.2.2.35.1"
OID_COMMON_NAME = "2.5.4.3"

# Curve parameter-set OIDs -> gostcrypto's curve names (CryptoPro sets alias the TC26 ones).
CURVE_BY_OID = {
    "1.2.643.2.2.35.1": "id-tc26-gost-3410-2012-256-paramSetB",
    "1.2.643.2.2.35.2": "id-tc26-gost-3410-2012-256-paramSetC",
    "1.2.643.2.2.35.3": "id-tc26-gost-3410-2012-256-paramSetD",
    "1.2.643.2.2.36.0": "id-tc26-gost-3410-2012-256-paramSetB",
    "1.2.643.2.2.36.1": "id-tc26-gost-3410-2012-256-paramSetD",
    "1.2.643.7.1.2.1.1.1": "id-tc26-gost-3410-2012-256-paramSetA",
    "1.2.643.7.1.2.1.1.2": "id-tc26-gost-3410-2012-256-paramSetB",
    "1.2.643.7.1.2.1.1.3": "id-tc26-gost-3410-2012-256-paramSetC",
    "1.2.643.7.1.2.1.1.4": "id-tc26-gost-3410-2012-256-paramSetD",
}


class GostKeyError(ValueError):
    """A key or certificate that is not a GOST R 34.10-2012 256-bit one we can read."""


def streebog256(data: bytes) -> bytes:
    hasher = gosthash.new("streebog256", data=bytearray(data))
    return bytes(hasher.digest())


def certificate_hash(certificate_der: bytes) -> str:
    """ESIA's client_certificate_hash: Streebog-256 over the certificate's DER (never its PEM), hex."""
    return streebog256(certificate_der).hex().upper()


def curve(paramset_oid: str) -> gostsignature.GOST34102012:
    name = CURVE_BY_OID.get(paramset_oid)
    if name is None:
        raise GostKeyError(f"unsupported GOST parameter set {paramset_oid}")
    return gostsignature.new(gostsignature.MODE_256, gostsignature.CURVES_R_1323565_1_024_2019[name])


def sign_digest(private_key: bytes, digest: bytes, paramset_oid: str = OID_CRYPTOPRO_A) -> bytes:
    """Raw GOST R 34.10-2012 signature r||s (32 bytes each, big-endian) over a Streebog-256 digest."""
    # gostcrypto zero-fills the key buffer it is given; hand it a copy.
    return bytes(curve(paramset_oid).sign(bytearray(private_key), bytearray(digest)))


def verify_digest(
    public_key: bytes, digest: bytes, signature: bytes, paramset_oid: str = OID_CRYPTOPRO_A
) -> bool:
    if len(signature) != 64 or len(public_key) != 64:
        return False
    return bool(curve(paramset_oid).verify(bytearray(public_key), bytearray(digest), bytearray(signature)))


def public_key_of(private_key: bytes, paramset_oid: str = OID_CRYPTOPRO_A) -> bytes:
    """X||Y, big-endian, as gostcrypto takes it."""
    return bytes(curve(paramset_oid).public_key_generate(bytearray(private_key)))


class GostPrivateKey:
    """A 256-bit GOST key with its parameter set."""

    def __init__(self, secret: bytes, paramset_oid: str = OID_CRYPTOPRO_A) -> None:
        if len(secret) != 32:
            raise GostKeyError("a GOST R 34.10-2012 256-bit private key is 32 bytes")
        self.secret = secret
        self.paramset_oid = paramset_oid

    @classmethod
    def generate(cls, paramset_oid: str = OID_CRYPTOPRO_A) -> GostPrivateKey:
        order = curve(paramset_oid)._q  # gostcrypto exposes the group order only as this attribute
        while True:
            candidate = int.from_bytes(os.urandom(32), "big")
            if 0 < candidate < order:
                return cls(candidate.to_bytes(32, "big"), paramset_oid)

    def public_key(self) -> bytes:
        return public_key_of(self.secret, self.paramset_oid)

    def sign(self, data: bytes) -> bytes:
        return sign_digest(self.secret, streebog256(data), self.paramset_oid)

    def to_pkcs8_der(self) -> bytes:
        # RFC 9215: the key is an OCTET STRING of the little-endian secret inside PrivateKeyInfo.
        return _seq(
            _int(0),
            _algorithm(self.paramset_oid),
            _octets(_octets(self.secret[::-1])),
        )

    def to_pem(self) -> str:
        return to_pem("PRIVATE KEY", self.to_pkcs8_der())

    @classmethod
    def from_pem(cls, text: str | bytes) -> GostPrivateKey:
        der = from_pem(text, "PRIVATE KEY")
        try:
            info = _children(_read(der, 0)[1])
            algorithm = _children(info[1][1])
            if _oid_text(algorithm[0][1]) != OID_GOST2012_256:
                raise GostKeyError("not a GOST R 34.10-2012 256-bit private key")
            paramset = _oid_text(_children(algorithm[1][1])[0][1])
            inner_tag, inner, _ = _read(info[2][1], 0)
        except (IndexError, ValueError) as exc:
            raise GostKeyError(f"malformed GOST private key: {exc}") from None
        # gost-engine writes OCTET STRING (little-endian); older tools an INTEGER (big-endian).
        secret = inner[::-1] if inner_tag == 0x04 else inner.lstrip(b"\0").rjust(32, b"\0")
        return cls(secret, paramset)


class GostCertificate:
    """The parts of an X.509 certificate ESIA's checks need: its DER and its GOST public key."""

    def __init__(self, der: bytes) -> None:
        self.der = der
        try:
            tbs = _children(_children(_read(der, 0)[1])[0][1])
            # An explicit [0] version is present in every v3 certificate; skip it when there.
            offset = 1 if tbs[0][0] == 0xA0 else 0
            spki = _children(tbs[offset + 5][1])
            algorithm = _children(spki[0][1])
            self.algorithm_oid = _oid_text(algorithm[0][1])
            if self.algorithm_oid != OID_GOST2012_256:
                raise GostKeyError(f"certificate key is {self.algorithm_oid}, not GOST 2012-256")
            self.paramset_oid = _oid_text(_children(algorithm[1][1])[0][1])
            bits = spki[1][1]
            point = _read(bits[1:], 0)[1]  # BIT STRING (no unused bits) holding an OCTET STRING
        except (IndexError, ValueError) as exc:
            raise GostKeyError(f"malformed GOST certificate: {exc}") from None
        if len(point) != 64:
            raise GostKeyError("a GOST 2012-256 public key is 64 bytes")
        # RFC 4491: X and Y little-endian, each 32 bytes.
        self.public_key = point[:32][::-1] + point[32:][::-1]

    @classmethod
    def from_bytes(cls, data: bytes) -> GostCertificate:
        return cls(from_pem(data, "CERTIFICATE") if data.lstrip().startswith(b"-----") else data)

    def verify(self, data: bytes, signature: bytes) -> bool:
        return verify_digest(self.public_key, streebog256(data), signature, self.paramset_oid)


def self_signed_certificate(
    key: GostPrivateKey, common_name: str, *, valid_days: int = 3650, now: dt.datetime | None = None
) -> bytes:
    """A self-signed GOST certificate (DER) for dev and tests, standing in for an ИС certificate."""
    start = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    name = _seq(_set(_seq(_oid(OID_COMMON_NAME), _tlv(0x0C, common_name.encode()))))
    public = key.public_key()
    point = public[:32][::-1] + public[32:][::-1]
    tbs = _seq(
        _tlv(0xA0, _int(2)),
        _int(int.from_bytes(os.urandom(16), "big") >> 1),
        _seq(_oid(OID_SIGN_GOST2012_256)),
        name,
        _seq(_time(start), _time(start + dt.timedelta(days=valid_days))),
        name,
        _seq(_algorithm(key.paramset_oid), _tlv(0x03, b"\0" + _octets(point))),
    )
    raw = key.sign(tbs)
    # RFC 4491 writes the certificate signature as s||r; our raw signature is r||s.
    signature = raw[32:] + raw[:32]
    return _seq(tbs, _seq(_oid(OID_SIGN_GOST2012_256)), _tlv(0x03, b"\0" + signature))


def to_pem(label: str, der: bytes) -> str:
    body = base64.b64encode(der).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def from_pem(text: str | bytes, label: str) -> bytes:
    raw = text.decode() if isinstance(text, bytes) else text
    match = re.search(rf"-----BEGIN {label}-----(.*?)-----END {label}-----", raw, re.S)
    if match is None:
        raise GostKeyError(f"no PEM {label} block")
    return base64.b64decode("".join(match.group(1).split()))


# --- the little DER this needs -------------------------------------------------------------------


def _len(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    body = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _len(len(body)) + body


def _seq(*parts: bytes) -> bytes:
    return _tlv(0x30, b"".join(parts))


def _set(*parts: bytes) -> bytes:
    return _tlv(0x31, b"".join(parts))


def _int(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return _tlv(0x02, body)


def _octets(body: bytes) -> bytes:
    return _tlv(0x04, body)


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([arcs[0] * 40 + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        body.extend(reversed(chunk))
    return _tlv(0x06, bytes(body))


def _algorithm(paramset_oid: str) -> bytes:
    return _seq(_oid(OID_GOST2012_256), _seq(_oid(paramset_oid), _oid(OID_STREEBOG_256)))


def _time(moment: dt.datetime) -> bytes:
    return _tlv(0x17, moment.astimezone(dt.UTC).strftime("%y%m%d%H%M%SZ").encode())


def _read(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """One TLV at pos: (tag, body, next position)."""
    tag = data[pos]
    first = data[pos + 1]
    pos += 2
    if first & 0x80:
        count = first & 0x7F
        size = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    else:
        size = first
    if pos + size > len(data):
        raise ValueError("truncated DER")
    return tag, data[pos : pos + size], pos + size


def _children(body: bytes) -> list[tuple[int, bytes]]:
    items: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(body):
        tag, inner, pos = _read(body, pos)
        items.append((tag, inner))
    return items


def _oid_text(body: bytes) -> str:
    arcs = [body[0] // 40, body[0] % 40]
    value = 0
    for byte in body[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    return ".".join(str(a) for a in arcs)
