"""Every source plugin through a ``dedup`` storage: backed up twice (the second time unchanged), restored into
a new database, keyspace, bucket or path, and compared with the original; then every backup verifies and
``check_repository`` reads back every pack. PostgreSQL, MariaDB (source ``mysql``), Cassandra and MinIO run
against the real servers (fixtures of ``tests/servers.py``: in CI a missing server fails, never skips);
``directory`` and ``sqlite`` need none. Each dataset is small: the plugins' own tests cover their edge cases,
these cover the plugins' artifacts (streams, cut hints, several artifacts at once) through the engine."""

from __future__ import annotations

import dataclasses
import io
import os
import random
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from data_manager.api import DataManager
from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.engines.dedup.chunker import ChunkerParams
from data_manager.engines.dedup.engine import DedupEngine
from data_manager.types import Settings

from ..helpers import make_sqlite, make_tree, snapshot, sqlite_rows
from ..servers import remove_bucket, unique_name, with_dbname

KDF = {"memory_kib": 8, "iterations": 1, "lanes": 1}  # cheap Argon2id: tests, not security
SMALL = ChunkerParams(16 << 10, 64 << 10, 256 << 10)  # several chunks even from a small dump
PASSPHRASE = "correct horse"

Manager = Callable[[dict[str, Any]], DataManager]


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Manager]:
    """A maker of DataManagers whose dataset ``d`` has the one source given, in a new dedup repository."""
    storage = {"type": "filesystem", "root": str(tmp_path / "vault"), "engine": "dedup", "passphrase": PASSPHRASE,
               "pack_size": "256KiB", "cache_dir": str(tmp_path / "cache")}
    DedupEngine.create(FilesystemStorage("vault", Settings({"root": storage["root"]})),
                       Settings({"passphrase": PASSPHRASE}), chunker=SMALL, kdf=KDF,
                       cache_dir=tmp_path / "cache").close()
    made: list[DataManager] = []

    def manager(source: dict[str, Any]) -> DataManager:
        dm = DataManager.from_dict({"storages": {"vault": storage},
                                    "datasets": {"d": {"storage": "vault", "sources": [{"name": "db", **source}]}}})
        made.append(dm)
        return dm

    yield manager
    for dm in made:
        dm.close()


def round_trip(dm: DataManager, override: dict[str, Any]) -> None:
    """Back up twice, restore the latest with ``override`` (the new place), verify and check everything."""
    first = dm.backup("d")
    second = dm.backup("d")
    assert first.size > 0 and second.size > 0
    assert [b.complete for b in dm.list_backups("d")] == [True, True]
    assert [b.storages for b in dm.list_backups("d")] == [["vault"], ["vault"]]
    dm.restore("d", "latest", overrides={"db": override})
    assert all(r.ok for r in dm.verify_all("d"))
    report = dm.repository("vault").check_repository(1.0)
    assert report.ok and report.counts["snapshots"] == 2 and report.counts["packs_read"] > 1, report


# --------------------------------------------------------------------------- no server


def test_directory(vault: Manager, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "raw")
    (tree / "big.bin").write_bytes(random.Random(1).randbytes(1_500_000))  # a file of several chunks
    before = snapshot(tree)
    out = tmp_path / "restored"
    round_trip(vault({"type": "directory", "path": str(tree)}), {"path": str(out)})
    assert snapshot(out) == before and snapshot(tree) == before


def test_sqlite(vault: Manager, tmp_path: Path) -> None:
    db = make_sqlite(tmp_path / "data" / "notes.db", rows=20_000, wal=True)
    out = tmp_path / "restored" / "notes.db"
    round_trip(vault({"type": "sqlite", "path": str(db)}), {"path": str(out)})
    assert sqlite_rows(out) == sqlite_rows(db) and len(sqlite_rows(out)) == 20_000


# --------------------------------------------------------------------------- PostgreSQL


