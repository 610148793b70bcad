"""Smoke tests of the real servers of ``scripts/services`` and of the fixtures in ``tests/servers.py``:
per server, connect, write, read back, and what the plugins' tests count on being set up."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.servers import cassandra_settings

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_postgres_write_read(pg_dsn: str) -> None:
    import psycopg

    assert urlsplit(pg_dsn).path.startswith("/dmt_")
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text, data bytea)")
        conn.execute("INSERT INTO t VALUES (1, 'ünï', '\\x00ff'::bytea), (2, NULL, NULL)")
        conn.commit()
        assert conn.execute("SELECT id, name, data FROM t ORDER BY id").fetchall() == [
            (1, "ünï", b"\x00\xff"),
            (2, None, None),
        ]
        # what the PostgreSQL plugin's tests do besides: a superuser, large objects, extensions
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (True,)
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
        oid = conn.execute("SELECT lo_from_bytea(0, 'large object')").fetchone()[0]
        assert conn.execute("SELECT lo_get(%s)", (oid,)).fetchone() == (b"large object",)
        assert conn.execute("SHOW server_version_num").fetchone()[0] >= "150000"


@pytest.mark.postgres
def test_postgres_fresh_database_each_test(pg_dsn: str) -> None:
    import psycopg

    with psycopg.connect(pg_dsn) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables == (0,)


# --------------------------------------------------------------------------- MariaDB


@pytest.mark.mariadb
def test_mariadb_write_read(mysql_db) -> None:
    assert mysql_db["database"] == mysql_db.database
    conn = mysql_db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20), data BLOB)")
            cur.execute("INSERT INTO t VALUES (1, 'ünï', x'00ff'), (2, NULL, NULL)")
            cur.execute("SELECT id, name, data FROM t ORDER BY id")
            assert cur.fetchall() == ((1, "ünï", b"\x00\xff"), (2, None, None))
            cur.execute("SELECT @@local_infile, @@character_set_server")
            assert cur.fetchone() == (1, "utf8mb4")
            cur.execute("SHOW GRANTS")
            grants = " ".join(row[0] for row in cur.fetchall())
            assert "ALL PRIVILEGES ON *.*" in grants and "WITH GRANT OPTION" in grants
    finally:
        conn.close()


@pytest.mark.mariadb
def test_mariadb_load_data_local_infile(mysql_db, tmp_path: Path) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text("1,a\n2,b\n")
    conn = mysql_db.connect(local_infile=True)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20))")
            cur.execute(f"LOAD DATA LOCAL INFILE '{csv}' INTO TABLE t FIELDS TERMINATED BY ','")
            cur.execute("SELECT id, name FROM t ORDER BY id")
            assert cur.fetchall() == ((1, "a"), (2, "b"))
    finally:
        conn.close()


@pytest.mark.mariadb
def test_mariadb_mysqldump(mysql_db) -> None:
    mysqldump = shutil.which("mysqldump") or shutil.which("mariadb-dump")
    assert mysqldump, "mysqldump is missing: scripts/services start mariadb installs mariadb-client"
    conn = mysql_db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id INT PRIMARY KEY)")
            cur.execute("INSERT INTO t VALUES (42)")
    finally:
        conn.close()
    out = subprocess.run(
        [mysqldump, "-h", mysql_db.host, "-P", str(mysql_db.port), "-u", mysql_db.user, mysql_db.database],
        env={**os.environ, "MYSQL_PWD": mysql_db.password}, capture_output=True, text=True, check=True,
    ).stdout
    assert "CREATE TABLE `t`" in out and "(42)" in out


# --------------------------------------------------------------------------- Cassandra


@pytest.mark.cassandra
def test_cassandra_write_read(cassandra_keyspace) -> None:
    session = cassandra_keyspace.session
    assert session.keyspace == cassandra_keyspace.keyspace
    session.execute("CREATE TABLE t (id int PRIMARY KEY, name text, tags set<text>, v vector<float, 3>)")
    session.execute("INSERT INTO t (id, name, tags, v) VALUES (1, 'ünï', {'a', 'b'}, [0.5, 1.0, 2.0])")
    row = session.execute("SELECT id, name, tags, v FROM t WHERE id = 1").one()
    assert (row.id, row.name, sorted(row.tags), list(row.v)) == (1, "ünï", ["a", "b"], [0.5, 1.0, 2.0])
    # materialized views are enabled
    session.execute(
        "CREATE MATERIALIZED VIEW t_by_name AS SELECT id, name FROM t "
        "WHERE name IS NOT NULL AND id IS NOT NULL PRIMARY KEY (name, id)"
    )
    release = session.execute("SELECT release_version FROM system.local").one().release_version
    assert release.startswith("5.0."), release


@pytest.mark.cassandra
def test_cassandra_refuses_a_wrong_password(cassandra_keyspace) -> None:
    from cassandra import AuthenticationFailed
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster, NoHostAvailable

    s = cassandra_settings()
    cluster = Cluster([s["host"]], port=s["port"], auth_provider=PlainTextAuthProvider(s["user"], "wrong-password"),
                      connect_timeout=10)
    try:
        with pytest.raises(NoHostAvailable) as info:
            cluster.connect()
        assert any(isinstance(e, AuthenticationFailed) for e in info.value.errors.values()), info.value.errors
    finally:
        cluster.shutdown()


@pytest.mark.cassandra
def test_cassandra_nodetool_status() -> None:
    done = subprocess.run([str(ROOT / "scripts" / "services"), "nodetool", "status"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "UN  127.0.0.1" in done.stdout, done.stdout


# --------------------------------------------------------------------------- MinIO


@pytest.mark.minio
def test_minio_write_read(s3_bucket) -> None:
    client = s3_bucket.client
    data = os.urandom(100_000)
    client.put_object(s3_bucket.bucket, "dir/ünï.bin", io.BytesIO(data), len(data))
    r = client.get_object(s3_bucket.bucket, "dir/ünï.bin")
    try:
        assert r.read() == data
    finally:
        r.close()
        r.release_conn()
    assert [o.object_name for o in client.list_objects(s3_bucket.bucket, recursive=True)] == ["dir/ünï.bin"]


@pytest.mark.minio
def test_minio_bucket_removed_even_with_an_unfinished_upload(minio_server) -> None:
    from tests.servers import remove_bucket, unique_name

    name = unique_name("dmt", sep="-")
    minio_server.make_bucket(name)
    minio_server.put_object(name, "a", io.BytesIO(b"x"), 1)
    minio_server._create_multipart_upload(name, "unfinished", {})
    remove_bucket(minio_server, name)
    assert not minio_server.bucket_exists(name)
