"""Personal data at rest: AES-GCM field encryption, keyed lookup hashes and signed tokens, from one key."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.common.settings import SettingsError


def _derive(master: bytes, purpose: bytes) -> bytes:
    # Separate keys per use: a leaked lookup hash key does not decrypt anything.
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(master)


class DataProtector:
    """Encrypts fields, computes blind indexes and signs tokens, all derived from ABONENT_DATA_KEY."""

    def __init__(self, key_b64: str) -> None:
        try:
            master = base64.urlsafe_b64decode(key_b64.encode())
        except (binascii.Error, ValueError):
            master = b""
        if len(master) != 32:
            raise SettingsError("ABONENT_DATA_KEY must be 32 random bytes, urlsafe-base64 encoded")
        self._aead = AESGCM(_derive(master, b"abonent/encrypt/v1"))
        self._index_key = _derive(master, b"abonent/index/v1")
        self._sign_key = _derive(master, b"abonent/sign/v1")

    def encrypt(self, plaintext: str, context: str) -> bytes:
        """nonce || ciphertext; `context` (e.g. the table and column) is bound as associated data."""
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext.encode(), context.encode())

    def decrypt(self, blob: bytes, context: str) -> str:
        return self._aead.decrypt(blob[:12], blob[12:], context.encode()).decode()

    def blind_index(self, value: str, purpose: str) -> bytes:
        """Equal inputs give equal outputs (for lookups and budgets) without storing the value."""
        return hmac.new(self._index_key, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()

    def sign(self, message: bytes) -> bytes:
        return hmac.new(self._sign_key, message, hashlib.sha256).digest()

    def verify(self, message: bytes, signature: bytes) -> bool:
        return hmac.compare_digest(self.sign(message), signature)


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
