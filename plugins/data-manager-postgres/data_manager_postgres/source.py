"""Source ``postgres``: one PostgreSQL database, dumped by ``pg_dump`` and restored by ``pg_restore`` + ``psql``.

Backup runs ``pg_dump --format=custom --compress=0`` (one consistent snapshot, as pg_dump always takes) and
streams its stdout straight into one artifact, which the core compresses with zstd on its own thread: no
temporary file, bounded memory, and zstd is several times faster than pg_dump's own zlib.

Restore is one transaction on the target database. The artifact is fed to ``pg_restore --file=-
--single-transaction`` (archive in on stdin, SQL script out on stdout), and the script is relayed to
``psql -v ON_ERROR_STOP=1`` after a prelude that empties what the backup covers (every schema of the
database, or the configured ``schemas``). Two guards make sure nothing is committed unless the whole
artifact was read and its checksum matched:

* the feeder holds back the artifact's last chunk until the next read returned EOF and the BLAKE3 digest
  was verified; pg_restore cannot finish (and so cannot print the script's final ``COMMIT``) without it;
* the relay holds back the script's last chunk (which holds that ``COMMIT``) until pg_restore has exited 0
  and the feeder has verified the artifact; on any failure psql is killed, and the server rolls back.

See docs/sources/postgres.md for exactly what is restored and the measurements behind these choices.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

from data_manager.errors import CorruptBackupError, SourceError
from data_manager.types import ArtifactSet, ArtifactSink, Settings, Source

from .connection import (SSLMODES, TLS_KEYS, Target, connect, explain_connect_error, is_local, one_line, parse_target,
                         query_error)
from .tools import StderrTail, enlarge_pipe, find_tool, server_major, tool_version

log = logging.getLogger(__name__)

CHUNK = 1 << 20
HOLD = 1 << 20  # the tail of the SQL script kept from psql until the backup checked out
ARTIFACT = "database.pgdump"
FORMAT = "pg_dump-custom"
KEYS = {"dsn", "password", "database", "schemas", "exclude_tables", "exclude_table_data", "no_owner",
        "no_privileges", "bin_dir", "lock_timeout", *TLS_KEYS}
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")


def _pattern(name: str) -> str:
    """An exact name as a pg_dump pattern: inside double quotes, wildcards and case are literal."""
    return '"' + name.replace('"', '""') + '"'


def _table_pattern(name: str) -> str:
    schema, dot, table = name.partition(".")
    return f"{_pattern(schema)}.{_pattern(table)}" if dot else _pattern(name)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class PostgresSource(Source):
    """See the module docstring and docs/sources/postgres.md."""

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        settings.check_known(KEYS)
        dsn = settings.get_str("dsn")
        password = settings.get("password")
        if password is not None and not isinstance(password, str):
            raise settings.error("password", "must be a string")
        database = settings.get_str("database", None)
        tls = {k: settings.get_str(k) if k == "sslmode" or settings.get(k) == "system" else str(settings.get_path(k))
               for k in TLS_KEYS if k in settings}
        if tls.get("sslmode", "prefer") not in SSLMODES:
            raise settings.error("sslmode", f"must be one of {', '.join(SSLMODES)}, not {tls['sslmode']!r}")
        try:
            self.target: Target = parse_target(dsn, password, database, tls)
        except ValueError as exc:
            raise settings.error("dsn", str(exc)) from None
        if "sslmode" not in self.target.params and not os.environ.get("PGSSLMODE") \
                and not is_local(self.target.params):
            # libpq's default, kept for compatibility: "prefer" falls back to a clear-text connection
            # without a word and never checks the server's certificate
            log.warning("source %s: no sslmode for %s: libpq's default 'prefer' may connect unencrypted and does "
                        "not verify the server; set sslmode = \"verify-full\" (with sslrootcert) or \"require\", "
                        "or \"prefer\"/\"disable\" to accept that", name, self.target.where)
        self.schemas = settings.get_list("schemas", [])
        self.exclude_tables = settings.get_list("exclude_tables", [])
        self.exclude_table_data = settings.get_list("exclude_table_data", [])
        for key, values in (("schemas", self.schemas), ("exclude_tables", self.exclude_tables),
                            ("exclude_table_data", self.exclude_table_data)):
            if any(not v for v in values):
                raise settings.error(key, "names must not be empty")
        if any(s in SYSTEM_SCHEMAS or s.startswith("pg_") for s in self.schemas):
            raise settings.error("schemas", "system schemas (pg_catalog, information_schema, pg_*) are not backed up")
        self.no_owner = settings.get_bool("no_owner", False)
        self.no_privileges = settings.get_bool("no_privileges", False)
        self.bin_dir: Path | None = settings.get_path("bin_dir", None)
        self.lock_timeout = settings.get_int("lock_timeout", 120, minimum=0)
        self.what = f"source {name!r}"

    def describe(self) -> str:
        return self.target.describe()

    # ------------------------------------------------------------------ checks

    def _server_facts(self, conn: Any) -> dict[str, Any]:
        row = conn.execute(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version'),"
            " current_database(), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,"
            " pg_database_size(d.oid)"
            " FROM pg_database d WHERE d.datname = current_database()"
        ).fetchone()
        keys = ("server_version_num", "server_version", "database", "encoding", "lc_collate", "lc_ctype",
                "database_size")
        return dict(zip(keys, row))

    def _dump_tool(self, facts: dict[str, Any]) -> tuple[str, int, str]:
        pg_dump = find_tool("pg_dump", self.bin_dir, self.what)
        major, version = tool_version(pg_dump, self.what)
        srv = server_major(facts["server_version_num"])
        if major < srv:
            raise SourceError(
                f"{self.what}: pg_dump {version} ({pg_dump}) cannot dump a PostgreSQL {facts['server_version']} "
                f"server: install the client programs of version {srv} or newer (e.g. postgresql-client-{srv}) "
                f"and point bin_dir at them"
            )
        return pg_dump, major, version

    def _check_schemas(self, conn: Any) -> None:
        if not self.schemas:
            return
        found = {r[0] for r in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (self.schemas,))}
        missing = [s for s in self.schemas if s not in found]
        if missing:
            raise SourceError(f"{self.what}: schema {missing[0]!r} does not exist in database "
                              f"{self.target.dbname!r} at {self.target.where}")

    def check(self) -> None:
        conn = connect(self.target, self.what)
        try:
            facts = self._server_facts(conn)
            self._check_schemas(conn)
        finally:
            conn.close()
        self._dump_tool(facts)

    # ------------------------------------------------------------------ backup

    def _dump_options(self) -> list[str]:
        opts = ["--format=custom", "--compress=0"]
        if self.lock_timeout:
            opts.append(f"--lock-wait-timeout={self.lock_timeout}s")
        if self.schemas:
            opts.append("--strict-names")
            opts += [f"--schema={_pattern(s)}" for s in self.schemas]
        opts += [f"--exclude-table={_table_pattern(t)}" for t in self.exclude_tables]
        opts += [f"--exclude-table-data={_table_pattern(t)}" for t in self.exclude_table_data]
        return opts

    def backup(self, sink: ArtifactSink) -> None:
        conn = connect(self.target, self.what)
        try:
            facts = self._server_facts(conn)
            self._check_schemas(conn)
            large_objects = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0]
        except Exception as exc:
            if isinstance(exc, SourceError):
                raise
            raise query_error(exc, self.what) from None
        finally:
            conn.close()
        pg_dump, major, version = self._dump_tool(facts)
        options = self._dump_options()
        cmd = [pg_dump, *options, f"--dbname={self.target.conninfo()}"]
        log.info("%s: pg_dump %s of %s", self.what, version, self.describe())
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=self.target.env())
        assert proc.stdout is not None
        stderr = StderrTail(proc.stderr)
        try:
            fd = proc.stdout.fileno()
            enlarge_pipe(fd)
            with sink.open(ARTIFACT, compression="zstd") as out:
                while data := os.read(fd, CHUNK):
                    out.write(data)
                if proc.wait() != 0:
                    raise SourceError(f"{self.what}: pg_dump failed: {stderr.message()}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        sink.set_info(
            format=FORMAT,
            artifact=ARTIFACT,
            pg_dump_version=version,
            pg_dump_major=major,
            server_version=facts["server_version"],
            server_version_num=facts["server_version_num"],
            database=facts["database"],
            encoding=facts["encoding"],
            lc_collate=facts["lc_collate"],
            lc_ctype=facts["lc_ctype"],
            database_size=facts["database_size"],
            large_objects=large_objects if not self.schemas else 0,
            schemas=self.schemas,
            exclude_tables=self.exclude_tables,
            exclude_table_data=self.exclude_table_data,
            options=options,
        )

    # ------------------------------------------------------------------ restore

    def _ensure_database(self, info: dict[str, Any]) -> bool:
        """Make sure the target database exists; True if this restore created it."""
        import psycopg
        from psycopg import sql

        params = {**self.target.params, "application_name": "data-manager"}
        if self.target.password is not None:
            params["password"] = self.target.password
        try:
            psycopg.connect(**params).close()
            return False
        except psycopg.Error as exc:
            if getattr(exc, "sqlstate", None) != "3D000" and "does not exist" not in str(exc):
                raise explain_connect_error(exc, self.target, self.what) from None
        dbname = self.target.dbname
        for maintenance in ("postgres", "template1"):
            try:
                conn = connect(self.target, self.what, dbname=maintenance)
                break
            except SourceError:
                if maintenance == "template1":
                    raise
        try:
            base = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(dbname))
            enc = sql.SQL(" ENCODING {}").format(sql.Literal(info.get("encoding") or "UTF8"))
            loc = sql.SQL(" LC_COLLATE {} LC_CTYPE {}").format(
                sql.Literal(info.get("lc_collate") or "C"), sql.Literal(info.get("lc_ctype") or "C"))
            try:
                conn.execute(base + enc + loc)
            except psycopg.errors.InsufficientPrivilege:
                raise SourceError(f"{self.what}: database {dbname!r} does not exist at {self.target.where} and user "
                                  f"{self.target.user!r} may not create it (needs CREATEDB): create it first") from None
            except psycopg.Error as exc:
                # The backup's locale may not exist here: the server's default locale, same encoding.
                log.warning("%s: creating %s with the backup's locale failed (%s); using the server's default",
                            self.what, dbname, one_line(str(exc)))
                try:
                    conn.execute(base + enc)
                except psycopg.Error as exc2:
                    raise query_error(exc2, f"{self.what}: cannot create database {dbname!r}") from None
            log.info("%s: created database %s", self.what, dbname)
            return True
        finally:
            conn.close()

    def _drop_database(self) -> None:
        from psycopg import sql

        try:
            conn = connect(self.target, self.what, dbname="postgres")
            try:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(self.target.dbname)))
            finally:
                conn.close()
        except Exception as exc:  # never hide the restore's own error
            log.error("%s: could not drop the database %s this failed restore created: %s",
                      self.what, self.target.dbname, one_line(str(exc)))

    def prelude(self, info: dict[str, Any]) -> str:
        """SQL run first in the restore's transaction: empty what the backup covers."""
        schemas = list(info.get("schemas") or [])
        lines = ["SET LOCAL client_min_messages = warning;", "SET LOCAL search_path = pg_catalog;"]
        if self.lock_timeout:
            lines.append(f"SET LOCAL lock_timeout = '{self.lock_timeout}s';")
        if schemas:
            others = [s for s in schemas if s != "public"]
            select = (f"SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname IN "
                      f"({', '.join(_literal(s) for s in others)})" if others else None)
            empty_public = "public" in schemas
            drop_los = False
        else:
            select = ("SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname NOT IN "
                      "('pg_catalog', 'information_schema', 'public') AND nspname NOT LIKE 'pg\\_%'")
            empty_public = True
            drop_los = True
        body = []
        if select:
            body.append(f"FOR r IN {select} LOOP EXECUTE format('DROP SCHEMA %I CASCADE', r.nspname); END LOOP;")
        if empty_public:
            # public itself stays (pg_dump never recreates it), everything in it goes.
            body.append(
                "FOR r IN SELECT DISTINCT o.type, o.identity FROM pg_catalog.pg_depend d,"
                " LATERAL pg_catalog.pg_identify_object(d.classid, d.objid, 0) o"
                " WHERE d.refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass AND d.deptype = 'n'"
                " AND d.refobjid = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = 'public')"
                " AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = d.classid"
                "   AND e.objid = d.objid AND e.deptype IN ('e', 'i', 'a', 'P', 'S'))"
                " LOOP EXECUTE format('DROP %s IF EXISTS %s CASCADE',"
                "   CASE r.type WHEN 'statistics object' THEN 'STATISTICS' ELSE r.type END, r.identity);"
                " END LOOP;"
            )
        if drop_los:
            body.append("PERFORM pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata;")
        lines.append("DO $dm_prelude$ DECLARE r record; BEGIN " + " ".join(body) + " END $dm_prelude$;")
        return "\n".join(lines) + "\n"

    def restore(self, artifacts: ArtifactSet) -> None:
        info = dict(artifacts.info)
        if info.get("format") != FORMAT or ARTIFACT not in artifacts.names():
            raise CorruptBackupError(f"{self.what}: the backup holds no {ARTIFACT} in {FORMAT} format "
                                     f"(it was made by another source type or version)")
        pg_restore = find_tool("pg_restore", self.bin_dir, self.what)
        psql = find_tool("psql", self.bin_dir, self.what)
        major, version = tool_version(pg_restore, self.what)
        made_by = int(info.get("pg_dump_major") or 0)
        if major < made_by:
            raise SourceError(
                f"{self.what}: this backup was made by pg_dump {info.get('pg_dump_version')}; pg_restore {version} "
                f"({pg_restore}) cannot read it: install the client programs of version {made_by} or newer "
                f"and point bin_dir at them"
            )
        created = self._ensure_database(info)
        try:
            self._restore_pipeline(artifacts, info, pg_restore, psql)
        except BaseException:
            if created:
                self._drop_database()
            raise

    def _restore_pipeline(self, artifacts: ArtifactSet, info: dict[str, Any], pg_restore: str, psql: str) -> None:
        restore_cmd = [pg_restore, "--format=custom", "--file=-", "--single-transaction", "--clean", "--if-exists"]
        if self.no_owner:
            restore_cmd.append("--no-owner")
        if self.no_privileges:
            restore_cmd.append("--no-privileges")
        psql_cmd = [psql, "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1", f"--dbname={self.target.conninfo()}"]
        env = self.target.env()
        log.info("%s: restoring into %s", self.what, self.describe())
        restorer = subprocess.Popen(restore_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env)
        try:
            client = subprocess.Popen(psql_cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, env=env)
        except BaseException:
            restorer.kill()
            restorer.wait()
            raise
        assert restorer.stdin and restorer.stdout and client.stdin
        restorer_err = StderrTail(restorer.stderr)
        client_err = StderrTail(client.stderr)
        for f in (restorer.stdin, restorer.stdout, client.stdin):
            enlarge_pipe(f.fileno())
        feeder = _Feeder(artifacts, ARTIFACT, restorer.stdin)
        try:
            self._relay(restorer, client, feeder, restorer_err, client_err, info)
        finally:
            for proc in (client, restorer):  # psql first: its connection ending is what rolls back
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            feeder.join()
            for f in (restorer.stdout, restorer.stdin, client.stdin):
                try:
                    f.close()
                except OSError:
                    pass
            restorer_err.join()
            client_err.join()

    def _relay(self, restorer: subprocess.Popen, client: subprocess.Popen, feeder: _Feeder,
               restorer_err: StderrTail, client_err: StderrTail, info: dict[str, Any]) -> None:
        """Move pg_restore's script into psql, keeping its last HOLD bytes (with the final COMMIT) back
        until pg_restore exited 0 and the artifact's checksum held."""
        out_fd = restorer.stdout.fileno()  # type: ignore[union-attr]
        in_fd = client.stdin.fileno()  # type: ignore[union-attr]
        unchanged = "nothing was changed"

        def psql_failed() -> SourceError:
            client.wait()
            return SourceError(f"{self.what}: restore into {self.describe()} failed, {unchanged}: "
                               f"{client_err.message()}")

        pending = bytearray()
        try:
            _write_all(in_fd, ("BEGIN;\n" + self.prelude(info)).encode())
            while data := os.read(out_fd, CHUNK):
                pending += data
                if len(pending) >= HOLD + CHUNK:
                    _write_all(in_fd, memoryview(pending)[: len(pending) - HOLD])
                    del pending[: len(pending) - HOLD]
        except BrokenPipeError:
            raise psql_failed() from None
        rc = restorer.wait()
        feeder.join()
        if feeder.error is not None:
            raise feeder.error
        if rc != 0:
            if client.poll() is not None and client.returncode != 0:
                raise psql_failed()
            raise SourceError(f"{self.what}: pg_restore failed, {unchanged}: {restorer_err.message()}")
        if not feeder.verified:
            raise SourceError(f"{self.what}: pg_restore stopped before the end of {ARTIFACT}, {unchanged}")
        try:
            _write_all(in_fd, pending)
            client.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            raise psql_failed() from None
        if client.wait() != 0:
            raise psql_failed()


class _Feeder(threading.Thread):
    """Copy one artifact into pg_restore's stdin, holding back the last chunk until the checksum held."""

    def __init__(self, artifacts: ArtifactSet, name: str, pipe: Any) -> None:
        super().__init__(name="dm-pg-feeder", daemon=True)
        self._artifacts = artifacts
        self._name = name
        self._pipe = pipe
        self.error: BaseException | None = None
        self.verified = False
        self.start()

    def run(self) -> None:
        fd = self._pipe.fileno()
        try:
            with self._artifacts.open(self._name) as src:
                held = b""
                while data := src.read(CHUNK):  # raises CorruptBackupError at EOF on a mismatch
                    if held:
                        _write_all(fd, held)
                    held = data
                self.verified = True
                if held:
                    _write_all(fd, held)
        except BrokenPipeError:
            pass  # pg_restore stopped reading: its own error says why
        except BaseException as exc:
            self.error = exc
        finally:
            try:
                self._pipe.close()  # EOF: after an error, pg_restore stops (without the held-back end)
            except OSError:
                pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