PG_SCHEMA = r'''
CREATE SCHEMA "Exp ""Data""";
CREATE TYPE mood AS ENUM ('sad', 'ok', 'ünïcödé 🙂');
CREATE TABLE "Exp ""Data"""."my table" (
    id bigserial PRIMARY KEY, n numeric(30,10), f8 double precision, b bytea, j jsonb, arr int[],
    ts timestamptz, m mood, txt text, flag boolean
);
CREATE TABLE parent (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent(id), note text);
CREATE VIEW child_names AS SELECT c.id, p.name FROM child c JOIN parent p ON p.id = c.parent_id;
CREATE SEQUENCE counter START 5 INCREMENT 7;
CREATE TABLE lobs (name text PRIMARY KEY, data oid);
INSERT INTO "Exp ""Data"""."my table" (n, f8, b, j, arr, ts, m, txt, flag) VALUES
 (12345678901234567890.0123456789, 'NaN', '\x00ff5c0a0d09', '{"a": [1, null, "\u00e9\n"]}', '{1,NULL,3}',
  'infinity', 'ünïcödé 🙂', E'tab\there\nnewline \\. backslash-dot', true),
 (NULL, '-0', '', '{}', '{}', '1999-12-31 23:59:59.5+05:30', NULL, '', NULL);
INSERT INTO "Exp ""Data"""."my table" (txt, b)
SELECT string_agg(md5(g::text) || 'ü', '' ORDER BY g), decode(string_agg(md5(g::text), '' ORDER BY g), 'hex')
FROM generate_series(1, 20000) g;
INSERT INTO parent SELECT g, 'parent ' || g FROM generate_series(1, 200) g;
INSERT INTO child SELECT g, 1 + g % 200, CASE WHEN g % 3 = 0 THEN NULL ELSE '' END FROM generate_series(1, 5000) g;
SELECT nextval('counter') FROM generate_series(1, 3);
INSERT INTO lobs VALUES ('small', lo_from_bytea(0, '\x00010203'::bytea)),
    ('big', lo_from_bytea(0, decode(repeat(md5('x'), 20000), 'hex')));
'''


