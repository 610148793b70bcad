"""Round trips through the core API against the real MariaDB (fixture ``mysql_db``)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from data_manager.api import DataManager
from data_manager.errors import CorruptBackupError, SourceError

pymysql = pytest.importorskip("pymysql")
pytestmark = pytest.mark.mariadb


def _get(info, key):
    return info[key] if isinstance(info, dict) else getattr(info, key)


@pytest.fixture
def server(mysql_db):
    """host, port, user, password of the test server, the fixture's fresh database, and a way to make more."""
    s = {k: _get(mysql_db, k) for k in ("host", "port", "user", "password", "database")}
    made: list[str] = []

    def new_database(prefix: str = "dmt") -> str:
        name = f"{prefix}_{secrets.token_hex(4)}"
        sql(s, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        made.append(name)
        return name

    s["new_database"] = new_database
    s["made"] = made
    yield s
    for name in made:
        sql(s, f"DROP DATABASE IF EXISTS `{name}`")


def connect(s, database=None):
    return pymysql.connect(host=s["host"], port=int(s["port"]), user=s["user"], password=s["password"],
                           database=database, charset="utf8mb4", autocommit=True)


def sql(s, statements: str, database=None, args=None):
    conn = connect(s, database)
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_mode = ''")
            rows = None
            for stmt in [x for x in statements.split(";\n") if x.strip()]:
                cur.execute(stmt, args)
                rows = cur.fetchall()
            return rows
    finally:
        conn.close()


def manager(tmp_path: Path, s, **source) -> DataManager:
    src = {"name": "db", "type": "memsql", "host": s["host"], "port": int(s["port"]), "user": s["user"],
           "password": s["password"], **source}
    return DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "datasets": {"d": {"storage": "local", "sources": [src]}},
    })


def mysqldump(s, database: str) -> str:
    """The database as mysqldump sees it, with its name replaced by DB."""
    tool = shutil.which("mariadb-dump") or shutil.which("mysqldump")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mysqldump is missing (Debian package mariadb-client)")
        pytest.skip("mysqldump is missing (Debian package mariadb-client)")
    out = subprocess.run(
        [tool, f"-h{s['host']}", f"-P{s['port']}", f"-u{s['user']}", "--skip-dump-date", "--single-transaction",
         "--skip-comments", "--hex-blob", "--tz-utc", database],
        env={**os.environ, "MYSQL_PWD": s["password"]}, capture_output=True, check=True,
    ).stdout.decode()
    return out.replace(f"`{database}`", "`DB`")


def scratch_left(s) -> list[str]:
    """Scratch databases left beside this test's databases (others may be restoring on the same server)."""
    ours = {s["database"][:42], *(name[:42] for name in s["made"])}
    return [r[0] for r in sql(s, "SHOW DATABASES")
            if ("__dmr_" in r[0] or "__dmo_" in r[0]) and r[0].split("__dm")[0] in ours]


# ------------------------------------------------------------------ the data

TYPES = r"""
CREATE TABLE parent (
  id INT NOT NULL PRIMARY KEY,
  label VARCHAR(20) NOT NULL UNIQUE
) ENGINE=InnoDB;
CREATE TABLE types (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED, mi MEDIUMINT, miu MEDIUMINT UNSIGNED,
  i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
  d65 DECIMAL(65,30), d10 DECIMAL(10,2) UNSIGNED,
  f FLOAT, dbl DOUBLE, f72 FLOAT(7,2),
  dt DATE, dtm DATETIME, dtm6 DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL, tm TIME(6), y YEAR,
  c CHAR(10), vc VARCHAR(255), tx TEXT, lt LONGTEXT, latin VARCHAR(20) CHARACTER SET latin1,
  bn BINARY(4), vb VARBINARY(300), bl BLOB, lb LONGBLOB,
  js JSON, en ENUM('a','b','c d'), st SET('x','y','z'), b10 BIT(10), b64 BIT(64),
  parent_id INT NULL,
  gen BIGINT AS (i * 2) VIRTUAL,
  gens VARCHAR(300) AS (CONCAT(IFNULL(vc, ''), '!')) STORED,
  KEY k_vc (vc(20)),
  UNIQUE KEY u_bi (bi),
  KEY k_multi (dt, ti),
  CONSTRAINT fk_parent FOREIGN KEY (parent_id) REFERENCES parent (id)
) ENGINE=InnoDB AUTO_INCREMENT=1;
CREATE TABLE `weird ``name`` ü` (`col with space` INT, `ünï` VARCHAR(5)) ENGINE=InnoDB;
CREATE TABLE empty_table (x INT) ENGINE=InnoDB;
CREATE TABLE no_columns_but_generated_and_one (a INT, g INT AS (a + 1) VIRTUAL);
INSERT INTO parent VALUES (1, 'one'), (2, 'two');
INSERT INTO `weird ``name`` ü` VALUES (1, 'ü'), (NULL, NULL), (3, '');
INSERT INTO no_columns_but_generated_and_one (a) VALUES (1), (NULL)
"""

