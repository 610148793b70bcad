"""A protocol handler that keeps a page of rows as the bytes the server sent, undecoded.

The driver decodes every cell of a RESULT message into Python values; for a backup that is both slow and
a source of inexactness. This handler reads the result metadata (column specs, paging state) as usual
and keeps the rest of the message body, the rows, as one ``bytes``: ``rows x columns`` cells, each
``[int32 length][bytes]``. A session with ``client_protocol_handler = RawPagesProtocolHandler`` returns,
for a SELECT run with ``tuple_factory``, ``current_rows == [RawPage(...)]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from cassandra.protocol import ResultMessage, _ProtocolHandler, read_int


@dataclass(frozen=True)
class RawPage:
    rows: int
    cells: bytes


class RawRowsResultMessage(ResultMessage):
    def recv_results_rows(self, f, protocol_version, user_type_map, result_metadata, column_encryption_policy):  # type: ignore[override]
        self.recv_results_metadata(f, user_type_map)
        column_metadata = self.column_metadata or result_metadata or []
        self.column_names = [c[2] for c in column_metadata]
        self.column_types = [c[3] for c in column_metadata]
        rows = read_int(f)
        self.parsed_rows = [RawPage(rows, f.read())]


class RawPagesProtocolHandler(_ProtocolHandler):
    message_types_by_opcode = {**_ProtocolHandler.message_types_by_opcode,
                               RawRowsResultMessage.opcode: RawRowsResultMessage}