def pg_dump(dsn: str) -> str:
    """Plain pg_dump of a database, the per-run \\restrict keys removed (they differ every run)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    p = conninfo_to_dict(dsn)
    env = {**os.environ, "PGPASSWORD": str(p.pop("password", ""))}
    out = subprocess.run(["pg_dump", "--no-sync", f"--dbname={make_conninfo(**p)}"],
                         capture_output=True, env=env, check=True).stdout.decode()
    return re.sub(r"^\\(un)?restrict \S+$", "", out, flags=re.M)


@pytest.mark.postgres
def test_postgres(vault: Manager, pg_dsn: str, postgres_server: str) -> None:
    pytest.importorskip("data_manager_postgres")
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(PG_SCHEMA)
    target = unique_name("dmt")
    try:
        round_trip(vault({"type": "postgres", "dsn": pg_dsn}), {"database": target})
        restored = with_dbname(pg_dsn, target)
        assert pg_dump(restored) == pg_dump(pg_dsn)
        query = "SELECT name, md5(lo_get(data)) FROM lobs ORDER BY 1"
        with psycopg.connect(restored) as a, psycopg.connect(pg_dsn) as b:
            assert a.execute(query).fetchall() == b.execute(query).fetchall()
            assert a.execute("SELECT nextval('counter')").fetchall() == [(26,)]
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')


# --------------------------------------------------------------------------- MariaDB (source mysql)


MYSQL_SCHEMA = [
    "CREATE TABLE parent (id INT NOT NULL PRIMARY KEY, label VARCHAR(20) NOT NULL UNIQUE) ENGINE=InnoDB",
    "CREATE TABLE t (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, bi BIGINT UNSIGNED, d65 DECIMAL(65,30),"
    " dbl DOUBLE, dtm6 DATETIME(6), vc VARCHAR(255), tx LONGTEXT, vb VARBINARY(300), lb LONGBLOB, js JSON,"
    " en ENUM('a','c d'), b10 BIT(10), parent_id INT NULL, gen BIGINT AS (bi * 2) VIRTUAL,"
    " CONSTRAINT fk_parent FOREIGN KEY (parent_id) REFERENCES parent (id)) ENGINE=InnoDB",
    "CREATE TABLE `weird ``name`` ü` (`col with space` INT, `ünï` VARCHAR(5)) ENGINE=InnoDB",
    "INSERT INTO parent VALUES (1, 'one'), (2, 'two')",
    "INSERT INTO `weird ``name`` ü` VALUES (1, 'ü'), (NULL, NULL), (3, '')",
    "INSERT INTO t (bi, d65, dbl, dtm6, vc, tx, vb, lb, js, en, b10, parent_id) VALUES"
    " (18446744073709551615, '-99999999999999999999999999999999999.999999999999999999999999999999',"
    " 1.7976931348623157e308, '9999-12-31 23:59:59.999999', 'quote '' dq \" back \\\\ 🙂', REPEAT('long ', 50000),"
    " X'00FF', X'00', '[1, 2.5, \"x\", null]', 'c d', b'1010101010', 1),"
    " (NULL, NULL, -0.0, NULL, '', '', X'', X'', NULL, NULL, NULL, NULL)",
    "INSERT INTO t (vc, lb) SELECT CONCAT('row ', seq), UNHEX(SHA2(seq, 256)) FROM seq_1_to_5000",
    "CREATE VIEW v_parent AS SELECT p.id, p.label, COUNT(t.id) AS n FROM parent p LEFT JOIN t ON t.parent_id = p.id"
    " GROUP BY p.id, p.label",
]


def mysql_content(db: Any, database: str) -> dict[str, Any]:
    """Every table's definition and rows (bytes as the server sends them), the views' definitions."""
    conn = dataclasses.replace(db, database=database).connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s",
                        (database,))
            out: dict[str, Any] = {}
            for name, kind in sorted(cur.fetchall()):
                quoted = "`" + name.replace("`", "``") + "`"
                cur.execute(f"SHOW CREATE TABLE {quoted}")
                out[name] = [cur.fetchone()[1].replace(database, "DB")]
                if kind == "BASE TABLE":
                    cur.execute(f"SELECT * FROM {quoted}")
                    out[name].append(sorted(cur.fetchall(), key=repr))
            return out
    finally:
        conn.close()


@pytest.mark.mariadb
def test_mysql(vault: Manager, mysql_db: Any) -> None:
    pytest.importorskip("data_manager_memsql")
    conn = mysql_db.connect()
    try:
        with conn.cursor() as cur:
            for statement in MYSQL_SCHEMA:
                cur.execute(statement)
    finally:
        conn.close()
    target = unique_name("dmt")
    source = {"type": "mysql", "host": mysql_db.host, "port": mysql_db.port, "user": mysql_db.user,
              "password": mysql_db.password, "database": mysql_db.database}
    try:
        round_trip(vault(source), {"database": target})
        assert mysql_content(mysql_db, target) == mysql_content(mysql_db, mysql_db.database)
    finally:
        conn = mysql_db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{target}`")
        finally:
            conn.close()


# --------------------------------------------------------------------------- Cassandra


CQL_SCHEMA = """
CREATE TYPE {ks}.addr (street text, "Zip Code" int);
CREATE TABLE {ks}."Readings" (
    id int, ck int, "Mixed Case" text, s text static, bl blob, dc decimal, db double, ts timestamp, u uuid,
    l list<int>, m map<text, int>, ud frozen<addr>, v vector<float, 3>,
    PRIMARY KEY ((id), ck)
) WITH CLUSTERING ORDER BY (ck DESC);
CREATE TABLE {ks}.counts (k text, c int, hits counter, PRIMARY KEY (k, c));
CREATE TABLE {ks}.empty (k text PRIMARY KEY, v int)
"""


def cassandra_content(ks: Any, keyspace: str) -> dict[str, Any]:
    """The keyspace's schema (its name replaced) and every row of its tables, with write times."""
    session = ks.session
    session.cluster.refresh_schema_metadata()
    schema = session.cluster.metadata.keyspaces[keyspace].export_as_string().replace(keyspace, "KS")
    rows = {
        table: sorted(map(repr, session.execute(f"SELECT * FROM {keyspace}.{table}", timeout=120)))
        for table in ('"Readings"', "counts", "empty")
    }
    rows["writetime"] = sorted(map(repr, session.execute(
        f'SELECT id, ck, WRITETIME("Mixed Case") FROM {keyspace}."Readings"', timeout=120)))
    return {"schema": schema, **rows}


