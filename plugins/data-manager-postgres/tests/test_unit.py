"""Unit tests of the postgres source that need no server: settings, DSN handling, errors, prelude."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from data_manager.errors import ConfigError, CorruptBackupError, SourceError
from data_manager.types import Settings
from data_manager_postgres.connection import explain_connect_error, parse_target
from data_manager_postgres.source import PostgresSource, _Feeder, _pattern, _table_pattern


def make(**values):
    return PostgresSource("db", Settings(values, where="test.toml, dataset 'd', source 'db'", secret_keys=("password",)))


def test_settings_validated_without_io():
    src = make(dsn="postgresql://dm:s3cret@db1.lab:5433/exp42", schemas=["a", "b"], exclude_tables="a.big",
               no_owner="true", lock_timeout="30")
    assert src.describe() == "postgresql://dm@db1.lab:5433/exp42"
    assert src.schemas == ["a", "b"] and src.exclude_tables == ["a.big"]
    assert src.no_owner is True and src.lock_timeout == 30


@pytest.mark.parametrize("values,key", [
    ({}, "dsn"),
    ({"dsn": "postgresql://h/db", "shemas": ["x"]}, "shemas"),
    ({"dsn": "host=h dbname"}, "dsn"),
    ({"dsn": "postgresql://h/db", "schemas": [""]}, "schemas"),
    ({"dsn": "postgresql://h/db", "schemas": ["pg_catalog"]}, "schemas"),
    ({"dsn": "postgresql://h/db", "lock_timeout": -1}, "lock_timeout"),
    ({"dsn": "postgresql://h/db", "no_owner": "maybe"}, "no_owner"),
])
def test_bad_settings_name_the_key(values, key):
    with pytest.raises(ConfigError) as e:
        make(**values)
    assert e.value.key == key
    assert "test.toml" in str(e.value)


def test_malformed_dsn_error_does_not_echo_the_password():
    with pytest.raises(ConfigError) as e:
        make(dsn="host=h password=hunter2 dbname")
    assert "hunter2" not in str(e.value)


def test_password_never_on_the_command_line():
    t = parse_target("postgresql://dm:s3cret@127.0.0.1:5432/exp")
    assert "s3cret" not in t.conninfo()
    assert t.env({})["PGPASSWORD"] == "s3cret"
    assert "s3cret" not in repr(t)
    t2 = parse_target("host=h user=u password=a dbname=x", password="b", dbname="y")
    assert t2.password == "b" and t2.dbname == "y" and "password" not in t2.conninfo()
    assert "dbname=y" in t2.conninfo()


def test_public_settings_hide_the_password():
    s = Settings({"dsn": "postgresql://dm:s3cret@h/db", "password": "x"}, secret_keys=("password",))
    public = s.public()
    assert public["password"] == "***" and "s3cret" not in public["dsn"]


def test_patterns_are_exact_names():
    assert _pattern('We"ird *') == '"We""ird *"'
    assert _table_pattern("s.t") == '"s"."t"'
    assert _table_pattern("My Table") == '"My Table"'
    opts = make(dsn="postgresql://h/db", schemas=["A b"], exclude_tables=["x.y"],
                exclude_table_data=["z"])._dump_options()
    assert "--strict-names" in opts and '--schema="A b"' in opts
    assert '--exclude-table="x"."y"' in opts and '--exclude-table-data="z"' in opts
    assert "--compress=0" in opts and "--format=custom" in opts


class FakeError(Exception):
    def __init__(self, text, sqlstate=None):
        super().__init__(text)
        self.sqlstate = sqlstate


@pytest.mark.parametrize("text,sqlstate,expect", [
    ('connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  password authentication '
     'failed for user "dm"', "28P01", "wrong password for user 'dm'"),
    ('connection failed: connection to server at "127.0.0.1", port 5999 failed: Connection refused\n'
     '\tIs the server running on that host and accepting TCP/IP connections?', None,
     "cannot reach PostgreSQL at 127.0.0.1:5999: Connection refused"),
    ('connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  database "nope" does not '
     'exist', "3D000", "database 'nope' does not exist"),
    ('connection failed: FATAL:  permission denied for database "exp"', "42501", "may not connect"),
])
def test_connect_errors_are_one_clear_line(text, sqlstate, expect):
    port = "5999" if "5999" in text else "5432"
    t = parse_target(f"postgresql://dm:pw@127.0.0.1:{port}/nope")
    err = explain_connect_error(FakeError(text, sqlstate), t, "source 'db'")
    assert isinstance(err, SourceError)
    assert expect in str(err) and "\n" not in str(err) and str(err).startswith("source 'db': ")


def test_prelude_whole_database_and_schemas():
    whole = make(dsn="postgresql://h/db").prelude({"schemas": []})
    assert "DROP SCHEMA %I CASCADE" in whole and "lo_unlink" in whole and "pg_identify_object" in whole
    narrowed = make(dsn="postgresql://h/db").prelude({"schemas": ["exp's"]})
    assert "'exp''s'" in narrowed and "lo_unlink" not in narrowed and "pg_identify_object" not in narrowed


def _fake_tool(tmp_path: Path, name: str, version: str) -> None:
    p = tmp_path / name
    p.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR)


def test_old_pg_dump_gives_one_clear_error(tmp_path):
    _fake_tool(tmp_path, "pg_dump", "12.3")
    src = make(dsn="postgresql://h/db", bin_dir=str(tmp_path))
    with pytest.raises(SourceError) as e:
        src._dump_tool({"server_version_num": 150004, "server_version": "15.4"})
    assert "pg_dump 12.3" in str(e.value) and "version 15 or newer" in str(e.value)


def test_missing_tool_in_bin_dir(tmp_path):
    src = make(dsn="postgresql://h/db", bin_dir=str(tmp_path))
    with pytest.raises(SourceError, match="pg_dump not found in bin_dir"):
        src._dump_tool({"server_version_num": 150004, "server_version": "15.4"})


class FakeArtifacts:
    def __init__(self, data: bytes, corrupt: bool):
        self.data, self.corrupt = data, corrupt

    def open(self, name):
        outer = self

        class Reader(io.RawIOBase):
            pos = 0

            def readable(self):
                return True

            def readinto(self, buf):
                n = min(len(buf), len(outer.data) - self.pos)
                if n == 0:
                    if outer.corrupt:
                        raise CorruptBackupError("BLAKE3 mismatch")
                    return 0
                buf[:n] = outer.data[self.pos:self.pos + n]
                self.pos += n
                return n

        return io.BufferedReader(Reader())


@pytest.mark.parametrize("corrupt", [False, True])
def test_feeder_holds_back_the_end_until_verified(corrupt):
    data = os.urandom(3 * (1 << 20) + 123)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    feeder = _Feeder(FakeArtifacts(data, corrupt), "x", proc.stdin)
    out = proc.stdout.read()
    feeder.join()
    proc.wait()
    if corrupt:
        assert isinstance(feeder.error, CorruptBackupError) and not feeder.verified
        assert len(out) < len(data) and data.startswith(out)  # the last chunk never went out
    else:
        assert feeder.error is None and feeder.verified and out == data
