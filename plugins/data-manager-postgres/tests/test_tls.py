"""TLS settings of the postgres source reach libpq, psycopg and the client tools (issue 16, point 12)."""

from __future__ import annotations

import logging
import os

import pytest

from data_manager.errors import ConfigError, SourceError
from data_manager.types import Settings
from data_manager_postgres import connection
from data_manager_postgres.connection import is_local
from data_manager_postgres.source import PostgresSource


def make(**values):
    return PostgresSource("db", Settings(values, where="test.toml, dataset 'd', source 'db'", secret_keys=("password",)))


def test_tls_settings_reach_the_connection_string_and_psycopg(monkeypatch, tmp_path):
    src = make(dsn="postgresql://dm@db1.lab/exp42", sslmode="verify-full", sslrootcert=str(tmp_path / "ca dir/ca.pem"),
               sslcert="~/client.crt", sslkey=str(tmp_path / "client.key"))
    p = src.target.params
    assert p["sslmode"] == "verify-full" and p["sslrootcert"] == str(tmp_path / "ca dir/ca.pem")
    assert p["sslcert"] == os.path.expanduser("~/client.crt")
    # pg_dump, pg_restore and psql get this string (--dbname=...)
    info = src.target.conninfo()
    assert "sslmode=verify-full" in info and f"sslrootcert='{tmp_path / 'ca dir/ca.pem'}'" in info
    seen = {}

    class Stop(Exception):
        pass

    def fake_connect(**kw):
        seen.update(kw)
        raise Stop

    import psycopg

    monkeypatch.setattr(psycopg, "connect", fake_connect)
    with pytest.raises(Stop):
        connection.connect(src.target, "test")
    assert seen["sslmode"] == "verify-full" and seen["sslkey"] == str(tmp_path / "client.key")


def test_the_dsn_sslmode_is_kept_and_the_setting_wins():
    assert make(dsn="postgresql://dm@db1.lab/x?sslmode=require").target.params["sslmode"] == "require"
    assert make(dsn="host=db1.lab dbname=x sslmode=require", sslmode="verify-ca").target.params["sslmode"] == "verify-ca"
    assert make(dsn="host=db1.lab dbname=x", sslrootcert="system").target.params["sslrootcert"] == "system"


@pytest.mark.parametrize("values, key", [
    ({"dsn": "postgresql://h/db", "sslmode": "verify"}, "sslmode"),
    ({"dsn": "postgresql://h/db?sslmode=on"}, "dsn"),
    ({"dsn": "postgresql://h/db", "sslrootcert": ""}, "sslrootcert"),
])
def test_bad_sslmode_is_a_config_error(values, key):
    with pytest.raises(ConfigError) as e:
        make(**values)
    assert e.value.key == key and "\n" not in str(e.value)


def test_warns_when_a_remote_server_gets_libpq_s_silent_prefer(caplog, monkeypatch):
    monkeypatch.delenv("PGSSLMODE", raising=False)
    monkeypatch.delenv("PGHOST", raising=False)
    monkeypatch.delenv("PGHOSTADDR", raising=False)
    with caplog.at_level(logging.WARNING):
        make(dsn="postgresql://dm@db1.lab/x")
    assert "no sslmode for db1.lab:5432" in caplog.text and "verify-full" in caplog.text
    for quiet in ({"dsn": "postgresql://dm@127.0.0.1/x"}, {"dsn": "host=/var/run/postgresql dbname=x"},
                  {"dsn": "postgresql://dm@[::1]/x"}, {"dsn": "dbname=x"},
                  {"dsn": "postgresql://dm@db1.lab/x", "sslmode": "prefer"},
                  {"dsn": "postgresql://dm@db1.lab/x?sslmode=disable"}):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            make(**quiet)
        assert "no sslmode" not in caplog.text, quiet
    monkeypatch.setenv("PGSSLMODE", "require")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        make(dsn="postgresql://dm@db1.lab/x")
    assert "no sslmode" not in caplog.text


def test_is_local():
    assert is_local({"host": "localhost"}, {}) and is_local({"host": "127.0.0.2,::1"}, {}) and is_local({}, {})
    assert not is_local({"host": "127.0.0.1,db2.lab"}, {}) and not is_local({}, {"PGHOST": "db.lab"})


def test_required_tls_is_used_against_the_real_server(pg_dsn):
    """The test server runs without TLS: with sslmode = "require" libpq must refuse it, not fall back."""
    with pytest.raises(SourceError) as e:
        make(dsn=pg_dsn, sslmode="require").check()
    assert "SSL" in str(e.value) and "\n" not in str(e.value)
    make(dsn=pg_dsn, sslmode="prefer").check()  # the compatible default still connects in clear
