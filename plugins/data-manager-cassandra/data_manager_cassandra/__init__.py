"""data-manager plugin: source ``cassandra`` (Apache Cassandra keyspaces, schema and rows).

Only registration lives here; cassandra-driver is imported by the source when it connects, so
``data-manager --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable

from data_manager import hookimpl
from data_manager.types import SourceType


@hookimpl
def register_source_types(register: Callable[[SourceType], None]) -> None:
    from .source import CassandraSource

    register(SourceType(
        "cassandra",
        CassandraSource,
        "Cassandra keyspaces: schema as CQL, rows read by token range in the protocol's own encoding",
        secret_keys=("password",),
    ))
