"""Packs: the objects that hold every blob (chunk of data, chunk list, snapshot) of a ``dedup`` repository.

A pack is self-describing, so every index can be rebuilt from the packs alone::

    pack header   MAGIC (8) | version u8 | kind u8 ('D' data, 'M' meta) | sealed header size u16
                  | sealer header length u16 | sealer header (the pack's key, sealed to the repository)
    blob, ...     encrypted blob header (BLOB_HEADER, AAD = "dm-blob-header" + u64 offset of this header)
                  | encrypted blob (AAD = the 48 plaintext bytes of its header)
    trailer       encrypted (AAD = "dm-pack-trailer" + kind): TRAILER_MAGIC | u32 count | count x ENTRY
    footer        u64 length of the encrypted trailer | FOOTER_MAGIC

All integers little-endian. A reader that cannot trust the trailer walks the blob headers from the end of
the pack header: each says how long its blob is. Nothing in a pack is plaintext but the pack header (magic,
sizes, and what the key layer puts in the sealer header).
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

from ...errors import CorruptBackupError

PACK_MAGIC = b"DMPACK\x00\x01"
PACK_VERSION = 1
_PACK_FIXED = struct.Struct("<8sBBHH")  # magic, version, kind, sealed header size, sealer header length
BLOB_HEADER = struct.Struct("<32sBBHII4x")  # id, type, compression, flags (0), raw length, stored length
ENTRY = struct.Struct("<32sBBHIIQ")  # the same fields and the offset of the blob's sealed header
TRAILER_MAGIC = b"DMTRAIL1"
FOOTER = struct.Struct("<Q8s")
FOOTER_MAGIC = b"DMPKEND1"
DEFAULT_BLOB_OVERHEAD = 28  # nonce 12 + tag 16: what the key layer's encrypt() adds

KINDS = {"data": ord("D"), "meta": ord("M")}
KIND_NAMES = {v: k for k, v in KINDS.items()}

# blob types
DATA = 0  # a chunk of an artifact
CHUNK_LIST = 1  # a list of (chunk id, raw length) of part of an artifact
SNAPSHOT = 2  # a backup's metadata (JSON)
TYPE_NAMES = {DATA: "data", CHUNK_LIST: "chunk-list", SNAPSHOT: "snapshot"}
KIND_OF_TYPE = {DATA: "data", CHUNK_LIST: "meta", SNAPSHOT: "meta"}

# compression
NONE = 0
ZSTD = 1


def blob_overhead() -> int:
    """What the key layer adds to every encrypted blob (its constant if it says, else nonce + tag)."""
    try:
        from . import crypto  # helper module of the key layer

        return int(getattr(crypto, "BLOB_OVERHEAD", DEFAULT_BLOB_OVERHEAD))
    except ImportError:
        return DEFAULT_BLOB_OVERHEAD


def new_pack_id() -> bytes:
    # Random, never a content hash: two writers never pick the same name, so nothing is ever overwritten.
    return secrets.token_bytes(16)


def pack_key(kind: str, pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"packs/{kind}/{h[:2]}/{h}"


def parse_pack_key(key: str) -> tuple[str, bytes] | None:
    """``packs/data/ab/ab12...`` -> (kind, id); None for anything else."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "packs" or parts[1] not in KINDS:
        return None
    try:
        pack_id = bytes.fromhex(parts[3])
    except ValueError:
        return None
    if len(pack_id) != 16 or parts[2] != parts[3][:2]:
        return None
    return parts[1], pack_id


def header_aad(offset: int) -> bytes:
    return b"dm-blob-header" + struct.pack("<Q", offset)


def trailer_aad(kind: str) -> bytes:
    return b"dm-pack-trailer" + bytes([KINDS[kind]])


@dataclass(frozen=True)
class BlobEntry:
    """Where one blob is: what an index file and a pack trailer list. ``offset`` is that of its sealed
    header; the blob's own ciphertext (``stored`` bytes) follows it."""

    id: bytes
    type: int
    compression: int
    raw: int
    stored: int
    offset: int

    def pack(self) -> bytes:
        return ENTRY.pack(self.id, self.type, self.compression, 0, self.raw, self.stored, self.offset)

    @classmethod
    def unpack(cls, data: bytes | memoryview, at: int = 0) -> BlobEntry:
        bid, typ, comp, _flags, raw, stored, offset = ENTRY.unpack_from(data, at)
        return cls(bid, typ, comp, raw, stored, offset)

    def plain_header(self) -> bytes:
        return BLOB_HEADER.pack(self.id, self.type, self.compression, 0, self.raw, self.stored)


