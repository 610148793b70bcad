"""A backup is an attacker's input (issue 16, point 9), and TLS to the server (point 12).

The crafted-backup restores run against the real MariaDB (fixture ``mysql_db``): each must end in one
CorruptBackupError line (exit 4) before a single statement changed the server.
"""

from __future__ import annotations

import copy
import io
import json
import ssl
from pathlib import Path
from typing import Any

import pytest

from data_manager.errors import ConfigError, CorruptBackupError, ExitCode, SourceError
from data_manager.types import Settings
from data_manager_memsql import source as source_module
from data_manager_memsql.source import FORMAT, FORMATS, MemsqlSource
from data_manager_memsql.validate import check_schema, check_table_ddl, check_view_ddl

TABLE_DDL = ("CREATE TABLE `t` (\n  `id` int(11) NOT NULL,\n  `s` varchar(20) DEFAULT 'a;b' COMMENT 'x''; DROP',\n"
             "  PRIMARY KEY (`id`)\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci")


def schema_doc(**db_over: Any) -> dict[str, Any]:
    db = {"name": "src", "charset": "utf8mb4", "collation": "utf8mb4_general_ci", "skipped": [],
          "views": [{"name": "v", "ddl": "CREATE ALGORITHM=UNDEFINED SQL SECURITY DEFINER VIEW `v` AS select 1 AS `x`",
                     "collation_connection": "utf8mb4_general_ci"}],
          "tables": [{"name": "t", "ddl": TABLE_DDL, "artifact": "tables/src/t.rows", "rows": 0, "wire": [[3, 0]],
                      "columns": [{"name": "id", "data_type": "int", "column_type": "int(11)", "charset": None,
                                   "generated": False, "nullable": False}]}]}
    db.update(db_over)
    return {"format": FORMAT, "databases": [db]}


# --------------------------------------------------------------------------- schema.json checks, no server


def test_a_genuine_schema_passes():
    check_schema(schema_doc(), FORMATS, FORMAT)
    # what SHOW CREATE TABLE writes for partitions and MariaDB's system versioning
    check_table_ddl("CREATE TABLE `p` (\n  `id` int NOT NULL\n) ENGINE=InnoDB\n /*!50100 PARTITION BY RANGE (`id`)\n"
                    "(PARTITION `p0` VALUES LESS THAN (10) ENGINE = InnoDB) */", "p", "t")
    check_table_ddl("CREATE TABLE `h` (\n  `x` int\n) ENGINE=InnoDB WITH SYSTEM VERSIONING", "h", "t")
    check_table_ddl("CREATE ROWSTORE REFERENCE TABLE `r` (`x` int)", "r", "t")
    check_table_ddl("CREATE TABLE `a``b` (`x` int)", "a`b", "t")
    check_view_ddl("CREATE VIEW `v` AS select ';' AS `x`", "v", "t")


@pytest.mark.parametrize("over, needle", [
    ({"charset": "utf8mb4 COLLATE utf8mb4_bin"}, "charset"),
    ({"charset": "latin1; DROP DATABASE x"}, "charset"),
    ({"collation": "utf8mb4_bin ENCRYPTION='Y'"}, "collation"),
    ({"collation": None}, "collation"),
    ({"name": ""}, "database name"),
    ({"name": "x" * 65}, "database name"),
    ({"tables": "t"}, "tables is not a list"),
])
def test_crafted_database_values_are_refused(over, needle):
    with pytest.raises(CorruptBackupError, match=needle) as e:
        check_schema(schema_doc(**over), FORMATS, FORMAT)
    assert "\n" not in str(e.value)


def _table(**over: Any) -> dict[str, Any]:
    doc = schema_doc()
    doc["databases"][0]["tables"][0].update(over)
    return doc


@pytest.mark.parametrize("over, needle", [
    ({"ddl": "DROP DATABASE mysql"}, "not a CREATE TABLE of `t`"),
    ({"ddl": "CREATE TABLE `mysql`.`t` (`x` int)"}, "not a CREATE TABLE of `t`"),
    ({"ddl": "CREATE TABLE `other` (`x` int)"}, "not a CREATE TABLE of `t`"),
    ({"ddl": "CREATE TABLE `t` (`x` int) SELECT * FROM mysql.user"}, "fills the table with SELECT"),
    ({"ddl": "CREATE TABLE `t` (`x` int) /*!50000 AS SELECT password FROM mysql.user */"}, "fills the table"),
    ({"ddl": "CREATE TABLE `t` (`x` int) TABLE mysql.user"}, "fills the table with TABLE"),
    ({"ddl": "CREATE TABLE `t` (`x` int); DROP DATABASE mysql"}, "holds a ';'"),
    ({"ddl": "CREATE TABLE `t` (`x` int)) ; (("}, "not one plain CREATE TABLE"),
    ({"ddl": ["CREATE TABLE `t` (`x` int)"]}, "not text"),
    ({"name": "t\0"}, "table name"),
    ({"rows": "3"}, "row count"),
    ({"rows": -1}, "row count"),
    ({"wire": [["3", 0]]}, "wire type"),
    ({"columns": [{"name": "id", "data_type": "int) ; DROP", "column_type": "int"}]}, "column type"),
    ({"columns": [{"name": "", "data_type": "int", "column_type": "int"}]}, "column name"),
])
def test_crafted_table_values_are_refused(over, needle):
    with pytest.raises(CorruptBackupError, match=needle):
        check_schema(_table(**over), FORMATS, FORMAT)


