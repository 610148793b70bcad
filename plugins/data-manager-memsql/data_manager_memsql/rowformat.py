"""The rows format: per table, framed batches of SQL value tuples that the server itself wrote.

Python's cost per row decides how fast a pure-Python client can move a table, so the server does the
encoding: for every row it computes one string ``(v1,v2,...)`` in which every value is already a SQL
literal of the column's type (:func:`row_expression`). The client never looks at a value. It joins the
rows of a fetched batch with ``,`` and writes them as one frame; a restore sends a frame back as
``INSERT INTO t (cols) VALUES <frame>`` without parsing it.

Literals per column type, chosen so the value comes back bit for bit:

* integers, DECIMAL, DOUBLE, YEAR: the server's own number text, unquoted (DECIMAL is exact; DOUBLE is
  printed with the shortest digits that read back as the same value);
* FLOAT: as DOUBLE (``CAST(f AS DOUBLE)``): MariaDB prints a FLOAT with 6 significant digits, which loses
  bits (``mysqldump`` does lose them); the float's exact double value reads back as the same float;
* BIT: its number (``b+0``);
* BINARY/VARBINARY/BLOB, spatial types, and also CHAR/VARCHAR/TEXT, ENUM/SET, MariaDB's JSON and types
  this module does not know: hex ``X'..'`` of the stored bytes. Every byte value survives, and a text
  value is never converted between charsets (the hex literal is taken as bytes of the column's charset).
  ``HEX()`` is also the cheapest string encoding the server has (``QUOTE()`` costs about twice as much);
* DATE/TIME/DATETIME/TIMESTAMP incl. zero dates: ``QUOTE()`` of the value;
* MySQL's native JSON type: ``QUOTE(CONVERT(v USING utf8mb4))`` (it refuses binary strings);
* NULL: the keyword ``NULL`` (so NULL and the empty string stay apart).

Tables with a one-column integer primary key are read in key ranges of about one frame each:
``SELECT GROUP_CONCAT(<row> SEPARATOR ','), COUNT(*) ... WHERE key BETWEEN lo AND hi``, so the server
even joins the rows and the client receives one value per ~1 MiB instead of one per row. The range
adapts to the bytes each one returned. Other tables stream row by row through an unbuffered cursor.

Artifact layout (big-endian)::

    b"DMMYROWS1\\n"
    ( u32 n > 0, n bytes: "(..),(..),..." )*     one frame per fetched batch, about 1 MiB
    u32 0, u64 rows                                end marker with the row count
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from data_manager.errors import CorruptBackupError

MAGIC = b"DMMYROWS1\n"
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


def value_expression(col: Column) -> str:
    """A SQL expression giving the column's value as a SQL literal (``NULL`` for NULL)."""
    c = quote_ident(col.name)
    kind = col.kind
    t = col.data_type.lower()
    if kind == "number":
        e = f"CAST({c} AS DOUBLE)" if t == "float" else c  # FLOAT prints with 6 digits: widen it, exactly
    elif kind == "bit":
        e = f"{c}+0"
    elif t in TEMPORAL_TYPES:  # ASCII without quotes; QUOTE gives NULL as the keyword
        return f"QUOTE({c})" if col.nullable else f"CONCAT('''',{c},'''')"
    elif t == "json":  # MySQL's native JSON accepts no binary string: a utf8mb4 literal (introducer)
        e = f"CONCAT('_utf8mb4',QUOTE(CONVERT({c} USING utf8mb4)))"
    elif kind == "binary":  # QUOTE escapes \, ', NUL and ^Z of any bytes; NULL gives the keyword NULL
        return f"QUOTE({c})"
    else:  # text as its own charset's bytes (never converted): QUOTE of the binary string
        return f"QUOTE(CAST({c} AS BINARY))"
    return f"IFNULL({e},'NULL')" if col.nullable else e


def stored_columns(columns: Sequence[Column]) -> list[Column]:
    """The columns whose values are backed up and inserted: every column but generated ones."""
    return [c for c in columns if not c.generated]


def row_expression(columns: Sequence[Column]) -> str:
    """One string per row: ``(v1,v2,...)`` of SQL literals (ASCII, but for MySQL JSON values)."""
    parts = ",',',".join(value_expression(c) for c in stored_columns(columns))
    return f"CONCAT('(',{parts},')')"


def select_rows(database: str, table: str, columns: Sequence[Column]) -> str:
    """One row string per table row (read with an unbuffered cursor)."""
    return f"SELECT {row_expression(columns)} FROM {quote_ident(database)}.{quote_ident(table)}"


def select_range(database: str, table: str, columns: Sequence[Column], key: str) -> str:
    """One frame for the rows whose integer key is in ``[%s, %s]``, joined by the server, and their count."""
    return (f"SELECT CAST(GROUP_CONCAT({row_expression(columns)} SEPARATOR ',') AS BINARY), COUNT(*) "
            f"FROM {quote_ident(database)}.{quote_ident(table)} WHERE {quote_ident(key)} BETWEEN %s AND %s")


def insert_prefix(table: str, columns: Sequence[Column]) -> bytes:
    names = ",".join(quote_ident(c.name) for c in stored_columns(columns))
    return f"INSERT INTO {quote_ident(table)} ({names}) VALUES ".encode()


# --------------------------------------------------------------------------- framing


class FrameWriter:
    """Writes the rows artifact: one frame per batch of rows."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self.rows = 0
        self.bytes = 0
        out.write(MAGIC)

    def write_batch(self, rows: Sequence[bytes] | Sequence[str]) -> None:
        if not rows:
            return
        body = b",".join(rows) if isinstance(rows[0], bytes) else ",".join(rows).encode()  # type: ignore[arg-type]
        self._out.write(_LEN.pack(len(body)))
        self._out.write(body)
        self.rows += len(rows)
        self.bytes += len(body)

    def write_frame(self, body: bytes, rows: int) -> None:
        """A frame the server already joined (``GROUP_CONCAT(... SEPARATOR ',')``)."""
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

    After the iteration, :attr:`rows` is the row count from the end marker.
    """

    def __init__(self, f: BinaryIO, label: str) -> None:
        self._f = f
        self.label = label
        self.rows: int | None = None

    def __iter__(self) -> Iterator[bytes]:
        f, label = self._f, self.label
        if _read_exact(f, len(MAGIC), label) != MAGIC:
            raise CorruptBackupError(f"{label}: not a data-manager rows artifact")
        while True:
            (n,) = _LEN.unpack(_read_exact(f, _LEN.size, label))
            if n == 0:
                break
            yield _read_exact(f, n, label)
        (self.rows,) = _COUNT.unpack(_read_exact(f, _COUNT.size, label))
        if f.read(1):
            raise CorruptBackupError(f"{label}: data after the end marker")
