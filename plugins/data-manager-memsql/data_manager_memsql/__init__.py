"""data-manager plugin: source ``mysql`` (alias ``memsql``): MariaDB / MySQL, and MemSQL / SingleStore, over the
MySQL protocol.

The type is named for the protocol it speaks; ``memsql``, its first name, stays an alias so existing configs
and backups keep working (a config naming it is recorded as ``mysql``). The tests run against MariaDB only:
what was and was not run against SingleStore is in docs/sources/memsql.md.

Only registration lives here; pymysql is imported by the source when it connects, so ``data-manager --help``
stays fast.
"""

from __future__ import annotations

from collections.abc import Callable

from data_manager import hookimpl
from data_manager.types import SourceType


@hookimpl
def register_source_types(register: Callable[..., None]) -> None:
    from .source import MemsqlSource

    register(
        SourceType(
            "mysql",
            MemsqlSource,
            "MariaDB/MySQL databases (tested on MariaDB; MemSQL/SingleStore untested): consistent snapshot, "
            "typed rows, swap-in restore",
            secret_keys=("password", "native_backup_credentials"),
        ),
        aliases=("memsql",),
    )
