"""The rows format: per table, frames of MySQL binary-protocol row packets, exactly as the server sent them.

The backup reads every table through a prepared statement, so the rows come in the binary protocol,
which carries every value exactly and costs the server the least (:mod:`.wire`): integers, FLOAT and
DOUBLE as their bytes, dates and times as small structs, DECIMAL as its text, strings as their stored
bytes (the backup reads with ``character_set_results = binary``), NULL as a bit in each row's bitmap (so
NULL and the empty string stay apart). The packets are kept as they arrived; the client never looks at a
value. ``schema.json`` records each table's wire types (type code and flags per column), which the
restore declares as its parameter types.

A restore sends the rows back, still in that binary form, as the parameters of a prepared multi-row
``INSERT`` (:class:`ParamBatches` cuts them into batches); no value is decoded on either side.

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

import struct
from collections.abc import Iterable, Iterator, Sequence
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


# --------------------------------------------------------------------------- binary rows -> INSERT parameters

MAX_PARAMS = 65535  # of one prepared statement (u16 in the protocol)
# Wire types whose binary value the server reads as a parameter of another type: INT24 is sent in 4
# bytes like LONG, YEAR in 2 like SHORT, NEWDATE like DATE. A length-prefixed value of a column with a
# charset (strings, ENUM/SET) or of a binary type (BINARY, BLOB, BIT, GEOMETRY) goes as a BLOB parameter:
# a binary string, which the server never converts between charsets, so a text column gets its bytes
# back as they were stored. Any other (MariaDB's INET4/INET6/UUID, MySQL's JSON, types this module does
# not know) goes as VAR_STRING: the server's own text of the value, which such a type parses back
# (INET6 would take a binary string of 16 bytes, e.g. '1:2:3:4:5:6:7:88', as its raw form).
_PARAM_TYPE = {9: 3, 13: 2, 14: 10}
_FIXED_PARAMS = frozenset({0, 1, 2, 3, 4, 5, 7, 8, 10, 11, 12, 246})  # DECIMAL, ints, floats, dates
_BLOB, _VAR_STRING, _WIRE_UNSIGNED, _PARAM_UNSIGNED = 252, 253, 32, 0x80


def param_types(wire: Sequence[Sequence[int]], columns: Sequence[Column]) -> bytes:
    """The parameter types (2 bytes each) under which a row's binary values go back to the server."""
    stored = stored_columns(columns)
    if len(stored) != len(wire):
        raise CorruptBackupError(f"{len(wire)} wire types for {len(stored)} columns")
    out = bytearray()
    for (code, flags), col in zip(wire, stored):
        code = _PARAM_TYPE.get(code, code)
        if code not in _FIXED_PARAMS:
            code = _BLOB if col.charset is not None or col.kind in ("binary", "bit") else _VAR_STRING
        out += bytes([code, _PARAM_UNSIGNED if flags & _WIRE_UNSIGNED else 0])
    return bytes(out)


def placeholders(columns: Sequence[Column]) -> bytes:
    """``(?,?,..)`` for one row; MySQL's native JSON refuses binary strings: its value is converted."""
    return b"(" + b",".join(b"CONVERT(? USING utf8mb4)" if c.data_type.lower() == "json" else b"?"
                            for c in stored_columns(columns)) + b")"


def _payloads(body: bytes, label: str) -> Iterator[tuple[bytes, int, int]]:
    """Each row's payload in a run of packets as ``(buffer, start, end)``: ``body`` itself for a row in
    one packet (no copy), or the joined payloads of a row that spans packets (16 MiB and more)."""
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
                yield body, start, pos
                break
            parts.append(body[start:pos])
            if n < 0xFFFFFF:
                row = b"".join(parts)
                yield row, 0, len(row)
                break


class ParamBatches:
    """Turns frames of binary row packets into batches of INSERT parameters: per batch the row count,
    the NULL bitmap of all its parameters and their values. No value is decoded: a row's values are
    already in parameter form; only its NULL bits move (from the row's bitmap, at offset 2, to the
    batch's, at offset 0).

    A batch ends at ``max_rows`` rows or before its values pass ``max_bytes``.
    """

    def __init__(self, ncols: int, max_rows: int, max_bytes: int, label: str) -> None:
        self.ncols, self.max_rows, self.max_bytes, self.label = ncols, max_rows, max_bytes, label
        self._nullmap = (ncols + 9) // 8
        self._mask = (1 << ncols) - 1

    def batches(self, frames: Iterable[bytes]) -> Iterator[tuple[int, bytes, bytes]]:
        ncols, nullmap, mask, label = self.ncols, self._nullmap, self._mask, self.label
        from_bytes = int.from_bytes
        values: list[bytes] = []
        nulls = size = rows = 0
        for body in frames:
            for row, p, end in _payloads(body, label):
                if end - p < 1 + nullmap or row[p] != 0:
                    raise CorruptBackupError(f"{label}: not a binary row packet")
                value = row[p + 1 + nullmap:end]
                if rows and (rows == self.max_rows or size + len(value) > self.max_bytes):
                    yield rows, nulls.to_bytes((rows * ncols + 7) // 8, "little"), b"".join(values)
                    values, nulls, size, rows = [], 0, 0, 0
                bits = (from_bytes(row[p + 1:p + 1 + nullmap], "little") >> 2) & mask
                if bits:
                    nulls |= bits << (rows * ncols)
                values.append(value)
                size += len(value)
                rows += 1
        if rows:
            yield rows, nulls.to_bytes((rows * ncols + 7) // 8, "little"), b"".join(values)


# --------------------------------------------------------------------------- framing


class FrameWriter:
    """Writes a rows artifact: one frame per run of row packets."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self.rows = 0
        out.write(MAGIC)

    def write_frame(self, body: bytes, rows: int) -> None:
        """``body``: complete row packets holding ``rows`` rows."""
        if rows:
            self._out.write(_LEN.pack(len(body)))
            self._out.write(body)
            self.rows += rows

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