ROWS = [
    # minimums, zero dates, NULL-free
    "(ti, tiu, si, siu, mi, miu, i, iu, bi, biu, d65, d10, f, dbl, f72, dt, dtm, dtm6, ts, tm, y, c, vc, tx, lt,"
    " latin, bn, vb, bl, lb, js, en, st, b10, b64, parent_id) VALUES (-128, 0, -32768, 0, -8388608, 0,"
    " -2147483648, 0, -9223372036854775808, 0, '-99999999999999999999999999999999999.999999999999999999999999999999',"
    " 0, -3.4028235e38, -1.7976931348623157e308, -99999.99, '0000-00-00', '0000-00-00 00:00:00',"
    " '0000-00-00 00:00:00.000000', '1970-01-01 00:00:01.000000', '-838:59:59.000000', 0, '', '', '', '',"
    " '', X'00000000', X'', X'', X'', '{}', '', '', b'0', 0, 1)",
    # maximums
    "(ti, tiu, si, siu, mi, miu, i, iu, bi, biu, d65, d10, f, dbl, f72, dt, dtm, dtm6, ts, tm, y, c, vc, tx, lt,"
    " latin, bn, vb, bl, lb, js, en, st, b10, b64, parent_id) VALUES (127, 255, 32767, 65535, 8388607, 16777215,"
    " 2147483647, 4294967295, 9223372036854775807, 18446744073709551615,"
    " '99999999999999999999999999999999999.999999999999999999999999999999', 99999999.99, 3.4028235e38,"
    " 1.7976931348623157e308, 99999.99, '9999-12-31', '9999-12-31 23:59:59', '9999-12-31 23:59:59.999999',"
    " '2038-01-19 03:14:07.999999', '838:59:59.000000', 2155, 'abcdefghij', REPEAT('x', 255), REPEAT('t', 70000),"
    " REPEAT('long ', 100000), 'àéîõü', X'FFFFFFFF', X'00FF', X'FF', X'00', '[1, 2.5, \"x\", null, true]', 'c d',"
    " 'x,y,z', b'1111111111', 18446744073709551615, 2)",
    # awkward values
    "(ti, f, dbl, d65, d10, dt, dtm6, ts, tm, y, c, vc, tx, js, en, st, b10, latin, i) VALUES (1, 0.1,"
    " 0.30000000000000004, '0.000000000000000000000000000001', 0.01, '2024-02-29', '2024-03-31 02:30:00.123456',"
    " '2024-03-31 01:30:00.000001', '00:00:00.000001', 1901, 'trail  ', 'quote '' dq \" back \\\\ nul \\0 z \\Z',"
    " 'line\\nbreak\\r\\ttab', '{\"emoji\": \"🙂\", \"nested\": {\"a\": [1, {\"b\": null}]}}', 'a', 'y',"
    " b'1010101010', 'Zürich', 21)",
    "(f, dbl, vc, tx, i) VALUES (1.17549435e-38, 4.9406564584124654e-324, '🙂😀🎉 emoji', 'mixed ñ ß 中文 🙂', 3)",
    "(f, dbl, i) VALUES (1e-45, 2.2250738585072014e-308, 4)",
    "(f, dbl, i) VALUES (-0.0, -0.0, 5)",
    "(f, dbl, i) VALUES (16777217, 9007199254740993, 6)",
    "(f, dbl, i) VALUES (3.14159265358979, 3.141592653589793, 7)",
    "(f, dbl, i) VALUES (123456.789, 1e22, 8)",
    "(f, dbl, i) VALUES (0.3, 1e-7, 9)",
    # all NULL (but the key)
    "(i) VALUES (NULL)",
    # empty strings, distinct from NULL
    "(c, vc, tx, bn, vb, bl, js, i) VALUES ('', '', '', X'', X'', X'', '\"\"', 10)",
]