@dataclass(frozen=True)
class PackHeader:
    """The plaintext start of a pack."""

    kind: str
    sealed_header_size: int  # BLOB_HEADER.size + the key layer's overhead
    sealer_header: bytes
    raw: bytes  # the whole pack header as stored

    @property
    def size(self) -> int:
        return len(self.raw)


def encode_pack_header(kind: str, sealer_header: bytes, overhead: int) -> bytes:
    return _PACK_FIXED.pack(PACK_MAGIC, PACK_VERSION, KINDS[kind], BLOB_HEADER.size + overhead,
                            len(sealer_header)) + sealer_header


def parse_pack_header(data: bytes, where: str) -> PackHeader:
    """The pack header at the start of ``data`` (which may hold more); CorruptBackupError if it is not one."""
    if len(data) < _PACK_FIXED.size:
        raise CorruptBackupError(f"{where}: too short for a pack")
    magic, version, kind, sealed, slen = _PACK_FIXED.unpack_from(data)
    if magic != PACK_MAGIC or version != PACK_VERSION or kind not in KIND_NAMES:
        raise CorruptBackupError(f"{where}: not a pack of this format (bad magic, version or kind)")
    end = _PACK_FIXED.size + slen
    if len(data) < end or sealed < BLOB_HEADER.size:
        raise CorruptBackupError(f"{where}: pack header truncated")
    return PackHeader(KIND_NAMES[kind], sealed, bytes(data[_PACK_FIXED.size:end]), bytes(data[:end]))


# Pieces of at least this size are written at once; smaller ones (the sealed headers, the chunks of a tree of
# small files) are gathered up to it: two write calls per blob cost more than the blob on such trees.
_DIRECT = 256 << 10


class PackBuilder:
    """One pack being filled: streamed into ``open_write(key)`` blob by blob (so a pack costs no memory; the
    storage's writer commits it whole or not at all), or without one kept in :attr:`parts`.

    Never thread-safe on its own: one adder at a time (the caller's lock, or its own pack). Encryption happens here, with
    the pack's own sealer (one fresh pack key per pack, sealed to the repository's public key, so a
    write-only key can write it but never read it back).
    """

    def __init__(self, ring: Any, kind: str, open_write: Callable[[str], Any] | None = None) -> None:
        self.kind = kind
        self.pack_id = new_pack_id()
        self.key = pack_key(kind, self.pack_id)
        self._sealer = ring.new_pack_sealer()
        self.header = encode_pack_header(kind, self._sealer.header, blob_overhead())
        self.out = open_write(self.key) if open_write is not None else None
        self.parts: list[bytes] = []
        self._held: list[bytes] = []  # small pieces not written yet: one write for many small blobs
        self._held_size = 0
        self.size = 0
        self.entries: list[BlobEntry] = []
        self._emit(self.header)

    def _emit(self, data: bytes) -> None:
        self.size += len(data)
        if self.out is None:
            self.parts.append(data)
        elif len(data) >= _DIRECT:  # large: written as it is, after what is held (no copy)
            self._drain()
            self.out.write(data)
        else:
            self._held.append(data)
            self._held_size += len(data)
            if self._held_size >= _DIRECT:
                self._drain()

    def _drain(self) -> None:
        if self._held:
            assert self.out is not None
            self.out.write(b"".join(self._held))
            self._held.clear()
            self._held_size = 0

    def add(self, blob_id: bytes, typ: int, compression: int, raw: int, payload: bytes | memoryview) -> BlobEntry:
        """Encrypt and append one blob (``payload``: its bytes after compression); its entry."""
        ct = self._sealer.encrypt(payload, payload_aad(blob_id, typ, compression, raw))
        entry = BlobEntry(blob_id, typ, compression, raw, len(ct), self.size)
        plain = entry.plain_header()
        sealed_header = self._sealer.encrypt(plain, header_aad(self.size))
        self._emit(sealed_header)
        self._emit(ct)
        self.entries.append(entry)
        return entry

    def finish(self) -> None:
        """Append the sealed trailer and the footer: the pack is then complete."""
        plain = TRAILER_MAGIC + struct.pack("<I", len(self.entries)) + b"".join(e.pack() for e in self.entries)
        trailer = self._sealer.encrypt(plain, trailer_aad(self.kind))
        self._emit(trailer)
        self._emit(FOOTER.pack(len(trailer), FOOTER_MAGIC))
        self._drain()

    def abort(self) -> None:
        """Drop the pack: nothing of it becomes visible."""
        if self.out is not None:
            self.out.abort()
        self.parts = []
        self._held = []


