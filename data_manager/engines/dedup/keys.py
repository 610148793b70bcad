"""Keys of a ``dedup`` repository: the repository's config, key files with roles, passphrases, revocation.

A repository has one set of secrets, made at ``init``: ``id_key`` (keyed BLAKE3 chunk ids), ``index_key``
(AES-256-GCM for index files) and an X25519 pair (``seal_public``, ``seal_private``) every pack and
snapshot pointer is sealed to. Each *key file* (``keys/<key id>``) holds some of them, wrapped under a key
derived from its own passphrase with Argon2id, plus its own Ed25519 signing key:

* ``admin``: everything, and it alone adds and revokes keys (and, later, deletes);
* ``append``: back up, restore, check; never delete;
* ``write-only``: add data and snapshots, deduplicate against the index, but decrypt no pack and no sealed
  object, not even its own: its key file has no ``seal_private``.

Trust: the first admin key is the *root key*. Every key file is signed by an admin key, and a key counts
only through a chain of such signatures to the root key, whose public key each key carries inside its
wrapped secrets, so that whoever holds the storage can neither mint a key others accept nor swap the
config (each key also carries the BLAKE3 of the config's exact bytes). Everything read from the storage is
untrusted: it is validated, and fails with one line (:class:`CorruptBackupError`, or :class:`UsageError`
for what the user can fix), never a traceback. Secrets never appear in messages or ``repr``.

The exact format is in docs/engines-dedup-keys.md.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from blake3 import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from ...errors import CorruptBackupError, NotFoundError, RefusedError, UsageError
from ...timestamps import iso, now_utc
from ...types import Storage
from ..base import read_json_object
from . import crypto
from .crypto import BLOB_OVERHEAD, PACK_HEADER_SIZE, SEAL_OVERHEAD, AeadKey, PackOpener, PackSealer, b64

ROLES = ("admin", "append", "write-only")
#: the roles that hold ``seal_private`` and so can decrypt packs and sealed objects
READER_ROLES = ("admin", "append")

FORMAT = "data-manager-dedup/1"
KEY_FORMAT = "data-manager-dedup-key/1"
SECRETS_FORMAT = "data-manager-dedup-secrets/1"
REVOCATION_FORMAT = "data-manager-dedup-revocation/1"

CONFIG_KEY = "config"
KEYS_PREFIX = "keys"
REVOKED_PREFIX = "keys/revoked"
#: the top-level names this module stores in the storage (the engine keeps its own objects clear of them)
TOP_LEVEL_NAMES = (CONFIG_KEY, KEYS_PREFIX)

# Signature labels (crypto.sign puts "label || 0x00" before the message): one per purpose, so no signature
# made for one thing can be replayed as another.
KEYFILE_LABEL = b"data-manager-dedup/1 key"
REVOKE_LABEL = b"data-manager-dedup/1 revoke"
SIGNATURE_LABEL = b"data-manager-dedup/1 signature"
WRAP_LABEL = b"data-manager-dedup/1 wrapped"

# 32 MiB x 4 passes: above OWASP's Argon2id minimums (19 MiB x 2), and half the peak memory of RFC 9106's 64 MiB
# profile: a backup's peak RSS includes it, and restic's whole backup peaks near 120 MB.
DEFAULT_KDF: dict[str, int] = {"memory_kib": 32 << 10, "iterations": 4, "lanes": 4}
# Bounds on Argon2id parameters, also for those read from a key file: a forged key file must not make an
# open allocate terabytes or run for days. Argon2 itself needs memory >= 8 KiB per lane.
MAX_KDF_MEMORY_KIB = 1 << 20  # 1 GiB
MAX_KDF_ITERATIONS = 100
MAX_KDF_LANES = 64
SALT_SIZE = 16

# Size limits of what is read back (untrusted): far above anything written, far below harm.
CONFIG_LIMIT = 1 << 20
KEY_FILE_LIMIT = 64 << 10
REVOCATION_LIMIT = 16 << 10
MAX_TEXT = 255

_ID = re.compile(r"[0-9a-f]{32}")


# --------------------------------------------------------------------------- validation of untrusted JSON


def _get(doc: Mapping[str, Any], name: str, where: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(name)
    # bool is an int in Python: never accept true where a number is expected
    if value is None or not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise CorruptBackupError(f"{where}: {name!r} missing or not a {expected}")
    return value


def _text(doc: Mapping[str, Any], name: str, where: str) -> str:
    value = _get(doc, name, where, str)
    # printable only: these strings end up in terminals and, joined with NUL bytes, in signed messages
    if len(value) > MAX_TEXT or not value.isprintable():
        raise CorruptBackupError(f"{where}: {name!r} is not a short printable text")
    return value


def _hex_id(doc: Mapping[str, Any], name: str, where: str) -> str:
    value = _get(doc, name, where, str)
    if not _ID.fullmatch(value):
        raise CorruptBackupError(f"{where}: {name!r} is not an id (32 hex digits)")
    return value


def _bytes(doc: Mapping[str, Any], name: str, where: str, *, size: int | None = None,
           min_size: int = 0, max_size: int = KEY_FILE_LIMIT) -> bytes:
    value = _get(doc, name, where, str)
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise CorruptBackupError(f"{where}: {name!r} is not base64") from None
    if size is not None and len(raw) != size:
        raise CorruptBackupError(f"{where}: {name!r} is {len(raw)} bytes, not {size}")
    if not min_size <= len(raw) <= max_size:
        raise CorruptBackupError(f"{where}: {name!r} is {len(raw)} bytes, not {min_size} to {max_size}")
    return raw


def _int(doc: Mapping[str, Any], name: str, where: str, low: int, high: int) -> int:
    value = _get(doc, name, where, int)
    if not low <= value <= high:
        raise CorruptBackupError(f"{where}: {name!r} = {value} is outside {low}..{high}")
    return value


def _read_json(storage: Storage, key: str, limit: int) -> tuple[dict[str, Any], bytes]:
    """The JSON object at ``key`` and its exact bytes. :class:`NotFoundError` if absent."""
    f = storage.open_read(key)
    try:
        raw = f.read(limit + 1)
    finally:
        f.close()
    if len(raw) > limit:
        raise CorruptBackupError(f"{key}: larger than {limit} bytes: not a dedup repository object")
    try:
        return read_json_object(io.BytesIO(raw), key, limit), raw
    except RecursionError:  # "[[[[..." within the size limit: json.loads recurses per level
        raise CorruptBackupError(f"{key}: unreadable metadata (nested too deeply)") from None


def _dump(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def _write_new(storage: Storage, key: str, data: bytes) -> None:
    """Write ``key`` whole, refusing to replace it. The existence check and the write are two steps (storages
    have no create-if-absent): two writers racing for one name could both pass the check. The names written
    here are ``config`` (two concurrent inits: one repository wins, the other's key file is left as a
    stranger's) and ``keys/...`` named by fresh random keys; only admin keys write them."""
    if storage.exists(key):
        raise UsageError(f"{key} exists already in {storage.location()}: refusing to replace it")
    w = storage.open_write(key)
    try:
        w.write(data)
        w.commit()
    except BaseException:
        w.abort()
        raise


# --------------------------------------------------------------------------- config


def _check_config(doc: dict[str, Any], where: str) -> dict[str, Any]:
    fmt = doc.get("format")
    if fmt != FORMAT:
        if isinstance(fmt, str) and fmt.startswith("data-manager-dedup/"):
            raise UsageError(f"{where}: repository format {fmt[:40]!r}: this data-manager reads {FORMAT} only")
        raise CorruptBackupError(f"{where}: not a dedup repository config (format {str(fmt)[:40]!r})")
    _hex_id(doc, "id", where)
    _text(doc, "created", where)
    _bytes(doc, "seal_public", where, size=crypto.PUBLIC_KEY_SIZE)
    _hex_id(doc, "root_key", where)
    _get(doc, "params", where, dict)
    return doc


def _read_config(storage: Storage) -> tuple[dict[str, Any], bytes]:
    try:
        doc, raw = _read_json(storage, CONFIG_KEY, CONFIG_LIMIT)
    except NotFoundError:
        raise UsageError(
            f"no dedup repository in {storage.location()}: create it with: data-manager repo init {storage.name}"
        ) from None
    return _check_config(doc, f"{storage.location()}: {CONFIG_KEY}"), raw


def read_config(storage: Storage) -> dict[str, Any]:
    """The repository's config, validated (``format``, ``id``, ``created``, ``seal_public``, ``root_key``,
    ``params``). Must never be trusted further than its shape: only :func:`open_repository` checks it
    against a key. No repository: :class:`UsageError`; malformed: :class:`CorruptBackupError`."""
    return _read_config(storage)[0]


# --------------------------------------------------------------------------- key files


def _kdf_params(kdf: Mapping[str, Any] | None) -> dict[str, int]:
    """The Argon2id parameters asked for (defaults for what is not given), or :class:`UsageError`."""
    out = dict(DEFAULT_KDF)
    for name, value in (kdf or {}).items():
        if name not in out:
            raise UsageError(f"unknown Argon2id parameter {name!r} (known: {', '.join(DEFAULT_KDF)})")
        if not isinstance(value, int) or isinstance(value, bool):
            raise UsageError(f"Argon2id parameter {name!r} must be an integer")
        out[name] = value
    try:
        _check_kdf(out, "Argon2id parameters")
    except CorruptBackupError as exc:
        raise UsageError(str(exc)) from None
    return out


def _check_kdf(kdf: Mapping[str, Any], where: str) -> None:
    lanes = _int(kdf, "lanes", where, 1, MAX_KDF_LANES)
    _int(kdf, "iterations", where, 1, MAX_KDF_ITERATIONS)
    _int(kdf, "memory_kib", where, 8 * lanes, MAX_KDF_MEMORY_KIB)


@dataclass(frozen=True)
class _KeyFile:
    """A parsed ``keys/<id>``: its shape is valid; its signature is not checked yet."""

    key_id: str
    repo: str
    role: str
    created: str
    host: str
    public: bytes
    kdf: dict[str, int]
    salt: bytes
    wrapped: bytes
    signed_by: str
    signature: bytes

    def message(self) -> bytes:
        return _cert_message(self.repo, self.key_id, self.role, self.created, self.host, self.signed_by,
                             self.public)


def _cert_message(repo: str, key_id: str, role: str, created: str, host: str, signed_by: str,
                  public: bytes) -> bytes:
    # NUL-separated printable strings, then the raw public key: unambiguous without canonical JSON.
    return "\0".join((repo, key_id, role, created, host, signed_by)).encode("utf-8") + b"\0" + public


def _parse_key_file(doc: dict[str, Any], name: str, repo_id: str) -> _KeyFile:
    where = f"{KEYS_PREFIX}/{name}"
    if doc.get("format") != KEY_FORMAT:
        raise CorruptBackupError(f"{where}: not a key file (format {str(doc.get('format'))[:40]!r})")
    key_id = _hex_id(doc, "id", where)
    if key_id != name:
        raise CorruptBackupError(f"{where}: its id is {key_id}, not its name")
    repo = _hex_id(doc, "repo", where)
    if repo != repo_id:
        raise CorruptBackupError(f"{where}: belongs to repository {repo}, not this one ({repo_id})")
    role = _get(doc, "role", where, str)
    if role not in ROLES:
        raise CorruptBackupError(f"{where}: unknown role {role[:40]!r}")
    public = _bytes(doc, "public_key", where, size=crypto.PUBLIC_KEY_SIZE)
    if crypto.key_id_of(public) != key_id:
        raise CorruptBackupError(f"{where}: its public key does not match its id")
    kdf_doc = _get(doc, "kdf", where, dict)
    if kdf_doc.get("algorithm") != "argon2id":
        raise CorruptBackupError(f"{where}: unknown key derivation {str(kdf_doc.get('algorithm'))[:40]!r}")
    _check_kdf(kdf_doc, f"{where}: kdf")
    return _KeyFile(
        key_id=key_id, repo=repo, role=role,
        created=_text(doc, "created", where), host=_text(doc, "host", where), public=public,
        kdf={k: kdf_doc[k] for k in DEFAULT_KDF},
        salt=_bytes(kdf_doc, "salt", f"{where}: kdf", min_size=SALT_SIZE, max_size=64),
        wrapped=_bytes(doc, "secrets", where, min_size=BLOB_OVERHEAD),
        signed_by=_hex_id(doc, "signed_by", where),
        signature=_bytes(doc, "signature", where, size=crypto.SIGNATURE_SIZE),
    )


def _read_key_file(storage: Storage, key_id: str, repo_id: str) -> _KeyFile:
    doc, _ = _read_json(storage, f"{KEYS_PREFIX}/{key_id}", KEY_FILE_LIMIT)
    return _parse_key_file(doc, key_id, repo_id)


def _load_key_files(storage: Storage, repo_id: str) -> tuple[dict[str, _KeyFile], dict[str, str]]:
    """Every key file (by id), and why each unusable object under ``keys/`` is unusable (by name)."""
    files: dict[str, _KeyFile] = {}
    broken: dict[str, str] = {}
    for entry in storage.list(KEYS_PREFIX):
        if entry.is_dir:
            continue
        if not _ID.fullmatch(entry.name):
            broken[entry.name] = f"{KEYS_PREFIX}/{entry.name[:80]}: not a key file name"
            continue
        try:
            files[entry.name] = _read_key_file(storage, entry.name, repo_id)
        except NotFoundError:
            continue  # deleted while we listed
        except CorruptBackupError as exc:
            broken[entry.name] = str(exc)
    return files, broken


def _wrap_aad(repo_id: str, key_id: str) -> bytes:
    return WRAP_LABEL + b"\0" + repo_id.encode("ascii") + b"\0" + key_id.encode("ascii")


def _host() -> str:
    name = "".join(c for c in socket.gethostname() if c.isprintable())
    return name[:MAX_TEXT] or "unknown"


def _check_passphrase(passphrase: object) -> str:
    if not isinstance(passphrase, str) or not passphrase:
        raise UsageError("the passphrase must be a non-empty text")
    try:
        passphrase.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("the passphrase is not valid Unicode text") from None
    return passphrase


@dataclass(frozen=True, repr=False)
class _Material:
    """The repository's secrets a key holds (``seal_private`` only for readers). Never printed."""

    id_key: bytes
    index_key: bytes
    seal_public: bytes
    seal_private: bytes | None
    root_public: bytes
    config_blake3: str

    def __repr__(self) -> str:
        return "<key material>"


def _make_key_file(repo_id: str, role: str, signing: Ed25519PrivateKey, material: _Material, passphrase: str,
                   kdf: dict[str, int], signer: Ed25519PrivateKey, signer_id: str) -> tuple[str, bytes]:
    """The id and the bytes of the key file of ``signing`` (a fresh key), certified by ``signer`` (an admin
    key; the root key certifies itself)."""
    public = crypto.public_bytes(signing.public_key())
    key_id = crypto.key_id_of(public)
    secrets = {
        "format": SECRETS_FORMAT,
        "repo": repo_id,
        "key": key_id,
        "role": role,
        "signing_key": b64(crypto.ed25519_private_bytes(signing)),
        "id_key": b64(material.id_key),
        "index_key": b64(material.index_key),
        "seal_public": b64(material.seal_public),
        "root_public": b64(material.root_public),
        "config_blake3": material.config_blake3,
    }
    if role in READER_ROLES:
        assert material.seal_private is not None
        secrets["seal_private"] = b64(material.seal_private)
    # A write-only key never gets seal_private: what it seals, it cannot open.
    salt = os.urandom(SALT_SIZE)
    wrap_key = crypto.argon2id(passphrase, salt, **kdf)
    wrapped = crypto.aead_encrypt(wrap_key, json.dumps(secrets).encode("ascii"), _wrap_aad(repo_id, key_id))
    created, host = iso(now_utc()), _host()
    signature = crypto.sign(signer, KEYFILE_LABEL, _cert_message(repo_id, key_id, role, created, host, signer_id,
                                                                 public))
    doc = {
        "format": KEY_FORMAT,
        "id": key_id,
        "repo": repo_id,
        "role": role,
        "created": created,
        "host": host,
        "public_key": b64(public),
        "kdf": {"algorithm": "argon2id", **kdf, "salt": b64(salt)},
        "secrets": b64(wrapped),
        "signed_by": signer_id,
        "signature": b64(signature),
    }
    return key_id, _dump(doc)


def _unwrap(kf: _KeyFile, passphrase: str) -> tuple[_Material, Ed25519PrivateKey] | None:
    """The key's secrets, or None if ``passphrase`` is not this key's (or its wrapped secrets were damaged:
    the two look the same). Secrets that decrypt but make no sense: :class:`CorruptBackupError`."""
    wrap_key = crypto.argon2id(passphrase, kf.salt, **kf.kdf)
    plain = crypto.aead_try_decrypt(wrap_key, kf.wrapped, _wrap_aad(kf.repo, kf.key_id))
    if plain is None:
        return None
    where = f"{KEYS_PREFIX}/{kf.key_id}: wrapped secrets"
    try:
        doc = json.loads(plain)
    except ValueError:
        raise CorruptBackupError(f"{where}: not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != SECRETS_FORMAT:
        raise CorruptBackupError(f"{where}: not key secrets")
    # The authenticated copy of the key's identity decides: a key file edited after it was written (its
    # role, say) disagrees with it.
    if _hex_id(doc, "repo", where) != kf.repo or _hex_id(doc, "key", where) != kf.key_id:
        raise CorruptBackupError(f"{where}: made for another key or repository")
    role = _get(doc, "role", where, str)
    if role != kf.role:
        raise CorruptBackupError(
            f"{KEYS_PREFIX}/{kf.key_id}: the key file says role {kf.role!r} but the key was made {role[:20]!r} "
            "(the key file was edited)"
        )
    seed = _bytes(doc, "signing_key", where, size=32)
    signing = Ed25519PrivateKey.from_private_bytes(seed)
    if crypto.public_bytes(signing.public_key()) != kf.public:
        raise CorruptBackupError(f"{KEYS_PREFIX}/{kf.key_id}: its public key is not the key's own (edited)")
    seal_private: bytes | None = None
    if role in READER_ROLES:
        seal_private = _bytes(doc, "seal_private", where, size=32)
    elif "seal_private" in doc:
        raise CorruptBackupError(f"{where}: a {role} key must not hold seal_private")
    config_blake3 = _get(doc, "config_blake3", where, str)
    if not re.fullmatch(r"[0-9a-f]{64}", config_blake3):
        raise CorruptBackupError(f"{where}: 'config_blake3' is not a BLAKE3 digest")
    material = _Material(
        id_key=_bytes(doc, "id_key", where, size=32),
        index_key=_bytes(doc, "index_key", where, size=32),
        seal_public=_bytes(doc, "seal_public", where, size=32),
        seal_private=seal_private,
        root_public=_bytes(doc, "root_public", where, size=32),
        config_blake3=config_blake3,
    )
    if seal_private is not None:
        derived = crypto.public_bytes(X25519PrivateKey.from_private_bytes(seal_private).public_key())
        if derived != material.seal_public:
            raise CorruptBackupError(f"{where}: seal_private does not match seal_public")
    return material, signing


# --------------------------------------------------------------------------- revocations and trust


@dataclass(frozen=True)
class _Revocation:
    key_id: str
    repo: str
    created: str
    host: str
    revoked_by: str
    signature: bytes

    def message(self) -> bytes:
        return _revoke_message(self.repo, self.key_id, self.created, self.host, self.revoked_by)


def _revoke_message(repo: str, key_id: str, created: str, host: str, revoked_by: str) -> bytes:
    return "\0".join((repo, key_id, created, host, revoked_by)).encode("utf-8")


def _load_revocations(storage: Storage, repo_id: str) -> tuple[list[_Revocation], dict[str, str]]:
    """Every well-formed revocation record, and why each other object under ``keys/revoked/`` is unusable
    (by name)."""
    records: list[_Revocation] = []
    broken: dict[str, str] = {}
    for entry in storage.list(REVOKED_PREFIX):
        where = f"{REVOKED_PREFIX}/{entry.name[:80]}"
        if entry.is_dir:
            continue
        try:
            if not _ID.fullmatch(entry.name):
                raise CorruptBackupError(f"{where}: not a key id")
            doc, _ = _read_json(storage, f"{REVOKED_PREFIX}/{entry.name}", REVOCATION_LIMIT)
            if doc.get("format") != REVOCATION_FORMAT:
                raise CorruptBackupError(f"{where}: not a revocation record")
            rec = _Revocation(
                key_id=_hex_id(doc, "key", where), repo=_hex_id(doc, "repo", where),
                created=_text(doc, "created", where), host=_text(doc, "host", where),
                revoked_by=_hex_id(doc, "revoked_by", where),
                signature=_bytes(doc, "signature", where, size=crypto.SIGNATURE_SIZE),
            )
            if rec.key_id != entry.name or rec.repo != repo_id:
                raise CorruptBackupError(f"{where}: made for another key or repository")
            records.append(rec)
        except NotFoundError:
            continue
        except CorruptBackupError as exc:
            broken[entry.name] = str(exc)
    return records, broken


@dataclass
class _Trust:
    """Who counts, as read from the storage at one moment, anchored at the root key's public key.

    * ``certified``: keys with a valid chain of admin signatures to the root key, revocations ignored;
      only their revocations count (no circular "A revoked B who revoked A").
    * ``revoked``: key id -> the admin key id whose valid revocation record names it. The root key cannot
      be revoked (it is the anchor).
    * ``signed_ok``: keys with a valid chain through admin keys that are *not revoked*: a revoked admin key
      can no longer vouch for anyone.
    * trusted = signed_ok and not revoked.
    """

    root_id: str
    root_public: bytes
    files: dict[str, _KeyFile]
    broken: dict[str, str]
    sig_ok: set[str]  # key files whose own signature is valid (the signer's standing aside)
    certified: set[str]
    signed_ok: set[str]
    revoked: dict[str, str]
    revocation_problems: dict[str, str]  # by key id (or name): records that do not count, and why

    def public_key(self, key_id: str) -> bytes | None:
        if key_id == self.root_id:
            return self.root_public
        kf = self.files.get(key_id)
        return kf.public if kf is not None else None

    def trusted(self, key_id: str) -> bool:
        if key_id == self.root_id:
            return True  # the anchor itself: known from the unlocked key, never revocable
        return key_id in self.signed_ok and key_id not in self.revoked

    def problem(self, key_id: str) -> str | None:
        """Why ``key_id`` is not signed_ok, for people."""
        kf = self.files.get(key_id)
        if kf is None:
            return self.broken.get(key_id, f"no key file {KEYS_PREFIX}/{key_id}")
        if key_id in self.signed_ok:
            return self.revocation_problems.get(key_id)
        if key_id == self.root_id:
            return "the root key file is not the root key's own, self-signed and admin (edited?)"
        signer = self.files.get(kf.signed_by)
        if kf.signed_by != self.root_id and signer is None:
            return f"signed by {kf.signed_by}, which is not a key of this repository"
        if not self.signature_ok(kf):
            return f"its signature by {kf.signed_by} is not valid (the key file was edited?)"
        if signer is not None and signer.role != "admin":
            return f"signed by {kf.signed_by}, which is not an admin key"
        if kf.signed_by in self.revoked:
            return f"signed by admin key {kf.signed_by}, which was revoked"
        return f"signed by {kf.signed_by}, which has no valid chain to the root key"

    def signature_ok(self, kf: _KeyFile) -> bool:
        public = self.public_key(kf.signed_by)
        return public is not None and crypto.verify(public, KEYFILE_LABEL, kf.message(), kf.signature)


def _reach(files: Mapping[str, _KeyFile], root_id: str, sig_ok: set[str], blocked: Iterable[str]) -> set[str]:
    """Keys reachable from the root key over valid admin signatures; keys in ``blocked`` are reached but
    vouch for nobody."""
    blocked = set(blocked)
    children: dict[str, list[str]] = {}
    for kf in files.values():
        if kf.key_id != root_id:
            children.setdefault(kf.signed_by, []).append(kf.key_id)
    reached = {root_id} if root_id in sig_ok else set()
    frontier = [root_id]  # the anchor vouches even if its own key file is gone
    while frontier:
        signer = frontier.pop()
        for child in children.get(signer, ()):
            if child in reached or child not in sig_ok:
                continue
            reached.add(child)
            if files[child].role == "admin" and child not in blocked:
                frontier.append(child)
    return reached


def _evaluate(storage: Storage, repo_id: str, root_id: str, root_public: bytes,
              key_files: tuple[dict[str, _KeyFile], dict[str, str]] | None = None) -> _Trust:
    """Read the key files (unless given) and revocation records, and work out who counts."""
    files, broken = key_files if key_files is not None else _load_key_files(storage, repo_id)
    records, rec_broken = _load_revocations(storage, repo_id)
    trust = _Trust(root_id, root_public, files, broken, set(), set(), set(), {}, rec_broken)
    for kf in files.values():
        if kf.key_id == root_id:
            # The root key signs itself, is an admin, and is the key the anchor names.
            if kf.signed_by == root_id and kf.role == "admin" and kf.public == root_public and \
                    trust.signature_ok(kf):
                trust.sig_ok.add(kf.key_id)
        elif kf.signed_by != kf.key_id and trust.signature_ok(kf):
            trust.sig_ok.add(kf.key_id)
    trust.certified = _reach(files, root_id, trust.sig_ok, ())
    for rec in records:
        where = f"{REVOKED_PREFIX}/{rec.key_id}"
        signer_public = trust.public_key(rec.revoked_by)
        signer_is_admin = rec.revoked_by == root_id or (
            rec.revoked_by in files and files[rec.revoked_by].role == "admin")
        if rec.key_id == root_id:
            trust.revocation_problems[rec.key_id] = f"{where}: the root key cannot be revoked; ignored"
        elif (signer_public is not None and signer_is_admin
              and (rec.revoked_by == root_id or rec.revoked_by in trust.certified)
              and crypto.verify(signer_public, REVOKE_LABEL, rec.message(), rec.signature)):
            trust.revoked[rec.key_id] = rec.revoked_by
        else:
            trust.revocation_problems[rec.key_id] = f"{where}: not validly signed by an admin key; ignored"
    trust.signed_ok = _reach(files, root_id, trust.sig_ok, trust.revoked)
    return trust


# --------------------------------------------------------------------------- the key ring


class KeyRing:
    """An unlocked key of one repository: what the engine encrypts, seals, signs and checks with.

    It never shows its secrets (``repr`` names the repository, the key and its role only), and it refuses
    (:class:`RefusedError`) what its role may not do rather than failing later.
    """

    __slots__ = ("repo_id", "key_id", "role", "params", "can_read", "can_delete", "_storage", "_signing",
                 "_id_key", "_index", "_seal_public", "_seal_private", "_material", "_root_id", "_trust",
                 "_unknown", "_lock")

    def __init__(self, storage: Storage, config: Mapping[str, Any], key_id: str, role: str,
                 material: _Material, signing: Ed25519PrivateKey, trust: _Trust) -> None:
        self.repo_id: str = config["id"]
        self.key_id = key_id
        self.role = role
        self.params: dict[str, Any] = config["params"]
        self.can_read = role in READER_ROLES
        self.can_delete = role == "admin"
        self._storage = storage
        self._signing = signing
        self._material = material
        self._id_key = material.id_key
        self._index = AeadKey(material.index_key)
        self._seal_public = X25519PublicKey.from_public_bytes(material.seal_public)
        self._seal_private = (X25519PrivateKey.from_private_bytes(material.seal_private)
                              if material.seal_private is not None else None)
        self._root_id = crypto.key_id_of(material.root_public)
        self._trust = trust
        self._unknown: set[str] = set()  # ids still unknown after a reload: never reload for them again
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"KeyRing(repo={self.repo_id}, key={self.key_id}, role={self.role})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a KeyRing holds secrets: it is never pickled")

    def _refuse(self, what: str) -> RefusedError:
        return RefusedError(f"key {self.key_id} is {self.role}: it cannot {what}")

    # ---- ids, packs, sealed objects, index

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        """The 32-byte keyed BLAKE3 of ``data`` (plaintext): equal data, equal id, in this repository only."""
        return crypto.keyed_id(self._id_key, data)

    def chunker_seed(self) -> int:
        """The seed of this repository's FastCDC gear table, from ``id_key`` (so every role that writes has
        it): cut points differ from one repository to another, so that whoever holds the storage cannot
        recognise known content by the sizes of its chunks."""
        return crypto.derived_seed(self._id_key, "chunker gear seed")

    def new_pack_sealer(self) -> PackSealer:
        """A fresh :class:`PackSealer` (a fresh ephemeral key) for one pack. Any role."""
        return PackSealer(self._seal_public, self.repo_id)

    def pack_opener(self, header: bytes) -> PackOpener:
        """The :class:`PackOpener` of the pack with ``header``. Readers only; a write-only key:
        :class:`RefusedError`. A malformed header: :class:`CorruptBackupError`."""
        if self._seal_private is None:
            raise self._refuse("decrypt packs")
        return PackOpener(self._seal_private, self.repo_id, header)

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        """``plaintext`` sealed to the repository's public key (:data:`SEAL_OVERHEAD` bytes more); only a
        reader can :meth:`unseal` it, with the same ``context``. Any role; for small objects."""
        return crypto.seal(self._seal_public, self.repo_id, plaintext, context)

    def unseal(self, sealed: bytes, context: bytes) -> bytes:
        """The plaintext of :meth:`seal`; write-only: :class:`RefusedError`; damaged, another context or
        another repository: :class:`CorruptBackupError`."""
        if self._seal_private is None:
            raise self._refuse("decrypt sealed objects")
        return crypto.unseal(self._seal_private, self.repo_id, sealed, context)

    def index_encrypt(self, plaintext: bytes, context: bytes) -> bytes:
        """``plaintext`` under the index key (:data:`BLOB_OVERHEAD` bytes more). Any role."""
        return self._index.encrypt(plaintext, context)

    def index_decrypt(self, data: bytes, context: bytes) -> bytes:
        """The plaintext of :meth:`index_encrypt` with the same ``context``, or :class:`CorruptBackupError`.
        Any role."""
        return self._index.decrypt(data, context, "index data")

    # ---- signatures

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature (64 B) by this key over ``"data-manager-dedup/1 signature" || 0x00 || data``;
        check it with :meth:`verify_signature`."""
        return crypto.sign(self._signing, SIGNATURE_LABEL, data)

    def verify_signature(self, key_id: str, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is :meth:`sign`'s over ``data`` by key ``key_id``, and that key is trusted
        now: its key file is signed by an admin key with a chain to the root key, and it is not revoked
        (revoked keys' signatures are all False: there is no trusted clock to tell earlier ones apart).

        The key files are read when the ring is opened, and read again (once per id) for a key id not known
        then; a revocation made by another process meanwhile is seen by rings opened later. Bad input is
        False, never an exception.
        """
        if isinstance(signature, (bytearray, memoryview)):
            signature = bytes(signature)
        if not isinstance(key_id, str) or not _ID.fullmatch(key_id) or not isinstance(signature, bytes):
            return False
        trust = self._trust_state()
        if trust.public_key(key_id) is None and key_id not in self._unknown:
            trust = self._trust_state(refresh=True)
            if trust.public_key(key_id) is None:
                self._unknown.add(key_id)  # so forged ids in snapshots cannot make us re-read keys/ each time
        public = trust.public_key(key_id)
        if public is None or not trust.trusted(key_id):
            return False
        return crypto.verify(public, SIGNATURE_LABEL, data, signature)

    def _trust_state(self, refresh: bool = False) -> _Trust:
        with self._lock:
            if refresh:
                self._trust = _evaluate(self._storage, self.repo_id, self._root_id, self._material.root_public)
            return self._trust


# --------------------------------------------------------------------------- init, open


def init_repository(storage: Storage, passphrase: str, *, params: dict[str, Any] | None = None,
                    kdf: dict[str, int] | None = None) -> KeyRing:
    """Create a repository in ``storage`` with a first admin key (the root key) unlocked by ``passphrase``,
    and return it unlocked. Writes ``keys/<id>``, then ``config`` last: the repository exists only once
    ``config`` does. ``params`` (JSON) is stored verbatim as the config's ``params``. Refuses
    (:class:`UsageError`) if a config exists; never replaces anything."""
    passphrase = _check_passphrase(passphrase)
    kdf_params = _kdf_params(kdf)
    params = dict(params or {})
    try:
        json.dumps(params, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"repository params must be JSON: {exc}") from None
    if storage.exists(CONFIG_KEY):
        raise UsageError(f"a repository exists already in {storage.location()}")
    repo_id = os.urandom(16).hex()
    seal_private = X25519PrivateKey.generate()
    seal_public = crypto.public_bytes(seal_private.public_key())
    # The root key's id is needed in the config, and the config's digest in the root key's secrets: make
    # the signing key first, then the config, then the key file.
    root_signing = Ed25519PrivateKey.generate()
    root_public = crypto.public_bytes(root_signing.public_key())
    root_id = crypto.key_id_of(root_public)
    config = {
        "format": FORMAT,
        "id": repo_id,
        "created": iso(now_utc()),
        "seal_public": b64(seal_public),
        "root_key": root_id,
        "params": params,
    }
    config_raw = _dump(config)
    material = _Material(
        id_key=crypto.random_key(), index_key=crypto.random_key(), seal_public=seal_public,
        seal_private=crypto.x25519_private_bytes(seal_private), root_public=root_public,
        config_blake3=blake3(config_raw).hexdigest(),
    )
    key_id, key_raw = _make_key_file(repo_id, "admin", root_signing, material, passphrase, kdf_params,
                                     root_signing, root_id)
    _write_new(storage, f"{KEYS_PREFIX}/{key_id}", key_raw)
    if storage.exists(CONFIG_KEY):  # narrows the race with a concurrent init (see _write_new)
        raise UsageError(f"a repository exists already in {storage.location()}")
    _write_new(storage, CONFIG_KEY, config_raw)
    trust = _evaluate(storage, repo_id, root_id, root_public)
    return KeyRing(storage, config, key_id, "admin", material, root_signing, trust)


def _check_unlocked(storage: Storage, config: Mapping[str, Any], config_raw: bytes, kf: _KeyFile,
                    material: _Material) -> _Trust:
    """Check an unlocked key against the storage: the config is the one it was made for, and the key is
    trusted. Returns the trust state; a revoked key: :class:`UsageError`; anything forged or damaged:
    :class:`CorruptBackupError`."""
    # The digest covers seal_public, root_key and params: a config swapped by whoever holds the storage
    # (to have data sealed to their key, say) is caught here.
    if blake3(config_raw).hexdigest() != material.config_blake3:
        raise CorruptBackupError(
            f"{storage.location()}: {CONFIG_KEY}: not the config key {kf.key_id} was made for (changed or replaced)"
        )
    root_id = crypto.key_id_of(material.root_public)
    trust = _evaluate(storage, config["id"], root_id, material.root_public)
    if kf.key_id in trust.revoked:
        raise UsageError(
            f"key {kf.key_id} was revoked by admin key {trust.revoked[kf.key_id]}: it can no longer open the "
            f"repository in {storage.location()}"
        )
    if not trust.trusted(kf.key_id):
        raise CorruptBackupError(f"{KEYS_PREFIX}/{kf.key_id}: not trusted: {trust.problem(kf.key_id)}")
    return trust


def open_repository(storage: Storage, passphrase: str, *, key_id: str | None = None) -> KeyRing:
    """The repository's key unlocked by ``passphrase``: key ``key_id``, else the first key file it unlocks
    (the root key first). Never writes anything.

    No repository, no such key, a wrong passphrase (for every key tried) or a revoked key:
    :class:`UsageError` (exit 2). A key or config that was edited or does not belong together:
    :class:`CorruptBackupError`.
    """
    passphrase = _check_passphrase(passphrase)
    config, config_raw = _read_config(storage)
    repo_id, location = config["id"], storage.location()
    if key_id is not None:
        if not isinstance(key_id, str) or not _ID.fullmatch(key_id):
            raise UsageError(f"{str(key_id)[:80]!r} is not a key id (32 hex digits)")
        try:
            kf = _read_key_file(storage, key_id, repo_id)
        except NotFoundError:
            raise UsageError(f"no key {key_id} in the dedup repository in {location}") from None
        unlocked = _unwrap(kf, passphrase)
        if unlocked is None:
            raise UsageError(f"wrong passphrase for key {key_id} of the dedup repository in {location}")
        trust = _check_unlocked(storage, config, config_raw, kf, unlocked[0])
        return KeyRing(storage, config, kf.key_id, kf.role, unlocked[0], unlocked[1], trust)
    files, broken = _load_key_files(storage, repo_id)
    revoked: UsageError | None = None
    # Argon2id per key file tried: the root key first, as the likeliest.
    for kf in sorted(files.values(), key=lambda k: (k.key_id != config["root_key"], k.created, k.key_id)):
        unlocked = _unwrap(kf, passphrase)
        if unlocked is None:
            continue
        try:
            trust = _check_unlocked(storage, config, config_raw, kf, unlocked[0])
        except UsageError as exc:
            # A revoked key: another key may share the passphrase (one re-added after a lost laptop).
            revoked = revoked or exc
            continue
        return KeyRing(storage, config, kf.key_id, kf.role, unlocked[0], unlocked[1], trust)
    if revoked is not None:
        raise revoked
    if not files:
        detail = f" ({next(iter(broken.values()))})" if broken else ""
        raise CorruptBackupError(f"the dedup repository in {location} has no usable key file{detail}")
    raise UsageError(
        f"wrong passphrase: it unlocks none of the {len(files)} key(s) of the dedup repository in {location}"
    )


# --------------------------------------------------------------------------- key management


def _check_admin(ring: KeyRing, storage: Storage, what: str) -> _Trust:
    """The fresh trust state if ``ring`` may manage keys of the repository in ``storage``: an admin key,
    still trusted, of this very repository."""
    if not ring.can_delete:
        raise RefusedError(f"key {ring.key_id} is {ring.role}: only an admin key can {what}")
    config, config_raw = _read_config(storage)
    if config["id"] != ring.repo_id or blake3(config_raw).hexdigest() != ring._material.config_blake3:
        raise UsageError(f"{storage.location()} holds another repository than key {ring.key_id}'s")
    trust = ring._trust_state(refresh=True)
    if not trust.trusted(ring.key_id):
        raise RefusedError(f"key {ring.key_id} was revoked or is no longer trusted: it cannot {what}")
    return trust


def add_key(ring: KeyRing, storage: Storage, passphrase: str, role: str, *,
            kdf: dict[str, int] | None = None) -> str:
    """Add a key with ``role``, unlocked by ``passphrase``, certified by ``ring`` (an admin key; any other:
    :class:`RefusedError`, exit 3); its id. A write-only key's file never holds ``seal_private``."""
    if role not in ROLES:
        raise UsageError(f"unknown key role {str(role)[:40]!r} (roles: {', '.join(ROLES)})")
    passphrase = _check_passphrase(passphrase)
    kdf_params = _kdf_params(kdf)
    _check_admin(ring, storage, "add keys")
    key_id, raw = _make_key_file(ring.repo_id, role, Ed25519PrivateKey.generate(), ring._material, passphrase,
                                 kdf_params, ring._signing, ring.key_id)
    _write_new(storage, f"{KEYS_PREFIX}/{key_id}", raw)
    ring._trust_state(refresh=True)
    return key_id


def revoke_key(ring: KeyRing, storage: Storage, key_id: str) -> None:
    """Revoke key ``key_id`` for good: it can no longer open the repository, and its signatures no longer
    verify (earlier ones included). Admin keys only (:class:`RefusedError`). The root key cannot be revoked,
    so an admin key always remains; an admin key that vouched for keys still in use cannot be revoked
    before them (they would lose their chain to the root key). Revoking a revoked key does nothing."""
    trust = _check_admin(ring, storage, "revoke keys")
    location = storage.location()
    if not isinstance(key_id, str) or not _ID.fullmatch(key_id):
        raise UsageError(f"{str(key_id)[:80]!r} is not a key id (32 hex digits)")
    if key_id == trust.root_id:
        raise UsageError(f"key {key_id} is the root key: every other key's trust starts from it; it cannot be revoked")
    if key_id not in trust.files:
        detail = f" ({trust.broken[key_id]})" if key_id in trust.broken else ""
        raise UsageError(f"no key {key_id} in the dedup repository in {location}{detail}")
    if key_id in trust.revoked:
        return
    record_key = f"{REVOKED_PREFIX}/{key_id}"
    if storage.exists(record_key):
        why = trust.revocation_problems.get(key_id) or trust.broken.get(key_id) or "not a valid revocation"
        raise CorruptBackupError(f"{why}: remove {record_key} from {location}, then revoke again")
    still = _reach(trust.files, trust.root_id, trust.sig_ok, {*trust.revoked, key_id})
    lost = sorted(k for k in trust.signed_ok if k not in trust.revoked and k != key_id and k not in still)
    if lost:
        raise UsageError(
            f"admin key {key_id} vouches for keys still in use ({', '.join(lost)}): revoke them first"
        )
    created, host = iso(now_utc()), _host()
    doc = {
        "format": REVOCATION_FORMAT,
        "repo": ring.repo_id,
        "key": key_id,
        "created": created,
        "host": host,
        "revoked_by": ring.key_id,
        "signature": b64(crypto.sign(ring._signing, REVOKE_LABEL,
                                     _revoke_message(ring.repo_id, key_id, created, host, ring.key_id))),
    }
    _write_new(storage, record_key, _dump(doc))
    ring._trust_state(refresh=True)


@dataclass(frozen=True)
class KeyInfo:
    """A key as :func:`list_keys` shows it (no secrets). ``signed_ok``: its key file has a valid chain of
    admin signatures to the root key; ``problem``: why not, or why a record about it was ignored."""

    key_id: str
    role: str
    created: str
    host: str
    revoked: bool
    signed_ok: bool
    signed_by: str | None = None
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def list_keys(storage: Storage) -> list[KeyInfo]:
    """Every key file of the repository, oldest first, then unreadable ones (role ``"unknown"``). Reads
    only public parts: the anchor is the config's ``root_key`` (whose key file must hold the public key
    with that id); opening a key checks the config itself."""
    config = read_config(storage)
    root_id = config["root_key"]
    files, broken = _load_key_files(storage, config["id"])
    root = files.get(root_id)
    # Without the root key file nothing can be checked: an empty public key verifies nothing.
    trust = _evaluate(storage, config["id"], root_id, root.public if root is not None else b"", (files, broken))
    out = [
        KeyInfo(kf.key_id, kf.role, kf.created, kf.host, revoked=kf.key_id in trust.revoked,
                signed_ok=kf.key_id in trust.signed_ok, signed_by=kf.signed_by, problem=trust.problem(kf.key_id))
        for kf in sorted(files.values(), key=lambda k: (k.created, k.key_id))
    ]
    out += [KeyInfo(name, "unknown", "", "", revoked=False, signed_ok=False, problem=why)
            for name, why in sorted(broken.items())]
    return out


__all__ = [
    "BLOB_OVERHEAD",
    "PACK_HEADER_SIZE",
    "ROLES",
    "SEAL_OVERHEAD",
    "TOP_LEVEL_NAMES",
    "KeyInfo",
    "KeyRing",
    "PackOpener",
    "PackSealer",
    "add_key",
    "init_repository",
    "list_keys",
    "open_repository",
    "read_config",
    "revoke_key",
]
