"""Keys of a dedup repository against the built-in filesystem storage: init, open, roles, key management,
and everything a storage owner (or a lesser key) could edit. Argon2id runs with cheap parameters."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.engines.dedup import keys
from data_manager.engines.dedup.keys import (
    BLOB_OVERHEAD,
    PACK_HEADER_SIZE,
    KeyRing,
    add_key,
    init_repository,
    list_keys,
    open_repository,
    read_config,
    revoke_key,
)
from data_manager.errors import CorruptBackupError, ExitCode, RefusedError, UsageError
from data_manager.types import Settings

FAST = {"memory_kib": 8192, "iterations": 1, "lanes": 1}


def make_storage(root: Path) -> FilesystemStorage:
    return FilesystemStorage("t", Settings({"root": str(root)}))


@pytest.fixture
def storage(tmp_path: Path) -> FilesystemStorage:
    return make_storage(tmp_path / "repo")


@pytest.fixture
def admin(storage: FilesystemStorage) -> KeyRing:
    return init_repository(storage, "root pass", params={"chunker": {"avg": 1 << 20}}, kdf=FAST)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def key_path(storage: FilesystemStorage, key_id: str) -> Path:
    return storage.root / "keys" / key_id


def edit_json(path: Path, **changes: object) -> None:
    doc = json.loads(path.read_bytes())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def unwrap_as_documented(path: Path, passphrase: str) -> dict:
    """The wrapped secrets of a key file, decrypted by following docs/engines-dedup-keys.md only."""
    doc = json.loads(path.read_bytes())
    kdf = doc["kdf"]
    wrap = Argon2id(salt=base64.b64decode(kdf["salt"]), length=32, iterations=kdf["iterations"],
                    lanes=kdf["lanes"], memory_cost=kdf["memory_kib"]).derive(passphrase.encode())
    blob = base64.b64decode(doc["secrets"])
    aad = b"data-manager-dedup/1 wrapped\0" + doc["repo"].encode() + b"\0" + doc["id"].encode()
    return json.loads(AESGCM(wrap).decrypt(blob[:12], blob[12:], aad))


# --------------------------------------------------------------------------- init and open


def test_init_then_open_with_the_right_passphrase(storage: FilesystemStorage, admin: KeyRing) -> None:
    config = read_config(storage)
    assert config["format"] == "data-manager-dedup/1"
    assert config["params"] == {"chunker": {"avg": 1 << 20}}
    assert config["root_key"] == admin.key_id
    ring = open_repository(storage, "root pass")
    assert (ring.repo_id, ring.key_id, ring.role) == (config["id"], admin.key_id, "admin")
    assert ring.params == {"chunker": {"avg": 1 << 20}}
    assert ring.can_read and ring.can_delete
    assert ring.chunk_id(b"x") == admin.chunk_id(b"x")
    # the key file records the Argon2id parameters used
    kdf = json.loads(key_path(storage, admin.key_id).read_bytes())["kdf"]
    assert {k: kdf[k] for k in FAST} == FAST and kdf["algorithm"] == "argon2id"


def test_wrong_passphrase_is_a_usage_error_and_writes_nothing(storage: FilesystemStorage, admin: KeyRing) -> None:
    add_key(admin, storage, "other", "append", kdf=FAST)
    before = snapshot(storage.root)
    with pytest.raises(UsageError, match="wrong passphrase") as exc:
        open_repository(storage, "root pas")
    assert exc.value.exit_code == ExitCode.USAGE
    assert "root pas" not in str(exc.value)
    with pytest.raises(UsageError, match=f"wrong passphrase for key {admin.key_id}"):
        open_repository(storage, "other", key_id=admin.key_id)
    assert snapshot(storage.root) == before


def test_no_repository_and_init_twice(storage: FilesystemStorage) -> None:
    with pytest.raises(UsageError, match=r"no dedup repository in .*: create it with: data-manager repo init t"):
        open_repository(storage, "pw")
    init_repository(storage, "pw", kdf=FAST)
    before = snapshot(storage.root)
    with pytest.raises(UsageError, match="a repository exists already in"):
        init_repository(storage, "pw", kdf=FAST)
    assert snapshot(storage.root) == before


def test_bad_arguments_are_usage_errors(storage: FilesystemStorage, admin: KeyRing) -> None:
    with pytest.raises(UsageError, match="non-empty"):
        open_repository(storage, "")
    with pytest.raises(UsageError, match="unknown key role"):
        add_key(admin, storage, "pw", "reader", kdf=FAST)
    with pytest.raises(UsageError, match="unknown Argon2id parameter"):
        add_key(admin, storage, "pw", "append", kdf={"memory": 1})
    with pytest.raises(UsageError, match="memory_kib"):
        add_key(admin, storage, "pw", "append", kdf={"memory_kib": 1 << 40})
    with pytest.raises(UsageError, match="not a key id"):
        open_repository(storage, "root pass", key_id="../config")
    with pytest.raises(UsageError, match="no key 0+ "):
        open_repository(storage, "root pass", key_id="0" * 32)


@pytest.mark.parametrize("role", keys.ROLES)
def test_add_a_key_of_each_role_and_open_with_it(storage: FilesystemStorage, admin: KeyRing, role: str) -> None:
    key_id = add_key(admin, storage, f"{role} pass", role, kdf=FAST)
    for ring in (open_repository(storage, f"{role} pass"), open_repository(storage, f"{role} pass", key_id=key_id)):
        assert (ring.key_id, ring.role, ring.repo_id) == (key_id, role, admin.repo_id)
        assert ring.can_read == (role != "write-only")
        assert ring.can_delete == (role == "admin")
        # every role computes the same chunk ids (it deduplicates) and reads the index
        assert ring.chunk_id(b"data") == admin.chunk_id(b"data")
        assert ring.index_decrypt(admin.index_encrypt(b"idx", b"index/1"), b"index/1") == b"idx"
        assert admin.index_decrypt(ring.index_encrypt(b"idx", b"index/2"), b"index/2") == b"idx"
        # and signs what it writes, verifiable by every other key
        assert admin.verify_signature(key_id, b"snapshot", ring.sign(b"snapshot"))
        assert ring.verify_signature(admin.key_id, b"snapshot", admin.sign(b"snapshot"))
        assert not admin.verify_signature(key_id, b"snapshot!", ring.sign(b"snapshot"))
    info = {k.key_id: k for k in list_keys(storage)}[key_id]
    assert (info.role, info.signed_ok, info.revoked, info.signed_by) == (role, True, False, admin.key_id)
    assert info.to_json()["key_id"] == key_id


def test_write_only_seals_but_never_decrypts(storage: FilesystemStorage, admin: KeyRing) -> None:
    key_id = add_key(admin, storage, "wo pass", "write-only", kdf=FAST)
    wo = open_repository(storage, "wo pass")
    sealer = wo.new_pack_sealer()
    assert len(sealer.header) == PACK_HEADER_SIZE
    blob = sealer.encrypt(b"chunk", b"chunk id")
    assert len(blob) == len(b"chunk") + BLOB_OVERHEAD
    sealed = wo.seal(b"snapshot pointer", b"snapshots/1")
    with pytest.raises(RefusedError, match="write-only") as exc:
        wo.pack_opener(sealer.header)
    assert exc.value.exit_code == ExitCode.REFUSED
    with pytest.raises(RefusedError, match="write-only"):
        wo.unseal(sealed, b"snapshots/1")
    # a reader opens both
    assert admin.pack_opener(sealer.header).decrypt(blob, b"chunk id") == b"chunk"
    assert admin.unseal(sealed, b"snapshots/1") == b"snapshot pointer"
    # the key file holds no seal_private, not even inside its wrapped secrets
    raw = key_path(storage, key_id).read_bytes()
    assert b"seal_private" not in raw
    secrets = unwrap_as_documented(key_path(storage, key_id), "wo pass")
    assert "seal_private" not in secrets
    assert secrets["role"] == "write-only" and secrets["key"] == key_id
    assert "seal_private" in unwrap_as_documented(key_path(storage, admin.key_id), "root pass")


def test_tampered_objects_are_corrupt(admin: KeyRing) -> None:
    sealed = bytearray(admin.seal(b"pointer", b"ctx"))
    sealed[-1] ^= 1
    with pytest.raises(CorruptBackupError) as exc:
        admin.unseal(bytes(sealed), b"ctx")
    assert exc.value.exit_code == ExitCode.CORRUPT
    sealer = admin.new_pack_sealer()
    blob = bytearray(sealer.encrypt(b"chunk", b"id"))
    blob[20] ^= 1
    with pytest.raises(CorruptBackupError):
        admin.pack_opener(sealer.header).decrypt(bytes(blob), b"id")
    index = bytearray(admin.index_encrypt(b"index", b"index/1"))
    index[0] ^= 1
    with pytest.raises(CorruptBackupError):
        admin.index_decrypt(bytes(index), b"index/1")
    with pytest.raises(CorruptBackupError):
        admin.index_decrypt(admin.index_encrypt(b"index", b"index/1"), b"index/2")
    with pytest.raises(CorruptBackupError):
        admin.pack_opener(b"short")


def test_chunk_ids_are_keyed_per_repository(tmp_path: Path) -> None:
    one = init_repository(make_storage(tmp_path / "one"), "pw", kdf=FAST)
    two = init_repository(make_storage(tmp_path / "two"), "pw", kdf=FAST)
    assert one.chunk_id(b"same data") != two.chunk_id(b"same data")
    assert len(one.chunk_id(memoryview(b"same data"))) == 32
    assert one.chunk_id(memoryview(b"same data")) == one.chunk_id(b"same data")
    # nor can one repository read the other's sealed objects
    with pytest.raises(CorruptBackupError):
        two.unseal(one.seal(b"x", b"c"), b"c")


def test_no_secret_in_any_stored_object_nor_in_repr(storage: FilesystemStorage, admin: KeyRing) -> None:
    passphrases = ["root pass", "append pass", "wo pass"]
    rings = [admin]
    for pw, role in zip(passphrases[1:], ("append", "write-only")):
        add_key(admin, storage, pw, role, kdf=FAST)
        rings.append(open_repository(storage, pw))
    secrets: list[bytes] = [p.encode() for p in passphrases]
    for ring in rings:
        material = ring._material
        secrets += [material.id_key, material.index_key, keys.crypto.ed25519_private_bytes(ring._signing)]
        if material.seal_private is not None:
            secrets.append(material.seal_private)
    stored = b"".join(snapshot(storage.root).values())
    for secret in secrets:
        for form in (secret, base64.b64encode(secret), secret.hex().encode()):
            assert form not in stored
    for ring in rings:
        text = repr(ring) + str(ring) + repr(ring.new_pack_sealer()) + repr(ring._material)
        assert all(base64.b64encode(s).decode() not in text and s.hex() not in text for s in secrets)
        assert ring.key_id in repr(ring)


# --------------------------------------------------------------------------- roles and edits


def test_append_and_write_only_keys_cannot_manage_keys(storage: FilesystemStorage, admin: KeyRing) -> None:
    target = add_key(admin, storage, "wo", "write-only", kdf=FAST)
    for role in ("append", "write-only"):
        add_key(admin, storage, f"{role} pass", role, kdf=FAST)
        ring = open_repository(storage, f"{role} pass")
        before = snapshot(storage.root)
        with pytest.raises(RefusedError, match="only an admin key can add keys") as exc:
            add_key(ring, storage, "new", "admin", kdf=FAST)
        assert exc.value.exit_code == ExitCode.REFUSED
        with pytest.raises(RefusedError, match="only an admin key can revoke keys"):
            revoke_key(ring, storage, target)
        assert snapshot(storage.root) == before


def test_role_edited_in_a_key_file_is_not_trusted(storage: FilesystemStorage, admin: KeyRing) -> None:
    key_id = add_key(admin, storage, "append pass", "append", kdf=FAST)
    appender = open_repository(storage, "append pass")
    signature = appender.sign(b"snapshot")
    edit_json(key_path(storage, key_id), role="admin")
    with pytest.raises(CorruptBackupError, match="role 'admin' but the key was made 'append'"):
        open_repository(storage, "append pass")
    info = {k.key_id: k for k in list_keys(storage)}[key_id]
    assert not info.signed_ok and "signature" in (info.problem or "")
    fresh = open_repository(storage, "root pass")
    assert not fresh.verify_signature(key_id, b"snapshot", signature)


def test_key_holder_rewrapping_its_secrets_as_admin_is_not_trusted(storage: FilesystemStorage,
                                                                  admin: KeyRing) -> None:
    """The holder of an append key knows its passphrase and secrets: it can rewrap them as "admin", but
    not make an admin key sign that."""
    key_id = add_key(admin, storage, "append pass", "append", kdf=FAST)
    path = key_path(storage, key_id)
    secrets = unwrap_as_documented(path, "append pass")
    secrets["role"] = "admin"
    doc = json.loads(path.read_bytes())
    kdf = doc["kdf"]
    wrap = Argon2id(salt=base64.b64decode(kdf["salt"]), length=32, iterations=1, lanes=1,
                    memory_cost=8192).derive(b"append pass")
    aad = b"data-manager-dedup/1 wrapped\0" + doc["repo"].encode() + b"\0" + key_id.encode()
    nonce = b"\1" * 12
    doc["secrets"] = base64.b64encode(nonce + AESGCM(wrap).encrypt(
        nonce, json.dumps(secrets).encode(), aad)).decode()
    doc["role"] = "admin"
    path.write_text(json.dumps(doc))
    with pytest.raises(CorruptBackupError, match="not trusted"):
        open_repository(storage, "append pass")


def test_key_signed_by_a_non_admin_is_not_trusted(storage: FilesystemStorage, admin: KeyRing) -> None:
    appender_id = add_key(admin, storage, "append pass", "append", kdf=FAST)
    appender = open_repository(storage, "append pass")
    # Bypass the role check as a forger would: mint a key file certified by the append key.
    forged_id, raw = keys._make_key_file(admin.repo_id, "admin", keys.Ed25519PrivateKey.generate(),
                                         appender._material, "forged", FAST, appender._signing, appender_id)
    (storage.root / "keys" / forged_id).write_bytes(raw)
    with pytest.raises(CorruptBackupError, match="not an admin key"):
        open_repository(storage, "forged")
    assert not {k.key_id: k for k in list_keys(storage)}[forged_id].signed_ok
    assert not admin.verify_signature(forged_id, b"x", b"\0" * 64)


def test_untrusted_key_files_give_one_line_errors(storage: FilesystemStorage, admin: KeyRing) -> None:
    key_id = add_key(admin, storage, "append pass", "append", kdf=FAST)
    path = key_path(storage, key_id)
    original = path.read_bytes()
    other = "f" * 32
    # a key file copied under another id
    (storage.root / "keys" / other).write_bytes(original)
    with pytest.raises(CorruptBackupError, match=f"keys/{other}: its id is {key_id}, not its name"):
        open_repository(storage, "append pass", key_id=other)
    (storage.root / "keys" / other).unlink()
    cases: list[tuple[bytes, str]] = [
        (b"{not json", "unreadable metadata"),
        (b"[]", "not an object"),
        (b"x" * (keys.KEY_FILE_LIMIT + 1), "larger than"),
        (b"[" * 60000, "unreadable metadata"),
    ]
    doc = json.loads(original)
    for change, match in [
        ({"role": 5}, "unknown role|not a str"),
        ({"public_key": "!!"}, "not base64"),
        ({"public_key": base64.b64encode(b"\0" * 32).decode()}, "does not match its id"),
        ({"kdf": {**doc["kdf"], "memory_kib": 1 << 40}}, "memory_kib"),
        ({"kdf": {**doc["kdf"], "iterations": True}}, "iterations"),
        ({"repo": "0" * 32}, "belongs to repository"),
        ({"signature": "AAAA"}, "signature"),
    ]:
        cases.append((json.dumps({**doc, **change}).encode(), match))
    for raw, match in cases:
        path.write_bytes(raw)
        with pytest.raises(CorruptBackupError, match=match) as exc:
            open_repository(storage, "append pass", key_id=key_id)
        assert "\n" not in str(exc.value)
        # the other keys still open and list; the broken one is listed with its problem
        assert open_repository(storage, "root pass").key_id == admin.key_id
        broken = {k.key_id: k for k in list_keys(storage)}[key_id]
        assert not broken.signed_ok and broken.problem
    path.write_bytes(original)
    assert open_repository(storage, "append pass").key_id == key_id


def test_untrusted_config_gives_one_line_errors(storage: FilesystemStorage, admin: KeyRing) -> None:
    path = storage.root / "config"
    original = path.read_bytes()
    doc = json.loads(original)
    for raw, error, match in [
        (b"\xff", CorruptBackupError, "unreadable"),
        (json.dumps({**doc, "format": "tarball"}).encode(), CorruptBackupError, "not a dedup repository config"),
        (json.dumps({**doc, "format": "data-manager-dedup/9"}).encode(), UsageError, "reads data-manager-dedup/1"),
        (json.dumps({**doc, "id": "x"}).encode(), CorruptBackupError, "'id'"),
        (json.dumps({**doc, "params": []}).encode(), CorruptBackupError, "'params'"),
        (json.dumps({**doc, "seal_public": "AAAA"}).encode(), CorruptBackupError, "'seal_public'"),
        (b" " * (keys.CONFIG_LIMIT + 1), CorruptBackupError, "larger than"),
    ]:
        path.write_bytes(raw)
        with pytest.raises(error, match=match):
            read_config(storage)
        with pytest.raises(error, match=match):
            open_repository(storage, "root pass")


def test_a_swapped_config_is_caught_on_open(storage: FilesystemStorage, admin: KeyRing, tmp_path: Path) -> None:
    """Whoever holds the storage swaps in a config with their own seal_public (to read what write-only
    keys seal) or other params: every key knows its config's digest."""
    add_key(admin, storage, "wo pass", "write-only", kdf=FAST)
    path = storage.root / "config"
    doc = json.loads(path.read_bytes())
    theirs = init_repository(make_storage(tmp_path / "theirs"), "x", kdf=FAST)
    theirs_doc = read_config(theirs._storage)
    for change in ({"seal_public": theirs_doc["seal_public"]}, {"params": {"chunker": {"avg": 4096}}}):
        path.write_text(json.dumps({**doc, **change}, indent=2))
        for pw in ("root pass", "wo pass"):
            with pytest.raises(CorruptBackupError, match="not the config key .* was made for"):
                open_repository(storage, pw)