def payload_aad(blob_id: bytes, typ: int, compression: int, raw: int) -> bytes:
    """A payload's AAD: its identity as its header states it, so a payload put under another header (or
    another id) fails to decrypt."""
    return b"dm-blob" + struct.pack("<32sBBI", blob_id, typ, compression, raw)


def open_blob(opener: Any, header: PackHeader, data: bytes | memoryview, offset: int, where: str,
              expected: BlobEntry | None = None) -> tuple[BlobEntry, bytes]:
    """Decrypt the blob whose sealed header starts at ``data[0]`` (pack offset ``offset``): its entry (as its
    own header states it) and its payload (still compressed, if it was). CorruptBackupError on any damage
    or when it is not the ``expected`` blob."""
    hs = header.sealed_header_size
    try:
        plain = opener.decrypt(bytes(data[:hs]), header_aad(offset))
    except Exception:
        raise CorruptBackupError(f"{where}: blob header at offset {offset} is damaged") from None
    if len(plain) != BLOB_HEADER.size:
        raise CorruptBackupError(f"{where}: blob header at offset {offset} is damaged")
    bid, typ, comp, _flags, raw, stored = BLOB_HEADER.unpack(plain)
    entry = BlobEntry(bid, typ, comp, raw, stored, offset)
    if expected is not None and (bid, typ, stored) != (expected.id, expected.type, expected.stored):
        raise CorruptBackupError(f"{where}: the blob at offset {offset} is not the one the index names")
    if len(data) < hs + stored:
        raise CorruptBackupError(f"{where}: blob at offset {offset} truncated")
    try:
        payload = opener.decrypt(bytes(data[hs:hs + stored]), payload_aad(bid, typ, comp, raw))
    except Exception:
        raise CorruptBackupError(f"{where}: blob at offset {offset} is damaged (authentication failed)") from None
    return entry, payload


def parse_trailer(opener: Any, kind: str, plain_or_sealed: bytes, where: str) -> list[BlobEntry]:
    """The entries of a sealed trailer."""
    try:
        plain = opener.decrypt(plain_or_sealed, trailer_aad(kind))
    except Exception:
        raise CorruptBackupError(f"{where}: trailer is damaged") from None
    if plain[:8] != TRAILER_MAGIC or len(plain) < 12:
        raise CorruptBackupError(f"{where}: trailer is damaged")
    (count,) = struct.unpack_from("<I", plain, 8)
    if len(plain) != 12 + count * ENTRY.size:
        raise CorruptBackupError(f"{where}: trailer is damaged (length)")
    return [BlobEntry.unpack(plain, 12 + i * ENTRY.size) for i in range(count)]


def walk_blobs(opener: Any, header: PackHeader, data: bytes, where: str) -> tuple[list[BlobEntry], str | None]:
    """Recover the entries of a whole pack ``data`` by walking its blob headers (the trailer is damaged):
    every blob before the first damaged header, and why the walk stopped early (None if it reached the
    trailer cleanly)."""
    entries: list[BlobEntry] = []
    hs = header.sealed_header_size
    offset = header.size
    view = memoryview(data)
    end = len(data) - FOOTER.size
    while offset + hs <= end:
        try:
            plain = opener.decrypt(bytes(view[offset:offset + hs]), header_aad(offset))
        except Exception:
            # Either the trailer starts here, or this header is damaged: a walk cannot tell them apart, and
            # stops. A trailer that starts exactly here (per the footer) is a clean end.
            return entries, None if _footer_points_at(data, offset) else f"blob header at offset {offset} damaged"
        bid, typ, comp, _flags, raw, stored = BLOB_HEADER.unpack(plain)
        if offset + hs + stored > end:
            return entries, f"blob at offset {offset} truncated"
        entries.append(BlobEntry(bid, typ, comp, raw, stored, offset))
        offset += hs + stored
    return entries, None if _footer_points_at(data, offset) else "pack truncated"


def _footer_points_at(data: bytes, offset: int) -> bool:
    if len(data) < FOOTER.size:
        return False
    tlen, magic = FOOTER.unpack_from(data, len(data) - FOOTER.size)
    return magic == FOOTER_MAGIC and len(data) - FOOTER.size - tlen == offset
