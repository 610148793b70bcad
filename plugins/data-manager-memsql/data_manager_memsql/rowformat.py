"""The rows format: per table, frames of MySQL text-protocol row packets, exactly as the server sent them.

The text protocol already carries every value exactly: numbers and dates as the server's text, strings
as their stored bytes (the backup reads with ``character_set_results = binary``), each behind its length,
and NULL as its own marker (so NULL and the empty string stay apart). A backup therefore keeps the row
packets as they arrived (:mod:`.wire`): the server works no harder than for ``mysqldump``'s ``SELECT *``
and the client never looks at a value. The only exception is FLOAT, selected as DOUBLE (see
:func:`select_rows`).

A restore turns each row into a SQL literal tuple (:func:`packets_to_values`, per column kind from
:func:`literal_kinds`) and sends them as multi-row ``INSERT`` statements.

Tables with a one-column integer primary key are read in key ranges of about one frame each (by several
connections at once, see :mod:`.parallel`); the range adapts to the bytes each one returned. Other tables
stream through one unbuffered query, cut into frames of about 1 MiB at row boundaries.

Artifact layout (big-endian)::

    b"DMMYPKTS1\\n"
    ( u32 n > 0, n bytes: row packets )*     one frame per key range / ~1 MiB of rows
    u32 0, u64 rows                          end marker with the row count

Backups of formats 1 and 2 (``b"DMMYROWS1\\n"``) hold frames of ``(v1,..),(..)`` VALUES text that the
server wrote itself (``QUOTE()``, ``HEX()``...); a restore still sends them as they are.
"""

from __future__ import annotations

import re
import struct
from binascii import hexlify
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from data_manager.errors import CorruptBackupError

MAGIC = b"DMMYPKTS1\n"  # frames of row packets (format 3)
MAGIC_VALUES = b"DMMYROWS1\n"  # frames of VALUES text (formats 1 and 2)
_LEN = struct.Struct(">I")
_COUNT = struct.Struct(">Q")

NUMBER_TYPES = frozenset({
    "tinyint", "smallint", "mediumint", "int", "integer", "bigint", "decimal", "numeric", "float", "double",
    "real", "year",
})
BINARY_TYPES = frozenset({
    "binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob",
    "geometry", "point", "linestring", "polygon", "multipoint", "multilinestring", "multipolygon",
    "geometrycollection", "geomcollection",
})
BIT_TYPES = frozenset({"bit"})


def quote_ident(name: str) -> str:
    """`name` quoted for MySQL (backticks doubled)."""
    return "`" + name.replace("`", "``") + "`"


@dataclass(frozen=True)
class Column:
    """One column as the backup keeps it (from ``information_schema.COLUMNS``)."""

    name: str
    data_type: str  # DATA_TYPE, lower case: "int", "varchar", "blob"...
    column_type: str  # COLUMN_TYPE: "int(10) unsigned", "enum('a','b')"...
    charset: str | None = None
    generated: bool = False
    nullable: bool = True

    @property
    def kind(self) -> str:
        t = self.data_type.lower()
        if t in BIT_TYPES:
            return "bit"
        if t in NUMBER_TYPES:
            return "number"
        if t in BINARY_TYPES or (t in ("char", "varchar", "text", "tinytext", "mediumtext", "longtext")
                                 and self.charset == "binary"):
            return "binary"
        return "text"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "data_type": self.data_type, "column_type": self.column_type,
                "charset": self.charset, "generated": self.generated, "nullable": self.nullable,
                "kind": self.kind}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Column:
        return cls(d["name"], d["data_type"], d["column_type"], d.get("charset"), bool(d.get("generated")),
                   bool(d.get("nullable", True)))


TEMPORAL_TYPES = frozenset({"date", "datetime", "timestamp", "time"})


def stored_columns(columns: Sequence[Column]) -> list[Column]:
    """The columns whose values are backed up and inserted: every column but generated ones."""
    return [c for c in columns if not c.generated]


def select_rows(database: str, table: str, columns: Sequence[Column]) -> str:
    """``SELECT`` of the stored columns, each as the text protocol carries it exactly.

    Every column is selected as it is, but FLOAT: MariaDB sends a FLOAT with 6 significant digits,
    which loses bits (``mysqldump`` does lose them), so it is widened to DOUBLE, whose text is exact and
    reads back as the same float.
    """
    exprs = ",".join(f"CAST({quote_ident(c.name)} AS DOUBLE)" if c.data_type.lower() == "float"
                     else quote_ident(c.name) for c in stored_columns(columns))
    return f"SELECT {exprs} FROM {quote_ident(database)}.{quote_ident(table)}"


def insert_prefix(table: str, columns: Sequence[Column]) -> bytes:
    names = ",".join(quote_ident(c.name) for c in stored_columns(columns))
    return f"INSERT INTO {quote_ident(table)} ({names}) VALUES ".encode()


# --------------------------------------------------------------------------- packets -> SQL literals

RAW, QUOTED, HEX, JSON_UTF8 = 0, 1, 2, 3


