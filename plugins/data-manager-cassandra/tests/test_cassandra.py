"""Round trips through the core API against the real Cassandra 5 (fixture ``cassandra_keyspace``)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address

import pytest

from data_manager.api import DataManager
from data_manager.errors import CorruptBackupError, SourceError

pytest.importorskip("cassandra")
pytestmark = pytest.mark.cassandra

from cassandra.util import Date, Duration, Time  # noqa: E402

from data_manager_cassandra.rawpages import RawPagesProtocolHandler  # noqa: E402

# The 1M-row partition: ~2.5 minutes on the shared 2-core test machine (158 s at load average
# 5-7), most of the suite's time but well inside CI's budget. DM_CASSANDRA_WIDE_ROWS=20000 for a quick run.
WIDE_ROWS = int(os.environ.get("DM_CASSANDRA_WIDE_ROWS", "1000000"))


@pytest.fixture
def cass(cassandra_keyspace):
    """Connection facts, the fixture's fresh keyspace and session, and a way to get more keyspaces."""
    k = cassandra_keyspace
    session = k.session
    c = {"host": k.host, "port": int(k.port), "username": k.user, "password": k.password,
         "keyspace": k.keyspace, "session": session}
    made = []

    def new_keyspace(prefix="dmt"):
        name = f"{prefix}_{secrets.token_hex(4)}"
        made.append(name)
        return name

    c["new_keyspace"] = new_keyspace
    yield c
    for name in made:
        session.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=120)


def source(c, **extra):
    s = {"name": "db", "type": "cassandra", "contact_points": [c["host"]], "port": c["port"],
         "username": c["username"], "password": c["password"], "keyspace": c["keyspace"],
         "consistency": "ONE", "write_consistency": "ONE", **extra}
    if "keyspaces" in extra:
        s.pop("keyspace")
    return s


def manager(tmp_path, c, **extra):
    return DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "datasets": {"d": {"storage": "local", "sources": [source(c, **extra)]}},
    })