@pytest.mark.cassandra
def test_cassandra(vault: Manager, cassandra_keyspace: Any) -> None:
    pytest.importorskip("data_manager_cassandra")
    import uuid
    from decimal import Decimal

    ks = cassandra_keyspace
    for statement in CQL_SCHEMA.format(ks=ks.keyspace).split(";\n"):
        ks.session.execute(statement, timeout=120)
    insert = ks.session.prepare(
        f'INSERT INTO {ks.keyspace}."Readings" (id, ck, "Mixed Case", s, bl, dc, db, ts, u, l, m, v)'
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?")
    rnd = random.Random(3)
    for i in range(300):
        ks.session.execute(insert, (i % 11, i, f"mixed {i} ünï", f"static {i % 11}" if i % 2 else None,
                                    rnd.randbytes(i * 10), Decimal(f"-{i}.000000000000000000{i}"), i / 7,
                                    1_600_000_000_123 + i, uuid.UUID(int=rnd.getrandbits(128)),
                                    [i, -i] if i % 3 else None, {"k": i}, [0.5, -1.25, float(i)],
                                    1_700_000_000_000_000 + i))
    ks.session.execute(f"UPDATE {ks.keyspace}.\"Readings\" SET ud = {{street: 'main st', \"Zip Code\": 42}}"
                       " WHERE id = 1 AND ck = 1")
    for i in range(30):
        ks.session.execute(f"UPDATE {ks.keyspace}.counts SET hits = hits + {i * 1000} WHERE k = 'k{i % 3}' AND c = {i}")
    other = unique_name("dmt")
    source = {"type": "cassandra", "contact_points": [ks.host], "port": ks.port, "username": ks.user,
              "password": ks.password, "keyspace": ks.keyspace, "consistency": "ONE", "write_consistency": "ONE"}
    try:
        round_trip(vault(source), {"keyspace": other})
        assert cassandra_content(ks, other) == cassandra_content(ks, ks.keyspace)
    finally:
        ks.session.execute(f"DROP KEYSPACE IF EXISTS {other}", timeout=120)


# --------------------------------------------------------------------------- MinIO (bucket source)


@pytest.mark.minio
def test_minio(vault: Manager, s3_bucket: Any) -> None:
    pytest.importorskip("data_manager_minio")
    client = s3_bucket.client
    objects = {
        "empty": b"",
        "hello.txt": b"hello\n",
        "dir/spaces and ünïcødé – ключ.txt": "ünïcødé".encode() * 100,
        "folder/": b"",
        "table.csv": b"id,value\n" + b"".join(b"%d,%d\n" % (i, i * i) for i in range(50_000)),
        "big/multi.bin": random.Random(4).randbytes(6 * (1 << 20) + 123),  # a multipart object, alone in its volume
        **{f"many/{i:04d}.txt": b"sample %d\n" % i * (i % 7) for i in range(60)},
    }
    for key, data in objects.items():
        client.put_object(s3_bucket.bucket, key, io.BytesIO(data), len(data), part_size=5 << 20,
                          **({"content_type": "application/json", "metadata": {"Experiment": "exp42"}}
                             if key == "hello.txt" else {}))
    other = unique_name("dmt", sep="-")
    source = {"type": "minio", "endpoint": s3_bucket.endpoint, "secure": False, "access_key": s3_bucket.access_key,
              "secret_key": s3_bucket.secret_key, "bucket": s3_bucket.bucket, "range_size": "4MiB",
              "part_size": "5MiB"}
    try:
        round_trip(vault(source), {"bucket": other, "prefix": "restored/here"})
        keys = {o.object_name for o in client.list_objects(other, recursive=True)}
        assert keys == {"restored/here/" + k for k in objects}
        for key, data in objects.items():
            r = client.get_object(other, "restored/here/" + key)
            try:
                assert r.read() == data, key
            finally:
                r.close()
                r.release_conn()
        stat = client.stat_object(other, "restored/here/hello.txt")
        assert stat.content_type == "application/json" and stat.metadata["x-amz-meta-experiment"] == "exp42"
    finally:
        remove_bucket(client, other)