@pytest.mark.parametrize("view, needle", [
    ({"name": "v", "ddl": "CREATE VIEW `mysql`.`v` AS select 1"}, "not a CREATE VIEW of `v`"),
    ({"name": "v", "ddl": "CREATE DEFINER=`root`@`%` VIEW `v` AS select 1"}, "not a CREATE VIEW"),
    ({"name": "v", "ddl": "CREATE VIEW `v` AS select 1; DROP DATABASE mysql"}, "not one statement"),
    ({"name": "v", "ddl": "GRANT ALL ON *.* TO 'x'@'%'"}, "not a CREATE VIEW"),
    ({"name": "v", "ddl": "CREATE VIEW `v` AS select 1", "collation_connection": "x' OR 1"}, "collation_connection"),
    ({"name": "t", "ddl": "CREATE VIEW `t` AS select 1"}, "listed twice"),
])
def test_crafted_view_values_are_refused(view, needle):
    with pytest.raises(CorruptBackupError, match=needle):
        check_schema(schema_doc(views=[view]), FORMATS, FORMAT)


def test_crafted_native_record_is_refused():
    src = MemsqlSource("db", Settings({"user": "u", "database": "d", "native_backup": "s3://b/p"}, where="t"))

    class Native:
        info = {"mode": "native"}

        def __init__(self, doc: Any) -> None:
            self.doc = doc

        def open(self, name: str) -> io.BytesIO:
            return io.BytesIO(json.dumps(self.doc).encode() if not isinstance(self.doc, bytes) else self.doc)

    for doc, needle in ((b"{", "unreadable"), ({"databases": [{"name": "d", "path": "b/p' CREDENTIALS '{}"}]}, "S3 path"),
                        ({"databases": [{"name": 7, "path": "b/p"}]}, "database name")):
        with pytest.raises(CorruptBackupError, match=needle):
            src.restore(Native(doc))


# --------------------------------------------------------------------------- crafted backups, real server


def _sql(db: Any, statement: str) -> Any:
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall()
    finally:
        conn.close()


class _Artifacts:
    """A real backup's artifacts, with schema.json replaced."""

    source_name = "db"

    def __init__(self, files: dict[str, bytes], info: dict[str, Any]) -> None:
        self.files, self.info = files, info

    def names(self) -> list[str]:
        return sorted(self.files)

    def size(self, name: str) -> int:
        return len(self.files[name])

    def open(self, name: str) -> io.BytesIO:
        return io.BytesIO(self.files[name])

    def verify(self, names: Any = None) -> None:
        pass


@pytest.fixture
def real_backup(mysql_db, tmp_path: Path) -> tuple[Any, dict[str, Any], dict[str, bytes]]:
    """A genuine backup of a database with a table and a view: (db, its schema.json, its artifacts)."""
    db = mysql_db
    for stmt in ("CREATE TABLE t (id INT PRIMARY KEY, s VARCHAR(10))", "INSERT INTO t VALUES (1, 'one'), (2, 'two')",
                 "CREATE VIEW v AS SELECT id FROM t"):
        _sql(db, stmt)
    files: dict[str, bytes] = {}

    class Sink:
        def open(self, name: str, compression: str = "auto") -> Any:
            buf = io.BytesIO()
            buf.close = lambda: files.__setitem__(name, buf.getvalue())  # type: ignore[method-assign]
            return _Closing(buf)

        def set_info(self, **info: Any) -> None:
            files["<info>"] = json.dumps(info).encode()

    src = MemsqlSource("db", Settings({"host": db.host, "port": db.port, "user": db.user, "password": db.password,
                                       "database": db.database}, where="test"))
    src.backup(Sink())
    info = json.loads(files.pop("<info>"))
    return db, json.loads(files["schema.json"]), files | {"<info>": json.dumps(info).encode()}


class _Closing:
    def __init__(self, buf: io.BytesIO) -> None:
        self.buf = buf

    def write(self, data: bytes) -> int:
        return self.buf.write(data)

    def __enter__(self) -> _Closing:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.buf.close()


CRAFTED = [
    ("charset", lambda d: d.update(charset="utf8mb4 COLLATE utf8mb4_bin, DEFAULT ENCRYPTION='N'")),
    ("collation", lambda d: d.update(collation="utf8mb4_bin; DROP DATABASE dm")),
    ("ddl", lambda d: d["tables"][0].update(ddl="CREATE TABLE `t` (`id` int PRIMARY KEY, `s` varchar(10)) "
                                                "SELECT 3 AS id, CURRENT_USER() AS s")),
    ("ddl", lambda d: d["tables"][0].update(ddl=d["tables"][0]["ddl"].replace("CREATE TABLE `t`", "CREATE TABLE `dm`.`t`"))),
    ("view", lambda d: d["views"][0].update(ddl="CREATE VIEW `v` AS select 1; DROP TABLE t")),
    ("rows", lambda d: d["tables"][0].update(rows="2")),
]


