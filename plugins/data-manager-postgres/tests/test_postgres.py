"""Round trips through the core API against the real PostgreSQL (fixture ``pg_dsn``)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import threading
import time
from pathlib import Path

import pytest

from data_manager.api import DataManager
from data_manager.errors import CorruptBackupError, SourceError

psycopg = pytest.importorskip("psycopg")
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

pytestmark = pytest.mark.postgres

# Data that breaks naive tools: every common type, NULL vs '', COPY's own escapes, unicode, very wide rows,
# large objects, sequences, FKs, views, partitions, several schemas, names with quotes and spaces.
SCHEMA_SQL = r'''
CREATE EXTENSION citext;
CREATE SCHEMA "Exp ""Data""";
CREATE SCHEMA other;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'ünïcödé 🙂');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TYPE other.pair AS (a int, b text);
CREATE SEQUENCE other.counter START 5 INCREMENT 7;
CREATE TABLE "Exp ""Data"""."my table" (
    id bigserial PRIMARY KEY,
    ident int GENERATED ALWAYS AS IDENTITY,
    n numeric(30,10), big numeric, f8 double precision, r real, i2 smallint,
    b bytea, j jsonb, js json, arr int[], tarr text[], grid int[][],
    ts timestamptz, tsn timestamp, d date, iv interval, u uuid, m mood, p posint,
    txt text, vc varchar(10), ch char(3), flag boolean, ip inet, net cidr, mac macaddr, pt point,
    rng int4range, x xml, bits bit varying(16), cash money, ci citext, pr other.pair,
    "quoted ""col""" text,
    twice bigint GENERATED ALWAYS AS (id * 2) STORED
);
CREATE UNIQUE INDEX ON "Exp ""Data"""."my table" (u) WHERE u IS NOT NULL;
CREATE INDEX ON "Exp ""Data"""."my table" USING gin (j);
CREATE INDEX ON "Exp ""Data"""."my table" (lower(left(txt, 100)));
COMMENT ON TABLE "Exp ""Data"""."my table" IS 'the ''main'' table – ünïcödé';
CREATE TABLE parent (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE other.child (
    id int PRIMARY KEY,
    parent_id int NOT NULL REFERENCES parent(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    note text
);
CREATE TABLE other.events (at date NOT NULL, what text, v numeric) PARTITION BY RANGE (at);
CREATE TABLE other.events_2023 PARTITION OF other.events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE other.events_2024 PARTITION OF other.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE other.events_rest PARTITION OF other.events DEFAULT;
CREATE VIEW other.child_names AS SELECT c.id, p.name FROM other.child c JOIN parent p ON p.id = c.parent_id;
CREATE MATERIALIZED VIEW other.event_counts AS SELECT extract(year FROM at) AS y, count(*) FROM other.events GROUP BY 1;
CREATE FUNCTION other.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.note := coalesce(NEW.note, 'touched'); RETURN NEW; END $$;
CREATE TRIGGER touch BEFORE INSERT ON other.child FOR EACH ROW EXECUTE FUNCTION other.touch();
CREATE TABLE lobs (name text PRIMARY KEY, data oid);
'''

DATA_SQL = r'''
INSERT INTO "Exp ""Data"""."my table"
    (n, big, f8, r, i2, b, j, js, arr, tarr, grid, ts, tsn, d, iv, u, m, p, txt, vc, ch, flag, ip, net, mac, pt,
     rng, x, bits, cash, ci, pr, "quoted ""col""")
VALUES
 (12345678901234567890.0123456789, 'NaN', 'NaN', '-Infinity', -32768,
  '\x00ff5c0a0d09'::bytea, '{"a": [1, 2.5, null, "\u00e9\n\\"], "b": {"c": true}, "": ""}',
  '{"dup": 1, "dup": 2}', '{1,NULL,3}', '{"",NULL,"NULL","a,b","q\"uote","back\\slash"}', '{{1,2},{3,4}}',
  'infinity', '2000-02-29 23:59:59.999999', '0044-03-15 BC', '1 year 2 mons -3 days 04:05:06.789',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'ünïcödé 🙂', 1,
  E'tab\there\nnewline \\. backslash-dot \\\\ \r CR', '', 'ab ', true, '::1', '10.0.0.0/8', '08:00:2b:01:02:03',
  '(1.5,-2)', '[1,10)', '<a x="1">ü &amp; <b/></a>', B'1010', 12.34, 'MiXeD', ROW(1, 'x'), 'q"c'),
 (NULL, NULL, '-0', 'Infinity', NULL, '', '{}', 'null', '{}', '{}', NULL,
  '1999-12-31 23:59:59.5+05:30', NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'empty', NULL, NULL, NULL, NULL, ROW(NULL, NULL), ''),
 (0.0000000001, 1e-300::numeric * 0 + 123456789012345678901234567890.5, 1e308, 3.4e38, 32767,
  decode(repeat('00', 10), 'hex'), '[]', '"just a string"', '{-2147483648,2147483647}', '{日本語,"עברית",Ελληνικά}',
  '{{NULL,NULL}}', '2024-02-29 12:00:00+00', 'epoch', 'infinity', '-178000000 years', gen_random_uuid(), 'sad', 2147483647,
  'Zeile \. alone' || E'\n\\.\n' || 'after', '0123456789', '   ', false, '2001:db8::1/128', '2001:db8::/32',
  'ff:ff:ff:ff:ff:ff', '(0,0)', 'empty', '<?xml version="1.0"?><r/>', B'', -92233720368547758.08, '', ROW(-1, ''), NULL);

-- very wide rows (TOASTed): 6 MB of text, 3 MB of bytea, a 2 MB jsonb document
INSERT INTO "Exp ""Data"""."my table" (txt, b, j)
SELECT string_agg(md5(g::text) || 'ü', '' ORDER BY g), decode(string_agg(md5(g::text), '' ORDER BY g), 'hex'), NULL
FROM generate_series(1, 180000) g;
INSERT INTO "Exp ""Data"""."my table" (j)
SELECT jsonb_agg(jsonb_build_object('k', g, 'v', repeat('x', g % 50))) FROM generate_series(1, 40000) g;
-- every byte value
INSERT INTO "Exp ""Data"""."my table" (b) SELECT decode(string_agg(lpad(to_hex(g), 2, '0'), ''), 'hex') FROM generate_series(0, 255) g;

INSERT INTO parent SELECT g, 'parent ' || g FROM generate_series(1, 200) g;
INSERT INTO other.child (id, parent_id, note) SELECT g, 1 + g % 200, CASE WHEN g % 3 = 0 THEN NULL ELSE '' END
FROM generate_series(1, 2000) g;
INSERT INTO other.events SELECT date '2022-06-01' + g, 'e' || g, g / 7.0 FROM generate_series(0, 1200) g;
REFRESH MATERIALIZED VIEW other.event_counts;
SELECT nextval('other.counter') FROM generate_series(1, 3);
SELECT setval('"Exp ""Data"""."my table_id_seq"', 1000);

INSERT INTO lobs VALUES ('small', lo_from_bytea(0, '\x00010203'::bytea)), ('empty', lo_from_bytea(0, ''));
INSERT INTO lobs SELECT 'big', lo_from_bytea(0, decode(string_agg(md5(g::text), ''), 'hex'))
    FROM generate_series(1, 100000) g;
'''


# --------------------------------------------------------------------------- helpers

MAIN = '"Exp ""Data"""."my table"'
SEQ = '"Exp ""Data"""."my table_id_seq"'


def sql(dsn: str, statements: str, params=None):
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statements, params) if params is not None else conn.execute(statements)
        return cur.fetchall() if cur.description else None


def with_db(dsn: str, dbname: str) -> str:
    return make_conninfo(dsn, dbname=dbname)


def dsn_uri(dsn: str, dbname: str) -> str:
    p = conninfo_to_dict(dsn)
    return f"postgresql://{p.get('user', 'dm')}:{p.get('password', '')}@{p.get('host', '127.0.0.1')}:{p.get('port', 5432)}/{dbname}"


def dump(dsn: str, *args: str) -> str:
    """Plain pg_dump of a database, the per-run \\restrict keys removed (they differ every run)."""
    p = conninfo_to_dict(dsn)
    env = {**os.environ, "PGPASSWORD": str(p.pop("password", ""))}
    out = subprocess.run(["pg_dump", "--no-sync", *args, f"--dbname={make_conninfo(**p)}"],
                         capture_output=True, env=env, check=True).stdout.decode()
    return re.sub(r"^\\(un)?restrict \S+$", "", out, flags=re.M)


@pytest.fixture
def server(pg_dsn):
    """The fixture's fresh database, filled, and a maker of extra database names dropped afterwards."""
    dbname = conninfo_to_dict(pg_dsn)["dbname"]
    admin = with_db(pg_dsn, "postgres")
    made: list[str] = []

    def new_name(prefix: str = "dmpg") -> str:
        name = f"{prefix}_{secrets.token_hex(4)}"
        made.append(name)
        return name

    yield {"dsn": pg_dsn, "dbname": dbname, "admin": admin, "new_name": new_name}
    for name in made:
        sql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def filled(server):
    sql(server["dsn"], SCHEMA_SQL)
    sql(server["dsn"], DATA_SQL)
    return server


def manager(tmp_path: Path, dsn: str, **extra) -> DataManager:
    return DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "datasets": {"d": {"storage": "local", "sources": [{"name": "db", "type": "postgres", "dsn": dsn, **extra}]}},
    })


def artifact_path(tmp_path: Path) -> Path:
    found = list((tmp_path / "backups").rglob("database.pgdump*"))
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------- round trips


def test_round_trip_into_a_new_database(filled, tmp_path):
    dm = manager(tmp_path, filled["dsn"])
    result = dm.backup("d")
    assert result.size > 9_000_000  # the wide rows went through
    info = dm.find_backup("d")[1].manifest["sources"][0]["info"]
    assert info["format"] == "pg_dump-custom" and info["database"] == filled["dbname"]
    assert info["server_version_num"] >= 90000 and info["pg_dump_version"] and info["large_objects"] == 3
    assert "--compress=0" in info["options"]
    dm.verify("d")

    target = filled["new_name"]()
    dm.restore("d", "latest", overrides={"db": {"database": target}})
    restored = with_db(filled["dsn"], target)
    assert dump(restored) == dump(filled["dsn"])
    assert dump(restored, "--schema-only") == dump(filled["dsn"], "--schema-only")
    # sequences continue where they were; large objects, wide rows and special values are back
    assert sql(restored, "SELECT nextval('other.counter')") == sql(filled["dsn"], "SELECT nextval('other.counter')")
    assert sql(restored, f"SELECT nextval('{SEQ}')") == [(1001,)]
    assert sql(restored, "SELECT name, md5(lo_get(data)) FROM lobs ORDER BY 1") == \
        sql(filled["dsn"], "SELECT name, md5(lo_get(data)) FROM lobs ORDER BY 1")
    q = """SELECT count(*) FILTER (WHERE txt = ''), count(*) FILTER (WHERE txt IS NULL),
                  max(length(txt)), max(length(b)), sum(hashtext(t::text)) FROM """ + MAIN + " t"
    assert sql(restored, q) == sql(filled["dsn"], q)
    assert sql(restored, "SELECT count(*) FROM other.events_2023") == [(365,)]


def test_restore_over_the_original_replaces_everything(filled, tmp_path):
    dm = manager(tmp_path, filled["dsn"])
    before = dump(filled["dsn"])
    dm.backup("d")
    sql(filled["dsn"], """
        UPDATE parent SET name = 'changed';
        DELETE FROM other.child WHERE id > 10;
        DROP VIEW other.child_names;
        CREATE TABLE added (x int); CREATE SCHEMA extra; CREATE TABLE extra.t (y int);
        CREATE TABLE other.t2 (z int REFERENCES parent(id));
        CREATE FUNCTION public.f(int) RETURNS int LANGUAGE sql AS 'SELECT $1';
        SELECT lo_from_bytea(0, 'extra');
        SELECT setval('other.counter', 99999);
    """)
    dm.restore("d", "latest")
    assert dump(filled["dsn"]) == before  # the added objects are gone, the changed ones back


def test_corrupt_artifact_leaves_the_target_as_it_was(filled, tmp_path):
    import zstandard

    dm = manager(tmp_path, filled["dsn"])
    dm.backup("d")
    # Flip one byte in the middle of the dump and store it validly compressed: only the digest at EOF
    # can tell, after pg_restore has already been fed almost everything.
    path = artifact_path(tmp_path)
    raw = zstandard.ZstdDecompressor().stream_reader(path.read_bytes(), read_across_frames=True).read()
    bad = bytearray(raw)
    bad[len(bad) // 2] ^= 0x01
    path.write_bytes(zstandard.ZstdCompressor().compress(bytes(bad)))

    sql(filled["dsn"], "CREATE TABLE marker (x int); INSERT INTO marker VALUES (42)")
    before = dump(filled["dsn"])
    with pytest.raises(CorruptBackupError):
        dm.restore("d", "latest")
    assert dump(filled["dsn"]) == before

    target = filled["new_name"]()  # a database the failed restore created is dropped again
    with pytest.raises(CorruptBackupError):
        dm.restore("d", "latest", overrides={"db": {"database": target}})
    assert sql(filled["admin"], "SELECT count(*) FROM pg_database WHERE datname = %s", (target,)) == [(0,)]


def test_failed_restore_is_rolled_back_with_one_line(filled, tmp_path):
    dm = manager(tmp_path, filled["dsn"], lock_timeout=1)
    dm.backup("d")
    sql(filled["dsn"], "UPDATE parent SET name = 'after the backup'")
    before = dump(filled["dsn"])
    with psycopg.connect(filled["dsn"]) as blocker:  # holds a lock the restore needs
        blocker.execute("SELECT count(*) FROM other.child").fetchall()
        with pytest.raises(SourceError) as e:
            dm.restore("d", "latest")
        blocker.rollback()
    msg = str(e.value)
    assert "nothing was changed" in msg and "lock timeout" in msg and "\n" not in msg
    assert dump(filled["dsn"]) == before


def test_schemas_and_exclusions(filled, tmp_path):
    dm = manager(tmp_path, filled["dsn"], schemas=["other", 'Exp "Data"'], exclude_tables=["other.events_rest"],
                 exclude_table_data=['Exp "Data".my table'])
    dm.backup("d")
    target = filled["new_name"]()
    # the FK to public.parent is outside the backup: restore without it would fail; create parent first
    sql(filled["admin"], f'CREATE DATABASE "{target}"')
    sql(with_db(filled["dsn"], target), "CREATE EXTENSION citext; CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', "
        "'ünïcödé 🙂'); CREATE DOMAIN posint AS integer CHECK (VALUE > 0);"
        "CREATE TABLE parent (id int PRIMARY KEY, name text NOT NULL); INSERT INTO parent SELECT g, '' FROM "
        "generate_series(1, 200) g; CREATE TABLE keep (x int)")
    dm.restore("d", "latest", overrides={"db": {"database": target}})
    restored = with_db(filled["dsn"], target)
    tables = {r[0] for r in sql(restored, "SELECT format('%s.%s', schemaname, tablename) FROM pg_tables "
                                          "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")}
    assert "other.events_rest" not in tables and "other.events_2023" in tables and "public.keep" in tables
    assert sql(restored, f"SELECT count(*) FROM {MAIN}") == [(0,)]
    assert sql(restored, "SELECT count(*) FROM other.child") == [(2000,)]
    assert sql(restored, "SELECT count(*) FROM pg_largeobject_metadata") == [(0,)]
    # restoring the narrowed backup again leaves the schemas outside it alone
    sql(restored, "INSERT INTO keep VALUES (1); DELETE FROM other.child")
    dm.restore("d", "latest", overrides={"db": {"database": target}})
    assert sql(restored, "SELECT count(*) FROM keep") == [(1,)]
    assert sql(restored, "SELECT count(*) FROM other.child") == [(2000,)]


def test_backup_is_one_snapshot_while_writers_run(server, tmp_path):
    sql(server["dsn"], "CREATE TABLE a (id int PRIMARY KEY, v int); CREATE TABLE b (id int PRIMARY KEY, v int);"
        "INSERT INTO a SELECT g, 100 FROM generate_series(1, 50) g; INSERT INTO b SELECT g, 100 FROM generate_series(1, 50) g;"
        "CREATE TABLE pad AS SELECT g, md5(g::text) FROM generate_series(1, 200000) g")
    stop = threading.Event()

    def writer():
        with psycopg.connect(server["dsn"], autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                with conn.transaction():  # move value from a to b: the sum over both tables stays 10000
                    conn.execute("UPDATE a SET v = v - 1 WHERE id = %s", (1 + i % 50,))
                    conn.execute("UPDATE b SET v = v + 1 WHERE id = %s", (1 + i % 50,))
                i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.2)
        dm = manager(tmp_path, server["dsn"])
        dm.backup("d")
    finally:
        stop.set()
        t.join()
    target = server["new_name"]()
    dm.restore("d", "latest", overrides={"db": {"database": target}})
    assert sql(with_db(server["dsn"], target), "SELECT (SELECT sum(v) FROM a) + (SELECT sum(v) FROM b)") == [(10000,)]


# --------------------------------------------------------------------------- errors


def test_wrong_password(server, tmp_path):
    p = conninfo_to_dict(server["dsn"])
    dsn = dsn_uri(server["dsn"], server["dbname"]).replace(f":{p.get('password')}@", ":wrong-pw-123@")
    with pytest.raises(SourceError) as e:
        manager(tmp_path, dsn).backup("d")
    assert "wrong password for user" in str(e.value) and "wrong-pw-123" not in str(e.value)


def test_unreachable_host(server, tmp_path):
    dsn = dsn_uri(server["dsn"], server["dbname"]).replace(f":{conninfo_to_dict(server['dsn']).get('port', 5432)}/", ":1/")
    with pytest.raises(SourceError, match=r"cannot reach PostgreSQL at 127\.0\.0\.1:1: Connection refused"):
        manager(tmp_path, dsn).backup("d")


def test_missing_database(server, tmp_path):
    with pytest.raises(SourceError, match="database 'no_such_db_x' does not exist"):
        manager(tmp_path, with_db(server["dsn"], "no_such_db_x")).backup("d")


def test_missing_schema(server, tmp_path):
    with pytest.raises(SourceError, match="schema 'nope' does not exist"):
        manager(tmp_path, server["dsn"], schemas=["nope"]).backup("d")


@pytest.fixture
def weak_role(server):
    role, pw = f"dm_weak_{secrets.token_hex(3)}", secrets.token_hex(8)
    sql(server["dsn"], f"CREATE ROLE {role} LOGIN PASSWORD '{pw}'; CREATE TABLE secret (x int);"
        f"GRANT CONNECT ON DATABASE \"{server['dbname']}\" TO {role}")
    yield role, pw
    sql(server["dsn"], f"DROP TABLE IF EXISTS secret; REVOKE ALL ON DATABASE \"{server['dbname']}\" FROM {role}")
    sql(server["admin"], f"DROP ROLE IF EXISTS {role}")


def test_insufficient_privileges(server, weak_role, tmp_path):
    role, pw = weak_role
    dsn = make_conninfo(server["dsn"], user=role, password=pw)
    with pytest.raises(SourceError) as e:
        manager(tmp_path, dsn).backup("d")
    assert "pg_dump failed: permission denied for table secret" in str(e.value) and pw not in str(e.value)
    dm = manager(tmp_path, server["dsn"])
    dm.backup("d")
    with pytest.raises(SourceError) as e:  # may not create the missing target database
        dm.restore("d", "latest", overrides={"db": {"dsn": make_conninfo(dsn, dbname="dm_never_made")}})
    assert "may not create it" in str(e.value)


def test_cli_bad_password_is_one_line(server, tmp_path):
    from click.testing import CliRunner

    from data_manager.cli import main

    p = conninfo_to_dict(server["dsn"])
    config = tmp_path / "dm.toml"
    config.write_text(
        f'[storages.local]\ntype = "filesystem"\nroot = "{tmp_path / "b"}"\n'
        f'[datasets.d]\nstorage = "local"\n[[datasets.d.sources]]\nname = "db"\ntype = "postgres"\n'
        f'dsn = "postgresql://{p.get("user")}@{p.get("host")}:{p.get("port", 5432)}/{p["dbname"]}"\n'
        f'password = "${{DM_TEST_PGPW}}"\n'
    )
    result = CliRunner().invoke(main, ["--config", str(config), "backup", "d"], env={"DM_TEST_PGPW": "bad-secret-77"})
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "wrong password" in lines[0] and "bad-secret-77" not in result.output
