"""A backup is an attacker's input (issue 16, point 9), and TLS to the cluster (point 12).

The crafted-backup restores run against the real Cassandra (fixture ``cassandra_keyspace``): the backup's
metadata is edited in the storage (``backup.json`` and ``source.json``), and the restore must end in one
CorruptBackupError line (exit 4) before the keyspace was dropped or anything created.
"""

from __future__ import annotations

import copy
import json
import secrets
import ssl
from pathlib import Path
from typing import Any, Callable

import pytest

from data_manager.api import DataManager
from data_manager.errors import ConfigError, CorruptBackupError, ExitCode
from data_manager.types import Settings
from data_manager_cassandra import connection as connection_module
from data_manager_cassandra.schema import check_header, check_keyspace, parse_replication, replication_cql
from data_manager_cassandra.source import CassandraSource

PH = "dmks_0123456789abcdef"
TABLE_CQL = f"CREATE TABLE {PH}.t (\n    k int PRIMARY KEY,\n    v text\n) WITH comment = 'a; b'"


def make(**values: Any) -> CassandraSource:
    return CassandraSource("db", Settings({"keyspace": "exp", **values}, where="test.toml, source db",
                                          secret_keys=("password",)))


# --------------------------------------------------------------------------- replication, as data


@pytest.mark.parametrize("text, options", [
    ("{'class': 'SimpleStrategy', 'replication_factor': '1'}", {"class": "SimpleStrategy", "replication_factor": "1"}),
    ("{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'eu-west.2': '2/1'}",
     {"class": "NetworkTopologyStrategy", "dc1": "3", "eu-west.2": "2/1"}),
    ("{'class':'org.apache.cassandra.locator.LocalStrategy'}", {"class": "org.apache.cassandra.locator.LocalStrategy"}),
    ({"class": "EverywhereStrategy"}, {"class": "EverywhereStrategy"}),  # the driver's form for unknown classes
])
def test_genuine_replications_parse(text, options):
    assert parse_replication(text) == options
    assert parse_replication(replication_cql(options)) == options


