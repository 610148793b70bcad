"""The rows format: per table, frames of MySQL binary-protocol row packets, exactly as the server sent them.

The backup reads every table through a prepared statement, so the rows come in the binary protocol,
which carries every value exactly and costs the server the least (:mod:`.wire`): integers, FLOAT and
DOUBLE as their bytes, dates and times as small structs, DECIMAL as its text, strings as their stored
bytes (the backup reads with ``character_set_results = binary``), NULL as a bit in each row's bitmap (so
NULL and the empty string stay apart). The packets are kept as they arrived; the client never looks at a
value. ``schema.json`` records each table's wire types (type code and flags per column), which decoding
needs.

A restore turns each row into a SQL literal tuple (:func:`packets_to_values`, with the column decoders
of :func:`decoders`) and sends them as multi-row ``INSERT`` statements.

Tables with a one-column integer primary key are read in key ranges of about one frame each (by several
connections at once, see :mod:`.parallel`); the range adapts to the bytes each one returned. Other tables
stream through one statement, cut into frames of about 1 MiB at row boundaries.

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

MAGIC = b"DMMYPKTS1\n"  # frames of binary row packets (format 3)
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
    """``SELECT`` of the stored columns, run as a prepared statement (binary rows: every value exact)."""
    names = ",".join(quote_ident(c.name) for c in stored_columns(columns))
    return f"SELECT {names} FROM {quote_ident(database)}.{quote_ident(table)}"


def insert_prefix(table: str, columns: Sequence[Column]) -> bytes:
    names = ",".join(quote_ident(c.name) for c in stored_columns(columns))
    return f"INSERT INTO {quote_ident(table)} ({names}) VALUES ".encode()


# --------------------------------------------------------------------------- binary rows -> SQL literals

RAW, QUOTED, HEX, JSON_UTF8 = 0, 1, 2, 3  # literal kinds of length-prefixed values


def literal_kinds(columns: Sequence[Column]) -> tuple[int, ...]:
    """How each stored column's value becomes a SQL literal at restore, when it comes length-prefixed.

    RAW: DECIMAL text, as the server wrote it. QUOTED: text (its own charset's bytes; the restore session
    reads literals as binary strings, so they are never converted), ENUM/SET. HEX: binary strings, BIT
    and spatial values, as ``X'..'`` (any byte). JSON_UTF8: MySQL's native JSON, which refuses binary
    strings: a quoted ``_utf8mb4`` literal. (Integers, FLOAT/DOUBLE and temporal values come as fixed
    binary fields; see :func:`decoders`.)
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


# Decoders of binary-protocol values (wire type codes of the MySQL protocol, FIELD_TYPE in pymysql).
_STR, _INT, _FLOAT4, _FLOAT8, _DATE, _DATETIME, _TIME = range(7)
_INT_SIZES = {1: 1, 2: 2, 13: 2, 3: 4, 9: 4, 8: 8}  # TINY, SHORT, YEAR, LONG, INT24, LONGLONG
_WIRE_UNSIGNED = 32
_F4, _F8 = struct.Struct("<f"), struct.Struct("<d")