@contextmanager
def own_session(c, raw=False):
    """A session of a cluster of our own (UDT classes registered on it die with it)."""
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import RoundRobinPolicy
    from cassandra.query import tuple_factory

    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy(), row_factory=tuple_factory, request_timeout=120)
    cluster = Cluster([c["host"]], port=c["port"], auth_provider=PlainTextAuthProvider(c["username"], c["password"]),
                      execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    try:
        session = cluster.connect()
        if raw:
            session.client_protocol_handler = RawPagesProtocolHandler
        yield session
    finally:
        cluster.shutdown()


def raw_table(c, ks, table, columns="*", session=None):
    """Every cell of a table as the server encodes it, in token and clustering order: the exact content."""
    if session is None:
        with own_session(c, raw=True) as session:
            return raw_table(c, ks, table, columns, session)
    out, rows = [], 0
    result = session.execute(f"SELECT {columns} FROM {ks}.{table}")
    while True:
        for page in result.current_rows:
            out.append(page.cells)
            rows += page.rows
        if not result.has_more_pages:
            break
        result = session.execute(f"SELECT {columns} FROM {ks}.{table}", paging_state=result.paging_state)
    return rows, b"".join(out)


def cql(c, statement, params=None):
    return c["session"].execute(statement, params, timeout=120)


ALL_TYPES = """
CREATE TYPE {ks}.addr (street text, "Zip Code" int, tags frozen<set<text>>);
CREATE TYPE {ks}.wrapper (a frozen<addr>, n varint, d duration);
CREATE TABLE {ks}."AllTypes" (
    id int, ck timeuuid, "Mixed Case" text, s text static,
    a ascii, b bigint, bl blob, bo boolean, d date, dc decimal, db double, du duration, f float,
    i inet, it int, si smallint, t text, tm time, ts timestamp, tu timeuuid, ti tinyint, u uuid,
    vc varchar, vi varint,
    l list<int>, st set<text>, m map<text, frozen<list<int>>>, fl frozen<list<text>>,
    fs frozen<set<int>>, fm frozen<map<int, text>>, tp tuple<int, text, frozen<list<double>>>,
    ud addr, fud frozen<wrapper>, v vector<float, 3>,
    PRIMARY KEY ((id), ck)
) WITH CLUSTERING ORDER BY (ck DESC) AND comment = 'every type' AND default_time_to_live = 0;
CREATE INDEX alltypes_by_t ON {ks}."AllTypes" (t);
CREATE TABLE {ks}.empty (k text PRIMARY KEY, v int);
CREATE TABLE {ks}.counts (k text, c int, hits counter, misses counter, PRIMARY KEY (k, c));
CREATE TABLE {ks}.expiring (k int PRIMARY KEY, v text) WITH default_time_to_live = 3600;
CREATE TABLE {ks}."CompositeKey" ("Part One" int, "part_two" text, c1 int, c2 text, v blob,
    PRIMARY KEY (("Part One", part_two), c1, c2)) WITH CLUSTERING ORDER BY (c1 ASC, c2 DESC);
CREATE MATERIALIZED VIEW {ks}.by_c1 AS SELECT * FROM {ks}."CompositeKey"
    WHERE c1 IS NOT NULL AND "Part One" IS NOT NULL AND part_two IS NOT NULL AND c2 IS NOT NULL
    PRIMARY KEY (c1, "Part One", part_two, c2);
"""


def create_schema(c, ks):
    for stmt in ALL_TYPES.format(ks=ks).split(";\n"):
        if stmt.strip():
            cql(c, stmt)


def fill(c, ks):
    with own_session(c) as session:
        _fill(c, ks, session)


def _fill(c, ks, session):
    ins = session.prepare(
        f'INSERT INTO {ks}."AllTypes" (id, ck, "Mixed Case", s, a, b, bl, bo, d, dc, db, du, f, i, it, si, t, tm, ts,'
        ' tu, ti, u, vc, vi, l, st, m, fl, fs, fm, tp, ud, fud, v) VALUES'
        ' (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)'
        ' USING TIMESTAMP ?')
    class Addr:
        def __init__(self, street, zip_code, tags):
            self.street, self.tags = street, tags
            setattr(self, "Zip Code", zip_code)

    class Wrapper:
        def __init__(self, a, n, d):
            self.a, self.n, self.d = a, n, d

    session.cluster.register_user_type(ks, "addr", Addr)
    session.cluster.register_user_type(ks, "wrapper", Wrapper)
    for i in range(40):
        ck = uuid.uuid1()
        full = i % 4 != 3
        session.execute(ins, (
            i % 7, ck, f"mixed {i} ünï", f"static of {i % 7}" if i % 2 else None,
            "ascii", -(2**63) + i, os.urandom(i * 3), i % 2 == 0, Date(i * 1000 - 40000),
            Decimal(f"-{i}1234567890123456789.000000000000000000{i}"), 1 / (i + 1) if i else float("-inf"),
            Duration(i, i * 2, 123456789012 * i) if i % 2 else Duration(-i, -2 * i, -5), 3.4028234e38 if i == 1 else i / 7, (IPv6Address(f"2001:db8::{i}") if i % 2 else IPv4Address(f"10.0.0.{i}")),
            -(2**31) + i, -(2**15) + i, "" if i == 5 else f"text {i} \x00 \U0001f600", Time(i * 10**9 + 123),
            1_600_000_000_123 + i, uuid.uuid1(), -128 + i, uuid.uuid4(), "varchar", 2**200 * (-1) ** i + i,
            [i, i, -i] if full else None, {f"s{i}", ""} if full else None, {"k": [1, 2, i]} if full else None,
            ["a", "a"] if full else None, set() if i == 2 else {1, 2}, {i: "x"}, (i, None, [0.5, float("inf")]),
            Addr("main st", i, {"t"}) if full else None,
            Wrapper(Addr(None, None, None), -(10**30), Duration(0, 0, 1)), [0.5, -1.25, float(i)],
            1_700_000_000_000_000 + i * 1000,
        ))
    # A row with only its primary key; a row with different write times per column; TTLs.
    cql(c, f'INSERT INTO {ks}."AllTypes" (id, ck) VALUES (100, now())')
    cql(c, f'INSERT INTO {ks}."AllTypes" (id, ck, t, b) VALUES (101, 50554d6e-29bb-11e5-b345-feff819cdc9f, \'old\', 1) USING TIMESTAMP 1000')
    cql(c, f'UPDATE {ks}."AllTypes" USING TIMESTAMP 2000 AND TTL 86400 SET b = 2 WHERE id = 101 AND ck = 50554d6e-29bb-11e5-b345-feff819cdc9f')
    cql(c, f'UPDATE {ks}."AllTypes" USING TTL 7200 SET "Mixed Case" = \'ttl\' WHERE id = 101 AND ck = 50554d6e-29bb-11e5-b345-feff819cdc9f')
    # A partition with its static column only.
    cql(c, f'INSERT INTO {ks}."AllTypes" (id, s) VALUES (102, \'static only\') USING TIMESTAMP 5')
    for i in range(30):
        cql(c, f"UPDATE {ks}.counts SET hits = hits + {i * 1000}, misses = misses - {i} WHERE k = 'k{i % 3}' AND c = {i}")
    cql(c, f"INSERT INTO {ks}.expiring (k, v) VALUES (1, 'default ttl')")
    cql(c, f"INSERT INTO {ks}.expiring (k, v) VALUES (2, 'no ttl') USING TTL 0")
    cql(c, f"INSERT INTO {ks}.expiring (k, v) VALUES (3, 'short') USING TTL 1000")
    for i in range(50):
        cql(c, f'INSERT INTO {ks}."CompositeKey" ("Part One", part_two, c1, c2, v) VALUES ({i % 5}, \'p{i % 2}\', {i}, \'c{i}\', 0x{i:04x})')


TIMES = {
    "AllTypes": 'WRITETIME(t), TTL(t), WRITETIME(b), TTL(b), WRITETIME("Mixed Case"), TTL("Mixed Case"), WRITETIME(s), '
                'WRITETIME(fud), MAXWRITETIME(l), MAXWRITETIME(ud)',
    "expiring": "WRITETIME(v), TTL(v)",
    "CompositeKey": "WRITETIME(v)",
}


def assert_same(c, src, dst, tables=("AllTypes", "empty", "counts", "expiring", "CompositeKey", "by_c1")):
    with own_session(c, raw=True) as raw:
        _assert_same(c, src, dst, tables, raw)


def _assert_same(c, src, dst, tables, raw):
    for table in tables:
        quoted = f'"{table}"' if table != table.lower() else table
        n, a = raw_table(c, src, quoted, session=raw)
        m, b = raw_table(c, dst, quoted, session=raw)
        assert (n, a) == (m, b), f"{table}: content differs ({n} vs {m} rows)"
        if table in TIMES:
            times = TIMES[table]
            ttl_cols = [i for i, e in enumerate(times.split(", ")) if e.startswith("TTL")]
            ra = list(c["session"].execute(f"SELECT {times} FROM {src}.{quoted}"))
            rb = list(c["session"].execute(f"SELECT {times} FROM {dst}.{quoted}"))
            assert len(ra) == len(rb)
            for x, y in zip(ra, rb):
                for i, (u, v) in enumerate(zip(x, y)):
                    if i in ttl_cols and u is not None:
                        assert v is not None and -1 <= u - v <= 5, (table, x, y)  # the time left, to a second or so
                    else:
                        assert u == v, (table, i, x, y)


def schema_of(c, ks):
    c["session"].cluster.refresh_schema_metadata()
    text = c["session"].cluster.metadata.keyspaces[ks].export_as_string()
    return text.replace(ks, "KS")


def test_round_trip_every_type_into_same_and_other_keyspace(cass, tmp_path):
    ks = cass["keyspace"]
    create_schema(cass, ks)
    fill(cass, ks)
    dm = manager(tmp_path, cass)
    result = dm.backup("d")
    assert result.size > 0
    info = dm.find_backup("d")[1].manifest["sources"][0]["info"]
    assert {t["name"]: t["rows"] for t in info["keyspaces"][0]["tables"]} == {
        "AllTypes": 43, "CompositeKey": 50, "counts": 30, "empty": 0, "expiring": 3}
    dm.verify("d")

    other = cass["new_keyspace"]()
    dm.restore("d", "latest", overrides={"db": {"keyspace": other}})
    assert schema_of(cass, other) == schema_of(cass, ks)
    assert_same(cass, ks, other)

    # Into the same keyspace, over changed data: replaced, not merged.
    before = raw_table(cass, ks, '"AllTypes"')
    cql(cass, f'INSERT INTO {ks}."AllTypes" (id, ck, t) VALUES (999, now(), \'new\')')
    cql(cass, f"UPDATE {ks}.counts SET hits = hits + 1 WHERE k = 'k0' AND c = 0")
    cql(cass, f"DROP TABLE {ks}.empty")
    dm.restore("d", "latest")
    assert raw_table(cass, ks, '"AllTypes"') == before
    assert_same(cass, ks, other)


def test_tables_subset_restores_into_live_keyspace(cass, tmp_path):
    ks = cass["keyspace"]
    create_schema(cass, ks)
    fill(cass, ks)
    dm = manager(tmp_path, cass, tables=["CompositeKey", f"{ks}.counts"])
    dm.backup("d")
    info = dm.find_backup("d")[1].manifest["sources"][0]["info"]
    assert [t["name"] for t in info["keyspaces"][0]["tables"]] == ["CompositeKey", "counts"]
    before = raw_table(cass, ks, "expiring")
    cql(cass, f'TRUNCATE {ks}."CompositeKey"')
    cql(cass, f"UPDATE {ks}.counts SET hits = hits + 5 WHERE k = 'k1' AND c = 1")
    other = cass["new_keyspace"]()
    dm.restore("d", "latest", overrides={"db": {"keyspace": other}})
    dm.restore("d", "latest")
    assert raw_table(cass, ks, "expiring") == before  # untouched
    assert_same(cass, ks, other, tables=("CompositeKey", "counts", "by_c1"))
    assert cass["session"].execute(f"SELECT hits FROM {ks}.counts WHERE k = 'k1' AND c = 1").one()[0] == 1000


def test_wide_partition(cass, tmp_path):
    ks = cass["keyspace"]
    cql(cass, f"CREATE TABLE {ks}.wide (p int, c int, v text, PRIMARY KEY (p, c))")
    session = cass["session"]
    ins = session.prepare(f"INSERT INTO {ks}.wide (p, c, v) VALUES (1, ?, ?)")
    from cassandra.concurrent import execute_concurrent
    from cassandra.query import BatchStatement, BatchType

    def batches():  # 100 rows a request (one partition: no batch size warning): ~5x faster than one a row
        for lo in range(0, WIDE_ROWS, 100):
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for i in range(lo, min(WIDE_ROWS, lo + 100)):
                batch.add(ins, (i, f"value {i}"))
            yield batch, ()

    execute_concurrent(session, batches(), concurrency=16, raise_on_first_error=True)
    dm = manager(tmp_path, cass, page_size=5000)
    dm.backup("d")
    other = cass["new_keyspace"]()
    dm.restore("d", "latest", overrides={"db": {"keyspace": other}})
    restored = raw_table(cass, other, "wide")  # read once: 1M rows by default
    assert raw_table(cass, ks, "wide") == restored
    assert restored[0] == WIDE_ROWS


def test_read_failure_mid_table_stops_the_backup(cass, tmp_path, monkeypatch):
    """One token range failing after some pages: the backup fails at once, naming the read, and does not hang."""
    from cassandra import InvalidRequest
    from cassandra.cluster import Session

    ks = cass["keyspace"]
    cql(cass, f"CREATE TABLE {ks}.t (k int PRIMARY KEY, v text)")
    ins = cass["session"].prepare(f"INSERT INTO {ks}.t (k, v) VALUES (?, ?)")
    from cassandra.concurrent import execute_concurrent

    execute_concurrent(cass["session"], [(ins, (i, f"v{i}")) for i in range(3000)], concurrency=32,
                       raise_on_first_error=True)
    real = Session.execute
    pages = {"n": 0}

    def execute(self, query, *args, **kwargs):
        if kwargs.get("paging_state"):  # only the backup's later pages
            pages["n"] += 1
            if pages["n"] == 20:
                raise InvalidRequest("injected failure")
        return real(self, query, *args, **kwargs)

    monkeypatch.setattr(Session, "execute", execute)
    dm = manager(tmp_path, cass, page_size=10, splits=8, concurrency=4)
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=r"reading .*\.t failed: InvalidRequest"):
        dm.backup("d")
    assert time.monotonic() - t0 < 60
    assert 20 <= pages["n"] < 100  # ~300 later pages in all: the other readers stopped, they did not read on