@pytest.mark.parametrize("text, needle", [
    ("{'class': 'SimpleStrategy', 'replication_factor': '1'} AND durable_writes = false", "text after the map"),
    ("{'class': 'SimpleStrategy', 'replication_factor': '1'}; DROP KEYSPACE x", "text after the map"),
    ("{'class': 'SimpleStrategy\\', 'replication_factor': '1'}", "class"),
    ("{'class': 'Simple Strategy'}", "class"),
    ("{'class': 'SimpleStrategy', 'replication_factor': 'x'}", "replication factor"),
    ("{'class': 'NetworkTopologyStrategy', 'dc''1': '3'}", "not a map"),
    ("{'replication_factor': '1'}", "no 'class'"),
    ("{'class': 'SimpleStrategy', 'class': 'SimpleStrategy'}", "twice"),
    ({"class": "SimpleStrategy", "replication_factor": ["1"]}, "not a name and a value"),
    (3, "not a map"),
])
def test_crafted_replications_are_refused(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_replication(text)


def test_configured_replication_is_checked_too():
    assert make(replication="{'class': 'NetworkTopologyStrategy', 'dc1': 3}").replication == \
        {"class": "NetworkTopologyStrategy", "dc1": "3"}
    with pytest.raises(ConfigError) as e:
        make(replication="{'class': 'SimpleStrategy', 'replication_factor': 1} AND durable_writes = false")
    assert e.value.key == "replication"


# --------------------------------------------------------------------------- schema objects and headers


def keyspace(**over: Any) -> dict[str, Any]:
    ks = {"name": "exp", "whole": True, "placeholder": PH, "durable_writes": True,
          "replication": "{'class': 'SimpleStrategy', 'replication_factor': '1'}",
          "objects": [{"kind": "type", "name": "Addr", "table": None, "cql": f'CREATE TYPE {PH}."Addr" (\n    a text\n)'},
                      {"kind": "table", "name": "t", "table": "t", "cql": TABLE_CQL},
                      {"kind": "index", "name": "t_v", "table": "t", "cql": f"CREATE INDEX t_v ON {PH}.t (v)"},
                      {"kind": "view", "name": "by_v", "table": "t",
                       "cql": f"CREATE MATERIALIZED VIEW {PH}.by_v AS\n    SELECT * FROM {PH}.t WHERE v IS NOT NULL"},
                      {"kind": "function", "name": "f", "table": None,
                       "cql": f"CREATE FUNCTION {PH}.f(x int)\n    RETURNS NULL ON NULL INPUT RETURNS int LANGUAGE java AS $$ return x; $$"}],
          "tables": [{"name": "t", "artifact": "rows/exp/t.rows", "rows": 1, "counter": False}]}
    ks.update(over)
    return ks


def test_a_genuine_keyspace_passes():
    assert check_keyspace(keyspace()) == {"class": "SimpleStrategy", "replication_factor": "1"}


@pytest.mark.parametrize("obj, needle", [
    ({"kind": "table", "name": "t", "table": "t", "cql": "DROP KEYSPACE production"}, "does not create that table"),
    ({"kind": "table", "name": "t", "table": "t", "cql": "CREATE TABLE production.t (k int PRIMARY KEY)"}, "does not create"),
    ({"kind": "table", "name": "t", "table": "t", "cql": f"CREATE TABLE {PH}.u (k int PRIMARY KEY)"}, "does not create"),
    ({"kind": "table", "name": "t", "table": "t", "cql": TABLE_CQL + "; DROP KEYSPACE production"}, "not one statement"),
    ({"kind": "index", "name": "i", "table": "t", "cql": f"CREATE INDEX i ON production.t (v)"}, "does not create"),
    ({"kind": "type", "name": "a", "table": None, "cql": "CREATE ROLE evil WITH SUPERUSER = true"}, "does not create"),
    ({"kind": "role", "name": "r", "table": None, "cql": "CREATE ROLE r"}, "unknown kind"),
    ({"kind": "type", "name": "a", "table": "t", "cql": f"CREATE TYPE {PH}.a (x int)"}, "belongs to no table"),
    ({"kind": "table", "name": "t", "table": "t", "cql": None}, "does not create"),
])
def test_crafted_objects_are_refused(obj, needle):
    with pytest.raises(ValueError, match=needle):
        check_keyspace(keyspace(objects=[obj]))


@pytest.mark.parametrize("over, needle", [
    ({"placeholder": "production"}, "placeholder"),
    ({"placeholder": "dmks_0123456789abcdef'"}, "placeholder"),
    ({"durable_writes": "false; DROP"}, "durable_writes"),
    ({"tables": [{"name": "other", "artifact": "rows/exp/t.rows", "rows": 1}]}, "does not create"),
    ({"tables": [{"name": "t", "artifact": "rows/exp/t.rows", "rows": "1"}]}, "row count"),
    ({"replication": "{'class': 'SimpleStrategy'} AND durable_writes = false"}, "replication"),
])
def test_crafted_keyspace_values_are_refused(over, needle):
    with pytest.raises(ValueError, match=needle):
        check_keyspace(keyspace(**over))


def header(**over: Any) -> dict[str, Any]:
    h = {"format": 1, "keyspace": "exp", "table": "t", "counter": False,
         "columns": [{"name": "k", "type": "int", "kind": "partition_key", "multicell": False},
                     {"name": "v", "type": "text", "kind": "regular", "multicell": False}],
         "select": ["k", "v", "WRITETIME(v)", "TTL(v)"], "timed": [[1, 2, 3, False]]}
    h.update(over)
    return h


@pytest.mark.parametrize("over, needle", [
    ({"table": "other"}, "not of 't'"),
    ({"timed": [[1, 2, 9, False]]}, "timed entry"),
    ({"timed": [[0, 2, 3, False]]}, "timed entry"),
    ({"columns": [{"name": "k", "type": "int", "kind": "weird", "multicell": False}]}, "column"),
    ({"select": ["k"]}, "fewer cells"),
])
def test_crafted_headers_are_refused(over, needle):
    check_header(header(), "t")
    with pytest.raises(ValueError, match=needle):
        check_header(header(**over), "t")


# --------------------------------------------------------------------------- crafted backups, real server


def _cql(k: Any, statement: str) -> list[Any]:
    return list(k.session.execute(statement, timeout=120))


def _manager(tmp_path: Path, k: Any) -> DataManager:
    return DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "datasets": {"d": {"storage": "local", "sources": [{
            "name": "db", "type": "cassandra", "contact_points": [k.host], "port": int(k.port),
            "username": k.user, "password": k.password, "keyspace": k.keyspace,
            "consistency": "ONE", "write_consistency": "ONE"}]}},
    })