def test_a_key_file_of_another_repository_is_skipped(storage: FilesystemStorage, admin: KeyRing,
                                                     tmp_path: Path) -> None:
    """What an interrupted or losing concurrent init leaves: a key file of a repository without config."""
    stranger = init_repository(make_storage(tmp_path / "other"), "root pass", kdf=FAST)
    src = tmp_path / "other" / "keys" / stranger.key_id
    (storage.root / "keys" / stranger.key_id).write_bytes(src.read_bytes())
    assert open_repository(storage, "root pass").key_id == admin.key_id
    listed = {k.key_id: k for k in list_keys(storage)}
    assert listed[stranger.key_id].role == "unknown"
    assert "belongs to repository" in (listed[stranger.key_id].problem or "")


# --------------------------------------------------------------------------- revocation


def test_a_revoked_key_is_listed_cannot_open_and_its_signatures_fail(storage: FilesystemStorage,
                                                                     admin: KeyRing) -> None:
    key_id = add_key(admin, storage, "wo pass", "write-only", kdf=FAST)
    writer = open_repository(storage, "wo pass")
    signature = writer.sign(b"snapshot")
    assert admin.verify_signature(key_id, b"snapshot", signature)
    revoke_key(admin, storage, key_id)
    revoke_key(admin, storage, key_id)  # again: nothing to do
    info = {k.key_id: k for k in list_keys(storage)}[key_id]
    assert info.revoked and info.signed_ok
    with pytest.raises(UsageError, match=f"key {key_id} was revoked by admin key {admin.key_id}"):
        open_repository(storage, "wo pass")
    with pytest.raises(UsageError, match="was revoked"):
        open_repository(storage, "wo pass", key_id=key_id)
    assert not admin.verify_signature(key_id, b"snapshot", signature)
    assert not open_repository(storage, "root pass").verify_signature(key_id, b"snapshot", signature)


