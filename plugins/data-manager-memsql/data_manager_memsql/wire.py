"""Result rows as the server sent them: MySQL text-protocol row packets, read past pymysql's row decoding.

A backup never needs a value as a Python object: the text protocol already carries every value as the
server's own text (numbers, dates) or as the stored bytes (strings, with ``character_set_results =
binary``), each behind a length, with NULL as its own marker. So the rows are kept as the packets that
arrived: the client only walks the 4-byte packet headers to find the end of the result, and writes the
bytes on in large chunks. This is what makes a pure-Python client faster than ``mysqldump`` here: the
server does no more work than for ``mysqldump``'s ``SELECT *``, and the client does less.

pymysql sends the query and reads the column definitions (:meth:`pymysql.connections.Connection.query`
with ``unbuffered=True``); then this module reads the rows from the connection's buffered socket reader
itself and marks the result finished. These are the only pymysql internals used (``_rfile``,
``_result``); the integration tests run against the installed pymysql, so a change there fails the
tests, never a backup silently.

Packet layout (https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_packets.html):
``u24 length, u8 sequence, payload``; a payload of 0xFFFFFF bytes continues in the next packet. The rows
end with an EOF packet (or an OK packet with the 0xFE header when CLIENT_DEPRECATE_EOF is on): first
byte 0xFE and shorter than 0xFFFFFF, which no row packet can be. An error packet (0xFF) ends it too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

READ_SIZE = 1 << 20  # one socket read; the walk below is the only per-row work, so reads stay large
MAX_PAYLOAD = 0xFFFFFF

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


def read_raw_rows(conn: Any, sql: str, emit: Callable[[bytes, int], None]) -> int:
    """Run ``sql`` on pymysql connection ``conn``; hand its rows to ``emit(packets, rows)`` as they arrive.

    ``packets`` is a run of complete row packets (headers included) holding ``rows`` rows (a row of
    16 MiB or more spans several packets, never two calls). Returns the row count. A server error
    raises pymysql's exception for it; the connection stays usable.
    """
    import pymysql

    conn.query(sql, unbuffered=True)
    result = conn._result
    if not getattr(result, "unbuffered_active", False):  # no result set (not a SELECT)
        return 0
    rfile = conn._rfile
    total, continued, left = 0, False, b""
    in_sync = False  # whether the server has sent the whole result (else the connection must be dropped)
    try:
        while True:
            try:
                chunk = rfile.read1(READ_SIZE)
            except OSError as exc:
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
        result.unbuffered_active = False
        result.connection = None
        if not in_sync:  # stopped mid-result (an error in emit): the rest would be read as the next answer
            conn._force_close()