def _tamper(tmp_path: Path, craft: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``craft`` to the backed-up keyspace in every metadata file of the backup."""
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "placeholder" in node and "objects" in node:
                craft(node)
                return
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    files = [p for p in (tmp_path / "backups").rglob("*.json")]
    assert files
    for path in files:
        doc = json.loads(path.read_text())
        before = copy.deepcopy(doc)
        walk(doc)
        if doc != before:
            path.write_text(json.dumps(doc))


def _victim_cql(ks: str) -> Callable[[dict[str, Any]], None]:
    def craft(node: dict[str, Any]) -> None:
        node["objects"][0]["cql"] = f"DROP KEYSPACE {ks}"
    return craft


CRAFTED: list[tuple[str, Callable[[str], Callable[[dict[str, Any]], None]]]] = [
    ("replication", lambda victim: lambda n: n.update(
        replication="{'class': 'SimpleStrategy', 'replication_factor': '1'} AND durable_writes = false")),
    ("object cql", _victim_cql),
    ("other keyspace", lambda victim: lambda n: n["objects"][0].update(
        cql=n["objects"][0]["cql"].replace(n["placeholder"] + ".", victim + ".", 1))),
]


@pytest.mark.parametrize("what, craft", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_a_crafted_backup_changes_nothing(cassandra_keyspace, tmp_path, what, craft):
    k = cassandra_keyspace
    ks = k.keyspace
    _cql(k, f"CREATE TABLE {ks}.t (k int PRIMARY KEY, v text)")
    _cql(k, f"INSERT INTO {ks}.t (k, v) VALUES (1, 'kept')")
    dm = _manager(tmp_path, k)
    dm.backup("d")
    victim = f"dmt_victim_{secrets.token_hex(4)}"
    _cql(k, f"CREATE KEYSPACE {victim} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    try:
        _cql(k, f"INSERT INTO {ks}.t (k, v) VALUES (2, 'added after')")
        _tamper(tmp_path, craft(victim))
        with pytest.raises(CorruptBackupError) as e:
            dm.restore("d", "latest")
        text = str(e.value)
        assert "\n" not in text and "corrupt or tampered backup" in text and e.value.exit_code == ExitCode.CORRUPT
        assert sorted(_cql(k, f"SELECT k, v FROM {ks}.t")) == [(1, "kept"), (2, "added after")]
        assert _cql(k, f"SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = '{victim}'")
        assert not _cql(k, f"SELECT table_name FROM system_schema.tables WHERE keyspace_name = '{victim}'")
        durable = _cql(k, f"SELECT durable_writes FROM system_schema.keyspaces WHERE keyspace_name = '{ks}'")
        assert durable[0][0] is True
    finally:
        _cql(k, f"DROP KEYSPACE IF EXISTS {victim}")


# --------------------------------------------------------------------------- TLS


@pytest.mark.parametrize("values, key", [
    ({"tls_ca_file": "/ca.pem"}, "tls_ca_file"),
    ({"tls": True, "tls_key_file": "/k.pem"}, "tls_key_file"),
    ({"tls": True, "tls_verify": False, "tls_check_hostname": True}, "tls_check_hostname"),
    ({"tls": True, "tls_ca_file": "/nonexistent/ca.pem"}, "tls_ca_file"),
])
def test_tls_settings_errors_name_the_key(values, key):
    with pytest.raises(ConfigError) as e:
        make(**values)
    assert e.value.key == key and "\n" not in str(e.value)


def test_tls_context_reaches_the_cluster(monkeypatch):
    import cassandra.cluster

    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def fake_cluster(*args: Any, **kw: Any) -> Any:
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(cassandra.cluster, "Cluster", fake_cluster)
    ca = Path(ssl.get_default_verify_paths().cafile or "")
    values = {"tls": True, **({"tls_ca_file": str(ca)} if ca.is_file() else {})}
    with pytest.raises(Stop):
        with connection_module.connect(make(**values).conn):
            pass
    ctx = seen["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    with pytest.raises(Stop):
        with connection_module.connect(make(tls=True, tls_check_hostname=False).conn):
            pass
    assert seen["ssl_context"].verify_mode == ssl.CERT_REQUIRED and not seen["ssl_context"].check_hostname
    with pytest.raises(Stop):
        with connection_module.connect(make(tls=True, tls_verify=False).conn):
            pass
    assert seen["ssl_context"].verify_mode == ssl.CERT_NONE
    with pytest.raises(Stop):
        with connection_module.connect(make().conn):
            pass
    assert seen["ssl_context"] is None


def test_a_password_in_clear_to_another_host_is_warned_about(caplog):
    with caplog.at_level("WARNING"):
        make(contact_points=["cass1.lab"], username="u", password="p")
    assert "password goes to cass1.lab in clear text" in caplog.text and "p" not in caplog.text.split("text")[-1]
    caplog.clear()
    with caplog.at_level("WARNING"):
        make(contact_points=["127.0.0.1"], username="u", password="p")
        make(contact_points=["cass1.lab"], username="u", password="p", tls=True, tls_verify=False)
    assert "clear text" not in caplog.text


def test_tls_against_the_test_cluster_without_tls_is_one_line(cassandra_keyspace):
    """The test node has no TLS on its native port: with tls = true the handshake fails, no clear-text fallback."""
    from data_manager.errors import SourceError

    k = cassandra_keyspace
    src = make(keyspace=k.keyspace, contact_points=[k.host], port=int(k.port), username=k.user, password=k.password,
               tls=True, tls_verify=False, connect_timeout=5)
    with pytest.raises(SourceError) as e:
        src.check()
    assert "cannot connect to Cassandra" in str(e.value) and "\n" not in str(e.value)
