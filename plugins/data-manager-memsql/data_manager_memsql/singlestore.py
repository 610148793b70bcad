"""SingleStore (MemSQL) specifics: detecting it, and its native ``BACKUP DATABASE ... TO S3``.

On SingleStore the portable path still works but reads at READ COMMITTED (SingleStore has no consistent
snapshot across statements). Its own ``BACKUP DATABASE`` is consistent and parallel across leaves; when
the source is configured with ``native_backup = "s3://bucket/prefix"`` and the server is SingleStore,
the backup runs it, and data-manager keeps only a small record of where the backup went.

There is no SingleStore server here: the SQL is unit-tested, not run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .rowformat import quote_ident


def memsql_version(cursor: Any) -> str | None:
    """``@@memsql_version`` on SingleStore; None on MariaDB/MySQL (where the variable is unknown)."""
    import pymysql

    try:
        cursor.execute("SELECT @@memsql_version")
        row = cursor.fetchone()
    except pymysql.err.MySQLError:  # 1193 unknown system variable
        return None
    return str(row[0]) if row and row[0] is not None else None


def sql_string(value: str) -> str:
    """A single-quoted SQL string literal (backslash and quote escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class S3Target:
    """Where native backups go: ``s3://bucket/prefix`` plus CONFIG and CREDENTIALS JSON."""

    bucket_path: str  # "bucket/prefix" (SingleStore's form, no scheme)
    config: dict[str, Any]
    credentials: dict[str, Any]

    @classmethod
    def parse(cls, uri: str, config: dict[str, Any] | None, credentials: dict[str, Any] | None) -> S3Target:
        if not uri.startswith("s3://") or len(uri) <= len("s3://"):
            raise ValueError("must look like s3://bucket/prefix")
        return cls(uri[len("s3://"):].strip("/"), dict(config or {}), dict(credentials or {}))

    def path_for(self, *parts: str) -> str:
        return "/".join([self.bucket_path, *[p.strip("/") for p in parts if p]])

    def _tail(self) -> str:
        tail = ""
        if self.config:
            tail += f" CONFIG {sql_string(json.dumps(self.config, sort_keys=True))}"
        tail += f" CREDENTIALS {sql_string(json.dumps(self.credentials, sort_keys=True))}"
        return tail


def backup_sql(database: str, target: S3Target, path: str) -> str:
    """``BACKUP DATABASE db TO S3 "bucket/path" CONFIG '{..}' CREDENTIALS '{..}'``."""
    return f"BACKUP DATABASE {quote_ident(database)} TO S3 {sql_string(path)}{target._tail()}"


def restore_sql(database: str, target: S3Target, path: str, as_name: str | None = None) -> str:
    """``RESTORE DATABASE db [AS other] FROM S3 "bucket/path" CONFIG '{..}' CREDENTIALS '{..}'``."""
    rename = f" AS {quote_ident(as_name)}" if as_name and as_name != database else ""
    return f"RESTORE DATABASE {quote_ident(database)}{rename} FROM S3 {sql_string(path)}{target._tail()}"


def redacted(sql: str, target: S3Target) -> str:
    """The statement with the credentials replaced, for logs and errors."""
    secret = sql_string(json.dumps(target.credentials, sort_keys=True))
    return sql.replace(secret, "'***'")
