"""data-manager plugin: source ``postgres`` (PostgreSQL databases, through pg_dump / pg_restore).

Only registration lives here; psycopg is imported by the source when it needs it, so ``data-manager --help``
stays fast.
"""

from __future__ import annotations

from collections.abc import Callable

from data_manager import hookimpl
from data_manager.types import SourceType


@hookimpl
def register_source_types(register: Callable[[SourceType], None]) -> None:
    from .source import PostgresSource

    register(SourceType(
        "postgres",
        PostgresSource,
        "a PostgreSQL database: pg_dump snapshot streamed into the backup, restored in one transaction",
        secret_keys=("password",),
    ))
