"""The cassandra-driver extension point ``rawpages.py`` builds on, checked without a cluster.

``RawPagesProtocolHandler`` is the driver's documented custom protocol handler hook
(``Session.client_protocol_handler``, a subclass of ``cassandra.protocol._ProtocolHandler`` with its own
``message_types_by_opcode``), and ``RawRowsResultMessage`` overrides ``ResultMessage.recv_results_rows``.
The driver calls that method positionally, so a changed signature would break every page read: this
fails first. The driver's range is bounded in setup.cfg (``cassandra-driver>=3.29,<3.31``); widen it
only with this file and the Cassandra tests passing against the new version.
"""

from __future__ import annotations

import inspect
import io
import struct

import cassandra
from cassandra.protocol import ResultMessage, _ProtocolHandler, read_int

from data_manager_cassandra.rawpages import RawPage, RawPagesProtocolHandler, RawRowsResultMessage


def test_the_bounded_version() -> None:
    version = tuple(int(p) for p in cassandra.__version__.split(".")[:2])
    assert (3, 29) <= version < (3, 31), f"cassandra-driver {cassandra.__version__} is outside the tested range"


def test_recv_results_rows_signature_is_ours() -> None:
    theirs = inspect.signature(ResultMessage.recv_results_rows)
    ours = inspect.signature(RawRowsResultMessage.recv_results_rows)
    assert list(theirs.parameters) == list(ours.parameters) == [
        "self", "f", "protocol_version", "user_type_map", "result_metadata", "column_encryption_policy"]


def test_what_the_override_calls() -> None:
    assert list(inspect.signature(ResultMessage.recv_results_metadata).parameters) == ["self", "f", "user_type_map"]
    assert list(inspect.signature(read_int).parameters) == ["f"]
    # The attributes it reads and sets (column_metadata, parsed_rows, ...): the driver's protocol module is
    # compiled (no source to read), so test_a_rows_body_is_kept_undecoded checks them by use.


def test_the_handler_replaces_only_the_result_message() -> None:
    assert isinstance(_ProtocolHandler.message_types_by_opcode, dict)
    assert _ProtocolHandler.message_types_by_opcode[ResultMessage.opcode] is ResultMessage
    ours = RawPagesProtocolHandler.message_types_by_opcode
    assert ours[ResultMessage.opcode] is RawRowsResultMessage
    assert {k: v for k, v in ours.items() if k != ResultMessage.opcode} == {
        k: v for k, v in _ProtocolHandler.message_types_by_opcode.items() if k != ResultMessage.opcode}
    assert callable(getattr(_ProtocolHandler, "decode_message"))


def test_a_rows_body_is_kept_undecoded() -> None:
    """Result metadata with global table spec, one int column, no paging; then 2 rows of one cell."""
    def string(s: bytes) -> bytes:
        return struct.pack(">H", len(s)) + s

    flags, columns = 0x0001, 1  # GLOBAL_TABLES_SPEC
    metadata = struct.pack(">ii", flags, columns) + string(b"ks") + string(b"t") + string(b"v") + struct.pack(">H", 0x0009)
    cells = struct.pack(">i", 4) + struct.pack(">i", 7) + struct.pack(">i", -1)  # 7, then null
    body = metadata + struct.pack(">i", 2) + cells
    msg = RawRowsResultMessage(2)  # kind ROWS
    msg.recv_results_rows(io.BytesIO(body), 4, {}, None, None)
    assert msg.parsed_rows == [RawPage(2, cells)] and msg.column_names == ["v"]