def decoders(columns: Sequence[Column], wire: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    """Per stored column ``(decoder, size or literal kind, signed)`` from its wire type and flags."""
    stored = stored_columns(columns)
    if len(stored) != len(wire):
        raise CorruptBackupError(f"{len(wire)} wire columns for {len(stored)} stored columns")
    out = []
    for kind, (code, flags) in zip(literal_kinds(stored), wire):
        if code in _INT_SIZES:
            out.append((_INT, _INT_SIZES[code], 0 if flags & _WIRE_UNSIGNED or code == 13 else 1))
        elif code == 4:
            out.append((_FLOAT4, 4, 0))
        elif code == 5:
            out.append((_FLOAT8, 8, 0))
        elif code in (10, 14):
            out.append((_DATE, 0, 0))
        elif code in (7, 12):
            out.append((_DATETIME, 0, 0))
        elif code == 11:
            out.append((_TIME, 0, 0))
        elif code == 6:  # the NULL type: only ever NULL, which the bitmap says
            out.append((_STR, RAW, 0))
        else:  # DECIMAL, strings, BLOBs, BIT, ENUM/SET, JSON, GEOMETRY: length-prefixed bytes
            out.append((_STR, kind, 0))
    return out


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


def _temporal(row: bytes, p: int, decoder: int) -> tuple[bytes, int]:
    """A DATE/DATETIME/TIMESTAMP or TIME field at ``row[p]`` (length byte first) as a quoted literal."""
    n = row[p]
    f = row[p + 1:p + 1 + n]
    if len(f) != n:
        raise IndexError
    p += 1 + n
    if decoder == _TIME:  # negative u8, days u32, hour, minute, second[, microsecond u32]
        if n == 0:
            return b"'00:00:00'", p
        neg, days, h, m, sec = struct.unpack_from("<BIBBB", f)
        text = f"{'-' if neg else ''}{days * 24 + h:02d}:{m:02d}:{sec:02d}"
    else:  # year u16, month, day[, hour, minute, second[, microsecond u32]]
        y, mo, d = struct.unpack_from("<HBB", f) if n else (0, 0, 0)
        text = f"{y:04d}-{mo:02d}-{d:02d}"
        if decoder == _DATETIME:
            h, m, sec = (f[4], f[5], f[6]) if n >= 7 else (0, 0, 0)
            text += f" {h:02d}:{m:02d}:{sec:02d}"
    if n in (11, 12):
        text += f".{int.from_bytes(f[-4:], 'little'):06d}"
    return b"'" + text.encode() + b"'", p


def packets_to_values(body: bytes, decoders: Sequence[tuple[int, int, int]], max_bytes: int,
                      label: str) -> Iterator[tuple[bytes, int]]:
    """The rows of ``body`` (binary-protocol row packets) as ``(v1,..),(..)`` VALUES text, in pieces of
    about ``max_bytes``; yields ``(values, rows)``. Every value is exact: integers in decimal, FLOAT and
    DOUBLE as the shortest text that reads back as the same number."""
    search, sub = _SPECIAL.search, _SPECIAL.sub
    f4, f8 = _F4.unpack_from, _F8.unpack_from
    from_bytes = int.from_bytes
    ncols = len(decoders)
    nullmap = (ncols + 9) // 8
    out: list[bytes] = []
    size = rows = 0
    for row, p in _payloads(body, label):
        if row[p] != 0:
            raise CorruptBackupError(f"{label}: not a binary row packet")
        bitmap = from_bytes(row[p + 1:p + 1 + nullmap], "little") >> 2
        p += 1 + nullmap
        parts: list[bytes] = []
        put = parts.append
        try:
            for decoder, arg, signed in decoders:
                if bitmap & 1:
                    put(b"NULL")
                elif decoder == _STR:
                    b = row[p]
                    if b < 251:
                        n = b
                        p += 1
                    elif b == 252:
                        n = row[p + 1] | (row[p + 2] << 8)
                        p += 3
                    elif b == 253:
                        n = row[p + 1] | (row[p + 2] << 8) | (row[p + 3] << 16)
                        p += 4
                    else:
                        n = from_bytes(row[p + 1:p + 9], "little")
                        p += 9
                    v = row[p:p + n]
                    if len(v) != n:
                        raise IndexError
                    p += n
                    if arg == RAW:
                        put(v)
                    elif arg == HEX:
                        put(b"X'" + hexlify(v) + b"'")
                    else:
                        if search(v):
                            v = sub(_escape, v)
                        put((b"'" if arg == QUOTED else b"_utf8mb4'") + v + b"'")
                elif decoder == _INT:
                    v = row[p:p + arg]
                    if len(v) != arg:
                        raise IndexError
                    put(b"%d" % from_bytes(v, "little", signed=bool(signed)))
                    p += arg
                elif decoder == _FLOAT8:
                    put(repr(f8(row, p)[0]).encode())
                    p += 8
                elif decoder == _FLOAT4:
                    put(repr(f4(row, p)[0]).encode())
                    p += 4
                else:
                    v, p = _temporal(row, p, decoder)
                    put(v)
                bitmap >>= 1
        except (IndexError, struct.error):
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