def make_database(s, db: str) -> None:
    sql(s, TYPES, db)
    for values in ROWS:
        sql(s, f"INSERT INTO types {values}", db)
    sql(s, "INSERT INTO types (vb, bl, lb, i) VALUES (%s, %s, %s, 100)", db,
        (bytes(range(256)), bytes(range(256)) * 4, bytes(reversed(range(256))) * 1000))
    # AUTO_INCREMENT ahead of the rows: the restored table must continue from 50, not from max(id)+1
    sql(s, "INSERT INTO types (id, i) VALUES (49, 49);\nDELETE FROM types WHERE id = 49", db)
    sql(s, """
CREATE VIEW v_parent AS SELECT p.id, p.label, COUNT(t.id) AS n FROM parent p LEFT JOIN types t ON t.parent_id = p.id GROUP BY p.id, p.label;
CREATE VIEW a_view_of_view AS SELECT id, label FROM v_parent WHERE id > 1;
CREATE SQL SECURITY INVOKER VIEW v_text AS SELECT CONCAT(vc, ' 🙂') AS x, id FROM types WHERE vc IS NOT NULL
""", db)


def exact_same(s, a: str, b: str, table: str) -> None:
    """Every row of ``table`` equal in ``a`` and ``b``, value by value, bit for bit (floats too)."""
    cols = [r[0] for r in sql(s, "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA=%s "
                                 "AND TABLE_NAME=%s", args=(a, table))]
    cond = " AND ".join(f"x.`{c}` <=> y.`{c}` AND CAST(x.`{c}` AS BINARY) <=> CAST(y.`{c}` AS BINARY)"
                        for c in cols)
    n_a = sql(s, f"SELECT COUNT(*) FROM `{a}`.`{table}`")[0][0]
    n_b = sql(s, f"SELECT COUNT(*) FROM `{b}`.`{table}`")[0][0]
    same = sql(s, f"SELECT COUNT(*) FROM `{a}`.`{table}` x JOIN `{b}`.`{table}` y ON {cond}")[0][0]
    if same != n_a:
        for c in cols:
            bad = sql(s, f"SELECT x.id, x.`{c}`, y.`{c}` FROM `{a}`.`{table}` x JOIN `{b}`.`{table}` y ON x.id = y.id "
                         f"WHERE NOT (x.`{c}` <=> y.`{c}` AND CAST(x.`{c}` AS BINARY) <=> CAST(y.`{c}` AS BINARY))")
            print(c, bad)
    assert n_a == n_b == same, (table, n_a, n_b, same)


# ------------------------------------------------------------------ tests


def test_round_trip_every_type_into_another_database(tmp_path, server):
    src = server["database"]
    make_database(server, src)
    dm = manager(tmp_path, server, database=src)
    result = dm.backup("d")
    assert result.size > 0
    target = server["new_database"]()
    sql(server, f"DROP DATABASE `{target}`")  # restore creates it
    dm.restore("d", "latest", overrides={"db": {"database": target}})
    assert mysqldump(server, target) == mysqldump(server, src)
    exact_same(server, src, target, "types")
    # AUTO_INCREMENT continues where the original would
    sql(server, "INSERT INTO types (i) VALUES (1234)", target)
    assert sql(server, "SELECT MAX(id) FROM types", target)[0][0] == 50
    # the views work in the target
    assert sql(server, "SELECT COUNT(*) FROM a_view_of_view", target)[0][0] == 1
    assert scratch_left(server) == []
    dm.verify("d")


@pytest.mark.parametrize("options", [{"parallel": 1}, {"parallel": 3, "compress": False}])
def test_round_trip_with_one_reader_or_three_uncompressed(tmp_path, server, options):
    src = server["database"]
    make_database(server, src)
    sql(server, "CREATE TABLE sparse (id BIGINT PRIMARY KEY, v VARCHAR(20));\n"
                "INSERT INTO sparse SELECT seq * 1000003, CONCAT('v', seq) FROM seq_1_to_3000;\n"
                "INSERT INTO sparse VALUES (-9223372036854775808, 'min'), (9223372036854775807, 'max')", src)
    dm = manager(tmp_path, server, database=src, **options)
    dm.backup("d")
    target = server["new_database"]()
    dm.restore("d", "latest", overrides={"db": {"database": target}})
    assert mysqldump(server, target) == mysqldump(server, src)
    exact_same(server, src, target, "types")
    assert scratch_left(server) == []


