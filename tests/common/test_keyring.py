"""Keyring: format, row-bound associated data, legacy reads, settings errors (no servers needed)."""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.cli import main as cli_main
from services.cli.up import dev_keys
from services.common.crypto import (
    CannotDecrypt,
    DataProtector,
    key_prefix,
    legacy_index_key,
    new_key,
)
from services.common.settings import Settings, SettingsError, load_settings

K1, K2, INDEX, LEGACY = new_key(), new_key(), new_key(), new_key()
CONTEXT = "callback.callbacks.phone"


def protector(data_keys: str, active: str = "", *, legacy: str = "", index: str = INDEX) -> DataProtector:
    settings = load_settings(
        environ={}, data_keys=data_keys, data_key_id=active, data_key=legacy, index_key=index
    )
    return DataProtector.from_settings(settings)


def legacy_encrypt(master_b64: str, plaintext: str, context: str, nonce: bytes | None = None) -> bytes:
    """What the single-key code before the keyring wrote: nonce || ciphertext, AD = context only."""
    master = base64.urlsafe_b64decode(master_b64)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"abonent/encrypt/v1").derive(master)
    nonce = nonce or os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext.encode(), context.encode())


def test_every_ciphertext_names_format_and_key_and_is_bound_to_its_row() -> None:
    ring = protector(f"k2:{K2},k1:{K1}", "k2")
    row, other_row = uuid.uuid4(), uuid.uuid4()
    blob = ring.encrypt("+79123456789", CONTEXT, row)
    assert blob.startswith(bytes((0xAB, 0x01, 2)) + b"k2")
    assert blob.startswith(key_prefix("k2"))
    assert ring.key_id_of(blob) == "k2"
    assert ring.decrypt(blob, CONTEXT, row) == "+79123456789"
    with pytest.raises(CannotDecrypt):
        ring.decrypt(blob, CONTEXT, other_row)  # copied to another row
    with pytest.raises(CannotDecrypt):
        ring.decrypt(blob, "callback.sites.crm_webhook_secret", row)  # copied to another column
    tampered = blob.replace(b"k2", b"k1", 1)
    with pytest.raises(CannotDecrypt):
        ring.decrypt(tampered, CONTEXT, row)  # the header is authenticated too


def test_all_keys_decrypt_only_the_active_one_encrypts() -> None:
    old = protector(f"k1:{K1}")
    row = "r1"
    under_k1 = old.encrypt("secret", CONTEXT, row)
    both = protector(f"k2:{K2},k1:{K1}", "k2")
    assert both.decrypt(under_k1, CONTEXT, row) == "secret"
    assert both.key_id_of(both.encrypt("secret", CONTEXT, row)) == "k2"
    rotated = both.reencrypt(under_k1, CONTEXT, row)
    assert rotated is not None
    assert both.reencrypt(rotated, CONTEXT, row) is None
    only_k2 = protector(f"k2:{K2}")
    assert only_k2.decrypt(rotated, CONTEXT, row) == "secret"
    with pytest.raises(CannotDecrypt):
        only_k2.decrypt(under_k1, CONTEXT, row)


def test_legacy_values_stay_readable_even_when_their_nonce_looks_like_a_header() -> None:
    ring = protector(f"k1:{K1}", legacy=LEGACY)
    plain = legacy_encrypt(LEGACY, "+79123456789", CONTEXT)
    assert ring.decrypt(plain, CONTEXT, uuid.uuid4()) == "+79123456789"
    assert ring.key_id_of(plain) is None or plain[0] == 0xAB
    # A random nonce that happens to spell the active key's header: GCM tells the formats apart.
    lookalike = legacy_encrypt(LEGACY, "+79123456789", CONTEXT, nonce=key_prefix("k1") + os.urandom(7))
    assert ring.key_id_of(lookalike) == "k1"
    assert ring.decrypt(lookalike, CONTEXT, "any") == "+79123456789"
    assert ring.reencrypt(lookalike, CONTEXT, "row") is not None, "rotation rewrites it"
    with pytest.raises(CannotDecrypt):
        protector(f"k1:{K1}").decrypt(plain, CONTEXT, "any")  # without the legacy key


def test_index_and_signatures_do_not_change_when_data_keys_rotate() -> None:
    before = protector(f"k1:{K1}")
    after = protector(f"k2:{K2}")
    assert before.blind_index("+79123456789", "phone") == after.blind_index("+79123456789", "phone")
    assert after.verify(b"form", before.sign(b"form"))
    other_index = protector(f"k1:{K1}", index=new_key())
    assert other_index.blind_index("+79123456789", "phone") != before.blind_index("+79123456789", "phone")


def test_legacy_index_key_reproduces_the_old_lookup_hashes() -> None:
    import hashlib
    import hmac

    master = base64.urlsafe_b64decode(LEGACY)
    old_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"abonent/index/v1").derive(master)
    old_hash = hmac.new(old_key, b"phone\x00+79123456789", hashlib.sha256).digest()
    ring = protector(f"k1:{K1}", index=legacy_index_key(LEGACY))
    assert ring.blind_index("+79123456789", "phone") == old_hash


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({"data_keys": "k1:not-base64"}, "ABONENT_DATA_KEYS"),
        ({"data_keys": f"{K1}"}, "ABONENT_DATA_KEYS"),
        ({"data_keys": f"k1:{K1},k1:{K2}"}, "ABONENT_DATA_KEYS"),
        ({"data_keys": f"k1:{K1}", "data_key_id": "k9"}, "ABONENT_DATA_KEY_ID"),
        ({"index_key": "short"}, "ABONENT_INDEX_KEY"),
        ({"data_key": "short"}, "ABONENT_DATA_KEY"),
    ],
)
def test_bad_key_settings_name_the_variable(values: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings(environ={}, **values)


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({"index_key": INDEX}, "ABONENT_DATA_KEYS"),
        ({"data_keys": f"k1:{K1}"}, "ABONENT_INDEX_KEY"),
        ({"data_keys": f"k1:{K1},k2:{K2}", "index_key": INDEX}, "ABONENT_DATA_KEY_ID"),
    ],
)
def test_a_service_needs_a_ring_an_active_key_and_an_index_key(values: dict[str, str], variable: str) -> None:
    settings: Settings = load_settings(environ={}, **values)
    with pytest.raises(SettingsError, match=variable):
        DataProtector.from_settings(settings)


def test_abonent_up_keeps_dev_keys_and_reads_a_folder_from_before_the_keyring(tmp_path: Path) -> None:
    fresh = dev_keys(tmp_path / "fresh")
    assert fresh["data_key_id"] == "k1"
    assert fresh == dev_keys(tmp_path / "fresh"), "kept across restarts"
    assert "data_key" not in fresh
    DataProtector.from_settings(load_settings(environ={}, **fresh))

    old = tmp_path / "old"
    old.mkdir()
    (old / "data.key").write_text(LEGACY)
    upgraded = dev_keys(old)
    assert upgraded["data_key"] == LEGACY, "old rows stay readable"
    assert upgraded["index_key"] == legacy_index_key(LEGACY), "old lookup hashes keep matching"
    ring = DataProtector.from_settings(load_settings(environ={}, **upgraded))
    assert ring.decrypt(legacy_encrypt(LEGACY, "+79123456789", CONTEXT), CONTEXT, "r") == "+79123456789"


def test_keys_new_prints_a_ring_entry_or_an_index_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["keys", "new", "--id", "k7"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("k7:")
    load_settings(environ={}, data_keys=line)
    assert cli_main(["keys", "new", "--index"]) == 0
    load_settings(environ={}, index_key=capsys.readouterr().out.strip())
