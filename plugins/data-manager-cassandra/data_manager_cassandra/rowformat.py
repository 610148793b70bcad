"""The rows artifact: one table's rows as the native protocol encoded them, page by page.

Every cell is kept as the bytes the server sent in its RESULT message (``[int32 length][bytes]``, length
-1 for null), and written back as the very same bytes bound to a prepared statement. The protocol's
encoding of a value is the CQL type's own serialization, identical in protocol versions 3 to 5, so every
type round-trips exactly without this code knowing it: varint, decimal, duration, inet, blob, timeuuid,
collections frozen or not, tuples, UDTs, vectors. Nothing is decoded except the ``WRITETIME``/``TTL``
columns the restore needs to group cells.

Layout (all integers big-endian)::

    b"DMCQLROWS\\x01"
    uint32 n, n bytes of JSON: the header (table, columns, select list; see ``source.py``)
    blocks, one per page read:
        b"P", uint32 rows, uint32 nbytes, int64 fetched_at (unix ms, taken before the page was asked for),
        nbytes of cells: rows x selected columns, each [int32 length][bytes]
    b"E", uint64 total rows

Blocks of different token ranges may be interleaved; each holds whole rows. The end marker and the row
count let a restore tell a complete artifact from a truncated one even before the checksum is checked.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO

from data_manager.errors import CorruptBackupError

MAGIC = b"DMCQLROWS\x01"
_U32 = struct.Struct(">I")
_PAGE = struct.Struct(">cIIq")
_END = struct.Struct(">cQ")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")


def encode_header(header: dict[str, Any]) -> bytes:
    doc = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    return MAGIC + _U32.pack(len(doc)) + doc


def encode_page(rows: int, cells: bytes, fetched_at_ms: int) -> bytes:
    """The block header of one page; the caller writes ``cells`` right after it (no copy)."""
    return _PAGE.pack(b"P", rows, len(cells), fetched_at_ms)


def encode_end(total_rows: int) -> bytes:
    return _END.pack(b"E", total_rows)


def _read_exact(f: BinaryIO, n: int, what: str, label: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CorruptBackupError(f"{label}: truncated in {what}")
    return data


def read_header(f: BinaryIO, label: str) -> dict[str, Any]:
    if _read_exact(f, len(MAGIC), "the header", label) != MAGIC:
        raise CorruptBackupError(f"{label}: not a cassandra rows artifact (bad magic)")
    (n,) = _U32.unpack(_read_exact(f, 4, "the header", label))
    try:
        return json.loads(_read_exact(f, n, "the header", label))
    except ValueError as exc:
        raise CorruptBackupError(f"{label}: unreadable header ({exc})") from None


def iter_pages(f: BinaryIO, label: str) -> Iterator[tuple[int, int, bytes]]:
    """``(rows, fetched_at_ms, cells)`` per page, then checks the end marker, the count and EOF."""
    total = 0
    while True:
        kind = _read_exact(f, 1, "a block", label)
        if kind == b"P":
            _, rows, nbytes, fetched = _PAGE.unpack(kind + _read_exact(f, _PAGE.size - 1, "a block", label))
            cells = _read_exact(f, nbytes, "a page", label)
            total += rows
            yield rows, fetched, cells
        elif kind == b"E":
            _, recorded = _END.unpack(kind + _read_exact(f, _END.size - 1, "the end marker", label))
            if recorded != total:
                raise CorruptBackupError(f"{label}: {total} rows read, {recorded} recorded")
            if f.read(1):  # also reads to EOF, where the repository layer checks size and BLAKE3 digest
                raise CorruptBackupError(f"{label}: data after the end marker")
            return
        else:
            raise CorruptBackupError(f"{label}: unknown block {kind!r}")


def split_rows(cells: bytes, rows: int, ncols: int, label: str = "rows") -> Iterator[list[bytes | None]]:
    """The rows of one page, each a list of raw cell values (``None`` for null)."""
    unpack = _I32.unpack_from
    pos = 0
    end = len(cells)
    try:
        for _ in range(rows):
            row: list[bytes | None] = []
            append = row.append
            for _ in range(ncols):
                (n,) = unpack(cells, pos)
                pos += 4
                if n < 0:
                    append(None)
                else:
                    append(cells[pos : pos + n])
                    pos += n
            if pos > end:
                raise struct.error("cell runs past the page")
            yield row
    except struct.error:
        raise CorruptBackupError(f"{label}: malformed page") from None
    if pos != end:
        raise CorruptBackupError(f"{label}: {end - pos} stray bytes after the last row of a page")


def encode_cells(rows: list[list[bytes | None]]) -> bytes:
    """The page encoding of rows of raw cells (used by tests, and the inverse of :func:`split_rows`)."""
    out = bytearray()
    for row in rows:
        for cell in row:
            if cell is None:
                out += _I32.pack(-1)
            else:
                out += _I32.pack(len(cell)) + cell
    return bytes(out)


def int64(raw: bytes) -> int:
    return _I64.unpack(raw)[0]


def int32(raw: bytes) -> int:
    return _I32.unpack(raw)[0]


def pack_int32(value: int) -> bytes:
    return _I32.pack(value)


def list_of_int32(raw: bytes) -> list[int | None]:
    """A serialized ``list<int>`` (what ``TTL()`` of a multi-cell column returns on Cassandra 5)."""
    (count,) = _I32.unpack_from(raw, 0)
    pos = 4
    out: list[int | None] = []
    for _ in range(count):
        (n,) = _I32.unpack_from(raw, pos)
        pos += 4
        if n < 0:
            out.append(None)
        else:
            out.append(_I32.unpack_from(raw, pos)[0])
            pos += n
    return out