def test_restore_in_place_replaces_tables_and_views(tmp_path, server):
    db = server["database"]
    make_database(server, db)
    before = mysqldump(server, db)
    dm = manager(tmp_path, server, database=db)
    dm.backup("d")
    sql(server, """
DROP VIEW a_view_of_view;
DELETE FROM types WHERE id < 5;
CREATE TABLE added_later (x INT);
CREATE VIEW v_added AS SELECT 1 AS one;
DROP TABLE empty_table;
CREATE VIEW empty_table AS SELECT 2 AS two
""", db)
    dm.restore("d", "latest")
    assert mysqldump(server, db) == before
    assert scratch_left(server) == []


def test_several_databases_and_restore_elsewhere(tmp_path, server):
    a = server["database"]
    b = server["new_database"]()
    make_database(server, a)
    sql(server, "CREATE TABLE other (id INT PRIMARY KEY, v VARCHAR(10)) DEFAULT CHARSET=latin1;\n"
                "INSERT INTO other VALUES (1, 'ä'), (2, NULL)", b)
    dm = manager(tmp_path, server, databases=[a, b])
    dm.backup("d")
    x, y = server["new_database"](), server["new_database"]()
    dm.restore("d", "latest", overrides={"db": {"databases": [x, y]}})
    assert mysqldump(server, x) == mysqldump(server, a)
    assert mysqldump(server, y) == mysqldump(server, b)


def test_failed_restore_leaves_target_as_it_was(tmp_path, server):
    db = server["database"]
    make_database(server, db)
    dm = manager(tmp_path, server, database=db)
    dm.backup("d")
    sql(server, "INSERT INTO parent VALUES (3, 'three')", db)
    changed = mysqldump(server, db)
    # damage one rows artifact in the storage
    victim = next(p for p in (tmp_path / "backups").rglob("*.rows*") if "types" in p.name)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(CorruptBackupError):
        dm.restore("d", "latest")
    assert mysqldump(server, db) == changed
    assert scratch_left(server) == []


def test_failed_swap_leaves_target_as_it_was(tmp_path, server):
    """A trigger on a current table makes RENAME TABLE to another database fail: nothing may change."""
    db = server["database"]
    make_database(server, db)
    dm = manager(tmp_path, server, database=db)
    dm.backup("d")
    sql(server, "CREATE TRIGGER tr BEFORE INSERT ON parent FOR EACH ROW SET NEW.label = UPPER(NEW.label);\n"
                "INSERT INTO parent VALUES (3, 'three')", db)
    changed = mysqldump(server, db)
    with pytest.raises(SourceError) as err:
        dm.restore("d", "latest")
    assert "\n" not in str(err.value)
    assert mysqldump(server, db) == changed
    assert scratch_left(server) == []


def test_backup_is_one_snapshot_while_writers_run(tmp_path, server):
    db = server["database"]
    sql(server, "CREATE TABLE a (id INT PRIMARY KEY, v BIGINT NOT NULL);\n"
                "CREATE TABLE b (id INT PRIMARY KEY, v BIGINT NOT NULL);\n"
                "INSERT INTO a SELECT seq, 100 FROM seq_1_to_20000;\n"
                "INSERT INTO b SELECT seq, 100 FROM seq_1_to_20000", db)
    stop = threading.Event()
    moved = [0]

    def writer():
        conn = connect(server, db)
        try:
            with conn.cursor() as cur:
                while not stop.is_set():
                    k = moved[0] % 20000 + 1
                    cur.execute("BEGIN")
                    cur.execute("UPDATE a SET v = v - 7 WHERE id = %s", (k,))
                    cur.execute("UPDATE b SET v = v + 7 WHERE id = %s", (20001 - k,))
                    cur.execute("COMMIT")
                    moved[0] += 1
        finally:
            conn.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        while moved[0] < 20:
            time.sleep(0.01)
        dm = manager(tmp_path, server, database=db)
        dm.backup("d")
        n_during = moved[0]
    finally:
        stop.set()
        t.join()
    target = server["new_database"]()
    dm.restore("d", "latest", overrides={"db": {"database": target}})
    total = sql(server, "SELECT (SELECT SUM(v) FROM a) + (SELECT SUM(v) FROM b)", target)[0][0]
    assert total == 4_000_000 and n_during > 20


