"""data-manager plugin: source ``memsql`` (MemSQL / SingleStore, and MariaDB/MySQL, over the MySQL protocol).

Only registration lives here; pymysql is imported by the source when it connects, so ``data-manager --help``
stays fast.
"""

from __future__ import annotations

from collections.abc import Callable

from data_manager import hookimpl
from data_manager.types import SourceType


@hookimpl
def register_source_types(register: Callable[[SourceType], None]) -> None:
    from .source import MemsqlSource

    register(SourceType(
        "memsql",
        MemsqlSource,
        "MemSQL/SingleStore (or MariaDB/MySQL) databases: consistent snapshot, typed rows, swap-in restore",
        secret_keys=("password", "native_backup_credentials"),
    ))
