"""The server fixture: ``pg_dsn`` from the shared ``tests/servers.py`` (a fresh database on the PostgreSQL of
``scripts/services``, 127.0.0.1:5432, dm/dm). Until that module exists, an equivalent stand-in that only
connects to a running server (it never starts one); outside CI it skips when the server is down.
``DM_TEST_PG_ADMIN`` points the stand-in at another server."""

from __future__ import annotations

import os
import secrets
from typing import Any

import pytest

try:
    from tests.servers import pg_dsn  # noqa: F401
except ImportError:
    ADMIN = os.environ.get("DM_TEST_PG_ADMIN", "postgresql://dm:dm@127.0.0.1:5432/postgres")

    def pytest_configure(config: Any) -> None:
        config.addinivalue_line("markers", "postgres: needs the PostgreSQL of scripts/services")

    @pytest.fixture
    def pg_dsn() -> Any:
        psycopg = pytest.importorskip("psycopg")
        from psycopg.conninfo import make_conninfo

        name = "dmtest_" + secrets.token_hex(4)
        try:
            with psycopg.connect(ADMIN, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        except psycopg.OperationalError as exc:
            if os.environ.get("CI") == "true":
                raise
            pytest.skip(f"PostgreSQL not reachable: {exc}")
        dsn = make_conninfo(ADMIN, dbname=name)
        yield dsn
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
