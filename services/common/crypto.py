"""Personal data at rest: a keyring for AES-GCM field encryption, a blind-index key, signed tokens."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.common.settings import Settings, SettingsError, env_name

# Ciphertext format 1 (the header is authenticated: it is part of the associated data):
#
#     0xAB | 0x01 | n | key id (n ASCII bytes) | nonce (12) | AES-256-GCM ciphertext + tag (16)
#
# The legacy format (before key rotation) is `nonce (12) | ciphertext + tag` under a key derived from
# ABONENT_DATA_KEY, with the column context alone as associated data. A legacy nonce is random, so it
# starts like a format-1 header once in 65 536 rows; that never misleads a read: GCM authenticates, so a
# blob is accepted only by the key and layout that produced it, and a failed format-1 read falls back to
# the legacy one. Rotation finds values not under the active key by their exact header prefix
# (`key_prefix`), which a legacy nonce matches with probability 2^-(8·(3+n)) (2^-40 for a 2-byte id).
MAGIC = 0xAB
FORMAT_VERSION = 1
NONCE_BYTES = 12
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,32}")

RowId = str | int | uuid.UUID


class CannotDecrypt(ValueError):
    """The value was not written by any key in the ring for this context and row (or was altered)."""


def _derive(master: bytes, purpose: bytes) -> bytes:
    # Separate keys per use: a leaked lookup-hash key does not decrypt anything.
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(master)


def decode_key(value: str, variable: str) -> bytes:
    """A urlsafe-base64 32-byte key; the error names the environment variable."""
    try:
        raw = base64.urlsafe_b64decode(value.strip().encode())
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise SettingsError(f"{variable} must be 32 random bytes, urlsafe-base64 encoded")
    return raw


def encode_key(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def new_key() -> str:
    return encode_key(secrets.token_bytes(32))


def parse_key_list(spec: str, variable: str) -> dict[str, bytes]:
    """`id:<b64>,id:<b64>` (commas or whitespace between entries) → {id: key}, in the order given."""
    keys: dict[str, bytes] = {}
    for entry in re.split(r"[,\s]+", spec.strip()):
        if not entry:
            continue
        key_id, sep, value = entry.partition(":")
        if not sep or not KEY_ID_PATTERN.fullmatch(key_id):
            raise SettingsError(
                f"{variable}: entries are <id>:<base64 key> with an id of 1-32 letters, digits, _ . -;"
                f" got {key_id if sep else '<no id>'!r}"
            )
        if key_id in keys:
            raise SettingsError(f"{variable}: key id {key_id!r} is listed twice")
        keys[key_id] = decode_key(value, f"{variable} (key {key_id!r})")
    return keys


def key_prefix(key_id: str) -> bytes:
    """The header every value encrypted under `key_id` starts with (rotation selects on it in SQL)."""
    raw_id = key_id.encode("ascii")
    return bytes((MAGIC, FORMAT_VERSION, len(raw_id))) + raw_id


def _associated_data(header: bytes, context: str, row_id: RowId) -> bytes:
    # Table, column and row are bound: a value copied to another column or another row does not decrypt.
    return header + b"\x00" + context.encode() + b"\x00" + str(row_id).encode()


@dataclass(frozen=True, slots=True)
class Keyring:
    """Data-encryption keys by id: all of them decrypt, `active_id` encrypts; `legacy` reads old rows."""

    keys: Mapping[str, bytes]
    active_id: str
    legacy: bytes | None = None

    def __post_init__(self) -> None:
        if self.active_id not in self.keys:
            raise SettingsError(
                f"{env_name('data_key_id')}: {self.active_id!r} is not among the ids in"
                f" {env_name('data_keys')} ({', '.join(self.keys) or 'none'})"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        keys = parse_key_list(settings.data_keys, env_name("data_keys"))
        if not keys:
            raise SettingsError(
                f"{env_name('data_keys')} is required: <id>:<base64 32-byte key>[,…]"
                " (`abonent keys new` prints one)"
            )
        if settings.data_key_id:
            active = settings.data_key_id
        elif len(keys) == 1:
            active = next(iter(keys))
        else:
            raise SettingsError(
                f"{env_name('data_key_id')} must name the active key when {env_name('data_keys')} holds"
                " several"
            )
        legacy = decode_key(settings.data_key, env_name("data_key")) if settings.data_key else None
        return cls(keys=keys, active_id=active, legacy=legacy)


class DataProtector:
    """Encrypts fields under the keyring, computes blind indexes and signs tokens with the index key.

    Signing uses a key derived from the blind-index key, not from a data key: the index key never changes
    when data keys rotate, so form tokens and agent sessions stay valid on every replica throughout a
    rotation (a replica still encrypting under the old key verifies what a switched one signed), and data
    keys can be retired without signing anyone out. Signing and lookups are both keyed hashes of a stable
    secret; HKDF labels keep the two uses apart.
    """

    def __init__(self, keyring: Keyring, index_key: bytes) -> None:
        self.keyring = keyring
        self._aeads = {
            key_id: AESGCM(_derive(key, b"abonent/encrypt/v2")) for key_id, key in keyring.keys.items()
        }
        self._legacy = (
            None if keyring.legacy is None else AESGCM(_derive(keyring.legacy, b"abonent/encrypt/v1"))
        )
        self._active_header = key_prefix(keyring.active_id)
        self._index_key = index_key
        self._sign_key = _derive(index_key, b"abonent/sign/v2")

    @classmethod
    def from_settings(cls, settings: Settings) -> DataProtector:
        if not settings.index_key:
            raise SettingsError(
                f"{env_name('index_key')} is required: a base64 32-byte key for lookup hashes and signatures"
                " (`abonent keys new --index` prints one)"
            )
        return cls(Keyring.from_settings(settings), decode_key(settings.index_key, env_name("index_key")))

    @property
    def active_prefix(self) -> bytes:
        return self._active_header

    def encrypt(self, plaintext: str, context: str, row_id: RowId) -> bytes:
        """Format 1 under the active key; `context` names table and column, `row_id` the row."""
        nonce = os.urandom(NONCE_BYTES)
        header = self._active_header
        sealed = self._aeads[self.keyring.active_id].encrypt(
            nonce, plaintext.encode(), _associated_data(header, context, row_id)
        )
        return header + nonce + sealed

    def decrypt(self, blob: bytes, context: str, row_id: RowId) -> str:
        return self._open(blob, context, row_id)[0]

    def _open(self, blob: bytes, context: str, row_id: RowId) -> tuple[str, str | None]:
        """(plaintext, id of the ring key that opened it; None when the legacy key did)."""
        parsed = _parse_header(blob)
        if parsed is not None:
            key_id, header = parsed
            aead = self._aeads.get(key_id)
            if aead is not None:
                body = blob[len(header) :]
                ad = _associated_data(header, context, row_id)
                try:
                    return aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], ad).decode(), key_id
                except InvalidTag:
                    pass  # maybe a legacy value whose random nonce looks like a header: try below
        if self._legacy is not None and len(blob) > NONCE_BYTES:
            try:
                plain = self._legacy.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], context.encode())
                return plain.decode(), None
            except InvalidTag:
                pass
        where = f"key {parsed[0]!r}" if parsed is not None else "the legacy format"
        raise CannotDecrypt(f"cannot decrypt a {context} value of row {row_id} ({where})")

    def key_id_of(self, blob: bytes) -> str | None:
        """The key id a format-1 header names; None when the value does not start with one."""
        parsed = _parse_header(blob)
        return None if parsed is None else parsed[0]

    def reencrypt(self, blob: bytes, context: str, row_id: RowId) -> bytes | None:
        """The value under the active key, or None when it already is (rotation's unit of work)."""
        plaintext, opened_by = self._open(blob, context, row_id)
        if opened_by == self.keyring.active_id:
            return None
        return self.encrypt(plaintext, context, row_id)

    def blind_index(self, value: str, purpose: str) -> bytes:
        """Equal inputs give equal outputs (for lookups and budgets) without storing the value."""
        return hmac.new(self._index_key, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()

    def sign(self, message: bytes) -> bytes:
        return hmac.new(self._sign_key, message, hashlib.sha256).digest()

    def verify(self, message: bytes, signature: bytes) -> bool:
        return hmac.compare_digest(self.sign(message), signature)


def _parse_header(blob: bytes) -> tuple[str, bytes] | None:
    if len(blob) < 3 or blob[0] != MAGIC or blob[1] != FORMAT_VERSION:
        return None
    end = 3 + blob[2]
    if blob[2] == 0 or len(blob) < end + NONCE_BYTES + 16:
        return None
    try:
        key_id = blob[3:end].decode("ascii")
    except UnicodeDecodeError:
        return None
    return key_id, blob[:end]


def legacy_index_key(legacy_b64: str) -> str:
    """The blind-index key the single ABONENT_DATA_KEY used to derive: existing lookup hashes stay valid."""
    return encode_key(_derive(decode_key(legacy_b64, env_name("data_key")), b"abonent/index/v1"))


def token_hash(token: str) -> bytes:
    """Bearer secrets are stored hashed: a database dump does not grant access."""
    return hashlib.sha256(token.encode()).digest()


_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str) -> str:
    """scrypt (memory-hard, in the standard library) with a random salt, self-describing for upgrades."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    encode = base64.urlsafe_b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${encode(salt).decode()}${encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.urlsafe_b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.urlsafe_b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)
