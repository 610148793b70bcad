"""The pymysql internals ``wire.py`` uses, checked without a server: any change of them fails here, loudly.

pymysql has no public way to read result packets without decoding them, nor prepared statements, so
``wire.py`` reads past it (issue 20: the listed exception of tests/unit/test_no_private_apis.py). Its
range is pinned in setup.cfg (``PyMySQL>=1.1,<1.3``); widening the pin means running this file and the
MariaDB tests against the new version. What is relied on:

* ``Connection._execute_command(command, payload)`` writes one command packet (sequence 0) to ``_sock``;
* ``Connection._read_packet(packet_type=MysqlPacket)`` reads one packet from ``_rfile``, checks its
  sequence number against ``_next_seq_id``, and raises pymysql's exception for an error packet;
* ``Connection._rfile`` is the socket's buffered reader (``read1``), read by ``wire.execute_rows``;
* ``Connection._force_close()`` drops the connection (a result left half-read);
* pymysql never asks for ``CLIENT_DEPRECATE_EOF``: the column definitions and the rows end with an EOF
  packet, which ``wire.walk_packets`` and ``wire.prepare`` expect.
"""

from __future__ import annotations

import inspect
import io
import struct
from typing import Any

import pymysql
import pytest
from pymysql.constants import CLIENT
from pymysql.protocol import FieldDescriptorPacket, MysqlPacket, OKPacketWrapper

from data_manager_memsql import wire


def _packet(seq: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


class _Sock:
    def __init__(self) -> None:
        self.sent = bytearray()

    def settimeout(self, timeout: Any) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        pass


def _connection(answer: bytes) -> tuple[Any, _Sock]:
    conn = pymysql.connections.Connection(defer_connect=True)
    sock = _Sock()
    conn._sock = sock
    conn._rfile = io.BufferedReader(io.BytesIO(answer))  # what sock.makefile("rb") is: read1 included
    conn._next_seq_id = 0
    conn._current_timeout = None  # what connect() leaves in pymysql 1.2 (no such attribute in 1.1): scaffolding
    return conn, sock


def test_the_pinned_version() -> None:
    version = tuple(int(p) for p in pymysql.VERSION[:2])
    assert (1, 1) <= version < (1, 3), f"pymysql {pymysql.__version__} is outside the range wire.py was tested with"


def test_signatures() -> None:
    C = pymysql.connections.Connection
    assert list(inspect.signature(C._execute_command).parameters) == ["self", "command", "sql"]
    read = inspect.signature(C._read_packet).parameters
    assert list(read) == ["self", "packet_type"] and read["packet_type"].default is MysqlPacket
    assert list(inspect.signature(C._force_close).parameters) == ["self"]
    for method in ("get_all_data", "read_length_encoded_integer"):
        assert callable(getattr(MysqlPacket, method))
    descriptor = inspect.getsource(FieldDescriptorPacket)
    assert "self.type_code" in descriptor and "self.flags" in descriptor
    assert callable(pymysql.err.raise_mysql_exception)


def test_no_deprecate_eof() -> None:
    conn = pymysql.connections.Connection(defer_connect=True)
    assert not conn.client_flag & CLIENT.DEPRECATE_EOF
    assert not CLIENT.CAPABILITIES & CLIENT.DEPRECATE_EOF


def test_the_reader_is_the_sockets_buffered_file() -> None:
    source = inspect.getsource(pymysql.connections.Connection)
    assert 'self._rfile = sock.makefile("rb")' in source or "self._rfile = self._sock.makefile(\"rb\")" in source


def test_execute_command_writes_one_packet() -> None:
    conn, sock = _connection(b"")
    conn._execute_command(wire.COM_STMT_CLOSE, struct.pack("<I", 7))
    assert bytes(sock.sent) == _packet(0, bytes([wire.COM_STMT_CLOSE]) + struct.pack("<I", 7))
    assert conn._next_seq_id == 1


def test_read_packet_reads_one_and_raises_for_an_error() -> None:
    ok = b"\x00\x01\x00\x00\x00\x00\x00"  # OK: 1 affected row, no warnings
    conn, _ = _connection(_packet(1, ok))
    conn._next_seq_id = 1
    packet = conn._read_packet()
    assert packet.get_all_data() == ok and OKPacketWrapper(packet).affected_rows == 1

    error = b"\xff" + struct.pack("<H", 1146) + b"#42S02" + b"Table 'x.y' doesn't exist"
    conn, _ = _connection(_packet(1, error))
    conn._next_seq_id = 1
    with pytest.raises(pymysql.err.ProgrammingError, match="doesn't exist"):
        conn._read_packet()


def test_packets_out_of_sequence_are_refused() -> None:
    conn, _ = _connection(_packet(5, b"\x00"))
    conn._next_seq_id = 1
    with pytest.raises(pymysql.err.InternalError):
        conn._read_packet()


def test_rows_read_past_pymysql_from_its_reader() -> None:
    """execute_rows: the column count and definitions through _read_packet, then rows from _rfile.read1."""
    column = _packet(2, b"\x03def\x00\x00\x00\x01a\x00\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00")
    rows = _packet(4, b"\x00\x00" + struct.pack("<i", 7)) + _packet(5, b"\x00\x00" + struct.pack("<i", 8))
    answer = _packet(1, b"\x01") + column + _packet(3, b"\xfe\x00\x00\x02\x00") + rows + _packet(6, b"\xfe\x00\x00\x02\x00")
    conn, sock = _connection(answer)
    got: list[tuple[bytes, int]] = []
    assert wire.execute_rows(conn, wire.Statement(1, 0, ((3, 0),)), (), lambda b, n: got.append((b, n))) == 2
    assert b"".join(b for b, _ in got) == rows and sum(n for _, n in got) == 2
    assert sock.sent[4] == wire.COM_STMT_EXECUTE


def test_force_close_drops_the_connection() -> None:
    conn, _ = _connection(b"")
    conn._force_close()
    assert conn._sock is None and conn._rfile is None
