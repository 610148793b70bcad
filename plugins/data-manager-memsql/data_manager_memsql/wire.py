"""Result rows as the server sent them: MySQL binary-protocol row packets, read past pymysql.

A backup never needs a value as a Python object, so the rows are kept as the packets that arrived: the
client only walks the 4-byte packet headers to find the end of the result and writes the bytes on in
large chunks. The rows come from a server-side prepared statement (``COM_STMT_PREPARE`` /
``COM_STMT_EXECUTE``), i.e. in the *binary* protocol: integers, FLOAT and DOUBLE as their machine bytes
(exact, and the server formats nothing: measured here, 0.5 s of server CPU per 1.25M narrow rows against
0.8 s for a text ``SELECT *`` and 1.9 s when a FLOAT is cast to DOUBLE so that its text is exact), dates
and times as small structs, strings and DECIMAL as length-prefixed bytes. A restore sends them back as
they are, as the parameters of a prepared INSERT (:func:`execute_insert`).

pymysql has no prepared statements, but it does the rest: connecting, authentication, TLS, sending a
command packet (``_execute_command``) and reading one packet (``_read_packet``, which also turns an
error packet into pymysql's exception). Rows are then read from the connection's buffered socket reader
(``_rfile``), and a result left half-read drops the connection (``_force_close``). These four private
internals are all this module uses: pymysql is pinned to the tested range in setup.cfg (``<1.3``), and
``tests/test_pymysql_contract.py`` checks each of them (signatures, behaviour on hand-made packets, no
``CLIENT_DEPRECATE_EOF``), so a change there fails the tests, never a backup silently. They are the listed
exception of ``tests/unit/test_no_private_apis.py`` (issue 20's fallback; a public client speaking the
binary protocol, e.g. mysql-connector-python's C extension, is not measured yet).

Packets (https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_packets.html): ``u24
length, u8 sequence, payload``; a payload of 0xFFFFFF bytes continues in the next packet. A binary row
payload starts with 0x00, then a NULL bitmap, then the non-NULL values, encoded exactly as the
parameters of ``COM_STMT_EXECUTE`` are: a restore sends the values back as they are
(:func:`execute_insert`). The rows end with an EOF packet (first byte 0xFE and shorter than 0xFFFFFF) or
an error packet (0xFF).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

READ_SIZE = 1 << 20  # one socket read; the walk below is the only per-row work, so reads stay large
MAX_PAYLOAD = 0xFFFFFF
COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_STMT_CLOSE = 0x16, 0x17, 0x19
_LONGLONG, _UNSIGNED = 8, 0x80

_MORE, _END, _ERROR = 0, 1, 2


def walk_packets(buf: bytes, continued: bool) -> tuple[int, int, bool, int]:
    """Walk the complete packets at the start of ``buf``.

    Returns ``(end, rows, continued, status)``: ``buf[:end]`` are complete row packets holding ``rows``
    rows; ``continued`` says whether the next packet continues a row (for the next call); ``status``
    is ``_MORE`` (``buf[end:]`` is an incomplete packet, read more), or ``_END``/``_ERROR`` (the packet at
    ``end`` is the result's EOF / error packet).
    """
    pos, size, rows = 0, len(buf), 0
    while pos + 4 <= size:
        n = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
        nxt = pos + 4 + n
        if nxt > size:
            break
        if not continued:
            first = buf[pos + 4] if n else 0
            if first == 0xFE and n < MAX_PAYLOAD:
                return pos, rows, False, _END
            if first == 0xFF:
                return pos, rows, False, _ERROR
            rows += 1
        continued = n == MAX_PAYLOAD
        pos = nxt
    return pos, rows, continued, _MORE


@dataclass(frozen=True)
class Statement:
    """A prepared statement: its id on the connection, its parameter count, and per result column the
    wire type and flags (recorded in ``schema.json``: a restore declares them as its parameter types)."""

    id: int
    params: int
    columns: tuple[tuple[int, int], ...]


def prepare(conn: Any, sql: str) -> Statement:
    """``COM_STMT_PREPARE`` of ``sql`` on pymysql connection ``conn``."""
    from pymysql.protocol import FieldDescriptorPacket

    conn._execute_command(COM_STMT_PREPARE, sql.encode())
    head = conn._read_packet().get_all_data()  # 0x00, id u32, columns u16, params u16, ...
    _, stmt_id, ncols, nparams = struct.unpack_from("<BIHH", head)
    for _ in range(nparams):
        conn._read_packet()
    if nparams:
        conn._read_packet()  # EOF
    columns = []
    for _ in range(ncols):
        field = conn._read_packet(FieldDescriptorPacket)
        columns.append((field.type_code, field.flags))
    if ncols:
        conn._read_packet()  # EOF
    return Statement(stmt_id, nparams, tuple(columns))


def close(conn: Any, stmt: Statement) -> None:
    """``COM_STMT_CLOSE`` (the server sends no answer)."""
    conn._execute_command(COM_STMT_CLOSE, struct.pack("<I", stmt.id))


def _execute_packet(stmt: Statement, params: tuple[int, ...]) -> bytes:
    """COM_STMT_EXECUTE payload (after the command byte): no cursor, integer parameters as LONGLONG."""
    out = struct.pack("<IBI", stmt.id, 0, 1)
    if params:
        out += bytes((len(params) + 7) // 8) + b"\x01"  # no NULLs; types follow
        out += b"".join(bytes([_LONGLONG, _UNSIGNED if p >= 1 << 63 else 0]) for p in params)
        out += b"".join(p.to_bytes(8, "little", signed=p < 0) for p in params)
    return out


def execute_insert(conn: Any, stmt: Statement, types: bytes, nulls: bytes, values: bytes) -> tuple[int, int]:
    """Execute ``stmt`` with parameters already in binary-protocol form: ``types`` (2 bytes a
    parameter), the ``nulls`` bitmap and the concatenated ``values``. Returns the affected rows and the
    server's warning count."""
    from pymysql.protocol import OKPacketWrapper

    conn._execute_command(COM_STMT_EXECUTE, struct.pack("<IBI", stmt.id, 0, 1) + nulls + b"\x01" + types + values)
    ok = OKPacketWrapper(conn._read_packet())
    return int(ok.affected_rows), int(ok.warning_count)


def execute_rows(conn: Any, stmt: Statement, params: tuple[int, ...], emit: Callable[[bytes, int], None]) -> int:
    """Execute ``stmt`` with ``params``; hand its rows to ``emit(packets, rows)`` as they arrive.

    ``packets`` is a run of complete binary row packets (headers included) holding ``rows`` rows (a row
    of 16 MiB or more spans several packets, never two calls). Returns the row count. A server error
    raises pymysql's exception for it and leaves the connection usable; an error raised by ``emit``
    closes the connection (the rest of the result is still on its way).
    """
    import pymysql

    if len(params) != stmt.params:
        raise ValueError(f"statement takes {stmt.params} parameters, got {len(params)}")
    conn._execute_command(COM_STMT_EXECUTE, _execute_packet(stmt, params))
    first = conn._read_packet()  # column count (or an error, raised here)
    for _ in range(first.read_length_encoded_integer()):
        conn._read_packet()  # the column definitions, as at prepare time
    conn._read_packet()  # EOF
    rfile = conn._rfile
    total, continued, left = 0, False, b""
    in_sync = False  # whether the whole result has been read (else the connection must go)
    try:
        while True:
            try:
                chunk = rfile.read1(READ_SIZE)
            except OSError as exc:  # the socket only: an error of emit() (the artifact's storage) is its own
                raise pymysql.err.OperationalError(2013, f"Lost connection to server during query ({exc})") from None
            if not chunk:
                raise pymysql.err.OperationalError(2013, "Lost connection to server during query")
            buf = left + chunk if left else chunk
            end, rows, continued, status = walk_packets(buf, continued)
            if end:
                emit(buf[:end], rows)
                total += rows
            if status == _END:
                in_sync = True
                return total
            if status == _ERROR:
                in_sync = True
                n = buf[end] | (buf[end + 1] << 8) | (buf[end + 2] << 16)
                pymysql.err.raise_mysql_exception(buf[end + 4:end + 4 + n])
            left = buf[end:]
    finally:
        if not in_sync:
            conn._force_close()