@pytest.mark.parametrize("change, expect", [
    ({"password": "not-the-pw-123"}, "access denied for user"),
    ({"port": 1}, ":1: server unreachable"),
    ({"database": "no_such_db_dm"}, "unknown database 'no_such_db_dm'"),
])
def test_errors_are_one_clear_line(tmp_path, server, change, expect):
    s = {**server, **{k: v for k, v in change.items() if k != "database"}}
    dm = manager(tmp_path, s, database=change.get("database", server["database"]))
    with pytest.raises(SourceError) as err:
        dm.backup("d")
    msg = str(err.value)
    assert expect in msg and "\n" not in msg and "not-the-pw-123" not in msg, msg


def test_cli_bad_password_one_line_and_nonzero(tmp_path, server):
    from click.testing import CliRunner

    from data_manager.cli import main

    config = tmp_path / "dm.toml"
    config.write_text(
        f'[storages.local]\ntype = "filesystem"\nroot = "{tmp_path / "b"}"\n'
        f'[datasets.d]\nstorage = "local"\n[[datasets.d.sources]]\nname = "db"\ntype = "memsql"\n'
        f'host = "{server["host"]}"\nport = {server["port"]}\nuser = "{server["user"]}"\n'
        f'password = "${{DM_TEST_PW}}"\ndatabase = "{server["database"]}"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "backup", "d"],
                                env={"DM_TEST_PW": "not-the-password-xyz"})
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "access denied" in lines[0], result.output
    assert "not-the-password-xyz" not in result.output
    assert "Traceback" not in result.output


def test_cli_restore_elsewhere_with_set(tmp_path, server):
    from click.testing import CliRunner

    from data_manager.cli import main

    db = server["database"]
    sql(server, "CREATE TABLE t (id INT PRIMARY KEY, v TEXT);\nINSERT INTO t VALUES (1, 'a'), (2, 'b')", db)
    config = tmp_path / "dm.toml"
    config.write_text(
        f'[storages.local]\ntype = "filesystem"\nroot = "{tmp_path / "b"}"\n'
        f'[datasets.d]\nstorage = "local"\n[[datasets.d.sources]]\nname = "db"\ntype = "memsql"\n'
        f'host = "{server["host"]}"\nport = {server["port"]}\nuser = "{server["user"]}"\n'
        f'password = "{server["password"]}"\ndatabase = "{db}"\n')
    runner = CliRunner()
    assert runner.invoke(main, ["--config", str(config), "backup", "d"]).exit_code == 0
    target = server["new_database"]()
    r = runner.invoke(main, ["--config", str(config), "restore", "--yes", "--set", f"db.database={target}", "d"])
    assert r.exit_code == 0, r.output
    assert sql(server, "SELECT id, v FROM t ORDER BY id", target) == ((1, "a"), (2, "b"))


def test_without_the_commit_block_one_connection_reads(tmp_path, server, monkeypatch, caplog):
    import pymysql

    from data_manager_memsql import source as source_module

    def refuse(*args, **kwargs):
        raise pymysql.err.OperationalError(1227, "Access denied; you need the RELOAD privilege")

    monkeypatch.setattr(source_module, "open_shared_snapshot", refuse)
    src = server["database"]
    make_database(server, src)
    dm = manager(tmp_path, server, database=src, parallel=3)
    with caplog.at_level("WARNING"):
        dm.backup("d")
    assert "reading with one connection" in caplog.text
    target = server["new_database"]()
    dm.restore("d", "latest", overrides={"db": {"database": target}})
    assert mysqldump(server, target) == mysqldump(server, src)
    assert scratch_left(server) == []


class _Artifacts:
    """An ArtifactSet in memory, for a backup written by an earlier format."""

    source_name = "db"

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.info = files, {"mode": "portable"}

    def names(self) -> list[str]:
        return sorted(self.files)

    def size(self, name: str) -> int:
        return len(self.files[name])

    def open(self, name: str):
        import io

        return io.BytesIO(self.files[name])

    def verify(self, names=None) -> None:
        pass


