"""Source ``memsql``: databases of a MemSQL / SingleStore, MariaDB or MySQL server, over the MySQL protocol.

Backup (portable path, every server):

* on MariaDB/MySQL ``START TRANSACTION WITH CONSISTENT SNAPSHOT`` at REPEATABLE READ, so every table of
  every configured database is read at the same instant; with ``parallel`` > 1 on the main connection and
  N reader connections, opened while commits are blocked for those few statements
  (:mod:`.parallel`; SingleStore: one connection, READ COMMITTED);
* per database: default charset/collation, ``SHOW FULL TABLES``, ``SHOW CREATE TABLE`` and the columns
  of ``information_schema.COLUMNS`` per table, ``SHOW CREATE VIEW`` per view (DEFINER removed);
* per table one rows artifact (:mod:`.rowformat`): the rows as the server's binary-protocol packets
  (a prepared statement), kept as they arrived (:mod:`.wire`); tables with a one-column integer key in key ranges of ~1 MiB read by
  the readers in parallel and written in key order, other tables through one statement;
* ``schema.json`` last, with the DDL, the columns and every table's row count.

Restore builds every database in a scratch database beside it (``<target>__dmr_<random>``): DDL, rows as
multi-row prepared INSERTs (the row packets' values sent back as parameters, batches cut on a helper
thread), then the views as a check. Only when everything is loaded, every artifact read to EOF
(checksums checked) and every row count matched, one ``RENAME TABLE`` statement moves the target's
current tables aside (``<target>__dmo_<random>``) and the restored ones in, for all databases at once;
then the views are created in the target and the aside/scratch databases dropped.

On SingleStore with ``native_backup = "s3://..."`` the server's own ``BACKUP DATABASE ... TO S3`` is used
instead (see :mod:`.singlestore`).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from typing import Any
from urllib.parse import quote

from data_manager import tls
from data_manager.errors import CorruptBackupError, SourceError
from data_manager.threads import put_unless_stopped
from data_manager.types import ArtifactSet, ArtifactSink, Settings, Source

from . import singlestore, wire
from .parallel import OrderedRanges, ReaderPool, open_shared_snapshot
from .tls import check_in_use
from .rowformat import (
    MAGIC_VALUES,
    Column,
    FrameReader,
    FrameWriter,
    MAX_PARAMS,
    ParamBatches,
    insert_prefix,
    param_types,
    placeholders,
    quote_ident,
    select_rows,
    stored_columns,
)
from .validate import check_native, check_schema

log = logging.getLogger(__name__)

FORMAT = "data-manager-memsql/3"
# 1: VALUES text, strings as X'<hex>' (restored with the utf8mb4 connection charset); 2: VALUES text,
# strings as QUOTE() of their bytes (restored with character_set_connection = binary);
# 3: binary-protocol row packets, restored as the parameters of prepared INSERTs.
FORMATS = ("data-manager-memsql/1", "data-manager-memsql/2", FORMAT)
SCHEMA = "schema.json"
NATIVE = "native.json"
FRAME_BYTES = 1 << 20  # target size of one frame, and of one INSERT at restore
_INTEGER_TYPES = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint"}
_GENERATED = re.compile(r"\b(VIRTUAL|STORED|PERSISTENT|COMPUTED)\b", re.I)
_DEFINER = re.compile(r"\s+DEFINER\s*=\s*(?:`(?:[^`]|``)*`|'[^']*'|[^\s@]+)@(?:`(?:[^`]|``)*`|'[^']*'|\S+)", re.I)
_KNOWN = {
    "host", "port", "user", "password", "database", "databases", "connect_timeout", "parallel", "compress",
    "native_backup", "native_backup_config", "native_backup_credentials", *tls.KEYS,
}


def strip_definer(view_ddl: str) -> str:
    """``CREATE ALGORITHM=.. DEFINER=`u`@`h` SQL SECURITY .. VIEW`` without the DEFINER clause."""
    head, sep, tail = view_ddl.partition(" VIEW ")
    return _DEFINER.sub("", head, count=1) + sep + tail


def artifact_name(database: str, table: str) -> str:
    """``tables/<db>/<table>.rows`` with every character outside ``[A-Za-z0-9_-]`` %-escaped."""

    def esc(s: str) -> str:
        return quote(s, safe="").replace(".", "%2E").replace("~", "%7E")

    return f"tables/{esc(database)}/{esc(table)}.rows"


def scratch_name(target: str, tag: str) -> str:
    """A fresh database name beside ``target`` (at most 64 characters, MySQL's limit)."""
    return f"{target[:42]}__dm{tag}_{secrets.token_hex(4)}"


def _json_setting(settings: Settings, key: str) -> dict[str, Any] | None:
    value = settings.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise settings.error(key, "must be a table or a JSON object") from None
    if not isinstance(value, dict):
        raise settings.error(key, "must be a table or a JSON object")
    return value


def _prefetch(items: Iterable[bytes], depth: int = 3) -> Iterator[bytes]:
    """Iterate ``items`` on a helper thread (reading and cutting the frames overlaps the server's work)."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        return put_unless_stopped(q, item, stop)  # False: the consumer is gone

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer
            put(("error", exc))

    thread = threading.Thread(target=produce, name="dm-memsql-read", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        thread.join()


class MemsqlSource(Source):
    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        settings.check_known(_KNOWN)
        self.host = settings.get_str("host", "127.0.0.1")
        self.port = settings.get_int("port", 3306, minimum=1)
        self.user = settings.get_str("user")
        password = settings.get("password", "")
        if not isinstance(password, str):
            raise settings.error("password", "must be a string")
        self.password = password
        if "database" in settings and "databases" in settings:
            raise settings.error("databases", "give either database (one name) or databases (a list), not both")
        if "database" in settings:
            self.databases = [settings.get_str("database")]
        elif "databases" in settings:
            self.databases = settings.get_list("databases")
        else:
            raise settings.error("database", "missing (required: database, or databases as a list)")
        if not self.databases or any(not d or len(d) > 64 for d in self.databases):
            raise settings.error("databases", "must be one or more database names of 1 to 64 characters")
        if len(set(self.databases)) != len(self.databases):
            raise settings.error("databases", "names a database twice")
        self.connect_timeout = settings.get_int("connect_timeout", 10, minimum=1)
        self.tls = tls.TlsSettings(settings, name)
        # 1: on a server without idle cores one reader is as fast (measured; see the docs) and needs no lock
        self.parallel = settings.get_int("parallel", 1, minimum=1)
        # false: rows artifacts stored uncompressed (zstd is most of the client's CPU time; see the docs)
        self.compress = settings.get_bool("compress", True)
        self.native: singlestore.S3Target | None = None
        uri = settings.get("native_backup")
        if uri is not None:
            if not isinstance(uri, str):
                raise settings.error("native_backup", "must be a string like s3://bucket/prefix")
            try:
                self.native = singlestore.S3Target.parse(
                    uri, _json_setting(settings, "native_backup_config"),
                    _json_setting(settings, "native_backup_credentials"))
            except ValueError as exc:
                raise settings.error("native_backup", str(exc)) from None

    # ------------------------------------------------------------------ connections and errors

    def describe(self) -> str:
        return f"mysql://{self.user}@{self.host}:{self.port}/{','.join(self.databases)}"

    def _fail(self, exc: BaseException, doing: str) -> SourceError:
        """One clear line for a pymysql error (never the password: the server's messages hold none)."""
        args = getattr(exc, "args", ())
        code = args[0] if args and isinstance(args[0], int) else None
        msg = " ".join(str(args[1] if len(args) > 1 else exc).split())
        where = f"{self.host}:{self.port}"
        if code == 1045:
            text = f"access denied for user {self.user!r} at {where} (wrong user or password)"
        elif code == 2026 or (code == 2003 and ("SSL" in msg or "certificate" in msg.lower())):
            text = f"TLS with {where} failed ({msg})"
        elif code in (2002, 2003, 2005, 2006):
            text = f"cannot connect to {where}: server unreachable ({msg})"
        elif code == 1049:
            text = f"{msg.rstrip('.')} on {where}"
        elif code == 1044:
            text = f"{msg} (user {self.user!r} lacks privileges on {where})"
        elif code == 2013:
            text = f"lost the connection to {where} while {doing}"
        elif code == 1412:
            text = "a table's definition changed during the backup (DDL ran meanwhile); run the backup again"
        elif code in (1153, 1301) or "max_allowed_packet" in msg:
            text = f"{doing}: a row or statement exceeds the server's max_allowed_packet ({msg})"
        elif code is not None:
            text = f"{doing}: MySQL error {code}: {msg}"
        else:
            text = f"{doing}: {msg or type(exc).__name__}"
        return SourceError(f"source {self.name!r}: {text}")

    def _connect(self) -> Any:
        import pymysql

        context = self.tls.context()
        try:
            conn = pymysql.connect(
                host=self.host, port=self.port, user=self.user, password=self.password, charset="utf8mb4",
                autocommit=True, connect_timeout=self.connect_timeout, local_infile=False,
                **({"ssl": context} if context is not None else {}),
            )
        except pymysql.err.MySQLError as exc:
            raise self._fail(exc, "connecting") from None
        if context is not None:
            try:
                encrypted = check_in_use(conn)
            except pymysql.err.MySQLError as exc:
                conn.close()
                raise self._fail(exc, "connecting") from None
            if not encrypted:
                conn.close()
                raise SourceError(f"source {self.name!r}: tls = true, but the connection to {self.host}:{self.port} "
                                  "is not encrypted (the server does not offer TLS)")
        return conn

    def _missing_databases(self, cur: Any, names: list[str]) -> list[str]:
        cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
        present = {r[0] for r in cur.fetchall()}
        return [n for n in names if n not in present]

    def _require_databases(self, cur: Any) -> None:
        missing = self._missing_databases(cur, self.databases)
        if missing:
            raise SourceError(f"source {self.name!r}: unknown database {missing[0]!r} on {self.host}:{self.port}")

    def check(self) -> None:
        import pymysql

        conn = self._connect()
        try:
            with conn.cursor() as cur:
                self._require_databases(cur)
                for db in self.databases:
                    cur.execute(f"SHOW FULL TABLES FROM {quote_ident(db)}")
                    cur.fetchall()
        except pymysql.err.MySQLError as exc:
            raise self._fail(exc, "checking the databases") from None
        finally:
            conn.close()

    # ------------------------------------------------------------------ backup

    def backup(self, sink: ArtifactSink) -> None:
        import pymysql

        conn = self._connect()
        try:
            cur = conn.cursor()
            cur.execute("SELECT VERSION()")
            version = cur.fetchone()[0]
            self._version = version
            memsql = singlestore.memsql_version(cur)
            self._require_databases(cur)
            if memsql and self.native is not None:
                self._native_backup(cur, sink, version, memsql)
                return
            if self.native is not None:
                log.warning("source %s: native_backup applies to SingleStore only; %s gets the portable backup",
                            self.name, version)
            self._read_session(conn)
            pool = None
            if memsql:
                consistency = "read-committed"  # SingleStore has no multi-statement snapshot
            else:
                pool = self._shared_snapshot(conn)
                consistency = "snapshot"
            if pool is None:  # one connection reads everything
                pool = ReaderPool([conn], owned=False)
            started = time.monotonic()
            try:
                databases = [self._backup_database(conn, pool, sink, db) for db in self.databases]
            finally:
                pool.close()
            schema = {"format": FORMAT, "server_version": version, "memsql_version": memsql,
                      "consistency": consistency, "databases": databases}
            with sink.open(SCHEMA) as out:
                out.write(json.dumps(schema, indent=1, ensure_ascii=False).encode())
            if not memsql:
                cur.execute("COMMIT")
            rows = sum(t["rows"] for d in databases for t in d["tables"])
            sink.set_info(format=FORMAT, mode="portable", server_version=version, memsql_version=memsql,
                          consistency=consistency, readers=len(pool), databases=self.databases, rows=rows,
                          tables=sum(len(d["tables"]) for d in databases))
            log.info("source %s: %d rows in %.1fs", self.name, rows, time.monotonic() - started)
        except pymysql.err.MySQLError as exc:
            raise self._fail(exc, "backing up") from None
        finally:
            conn.close()

    @staticmethod
    def _read_session(conn: Any, rows_only: bool = False) -> None:
        """Session settings of a connection that reads rows. ``rows_only``: it reads nothing else, so its
        results can stay binary (strings as their stored bytes, never converted) for good."""
        with conn.cursor() as cur:
            cur.execute("SET SESSION time_zone = '+00:00'")
            if rows_only:
                cur.execute("SET SESSION character_set_results = binary")

    def _shared_snapshot(self, conn: Any) -> ReaderPool | None:
        """Open the snapshot on ``conn`` and, with ``parallel`` > 1, on as many reader connections.

        The readers share the snapshot only if it is opened on all of them while commits are blocked
        (:func:`.parallel.open_shared_snapshot`, needs RELOAD). Without that privilege the backup reads
        with one connection; the snapshot is then opened on ``conn`` alone.
        """
        import pymysql

        if self.parallel > 1:
            readers: list[Any] = []
            try:
                for _ in range(self.parallel):
                    readers.append(self._connect())
                    self._read_session(readers[-1], rows_only=True)
                lock_conn = self._connect()
                try:
                    open_shared_snapshot(lock_conn, [conn, *readers], mariadb="mariadb" in self._version.lower())
                finally:
                    lock_conn.close()
                return ReaderPool(readers)
            except pymysql.err.MySQLError as exc:
                for r in readers:
                    r.close()
                log.warning("source %s: cannot block commits to share one snapshot among %d connections (%s); "
                            "reading with one connection", self.name, self.parallel, exc.args[-1])
        with conn.cursor() as cur:
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        return None

    def _backup_database(self, conn: Any, pool: ReaderPool, sink: ArtifactSink, db: str) -> dict[str, Any]:
        cur = conn.cursor()
        cur.execute("SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
                    "WHERE SCHEMA_NAME = %s", (db,))
        charset, collation = cur.fetchone()
        cur.execute(f"SHOW FULL TABLES FROM {quote_ident(db)}")
        objects = sorted((r[0], r[1].upper()) for r in cur.fetchall())
        tables, views, skipped = [], [], []
        for name, kind in objects:
            if kind == "BASE TABLE":
                tables.append(self._backup_table(conn, pool, sink, db, name))
            elif kind == "VIEW":
                views.append(name)
            else:
                skipped.append({"name": name, "type": kind})
                log.warning("source %s: %s.%s is a %s, which is not backed up", self.name, db, name, kind)
        view_defs = []
        if views:
            cur.execute(f"USE {quote_ident(db)}")  # SHOW CREATE VIEW then leaves out this database's name
            for name in views:
                cur.execute(f"SHOW CREATE VIEW {quote_ident(name)}")
                row = cur.fetchone()
                view_defs.append({"name": name, "ddl": strip_definer(row[1]),
                                  "collation_connection": row[3] if len(row) > 3 else None})
        return {"name": db, "charset": charset, "collation": collation, "tables": tables, "views": view_defs,
                "skipped": skipped}

    def _backup_table(self, conn: Any, pool: ReaderPool, sink: ArtifactSink, db: str, table: str) -> dict[str, Any]:
        cur = conn.cursor()
        cur.execute(f"SHOW CREATE TABLE {quote_ident(db)}.{quote_ident(table)}")
        ddl = cur.fetchone()[1]
        cur.execute("SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME, EXTRA, IS_NULLABLE "
                    "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
                    "ORDER BY ORDINAL_POSITION", (db, table))
        columns = [Column(r[0], r[1].lower(), r[2], r[3], bool(_GENERATED.search(r[4] or "")), r[5] != "NO")
                   for r in cur.fetchall()]
        cur.execute("SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s "
                    "AND TABLE_NAME = %s AND INDEX_NAME = 'PRIMARY'", (db, table))
        key = [r[0] for r in cur.fetchall()]
        by_name = {c.name: c for c in columns}
        integer_key = key[0] if len(key) == 1 and key[0] in by_name and by_name[key[0]].data_type in _INTEGER_TYPES \
            else None
        name = artifact_name(db, table)
        types: list[tuple[int, int]] = []
        # the main connection reads rows (a stream, or the ranges with no readers of its own): binary
        # results for this table only, its other queries want text
        shared = integer_key is None or conn in pool.conns
        with sink.open(name, compression="auto" if self.compress else "none") as out:
            frames = FrameWriter(out)
            if any(not c.generated for c in columns):
                if shared:
                    cur.execute("SET SESSION character_set_results = binary")
                try:
                    if integer_key is not None:
                        types = self._read_ranges(conn, pool, frames, db, table, columns, integer_key)
                    else:
                        types = self._read_stream(conn, frames, db, table, columns)
                finally:
                    if shared and conn.open:
                        conn.cursor().execute("SET SESSION character_set_results = utf8mb4")
            frames.finish()
        return {"name": table, "ddl": ddl, "columns": [c.to_json() for c in columns], "artifact": name,
                "rows": frames.rows, "wire": types}

    def _read_stream(self, conn: Any, frames: FrameWriter, db: str, table: str,
                     columns: list[Column]) -> list[tuple[int, int]]:
        """All rows through one statement, cut into frames of about ``FRAME_BYTES``; returns the wire
        types of the result columns."""
        pending: list[bytes] = []
        counts = [0, 0]  # rows, bytes pending

        def emit(packets: bytes, rows: int) -> None:
            pending.append(packets)
            counts[0] += rows
            counts[1] += len(packets)
            if counts[1] >= FRAME_BYTES:
                frames.write_frame(b"".join(pending), counts[0])
                pending.clear()
                counts[:] = [0, 0]

        stmt = wire.prepare(conn, select_rows(db, table, columns))
        wire.execute_rows(conn, stmt, (), emit)
        wire.close(conn, stmt)
        frames.write_frame(b"".join(pending), counts[0])
        return [list(c) for c in stmt.columns]

    def _read_ranges(self, conn: Any, pool: ReaderPool, frames: FrameWriter, db: str, table: str,
                     columns: list[Column], key: str) -> list[tuple[int, int]]:
        """Key range by key range, one frame each; the ranges are read by the pool's connections in
        parallel and written in key order. Returns the wire types of the result columns."""
        cur = conn.cursor()
        qt, qk = f"{quote_ident(db)}.{quote_ident(table)}", quote_ident(key)
        cur.execute(f"SELECT MIN({qk}), MAX({qk}) FROM {qt}")
        lo, top = cur.fetchone()
        sql = f"{select_rows(db, table, columns)} WHERE {qk} BETWEEN ? AND ?"
        statements = {id(c): wire.prepare(c, sql) for c in pool.conns}  # one per reader, closed below
        try:
            if lo is not None:
                after = f"SELECT MIN({qk}) FROM {qt} WHERE {qk} > %s"

                def fetch(rconn: Any, lo: int, hi: int) -> tuple[list[tuple[bytes, int]], int, int | None]:
                    chunks: list[bytes] = []
                    rows = wire.execute_rows(rconn, statements[id(rconn)], (int(lo), int(hi)),
                                             lambda packets, _: chunks.append(packets))
                    if rows:
                        body = b"".join(chunks)
                        return [(body, rows)], len(body), None
                    with rconn.cursor() as rcur:
                        rcur.execute(after, (hi,))
                        return [], 0, rcur.fetchone()[0]

                for body, rows in OrderedRanges(pool, fetch, lo, top, FRAME_BYTES):
                    frames.write_frame(body, rows)
        finally:
            for c in pool.conns:
                if c.open:
                    wire.close(c, statements[id(c)])
        return [list(c) for c in next(iter(statements.values())).columns]

    # ------------------------------------------------------------------ restore

    def _targets(self, sources: list[str]) -> list[str]:
        """Which target database each backed-up database goes to."""
        if set(self.databases) == set(sources):
            return list(sources)
        if len(self.databases) == len(sources):
            return list(self.databases)
        raise SourceError(
            f"source {self.name!r}: the backup holds {len(sources)} database(s) ({', '.join(sources)}) but "
            f"{len(self.databases)} target(s) are configured ({', '.join(self.databases)}); "
            "set database/databases to as many names")

    def restore(self, artifacts: ArtifactSet) -> None:
        import pymysql

        if artifacts.info.get("mode") == "native":
            self._native_restore(artifacts)
            return
        if SCHEMA not in artifacts.names():
            raise CorruptBackupError(f"source {self.name!r}: the backup has no {SCHEMA}")
        with artifacts.open(SCHEMA) as f:
            try:
                schema = json.loads(f.read())
            except ValueError as exc:
                raise CorruptBackupError(f"source {self.name!r}: {SCHEMA} is unreadable ({exc})") from None
        try:  # before anything is sent: the backup's values become SQL text
            dbs = check_schema(schema, FORMATS, FORMAT)
        except CorruptBackupError as exc:
            raise CorruptBackupError(f"source {self.name!r}: {exc}") from None
        targets = self._targets([d["name"] for d in dbs])
        scratch = [scratch_name(t, "r") for t in targets]
        aside = [scratch_name(t, "o") for t in targets]
        conn = self._connect()
        created: list[str] = []
        try:
            cur = conn.cursor()
            self._restore_session(cur)
            cur.execute("SELECT @@max_allowed_packet")
            max_packet = int(cur.fetchone()[0])
            for db, stage in zip(dbs, scratch):
                cur.execute(f"CREATE DATABASE {quote_ident(stage)} CHARACTER SET {db['charset']} "
                            f"COLLATE {db['collation']}")
                created.append(stage)
                self._load_database(cur, artifacts, db, stage, max_packet, schema["format"])
            leftover = set(artifacts.names()) - {SCHEMA} - {t["artifact"] for d in dbs for t in d["tables"]}
            if leftover:
                artifacts.verify(sorted(leftover))
            self._swap(cur, dbs, targets, scratch, aside, created)
        except pymysql.err.MySQLError as exc:
            raise self._fail(exc, "restoring") from None
        finally:
            conn.close()
            self._drop_quietly(created)

    def _restore_session(self, cur: Any) -> None:
        cur.execute("SET SESSION time_zone = '+00:00'")
        # not strict, as mysqldump's replay: stored values strict mode refuses (an ENUM's '' error
        # value) must load; zero dates load as they are; NO_AUTO_VALUE_ON_ZERO keeps id 0
        cur.execute("SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO'")
        cur.execute("SET SESSION foreign_key_checks = 0")
        cur.execute("SET SESSION unique_checks = 0")

    def _load_database(self, cur: Any, artifacts: ArtifactSet, db: dict[str, Any], stage: str, max_packet: int,
                       fmt: str) -> None:
        cur.execute(f"USE {quote_ident(stage)}")
        for table in db["tables"]:
            cur.execute(table["ddl"])
        if fmt == FORMATS[1]:  # string literals are the columns' bytes: taken as they are, never converted
            cur.execute("SET SESSION character_set_connection = binary")
        for table in db["tables"]:
            columns = [Column.from_json(c) for c in table["columns"]]
            label = f"{db['name']}.{table['name']}"
            with artifacts.open(table["artifact"]) as f:
                where = f"source {self.name!r}: {table['artifact']}"
                if fmt == FORMAT:
                    inserted, frames = self._insert_binary(cur.connection, artifacts, f, table, columns, max_packet,
                                                           where, label)
                else:
                    inserted, frames = self._insert_values(cur, f, table, columns, max_packet, where, label)
            if frames.rows != table["rows"] or inserted != frames.rows:
                raise CorruptBackupError(f"source {self.name!r}: {label}: {inserted} rows inserted, "
                                         f"{table['rows']} backed up")
        cur.execute("SET NAMES utf8mb4")
        self._create_views(cur, db["views"])  # in the scratch database: proves they will work

    def _insert_binary(self, conn: Any, artifacts: ArtifactSet, f: Any, table: dict[str, Any], columns: list[Column],
                       max_packet: int, where: str, label: str) -> tuple[int, FrameReader]:
        """Format 3: the rows go back as the parameters of a prepared multi-row INSERT, in the binary form
        they were read in (no value is decoded or formatted on either side)."""
        frames = FrameReader(f, where)
        ncols = len(stored_columns(columns))
        try:
            if not isinstance(table.get("wire"), list):
                raise CorruptBackupError("schema.json has no wire types for this table")
            types = param_types(table["wire"], columns)
        except CorruptBackupError as exc:
            raise CorruptBackupError(f"{where}: {exc}") from None
        row_sql = placeholders(columns)
        prefix = insert_prefix(table["name"], columns)
        # rows per INSERT: about FRAME_BYTES of values, at most MAX_PARAMS parameters; one prepared
        # statement per row count (in practice this one and the table's last, shorter batch)
        per_row = artifacts.size(table["artifact"]) / max(table["rows"], 1)
        rows_per = max(1, min(MAX_PARAMS // max(ncols, 1), int(FRAME_BYTES / max(per_row, 1))))
        # an execute packet holds 2 bytes of type and 1 bit of NULL per parameter, then the values
        batches = ParamBatches(ncols, rows_per, max_packet - (2 * ncols + 1) * rows_per - 4096, where).batches(frames)
        statements: dict[int, wire.Statement] = {}
        inserted = warned = 0
        first_warning = ""
        try:
            # batches are cut on the reader thread while the server inserts; it ends before f closes
            with closing(_prefetch(batches)) as ready:
                for rows, nulls, values in ready:
                    size = len(values) + len(nulls) + 2 * ncols * rows + 64
                    if size > max_packet:  # one row alone is bigger than any batch may be
                        raise SourceError(
                            f"source {self.name!r}: {label}: an INSERT of {size} bytes exceeds the server's "
                            f"max_allowed_packet ({max_packet}); raise it")
                    stmt = statements.get(rows)
                    if stmt is None:
                        stmt = statements[rows] = wire.prepare(conn, (prefix + b",".join([row_sql] * rows)).decode())
                    done, warnings = wire.execute_insert(conn, stmt, types * rows, nulls, values)
                    inserted += done
                    if warnings and not warned:
                        with conn.cursor() as wcur:
                            wcur.execute("SHOW WARNINGS LIMIT 1")
                            first_warning = " ".join(str(v) for v in (wcur.fetchone() or ()))
                    warned += warnings
        finally:
            for stmt in statements.values():
                if conn.open:
                    wire.close(conn, stmt)
        if warned:  # e.g. an ENUM's '' error value loads with a warning; a value the type changed would too
            log.warning("source %s: %s: the server reported %d warning(s) while inserting, first: %s",
                        self.name, table["artifact"], warned, first_warning)
        return inserted, frames

    def _insert_values(self, cur: Any, f: Any, table: dict[str, Any], columns: list[Column], max_packet: int,
                       where: str, label: str) -> tuple[int, FrameReader]:
        """Formats 1 and 2: each frame is VALUES text already, sent as one INSERT."""
        frames = FrameReader(f, where, MAGIC_VALUES)
        prefix = insert_prefix(table["name"], columns)
        inserted = 0
        with closing(_prefetch(frames)) as bodies:  # the reader thread ends before f closes
            for body in bodies:
                if len(prefix) + len(body) + 64 > max_packet:
                    raise SourceError(
                        f"source {self.name!r}: {label}: an INSERT of {len(body) + len(prefix)} bytes "
                        f"exceeds the server's max_allowed_packet ({max_packet}); raise it")
                inserted += cur.execute(prefix + body)
        return inserted, frames

    def _create_views(self, cur: Any, views: list[dict[str, Any]]) -> None:
        """Create views, retrying those that use a view not created yet."""
        import pymysql

        pending = list(views)
        while pending:
            failed: list[tuple[dict[str, Any], Exception]] = []
            for view in pending:
                try:
                    if view.get("collation_connection"):
                        cur.execute("SET SESSION collation_connection = %s", (view["collation_connection"],))
                    cur.execute(view["ddl"])
                except pymysql.err.MySQLError as exc:
                    failed.append((view, exc))
            cur.execute("SET NAMES utf8mb4")
            if len(failed) == len(pending):
                view, exc = failed[0]
                raise self._fail(exc, f"creating view {view['name']!r}") from None
            pending = [v for v, _ in failed]

    def _swap(self, cur: Any, dbs: list[dict[str, Any]], targets: list[str], scratch: list[str], aside: list[str],
              created: list[str]) -> None:
        """Move the targets' tables aside and the restored ones in, in one RENAME TABLE."""
        import pymysql

        made_targets: list[str] = []
        dropped_views: list[tuple[str, str]] = []  # (target, ddl) of views removed before the swap
        old_views: dict[str, list[str]] = {}
        renames: list[str] = []
        try:
            missing = set(self._missing_databases(cur, targets))
            for db, target, stage, old in zip(dbs, targets, scratch, aside):
                qt, qs, qo = quote_ident(target), quote_ident(stage), quote_ident(old)
                if target in missing:
                    cur.execute(f"CREATE DATABASE {qt} CHARACTER SET {db['charset']} COLLATE {db['collation']}")
                    made_targets.append(target)
                    current: list[tuple[str, str]] = []
                else:
                    cur.execute(f"SHOW FULL TABLES FROM {qt}")
                    current = [(r[0], r[1].upper()) for r in cur.fetchall()]
                cur.execute(f"CREATE DATABASE {qo}")
                created.append(old)
                new_tables = {t["name"] for t in db["tables"]}
                old_views[target] = [n for n, kind in current if kind == "VIEW"]
                for name, kind in current:
                    if kind == "VIEW" and name in new_tables:  # a view in the way of a restored table
                        cur.execute(f"SHOW CREATE VIEW {qt}.{quote_ident(name)}")
                        dropped_views.append((target, cur.fetchone()[1]))
                        cur.execute(f"DROP VIEW {qt}.{quote_ident(name)}")
                    elif kind != "VIEW":
                        renames.append(f"{qt}.{quote_ident(name)} TO {qo}.{quote_ident(name)}")
                renames += [f"{qs}.{quote_ident(t)} TO {qt}.{quote_ident(t)}" for t in sorted(new_tables)]
            if renames:
                cur.execute("RENAME TABLE " + ", ".join(renames))
        except BaseException:
            for target, ddl in dropped_views:
                try:
                    cur.execute(f"USE {quote_ident(target)}")
                    cur.execute(ddl)
                except pymysql.err.MySQLError:
                    log.error("source %s: could not put back a view of %s", self.name, target)
            self._drop_quietly(made_targets)
            raise
        # The restored tables are in place. Views and the database defaults follow.
        for db, target in zip(dbs, targets):
            qt = quote_ident(target)
            cur.execute(f"USE {qt}")
            for name in old_views[target]:
                cur.execute(f"DROP VIEW IF EXISTS {qt}.{quote_ident(name)}")
            try:
                self._create_views(cur, db["views"])
            except SourceError as exc:
                raise SourceError(f"{exc} (the tables of {target!r} are restored, its views are not)") from None
            cur.execute(f"ALTER DATABASE {qt} CHARACTER SET {db['charset']} COLLATE {db['collation']}")

    def _drop_quietly(self, databases: list[str]) -> None:
        """Drop scratch databases on a fresh connection (the restore's may be broken)."""
        if not databases:
            return
        import pymysql

        try:
            conn = self._connect()
        except SourceError as exc:
            log.error("source %s: cannot drop scratch databases %s: %s", self.name, ", ".join(databases), exc)
            return
        try:
            with conn.cursor() as cur:
                for name in databases:
                    try:
                        cur.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}")
                    except pymysql.err.MySQLError as exc:
                        log.error("source %s: cannot drop scratch database %s: %s", self.name, name, exc)
        finally:
            conn.close()
        databases.clear()

    # ------------------------------------------------------------------ SingleStore native backup

    def _native_backup(self, cur: Any, sink: ArtifactSink, version: str, memsql: str) -> None:
        assert self.native is not None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
        done = []
        for db in self.databases:
            path = self.native.path_for(stamp)
            sql = singlestore.backup_sql(db, self.native, path)
            log.info("source %s: %s", self.name, singlestore.redacted(sql, self.native))
            cur.execute(sql)
            done.append({"name": db, "path": path})
        record = {"format": FORMAT, "mode": "native", "server_version": version, "memsql_version": memsql,
                  "databases": done}
        with sink.open(NATIVE) as out:
            out.write(json.dumps(record, indent=1).encode())
        sink.set_info(format=FORMAT, mode="native", server_version=version, memsql_version=memsql,
                      consistency="native-backup", databases=self.databases, native=done)

    def _native_restore(self, artifacts: ArtifactSet) -> None:
        import pymysql

        if self.native is None:
            raise SourceError(f"source {self.name!r}: this backup is a SingleStore native backup; configure "
                              "native_backup (and its credentials) to restore it")
        with artifacts.open(NATIVE) as f:
            try:
                record = json.loads(f.read())
            except ValueError as exc:
                raise CorruptBackupError(f"source {self.name!r}: {NATIVE} is unreadable ({exc})") from None
        try:
            entries = check_native(record)
        except CorruptBackupError as exc:
            raise CorruptBackupError(f"source {self.name!r}: {exc}") from None
        targets = self._targets([e["name"] for e in entries])
        conn = self._connect()
        try:
            cur = conn.cursor()
            present = set(targets) - set(self._missing_databases(cur, targets))
            if present:
                raise SourceError(
                    f"source {self.name!r}: RESTORE DATABASE needs a database that does not exist; "
                    f"{sorted(present)[0]!r} does (drop it, or restore under another name with --set)")
            for entry, target in zip(entries, targets):
                cur.execute(singlestore.restore_sql(entry["name"], self.native, entry["path"], target))
        except pymysql.err.MySQLError as exc:
            raise self._fail(exc, "restoring a native backup") from None
        finally:
            conn.close()