def test_a_new_key_with_the_passphrase_of_a_revoked_one_opens(storage: FilesystemStorage, admin: KeyRing) -> None:
    old = add_key(admin, storage, "laptop", "append", kdf=FAST)
    revoke_key(admin, storage, old)
    new = add_key(admin, storage, "laptop", "append", kdf=FAST)
    assert open_repository(storage, "laptop").key_id == new


def test_revocation_limits(storage: FilesystemStorage, admin: KeyRing) -> None:
    with pytest.raises(UsageError, match="root key"):
        revoke_key(admin, storage, admin.key_id)
    with pytest.raises(UsageError, match="no key"):
        revoke_key(admin, storage, "a" * 32)
    second_id = add_key(admin, storage, "second", "admin", kdf=FAST)
    second = open_repository(storage, "second")
    vouched = add_key(second, storage, "vouched", "append", kdf=FAST)
    assert admin.verify_signature(vouched, b"x", open_repository(storage, "vouched").sign(b"x"))
    with pytest.raises(UsageError, match=f"vouches for keys still in use \\({vouched}\\)"):
        revoke_key(admin, storage, second_id)
    revoke_key(admin, storage, vouched)
    revoke_key(admin, storage, second_id)
    # a revoked admin key (its ring opened before) can no longer add or revoke keys
    with pytest.raises(RefusedError, match="revoked"):
        add_key(second, storage, "late", "admin", kdf=FAST)


