"""Index files: which blob is where, so a writer can deduplicate and a reader can find a chunk without
opening packs.

``index/<32 hex, random>`` holds, encrypted with the key layer's ``index_encrypt`` (any role can read
and write them: a write-only key deduplicates against them)::

    INDEX_MAGIC | u32 packs | per pack: pack id (16) | kind u8 | u16 pack header length | pack header
                                      | u64 pack size | u32 blobs | blobs x ENTRY (see packs.py)

An index file is written only after every pack it lists was committed, so an entry always names a pack
that exists (until retention deletes it, which then rewrites the index). Index files are never changed;
two writers each write their own. Entries may repeat across files (duplicates are harmless: the first
wins).
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

from ...errors import CorruptBackupError
from .packs import ENTRY, KIND_NAMES, KINDS, BlobEntry, PackHeader, parse_pack_header

INDEX_MAGIC = b"DMINDEX1"
INDEX_CONTEXT = b"dm-index"
INDEX_PREFIX = "index"
_PACK = struct.Struct("<16sBH")
_PACK_TAIL = struct.Struct("<QI")


def new_index_key() -> str:
    return f"{INDEX_PREFIX}/{secrets.token_hex(16)}"


@dataclass
class PackRecord:
    """One committed pack and the blobs in it."""

    pack_id: bytes
    kind: str
    size: int
    header: bytes  # the pack's plaintext header (a reader opens the pack key from it without a request)
    entries: list[BlobEntry] = field(default_factory=list)


def encode_index(packs: list[PackRecord]) -> bytes:
    out = [INDEX_MAGIC, struct.pack("<I", len(packs))]
    for p in packs:
        out.append(_PACK.pack(p.pack_id, KINDS[p.kind], len(p.header)))
        out.append(p.header)
        out.append(_PACK_TAIL.pack(p.size, len(p.entries)))
        out.extend(e.pack() for e in p.entries)
    return b"".join(out)


def decode_index(data: bytes, where: str) -> list[PackRecord]:
    """The packs an index file lists; CorruptBackupError if it is not one."""
    try:
        if data[:8] != INDEX_MAGIC:
            raise ValueError("bad magic")
        (n,) = struct.unpack_from("<I", data, 8)
        at = 12
        packs = []
        for _ in range(n):
            pid, kind, hlen = _PACK.unpack_from(data, at)
            at += _PACK.size
            header = data[at:at + hlen]
            parse_pack_header(header, where)
            at += hlen
            size, count = _PACK_TAIL.unpack_from(data, at)
            at += _PACK_TAIL.size
            if at + count * ENTRY.size > len(data):
                raise ValueError("truncated")
            entries = [BlobEntry.unpack(data, at + i * ENTRY.size) for i in range(count)]
            at += count * ENTRY.size
            packs.append(PackRecord(pid, KIND_NAMES[kind], size, bytes(header), entries))
        if at != len(data):
            raise ValueError("trailing bytes")
        return packs
    except (struct.error, KeyError, ValueError) as exc:
        raise CorruptBackupError(f"{where}: not an index file ({exc})") from None


def read_index(storage: Any, ring: Any, key: str) -> list[PackRecord]:
    """Read, decrypt and decode the index file ``key``."""
    with storage.open_read(key) as f:
        sealed = f.read()
    try:
        plain = ring.index_decrypt(sealed, INDEX_CONTEXT + key.encode())  # bound to its name: no swapping
    except Exception:
        raise CorruptBackupError(f"{key}: index file is damaged (authentication failed)") from None
    return decode_index(plain, key)


def write_index(storage: Any, ring: Any, packs: list[PackRecord]) -> str:
    """Write one new index file listing ``packs`` (all committed already); its key."""
    key = new_index_key()
    data = ring.index_encrypt(encode_index(packs), INDEX_CONTEXT + key.encode())
    with storage.open_write(key) as w:
        w.write(data)
    return key


def pack_header_of(record: PackRecord) -> PackHeader:
    return parse_pack_header(record.header, record.pack_id.hex())