@pytest.mark.mariadb
@pytest.mark.parametrize("what, craft", CRAFTED, ids=[f"{w}{i}" for i, (w, _) in enumerate(CRAFTED)])
def test_a_crafted_schema_restores_nothing(real_backup, what, craft):
    db, schema, files = real_backup
    info = json.loads(files.pop("<info>"))
    src = MemsqlSource("db", Settings({"host": db.host, "port": db.port, "user": db.user, "password": db.password,
                                       "database": db.database}, where="test"))
    crafted = copy.deepcopy(schema)
    craft(crafted["databases"][0])
    before_dbs = _sql(db, "SHOW DATABASES")
    before = _sql(db, "SELECT id, s FROM t ORDER BY id")
    with pytest.raises(CorruptBackupError) as e:
        src.restore(_Artifacts(files | {"schema.json": json.dumps(crafted).encode()}, info))
    text = str(e.value)
    assert "\n" not in text and text.startswith("source 'db': schema.json") and e.value.exit_code == ExitCode.CORRUPT
    assert _sql(db, "SHOW DATABASES") == before_dbs  # not even a scratch database was made
    assert _sql(db, "SELECT id, s FROM t ORDER BY id") == before
    src.restore(_Artifacts(files, info))  # the genuine schema.json still restores
    assert _sql(db, "SELECT id, s FROM t ORDER BY id") == ((1, "one"), (2, "two"))


# --------------------------------------------------------------------------- TLS


def make(**values: Any) -> MemsqlSource:
    return MemsqlSource("db", Settings({"user": "u", "database": "d", **values}, where="test.toml, source db"))


@pytest.mark.parametrize("values, key", [
    ({"tls_ca_file": "/ca.pem"}, "tls_ca_file"),
    ({"tls_verify": False}, "tls_verify"),
    ({"tls": True, "tls_key_file": "/k.pem"}, "tls_key_file"),
    ({"tls": True, "tls_verify": False, "tls_ca_file": "/ca.pem"}, "tls_ca_file"),
    ({"tls": "yes"}, "tls"),
])
def test_tls_settings_errors_name_the_key(values, key):
    with pytest.raises(ConfigError) as e:
        make(**values)
    assert e.value.key == key


class _Stop(Exception):
    pass


def _captured_connect(monkeypatch, src: MemsqlSource) -> dict[str, Any]:
    import pymysql

    seen: dict[str, Any] = {}

    def fake(**kw: Any) -> Any:
        seen.update(kw)
        raise _Stop

    monkeypatch.setattr(pymysql, "connect", fake)
    with pytest.raises(_Stop):
        src._connect()
    return seen


def test_tls_gives_pymysql_a_verifying_context(monkeypatch):
    ca = Path(ssl.get_default_verify_paths().cafile or "")
    if not ca.is_file():
        pytest.skip("no system CA bundle to load as tls_ca_file")
    seen = _captured_connect(monkeypatch, make(tls=True, tls_ca_file=str(ca), host="db1.lab"))
    ctx = seen["ssl"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert seen["host"] == "db1.lab"
    seen = _captured_connect(monkeypatch, make(tls=True, tls_verify=False))
    assert seen["ssl"].verify_mode == ssl.CERT_NONE and not seen["ssl"].check_hostname
    assert "ssl" not in _captured_connect(monkeypatch, make())  # without tls: as before


def test_tls_bad_ca_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        make(tls=True, tls_ca_file=str(tmp_path / "missing.pem"))._connect()
    assert e.value.key == "tls_ca_file" and "cannot load it" in str(e.value)


def test_tls_refuses_a_connection_the_server_reports_unencrypted(monkeypatch):
    """Older pymysql goes on in clear when the server offers no TLS: the source asks the server."""
    import pymysql

    closed = []

    class Conn:
        def close(self) -> None:
            closed.append(True)

    monkeypatch.setattr(pymysql, "connect", lambda **kw: Conn())
    monkeypatch.setattr(source_module, "check_in_use", lambda conn: False)
    with pytest.raises(SourceError, match="tls = true, but the connection to 127.0.0.1:3306 is not encrypted"):
        make(tls=True, tls_verify=False)._connect()
    assert closed


@pytest.mark.mariadb
def test_tls_against_the_test_server_without_tls_is_one_line(mysql_db):
    """The test server has no TLS: with tls = true the source must refuse it, not fall back to clear text."""
    src = MemsqlSource("db", Settings({"host": mysql_db.host, "port": mysql_db.port, "user": mysql_db.user,
                                       "password": mysql_db.password, "database": mysql_db.database, "tls": True,
                                       "tls_verify": False}, where="test"))
    with pytest.raises(SourceError) as e:
        src.check()
    assert "TLS with" in str(e.value) and "\n" not in str(e.value)