def test_a_format_2_backup_still_restores(server):
    """Format 2 kept VALUES text that the server wrote (QUOTE() of the stored bytes); it restores as is."""
    from data_manager.types import Settings
    from data_manager_memsql.rowformat import MAGIC_VALUES, Column
    from data_manager_memsql.source import MemsqlSource

    frame = b"(1,'it\\'s \\\\ \xc3\xa9',X'00ff',2.5),(2,NULL,'',NULL)"
    rows = MAGIC_VALUES + len(frame).to_bytes(4, "big") + frame + bytes(4) + (2).to_bytes(8, "big")
    columns = [Column("id", "int", "int(11)", None, False, False), Column("s", "varchar", "varchar(20)", "utf8mb4"),
               Column("b", "varbinary", "varbinary(4)"), Column("f", "float", "float")]
    schema = {"format": "data-manager-memsql/2", "databases": [{
        "name": "old", "charset": "utf8mb4", "collation": "utf8mb4_general_ci", "views": [], "skipped": [],
        "tables": [{"name": "t", "artifact": "tables/old/t.rows", "rows": 2, "columns": [c.to_json() for c in columns],
                    "ddl": "CREATE TABLE `t` (`id` int(11) NOT NULL PRIMARY KEY, `s` varchar(20), "
                           "`b` varbinary(4), `f` float) DEFAULT CHARSET=utf8mb4"}]}]}
    target = server["new_database"]()
    src = MemsqlSource("db", Settings({k: server[k] for k in ("host", "port", "user", "password")} | {"database": target},
                                      where="test"))
    src.restore(_Artifacts({"schema.json": json.dumps(schema).encode(), "tables/old/t.rows": rows}))
    assert sql(server, "SELECT id, s, HEX(b), f FROM t ORDER BY id", target) == \
        ((1, "it's \\ é", "00FF", 2.5), (2, None, "", None))


def test_mariadb_inet_and_uuid_types_round_trip(tmp_path, server):
    """INET4/INET6/UUID go back as their text: as a binary string, a 16-character INET6 text would be
    taken as the 16 raw bytes of an address."""
    src = server["database"]
    sql(server, "CREATE TABLE t (id INT PRIMARY KEY, a INET6, u UUID, i4 INET4);\n"
                "INSERT INTO t VALUES (1, '1:2:3:4:5:6:7:88', '123e4567-e89b-12d3-a456-426614174000', '1.2.3.4'),"
                " (2, '::1', NULL, '255.255.255.255'), (3, NULL, UUID(), NULL)", src)
    dm = manager(tmp_path, server, database=src)
    dm.backup("d")
    target = server["new_database"]()
    dm.restore("d", "latest", overrides={"db": {"database": target}})
    query = "SELECT id, CAST(a AS CHAR), CAST(u AS CHAR), CAST(i4 AS CHAR) FROM t ORDER BY id"
    assert sql(server, query, target) == sql(server, query, src)
    assert sql(server, query, target)[0][1] == "1:2:3:4:5:6:7:88"


def test_server_warnings_while_inserting_are_logged(tmp_path, server, caplog):
    """An ENUM's '' error value is stored and restored, but loads with a warning: the log says so."""
    src = server["database"]
    sql(server, "CREATE TABLE t (id INT PRIMARY KEY, e ENUM('a','b'));\nINSERT INTO t VALUES (1, 'zz'), (2, 'a')", src)
    dm = manager(tmp_path, server, database=src)
    dm.backup("d")
    target = server["new_database"]()
    with caplog.at_level("WARNING"):
        dm.restore("d", "latest", overrides={"db": {"database": target}})
    assert sql(server, "SELECT id, e + 0 FROM t ORDER BY id", target) == ((1, 0), (2, 1))
    assert "1 warning(s) while inserting, first: Warning 1265 Data truncated for column 'e'" in caplog.text


def test_a_row_above_max_allowed_packet_is_one_clear_line(tmp_path, server, monkeypatch):
    """A row bigger than the target server takes in one packet: refused by name, the target untouched."""
    from data_manager_memsql.source import MemsqlSource

    src = server["database"]
    sql(server, "CREATE TABLE big (id INT PRIMARY KEY, b LONGBLOB);\n"
                "INSERT INTO big VALUES (1, REPEAT('x', 300000)), (2, 'small')", src)
    dm = manager(tmp_path, server, database=src)
    dm.backup("d")
    real = MemsqlSource._load_database

    def small_packets(self, cur, artifacts, db, stage, max_packet, fmt):  # as a server with a 200 kB limit
        return real(self, cur, artifacts, db, stage, 200_000, fmt)

    monkeypatch.setattr(MemsqlSource, "_load_database", small_packets)
    target = server["new_database"]()
    with pytest.raises(SourceError, match=r"big: an INSERT of \d+ bytes exceeds the server's max_allowed_packet "
                                          r"\(200000\); raise it"):
        dm.restore("d", "latest", overrides={"db": {"database": target}})
    assert sql(server, "SHOW TABLES", target) == () and scratch_left(server) == []
