"""The dedup engine's primitives: byte layouts as docs/engines-dedup-keys.md documents them (re-derived
here with the libraries directly), and every kind of tampering refused with CorruptBackupError."""

from __future__ import annotations

import pytest
from blake3 import blake3
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from data_manager.engines.dedup import crypto
from data_manager.errors import CorruptBackupError

REPO = "0123456789abcdef0123456789abcdef"


def documented_key(private: X25519PrivateKey, eph_public: bytes, label: bytes) -> bytes:
    recipient = crypto.public_bytes(private.public_key())
    shared = private.exchange(X25519PublicKey.from_public_bytes(eph_public))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_public + recipient,
                info=label + REPO.encode()).derive(shared)


def test_constants() -> None:
    assert crypto.BLOB_OVERHEAD == 28
    assert crypto.PACK_HEADER_SIZE == 32
    assert crypto.SEAL_OVERHEAD == 60


def test_aead_blob_layout_and_tampering() -> None:
    key = crypto.random_key()
    blob = crypto.aead_encrypt(key, b"plain", b"aad")
    assert len(blob) == 5 + crypto.BLOB_OVERHEAD
    assert AESGCM(key).decrypt(blob[:12], blob[12:], b"aad") == b"plain"
    assert crypto.aead_decrypt(key, memoryview(blob), b"aad", "x") == b"plain"
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x80
        with pytest.raises(CorruptBackupError, match="x: authentication failed"):
            crypto.aead_decrypt(key, bytes(bad), b"aad", "x")
    with pytest.raises(CorruptBackupError, match="shorter"):
        crypto.aead_decrypt(key, blob[:27], b"aad", "x")
    with pytest.raises(CorruptBackupError):
        crypto.aead_decrypt(key, blob, b"other", "x")
    assert crypto.aead_try_decrypt(crypto.random_key(), blob, b"aad") is None
    # fresh nonce every time
    assert crypto.aead_encrypt(key, b"plain", b"aad") != blob


def test_pack_layout_per_pack_keys_and_tampering() -> None:
    private = X25519PrivateKey.generate()
    sealer = crypto.PackSealer(private.public_key(), REPO)
    blob = sealer.encrypt(memoryview(b"chunk data"), b"chunk id")
    key = documented_key(private, sealer.header, b"dm-pack")
    assert AESGCM(key).decrypt(blob[:12], blob[12:], b"chunk id") == b"chunk data"
    opener = crypto.PackOpener(private, REPO, sealer.header)
    assert opener.decrypt(memoryview(blob), b"chunk id") == b"chunk data"
    with pytest.raises(CorruptBackupError, match="pack blob"):
        opener.decrypt(blob, b"another id")
    # another pack has another key
    other = crypto.PackSealer(private.public_key(), REPO)
    assert other.header != sealer.header
    with pytest.raises(CorruptBackupError):
        opener.decrypt(other.encrypt(b"chunk data", b"chunk id"), b"chunk id")
    # a header with one bit changed derives another key
    header = bytearray(sealer.header)
    header[0] ^= 1
    with pytest.raises(CorruptBackupError):
        crypto.PackOpener(private, REPO, bytes(header)).decrypt(blob, b"chunk id")
    # the same pack in another repository (id in the HKDF info) does not open
    with pytest.raises(CorruptBackupError):
        crypto.PackOpener(private, "f" * 32, sealer.header).decrypt(blob, b"chunk id")
    with pytest.raises(CorruptBackupError, match="invalid ephemeral public key"):
        crypto.PackOpener(private, REPO, bytes(32))  # a low-order point
    with pytest.raises(CorruptBackupError, match="not 32"):
        crypto.PackOpener(private, REPO, bytes(31))


def test_sealed_object_layout_and_tampering() -> None:
    private = X25519PrivateKey.generate()
    sealed = crypto.seal(private.public_key(), REPO, b"pointer", b"snapshots/x")
    assert len(sealed) == len(b"pointer") + crypto.SEAL_OVERHEAD
    key = documented_key(private, sealed[:32], b"dm-seal")
    assert AESGCM(key).decrypt(sealed[32:44], sealed[44:], b"snapshots/x") == b"pointer"
    assert crypto.unseal(private, REPO, sealed, b"snapshots/x") == b"pointer"
    for i in range(len(sealed)):
        bad = bytearray(sealed)
        bad[i] ^= 0x01
        with pytest.raises(CorruptBackupError, match="sealed object"):
            crypto.unseal(private, REPO, bytes(bad), b"snapshots/x")
    with pytest.raises(CorruptBackupError):
        crypto.unseal(private, REPO, sealed, b"snapshots/y")
    with pytest.raises(CorruptBackupError):
        crypto.unseal(X25519PrivateKey.generate(), REPO, sealed, b"snapshots/x")
    with pytest.raises(CorruptBackupError, match="shorter"):
        crypto.unseal(private, REPO, sealed[:59], b"snapshots/x")
    # a pack key and a sealed object's key differ even for the same ephemeral key
    assert documented_key(private, sealed[:32], b"dm-pack") != key


def test_signatures_are_bound_to_their_label() -> None:
    key = Ed25519PrivateKey.generate()
    public = crypto.public_bytes(key.public_key())
    sig = crypto.sign(key, b"label one", b"message")
    key.public_key().verify(sig, b"label one\0message")
    assert crypto.verify(public, b"label one", b"message", sig)
    assert not crypto.verify(public, b"label two", b"message", sig)
    assert not crypto.verify(public, b"label one", b"messagE", sig)
    assert not crypto.verify(public, b"label one", b"message", sig[:63])
    assert not crypto.verify(b"short", b"label one", b"message", sig)
    assert not crypto.verify(public, b"label one", b"message", "not bytes")  # type: ignore[arg-type]


def test_keyed_ids_and_key_ids() -> None:
    a, b = crypto.random_key(), crypto.random_key()
    assert crypto.keyed_id(a, b"data") == blake3(b"data", key=a).digest()
    assert crypto.keyed_id(a, b"data") != crypto.keyed_id(b, b"data")
    assert crypto.keyed_id(a, b"data") != blake3(b"data").digest()
    public = bytes(range(32))
    assert crypto.key_id_of(public) == blake3(b"data-manager-dedup key id\0" + public).hexdigest()[:32]


def test_argon2id_is_deterministic_per_salt() -> None:
    params = {"memory_kib": 8192, "iterations": 1, "lanes": 1}
    one = crypto.argon2id("pässword", b"s" * 16, **params)
    assert one == crypto.argon2id("pässword", b"s" * 16, **params)
    assert one != crypto.argon2id("pässword", b"t" * 16, **params)
    assert len(one) == 32
