"""Snapshots: a backup's metadata (a blob in a meta pack) and its pointer (``snapshots/<id>``).

* A **chunk list** blob (type CHUNK_LIST) holds part of one artifact: ``CHUNK_LIST_MAGIC | u32 count |
  count x (chunk id (32) | u32 raw length)``, at most :data:`LIST_MAX` entries, so no artifact ever needs
  one list of millions of ids in memory. An artifact's ``location`` is ``{"lists": [hex ids], "chunks": n}``.
* A **snapshot** blob (type SNAPSHOT) is the backup's manifest as JSON (``BackupWriter.manifest()`` plus
  ``format`` and the writer's ``key_id``), zstd-compressed.
* A **pointer** ``snapshots/<32 hex, random>`` is small and written last: it makes the backup count.
  ``POINTER_MAGIC | u16 key id length | key id (ASCII) | u16 signature length | signature | sealed`` where
  ``sealed`` is the key layer's ``seal`` (context ``dm-snapshot``) of a JSON document naming the
  backup and its snapshot blob, and the signature is the writer's (``sign``) over ``sealed``. Only the
  key id is in clear: DATA_ID and TIMESTAMP are sealed.
"""

from __future__ import annotations

import json
import secrets
import struct
from collections.abc import Iterator
from typing import Any

from ...errors import CorruptBackupError

FORMAT = "data-manager-dedup/1"
CHUNK_LIST_MAGIC = b"DMCLIST1"
LIST_ENTRY = struct.Struct("<32sI")
LIST_MAX = 65536  # 2.3 MiB per list blob at most
POINTER_MAGIC = b"DMSNAP01"
POINTER_CONTEXT = b"dm-snapshot"
SNAPSHOT_PREFIX = "snapshots"
WRITER_MAGIC = b"DMWRITR1"
WRITER_CONTEXT = b"dm-writer"
WRITERS_PREFIX = "writers"


def encode_chunk_list(chunks: list[tuple[bytes, int]]) -> bytes:
    return CHUNK_LIST_MAGIC + struct.pack("<I", len(chunks)) + b"".join(LIST_ENTRY.pack(i, n) for i, n in chunks)


def decode_chunk_list(data: bytes, where: str) -> Iterator[tuple[bytes, int]]:
    if data[:8] != CHUNK_LIST_MAGIC or len(data) < 12:
        raise CorruptBackupError(f"{where}: chunk list is damaged")
    (count,) = struct.unpack_from("<I", data, 8)
    if len(data) != 12 + count * LIST_ENTRY.size:
        raise CorruptBackupError(f"{where}: chunk list is damaged (length)")
    for i in range(count):
        yield LIST_ENTRY.unpack_from(data, 12 + i * LIST_ENTRY.size)


def new_pointer_key() -> str:
    return f"{SNAPSHOT_PREFIX}/{secrets.token_hex(16)}"


def encode_pointer(ring: Any, doc: dict[str, Any]) -> bytes:
    sealed = ring.seal(json.dumps(doc, sort_keys=True).encode(), POINTER_CONTEXT)
    signature = ring.sign(sealed)
    kid = ring.key_id.encode("ascii")
    return (POINTER_MAGIC + struct.pack("<H", len(kid)) + kid + struct.pack("<H", len(signature)) + signature
            + sealed)


def decode_pointer(ring: Any, data: bytes, where: str) -> dict[str, Any]:
    """The pointer's document, once its signature is verified and it is unsealed; CorruptBackupError
    otherwise (a reader's key is needed: a write-only key's ``unseal`` refuses)."""
    try:
        if data[:8] != POINTER_MAGIC:
            raise ValueError("bad magic")
        (klen,) = struct.unpack_from("<H", data, 8)
        kid = data[10:10 + klen].decode("ascii")
        (slen,) = struct.unpack_from("<H", data, 10 + klen)
        at = 12 + klen
        signature = data[at:at + slen]
        sealed = data[at + slen:]
        if len(signature) != slen or not sealed:
            raise ValueError("truncated")
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise CorruptBackupError(f"{where}: not a snapshot pointer ({exc})") from None
    if not ring.verify_signature(kid, sealed, signature):
        raise CorruptBackupError(f"{where}: signature does not verify (unknown or revoked key {kid}, or damaged)")
    try:
        plain = ring.unseal(sealed, POINTER_CONTEXT)
    except CorruptBackupError:
        raise CorruptBackupError(f"{where}: cannot be unsealed (damaged)") from None
    try:
        doc = json.loads(plain)
        if not isinstance(doc, dict) or doc.get("key_id") != kid:
            raise ValueError("signed by another key than it names")
        for k in ("data_id", "timestamp", "snapshot"):
            if not isinstance(doc.get(k), str):
                raise ValueError(f"no {k}")
        bytes.fromhex(doc["snapshot"])
    except ValueError as exc:
        raise CorruptBackupError(f"{where}: unreadable pointer ({exc})") from None
    return doc


def encode_snapshot(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def decode_snapshot(data: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"unknown format {doc.get('format') if isinstance(doc, dict) else None!r}")
        if not isinstance(doc.get("data_id"), str) or not isinstance(doc.get("timestamp"), str):
            raise ValueError("no data_id or timestamp")
        if not isinstance(doc.get("sources"), list):
            raise ValueError("no sources")
    except ValueError as exc:
        raise CorruptBackupError(f"{where}: unreadable snapshot ({exc})") from None
    return doc


def encode_writer(ring: Any, doc: dict[str, Any]) -> bytes:
    return WRITER_MAGIC + ring.seal(json.dumps(doc).encode(), WRITER_CONTEXT)


def decode_writer(ring: Any, data: bytes) -> dict[str, Any]:
    if data[:8] != WRITER_MAGIC:
        raise CorruptBackupError("not a writer heartbeat")
    return json.loads(ring.unseal(data[8:], WRITER_CONTEXT))