def test_several_keyspaces(cass, tmp_path):
    ks = cass["keyspace"]
    ks2 = cass["new_keyspace"]()
    cql(cass, f"CREATE KEYSPACE {ks2} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    cql(cass, f"CREATE TABLE {ks}.a (k int PRIMARY KEY, v text)")
    cql(cass, f"CREATE TABLE {ks2}.b (k int PRIMARY KEY, v text)")
    cql(cass, f"INSERT INTO {ks}.a (k, v) VALUES (1, 'a')")
    cql(cass, f"INSERT INTO {ks2}.b (k, v) VALUES (2, 'b')")
    dm = manager(tmp_path, cass, keyspaces=[ks, ks2])
    dm.backup("d")
    t1, t2 = cass["new_keyspace"](), cass["new_keyspace"]()
    with pytest.raises(Exception, match="2 keyspace"):
        dm.restore("d", "latest", overrides={"db": {"keyspaces": [t1]}})
    dm.restore("d", "latest", overrides={"db": {"keyspaces": [t1, t2]}})
    assert list(cql(cass, f"SELECT k, v FROM {t1}.a")) == [(1, "a")]
    assert list(cql(cass, f"SELECT k, v FROM {t2}.b")) == [(2, "b")]


def test_corrupt_backup_changes_nothing(cass, tmp_path):
    ks = cass["keyspace"]
    cql(cass, f"CREATE TABLE {ks}.t (k int PRIMARY KEY, v text)")
    cql(cass, f"INSERT INTO {ks}.t (k, v) VALUES (1, 'kept')")
    dm = manager(tmp_path, cass)
    dm.backup("d")
    rows = next((tmp_path / "backups").rglob("t.rows*"))
    data = bytearray(rows.read_bytes())
    data[-5] ^= 0xFF
    rows.write_bytes(bytes(data))
    cql(cass, f"INSERT INTO {ks}.t (k, v) VALUES (2, 'added after')")
    with pytest.raises(CorruptBackupError):
        dm.restore("d", "latest")
    assert sorted(cql(cass, f"SELECT k, v FROM {ks}.t")) == [(1, "kept"), (2, "added after")]


# --------------------------------------------------------------------------- errors


def one_line_error(tmp_path, c, match, **extra):
    dm = manager(tmp_path, c, **extra)
    with pytest.raises(SourceError) as err:
        dm.backup("d")
    text = str(err.value)
    assert "\n" not in text and c["password"] not in text.replace("cassandra://", "") or c["password"] == c["username"]
    assert re.search(match, text), text
    return text


def test_unreachable_contact_points(cass, tmp_path):
    text = one_line_error(tmp_path, cass, r"cannot connect to Cassandra at 127\.0\.0\.1:9", contact_points=["127.0.0.1"],
                          port=9, connect_timeout=2)
    assert "source 'db'" in text


def test_auth_failure(cass, tmp_path):
    text = one_line_error(tmp_path, cass, "authentication failed", password="wrong-Secret-42")
    assert "wrong-Secret-42" not in text


def test_unknown_keyspace(cass, tmp_path):
    one_line_error(tmp_path, cass, "keyspace 'no_such_ks' does not exist", keyspace="no_such_ks")


def test_unknown_table(cass, tmp_path):
    one_line_error(tmp_path, cass, "table 'nope' not found", tables=["nope"])


def test_timeouts_are_retried_then_one_line(cass, tmp_path):
    cql(cass, f"CREATE TABLE {cass['keyspace']}.t (k int PRIMARY KEY)")
    t0 = time.monotonic()
    one_line_error(tmp_path, cass, r"failed after 3 attempts: no answer within the request timeout",
                   timeout=0.0001, retries=2)
    assert time.monotonic() - t0 >= 0.7  # two backoffs of about 0.5 s and 1 s


def test_cli_bad_password_one_line_nonzero(cass, tmp_path):
    config = tmp_path / "dm.toml"
    config.write_text(f"""
[storages.local]
type = "filesystem"
root = "{tmp_path / 'backups'}"

[datasets.d]
storage = "local"

[[datasets.d.sources]]
name = "db"
type = "cassandra"
contact_points = ["{cass['host']}"]
port = {cass['port']}
username = "{cass['username']}"
password = "${{DM_TEST_CASSANDRA_PASSWORD}}"
keyspace = "{cass['keyspace']}"
""")
    env = {**os.environ, "DM_TEST_CASSANDRA_PASSWORD": "not-the-password"}
    proc = subprocess.run([sys.executable, "-m", "data_manager", "--config", str(config), "backup", "d"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "authentication failed" in lines[0], proc.stderr
    assert "not-the-password" not in proc.stderr + proc.stdout