def test_forged_revocation_records_are_ignored(storage: FilesystemStorage, admin: KeyRing) -> None:
    key_id = add_key(admin, storage, "append pass", "append", kdf=FAST)
    appender = open_repository(storage, "append pass")
    victim = add_key(admin, storage, "victim", "append", kdf=FAST)
    revoked_dir = storage.root / "keys" / "revoked"
    revoked_dir.mkdir()
    # an append key "revokes" another, properly formatted and signed by itself
    created, host = "2026-01-01T00:00:00.000Z", "h"
    sig = keys.crypto.sign(appender._signing, keys.REVOKE_LABEL,
                           keys._revoke_message(admin.repo_id, victim, created, host, key_id))
    (revoked_dir / victim).write_text(json.dumps({
        "format": keys.REVOCATION_FORMAT, "repo": admin.repo_id, "key": victim, "created": created,
        "host": host, "revoked_by": key_id, "signature": base64.b64encode(sig).decode()}))
    (revoked_dir / key_id).write_bytes(b"garbage")
    assert open_repository(storage, "victim").key_id == victim
    assert open_repository(storage, "append pass").key_id == key_id
    listed = {k.key_id: k for k in list_keys(storage)}
    assert not listed[victim].revoked and "ignored" in (listed[victim].problem or "")
    assert not listed[key_id].revoked
    with pytest.raises(CorruptBackupError, match=f"remove keys/revoked/{victim}"):
        revoke_key(admin, storage, victim)