def literal_kinds(columns: Sequence[Column]) -> tuple[int, ...]:
    """How each stored column's text-protocol value becomes a SQL literal at restore.

    RAW: numbers, as the server wrote them. QUOTED: dates and times, and text (its own charset's bytes;
    the restore session reads literals as binary strings, so they are never converted). HEX: binary
    strings, BIT and spatial values, as ``X'..'`` (any byte). JSON_UTF8: MySQL's native JSON, which
    refuses binary strings: a quoted ``_utf8mb4`` literal.
    """
    kinds = []
    for c in stored_columns(columns):
        if c.kind == "number":
            kinds.append(RAW)
        elif c.kind in ("binary", "bit"):
            kinds.append(HEX)
        elif c.data_type.lower() == "json":
            kinds.append(JSON_UTF8)
        else:
            kinds.append(QUOTED)
    return tuple(kinds)


_SPECIAL = re.compile(rb"[\\'\x00\x1a]")  # what QUOTE() escapes
_ESCAPES = {b"\\": b"\\\\", b"'": b"\\'", b"\x00": b"\\0", b"\x1a": b"\\Z"}


def _escape(match: re.Match[bytes]) -> bytes:
    return _ESCAPES[match.group()]


def _payloads(body: bytes, label: str) -> Iterator[tuple[bytes, int]]:
    """``(buffer, offset)`` of each row's payload in a run of packets: ``body`` itself for a row in one
    packet, or the joined payloads of a row that spans packets (16 MiB and more)."""
    pos, size = 0, len(body)
    while pos < size:
        parts: list[bytes] = []
        while True:  # one row: packets until one shorter than 0xFFFFFF
            if pos + 4 > size:
                raise CorruptBackupError(f"{label}: truncated row packet")
            n = body[pos] | (body[pos + 1] << 8) | (body[pos + 2] << 16)
            if pos + 4 + n > size:
                raise CorruptBackupError(f"{label}: truncated row packet")
            start, pos = pos + 4, pos + 4 + n
            if n < 0xFFFFFF and not parts:
                yield body, start
                break
            parts.append(body[start:pos])
            if n < 0xFFFFFF:
                yield b"".join(parts), 0
                break


def packets_to_values(body: bytes, kinds: tuple[int, ...], max_bytes: int, label: str) -> Iterator[tuple[bytes, int]]:
    """The rows of ``body`` (text-protocol row packets) as ``(v1,..),(..)`` VALUES text, in pieces of
    about ``max_bytes``; yields ``(values, rows)``."""
    search, sub = _SPECIAL.search, _SPECIAL.sub
    out: list[bytes] = []
    size = rows = 0
    for row, p in _payloads(body, label):
        parts: list[bytes] = []
        put = parts.append
        try:
            for kind in kinds:
                b = row[p]
                if b < 251:
                    n = b
                    p += 1
                elif b == 251:  # NULL
                    put(b"NULL")
                    p += 1
                    continue
                elif b == 252:
                    n = row[p + 1] | (row[p + 2] << 8)
                    p += 3
                elif b == 253:
                    n = row[p + 1] | (row[p + 2] << 8) | (row[p + 3] << 16)
                    p += 4
                else:
                    n = int.from_bytes(row[p + 1:p + 9], "little")
                    p += 9
                v = row[p:p + n]
                p += n
                if kind == RAW:
                    put(v)
                elif kind == HEX:
                    put(b"X'" + hexlify(v) + b"'")
                else:
                    if search(v):
                        v = sub(_escape, v)
                    put((b"'" if kind == QUOTED else b"_utf8mb4'") + v + b"'")
        except IndexError:
            raise CorruptBackupError(f"{label}: a row packet ends inside a value") from None
        value = b"(" + b",".join(parts) + b")"
        out.append(value)
        size += len(value) + 1
        rows += 1
        if size >= max_bytes:
            yield b",".join(out), rows
            out, size, rows = [], 0, 0
    if out:
        yield b",".join(out), rows


# --------------------------------------------------------------------------- framing


class FrameWriter:
    """Writes a rows artifact: one frame per run of row packets."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self.rows = 0
        self.bytes = 0
        out.write(MAGIC)

    def write_frame(self, body: bytes, rows: int) -> None:
        """``body``: complete row packets holding ``rows`` rows."""
        if rows:
            self._out.write(_LEN.pack(len(body)))
            self._out.write(body)
            self.rows += rows
            self.bytes += len(body)

    def finish(self) -> None:
        self._out.write(_LEN.pack(0) + _COUNT.pack(self.rows))


def _read_exact(f: BinaryIO, n: int, label: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CorruptBackupError(f"{label}: truncated rows artifact")
    return data


class FrameReader:
    """Iterates over the frame bodies of a rows artifact, then reads it to EOF (checksum checked there).

    ``magic`` is the header the artifact must start with (:data:`MAGIC`, or :data:`MAGIC_VALUES` for
    formats 1 and 2). After the iteration, :attr:`rows` is the row count from the end marker.
    """

    def __init__(self, f: BinaryIO, label: str, magic: bytes = MAGIC) -> None:
        self._f = f
        self.label = label
        self.magic = magic
        self.rows: int | None = None

    def __iter__(self) -> Iterator[bytes]:
        f, label = self._f, self.label
        if _read_exact(f, len(self.magic), label) != self.magic:
            raise CorruptBackupError(f"{label}: not a data-manager rows artifact of this backup's format")
        while True:
            (n,) = _LEN.unpack(_read_exact(f, _LEN.size, label))
            if n == 0:
                break
            yield _read_exact(f, n, label)
        (self.rows,) = _COUNT.unpack(_read_exact(f, _COUNT.size, label))
        if f.read(1):
            raise CorruptBackupError(f"{label}: data after the end marker")
