"""Source ``cassandra``: keyspaces of an Apache Cassandra cluster, schema and rows.

Backup, per keyspace: the schema as retargetable CQL (:mod:`.schema`, kept in the source's info) plus a
human-readable ``schema/KEYSPACE.cql``; then each table's rows, read by token range in parallel, page by
page, and written undecoded (:mod:`.rawpages`, :mod:`.rowformat`) to ``rows/KEYSPACE/TABLE.rows``, with
``WRITETIME`` and ``TTL`` of every non-key column.

Restore, per keyspace: verify the whole backup first, drop the target (the keyspace, or only the backed-up
tables), recreate the schema under the target name, then write the rows back with prepared statements
bound to the very bytes read, ``USING TIMESTAMP`` the original write time and ``TTL`` the time left,
consecutive rows whose partitions live on the same replicas in unlogged batches (under the server's
batch warning thresholds), a bounded number of requests in flight.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import queue
import struct
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator

from data_manager import tls
from data_manager.errors import ConfigError, CorruptBackupError, SourceError
from data_manager.threads import put_unless_stopped
from data_manager.types import ArtifactSet, ArtifactSink, Settings, Source

from . import rowformat
from .connection import (CONSISTENCY_LEVELS, Connection, ConnectionSettings, connect, describe_error, is_transient,
                         policy, retrying)
from .schema import (Column, capture, check_header, check_keyspace, create_keyspace, if_not_exists, parse_replication, quote,
                     render, replication_cql, table_columns)

log = logging.getLogger(__name__)

FORMAT = 1
KNOWN_KEYS = {
    "contact_points", "port", "username", "password", "local_dc", "keyspace", "keyspaces", "tables",
    "consistency", "write_consistency", "concurrency", "splits", "page_size", "timeout", "connect_timeout",
    "retries", "replication", *tls.KEYS,
}
SYSTEM_KEYSPACES = {"system", "system_auth", "system_schema", "system_distributed", "system_traces",
                    "system_views", "system_virtual_schema", "system_cluster_metadata"}
# Token ring bounds of the partitioners we can split; others are read in one unsplit scan.
RINGS = {
    "org.apache.cassandra.dht.Murmur3Partitioner": (-(2**63), 2**63 - 1),
    "org.apache.cassandra.dht.RandomPartitioner": (-1, 2**127),
}
# Consecutive rows whose partitions have the same replicas go in one unlogged batch of at most:
BATCH_ROWS = 64  # rows (measured: larger batches save no more server or client CPU),
BATCH_BYTES = 5120  # bytes as Cassandra counts a batch's mutations (estimated from above by _size): its
#                     default batch_size_warn_threshold (5 KiB) logs a warning per batch over it; batches
#                     within one partition are exempt from it and go up to SINGLE_PARTITION_BYTES,
BATCH_PARTITIONS = 10  # partitions (Cassandra's unlogged_batch_across_partitions_warn_threshold).
SINGLE_PARTITION_BYTES = 1 << 20  # far below the largest mutation a node takes (commitlog_segment_size / 2)
# Cassandra's size of a row in a batch (PartitionUpdate.dataSize; measured from the sizes its batch
# warnings print, 5.0): 29 bytes a partition plus its key, 33 a row plus its clustering values, 14 a cell
# plus its value, 4 more a cell and a row with a TTL. Rounded up here:
PARTITION_SIZE, ROW_SIZE, CELL_SIZE, TTL_SIZE = 32, 40, 16, 4
COUNTER_CELL_SIZE = 64  # a counter update cell (measured 56 with its 8-byte value: the counter context)
DDL_TIMEOUT = 120.0
WRITES_PER_WORKER = 8  # write requests in flight per unit of `concurrency`: hides the server's latency
_KEY_PART = struct.Struct(">H")


class _Stopped(Exception):
    """A table's read was abandoned (another range failed, or writing did): a reader stops quietly."""


def _number(settings: Settings, key: str, default: float) -> float:
    value = settings.get(key, default)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise settings.error(key, f"must be a number of seconds, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise settings.error(key, f"must be a positive number of seconds, not {value!r}")
    return float(value)


def _consistency(settings: Settings, key: str) -> str:
    value = settings.get_str(key, "LOCAL_QUORUM").upper()
    if value not in CONSISTENCY_LEVELS:
        raise settings.error(key, f"unknown consistency level {value!r} (known: {', '.join(CONSISTENCY_LEVELS)})")
    return value


class CassandraSource(Source):
    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        settings.check_known(KNOWN_KEYS)
        if ("keyspace" in settings) == ("keyspaces" in settings):
            raise settings.error("keyspace", "give either keyspace (one name) or keyspaces (a list)")
        self.keyspaces = [settings.get_str("keyspace")] if "keyspace" in settings else settings.get_list("keyspaces")
        if not self.keyspaces or len(set(self.keyspaces)) != len(self.keyspaces):
            raise settings.error("keyspaces", "must list at least one keyspace, each once")
        for ks in self.keyspaces:
            if ks in SYSTEM_KEYSPACES:
                raise settings.error("keyspace", f"{ks!r} is a system keyspace")
        self.tables = settings.get_list("tables", None)
        username = settings.get_str("username", None)
        password = settings.get_str("password", None)
        if (username is None) != (password is None):
            raise settings.error("password" if username else "username", "username and password go together")
        contact_points = settings.get_list("contact_points", ["127.0.0.1"])
        if not contact_points:
            raise settings.error("contact_points", "must list at least one host")
        self.tls = tls.TlsSettings(settings, name)
        if username is not None and not self.tls.enabled and not tls.all_loopback(contact_points):
            log.warning("source %s: the password goes to %s in clear text: set tls = true (see the docs)", name,
                        ", ".join(contact_points))
        self.conn = ConnectionSettings(
            source=name,
            contact_points=tuple(contact_points),
            port=settings.get_int("port", 9042, minimum=1),
            username=username,
            password=password,
            local_dc=settings.get_str("local_dc", None),
            read_consistency=_consistency(settings, "consistency"),
            write_consistency=_consistency(settings, "write_consistency"),
            timeout=_number(settings, "timeout", 30.0),
            connect_timeout=_number(settings, "connect_timeout", 10.0),
            retries=settings.get_int("retries", 5, minimum=0),
            ssl_context=self.tls.context(),
        )
        self.concurrency = settings.get_int("concurrency", 8, minimum=1)
        self.splits = settings.get_int("splits", max(16, 4 * self.concurrency), minimum=1)
        self.page_size = settings.get_int("page_size", 5000, minimum=10)
        self.replication: dict[str, str] | None = None
        if "replication" in settings:
            try:
                self.replication = parse_replication(settings.get_str("replication"))
            except ValueError as exc:
                raise settings.error("replication", str(exc)) from None

    def describe(self) -> str:
        return f"cassandra://{self.conn.where()}/{','.join(self.keyspaces)}"

    # ------------------------------------------------------------------ shared

    def _error(self, text: str) -> SourceError:
        return SourceError(f"source {self.name!r}: {text}")

    def _keyspace(self, conn: Connection, name: str) -> Any:
        ks = conn.metadata.keyspaces.get(name)
        if ks is None:
            raise self._error(f"keyspace {name!r} does not exist at {self.conn.where()}")
        if getattr(ks, "virtual", False):
            raise self._error(f"keyspace {name!r} is virtual and cannot be backed up")
        return ks

    def _plan(self, conn: Connection) -> list[tuple[Any, list[str]]]:
        """Each keyspace's metadata and the tables to back up (all of them unless ``tables`` says)."""
        plan = [(self._keyspace(conn, name), []) for name in self.keyspaces]
        wanted = self.tables
        matched: set[str] = set()
        for ks, chosen in plan:
            for table in sorted(ks.tables):
                if wanted is None or table in wanted or f"{ks.name}.{table}" in wanted:
                    chosen.append(table)
                    matched.update({table, f"{ks.name}.{table}"})
        if wanted is not None:
            missing = [t for t in wanted if t not in matched]
            if missing:
                raise self._error(f"table {missing[0]!r} not found in keyspace(s) {', '.join(self.keyspaces)}")
        return plan

    def check(self) -> None:
        with connect(self.conn) as conn:
            self._plan(conn)

    # ------------------------------------------------------------------ backup

    def backup(self, sink: ArtifactSink) -> None:
        with connect(self.conn) as conn:
            conn.refresh_schema()
            plan = self._plan(conn)
            version = conn.execute("SELECT release_version FROM system.local", what="reading the server version").one()
            keyspaces = []
            for ks, tables in plan:
                schema = capture(ks, tables)
                with sink.open(f"schema/{ks.name}.cql") as out:
                    out.write((ks.export_as_string() + "\n").encode())
                schema["tables"] = []
                for table in tables:
                    schema["tables"].append(self._backup_table(conn, ks, ks.tables[table], sink))
                keyspaces.append(schema)
            sink.set_info(
                format=FORMAT,
                cassandra_version=version[0] if version else None,
                partitioner=conn.metadata.partitioner,
                protocol_version=conn.cluster.protocol_version,
                keyspaces=keyspaces,
            )

    def _backup_table(self, conn: Connection, ks: Any, table: Any, sink: ArtifactSink) -> dict[str, Any]:
        columns = table_columns(ks, table)
        counter = any(c.type == "counter" for c in columns)
        select = [quote(c.name) for c in columns]
        timed = []  # [column index, position of its write time, position of its TTL, multicell]
        if not counter:
            for i, c in enumerate(columns):
                if c.kind in ("static", "regular"):
                    timed.append([i, len(select), len(select) + 1, c.multicell])
                    fn = "MAXWRITETIME" if c.multicell else "WRITETIME"
                    select += [f"{fn}({quote(c.name)})", f"TTL({quote(c.name)})"]
        name = f"{quote(ks.name)}.{quote(table.name)}"
        token = f"token({', '.join(quote(c.name) for c in table.partition_key)})"
        ring = RINGS.get(conn.metadata.partitioner)
        query = f"SELECT {', '.join(select)} FROM {name}"
        if ring is not None:
            query += f" WHERE {token} > ? AND {token} <= ?"
        label = f"{ks.name}.{table.name}"
        prepared = retrying(self.conn, f"preparing the read of {label}", lambda: conn.raw.prepare(query))
        ranges: list[tuple[int, int] | None] = [None]
        if ring is not None:
            lo, hi = ring
            n = self.splits
            bounds = [lo + (hi - lo) * i // n for i in range(n)] + [hi]
            ranges = list(zip(bounds[:-1], bounds[1:]))
        header = {
            "format": FORMAT, "keyspace": ks.name, "table": table.name, "counter": counter,
            "columns": [c.to_json() for c in columns], "select": select, "timed": timed,
        }
        artifact = f"rows/{ks.name}/{table.name}.rows"
        workers = min(self.concurrency, len(ranges))
        # Readers hand their pages to this thread, which alone writes them: the core's staging buffer and
        # its 1 MiB blocks are then allocated by one thread, so in one malloc arena, instead of one arena
        # per reader thread, each keeping its own freed blocks (measured: RSS crept up ~1 MB/s before).
        # Items: a page (rows, fetched_at_ms, cells); None when a range is done; the exception it failed with.
        pages_q: queue.Queue[tuple[int, int, bytes] | BaseException | None] = queue.Queue(2 * workers)
        stop = threading.Event()

        def hand_over(item: tuple[int, int, bytes] | BaseException | None) -> None:
            """Queue ``item`` for the writing thread; raise _Stopped once it has given up."""
            if not put_unless_stopped(pages_q, item, stop):
                raise _Stopped

        def read_range(bounds: tuple[int, int] | None) -> int:
            count = 0
            paging_state = None
            try:
                while True:
                    stmt = prepared.bind(bounds or ())
                    stmt.fetch_size = self.page_size
                    fetched_at = int(time.time() * 1000)
                    result = retrying(self.conn, f"reading {label}", lambda: conn.raw.execute(
                        stmt, paging_state=paging_state, execution_profile="read"))
                    pages = result.current_rows
                    page = pages[0] if pages else None
                    paging_state = result.paging_state
                    # The driver's response future (holding this very list) stays in a reference cycle
                    # until a full garbage collection, which runs rarely here: without this, every page
                    # read stayed in memory until then (measured: +120 MB RSS over 1M rows, tracemalloc).
                    if isinstance(pages, list):
                        pages.clear()
                    if page is not None and page.rows:
                        hand_over((page.rows, fetched_at, page.cells))
                        count += page.rows
                    page = None
                    if not paging_state:
                        break
            except _Stopped:
                return count
            except BaseException as exc:
                put_unless_stopped(pages_q, exc, stop)  # unless the writer has already given up
                raise
            hand_over(None)
            return count

        with sink.open(artifact) as out:
            out.write(rowformat.encode_header(header))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dm-cassandra-read") as pool:
                futures: list[Future[int]] = []
                try:  # submitting inside: a Ctrl-C between two submits must still stop the readers started
                    for r in ranges:
                        futures.append(pool.submit(read_range, r))
                    done = 0
                    while done < len(futures):
                        item = pages_q.get()
                        if item is None:
                            done += 1
                        elif isinstance(item, BaseException):
                            raise item
                        else:
                            n, fetched_at, cells = item
                            out.write(rowformat.encode_page(n, cells, fetched_at))
                            out.write(cells)
                            item = cells = None  # type: ignore[assignment]  # free the page before waiting
                    rows = sum(f.result() for f in futures)
                except BaseException:
                    stop.set()
                    for f in futures:
                        f.cancel()
                    raise
            out.write(rowformat.encode_end(rows))
        log.info("source %s: %s: %d rows", self.name, label, rows)
        return {"name": table.name, "artifact": artifact, "rows": rows, "counter": counter}

    # ------------------------------------------------------------------ restore

    def restore(self, artifacts: ArtifactSet) -> None:
        info = artifacts.info
        if info.get("format") != FORMAT or "keyspaces" not in info:
            raise CorruptBackupError(f"source {self.name!r}: not a cassandra backup of a known format")
        backed = info["keyspaces"]
        # The backup is read back from storage: nothing of it becomes CQL before it is checked.
        if not isinstance(backed, list) or not backed:
            raise CorruptBackupError(f"source {self.name!r}: the backup's keyspaces are not a list")
        try:
            replications = [check_keyspace(ks) for ks in backed]
        except ValueError as exc:
            raise CorruptBackupError(f"source {self.name!r}: {exc} (corrupt or tampered backup)") from None
        if len(backed) != len(self.keyspaces):
            raise ConfigError(
                f"{self.settings.where}: the backup holds {len(backed)} keyspace(s) "
                f"({', '.join(k['name'] for k in backed)}); set keyspace/keyspaces to as many target names")
        # Cassandra has no transactions: check every artifact before anything is dropped or written.
        artifacts.verify()
        for ks_info in backed:
            for table in ks_info["tables"]:
                with artifacts.open(table["artifact"]) as f:
                    self._header(f, table)
        with connect(self.conn) as conn:
            for ks_info, replication, target in zip(backed, replications, self.keyspaces):
                self._restore_schema(conn, ks_info, self.replication or replication, target)
                for table in ks_info["tables"]:
                    self._restore_rows(conn, artifacts, table, target)

    def _ddl(self, conn: Connection, cql: str, what: str) -> None:
        conn.execute(cql, what=what, timeout=max(DDL_TIMEOUT, self.conn.timeout), retry=False)

    def _header(self, f: Any, table: dict[str, Any]) -> dict[str, Any]:
        """The rows artifact's header, checked against the table it restores."""
        header = rowformat.read_header(f, table["artifact"])
        try:
            check_header(header, table["name"])
        except ValueError as exc:
            raise CorruptBackupError(f"source {self.name!r}: {table['artifact']}: {exc} (corrupt or tampered backup)") from None
        return header

    def _restore_schema(self, conn: Connection, ks_info: dict[str, Any], options: dict[str, str], target: str) -> None:
        replication = replication_cql(options)
        placeholder = ks_info["placeholder"]
        objects = ks_info["objects"]
        if ks_info["whole"]:
            self._ddl(conn, f"DROP KEYSPACE IF EXISTS {quote(target)}", f"dropping keyspace {target}")
            self._ddl(conn, create_keyspace(target, replication, ks_info["durable_writes"]),
                      f"creating keyspace {target}")
        else:
            self._ddl(conn, create_keyspace(target, replication, ks_info["durable_writes"], if_not_exists=True),
                      f"creating keyspace {target}")
            for obj in objects:
                if obj["kind"] == "view":
                    self._ddl(conn, f"DROP MATERIALIZED VIEW IF EXISTS {quote(target)}.{quote(obj['name'])}",
                              f"dropping view {target}.{obj['name']}")
            for obj in objects:
                if obj["kind"] == "table":
                    self._ddl(conn, f"DROP TABLE IF EXISTS {quote(target)}.{quote(obj['name'])}",
                              f"dropping table {target}.{obj['name']}")
        for obj in objects:
            cql = render(obj["cql"], placeholder, target)
            if not ks_info["whole"] and obj["kind"] in ("type", "function", "aggregate"):
                cql = if_not_exists(cql, obj["kind"])
            self._ddl(conn, cql, f"creating {obj['kind']} {target}.{obj['name']}")

    def _restore_rows(self, conn: Connection, artifacts: ArtifactSet, table: dict[str, Any], target: str) -> None:
        label = f"{target}.{table['name']}"
        with artifacts.open(table["artifact"]) as f, _gc_frozen():
            header = self._header(f, table)
            loader = _RowLoader(self, conn, header, target)
            rows = 0
            for count, fetched_at, cells in rowformat.iter_pages(f, table["artifact"]):
                loader.page(count, fetched_at, cells)
                rows += count
            loader.finish()
        if rows != table["rows"]:
            raise CorruptBackupError(f"source {self.name!r}: {label}: {rows} rows in the backup, {table['rows']} recorded")
        log.info("source %s: %s: %d rows restored", self.name, label, rows)


@contextlib.contextmanager
def _gc_frozen() -> Iterator[None]:
    """Run the block with the objects that exist now out of the cyclic garbage collector's scans.

    Loading rows leaves a few reference cycles per request (the driver's futures and their timers), so
    the collector runs its full passes often, and each scanned every object of the process (modules,
    the driver's metadata...): ~14 % of the loading thread's CPU (py-spy). Frozen objects are skipped.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class _Writer:
    """Runs statements asynchronously, at most ``WRITES_PER_WORKER x concurrency`` in flight; retries idempotent ones."""

    def __init__(self, source: CassandraSource, conn: Connection, what: str, idempotent: bool) -> None:
        self.source = source
        self.session = conn.session
        self.what = what
        self.idempotent = idempotent
        self.limit = source.concurrency * WRITES_PER_WORKER
        self.slots = threading.Semaphore(self.limit)
        self.failed: deque[tuple[Any, int, BaseException]] = deque()
        from cassandra.query import BatchStatement

        self.batch_class = BatchStatement

    def submit(self, stmt: Any, attempt: int = 0) -> None:
        if self.failed:
            self._retry_failed()
        self.slots.acquire()
        try:
            future = self.session.execute_async(stmt)
        except BaseException:
            self.slots.release()
            raise
        future.add_callbacks(self._done, self._failed, callback_args=(stmt,), errback_args=(stmt, attempt))

    def _done(self, _result: Any, stmt: Any) -> None:
        # The driver's future stays in a reference cycle (its timer) until the garbage collector runs, and
        # it holds the statement: emptying a batch frees its rows at once, so the collector has 30x less
        # to scan (it was ~20 % of the loading thread's CPU, py-spy).
        if isinstance(stmt, self.batch_class):
            stmt.clear()
        self.slots.release()

    def _failed(self, exc: BaseException, stmt: Any, attempt: int) -> None:
        self.failed.append((stmt, attempt, exc))
        self.slots.release()

    def _retry_failed(self) -> None:
        while self.failed:
            stmt, attempt, exc = self.failed.popleft()
            rules = policy(self.source.conn)
            delay = rules.pause(attempt + 1) if self.idempotent and is_transient(exc) else None
            if delay is None:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                extra = "" if self.idempotent else " (counter updates are not retried: they are not idempotent)"
                raise self.source._error(f"writing {self.what} failed{tries}: {describe_error(exc)}{extra}")
            log.info("source %s: writing %s: %s; retried (%d/%d) after %.1fs", self.source.name, self.what,
                     describe_error(exc), attempt + 1, rules.retries, delay)
            self.submit(stmt, attempt + 1)

    def finish(self) -> None:
        """Wait for everything in flight; retry what failed; raise if something could not be written."""
        while True:
            for _ in range(self.limit):
                self.slots.acquire()
            for _ in range(self.limit):
                self.slots.release()
            if not self.failed:
                return
            self._retry_failed()


class _RowLoader:
    """Turns the rows of one table's artifact into INSERTs (UPDATEs for counters) and sends them."""

    def __init__(self, source: CassandraSource, conn: Connection, header: dict[str, Any], target: str) -> None:
        from cassandra.query import BatchStatement, BatchType, BoundStatement

        self.source = source
        self.conn = conn
        self.columns = [Column.from_json(c) for c in header["columns"]]
        self.ncells = len(header["select"])
        self.counter = bool(header["counter"])
        self.timed = [tuple(t) for t in header["timed"]]
        self.name = f"{quote(target)}.{quote(header['table'])}"
        self.label = f"{target}.{header['table']}"
        self.pk = [i for i, c in enumerate(self.columns) if c.kind == "partition_key"]
        self.ck = [i for i, c in enumerate(self.columns) if c.kind == "clustering"]
        self.static = {i for i, c in enumerate(self.columns) if c.kind == "static"}
        self.counters = [i for i, c in enumerate(self.columns) if c.kind in ("static", "regular")]
        self.multicell = {col for col, _wt, _ttl, multicell in self.timed if multicell}
        self.writer = _Writer(source, conn, self.label, idempotent=not self.counter)
        self.prepared: dict[tuple[tuple[int, ...], bool], Any] = {}
        self._bound = BoundStatement
        self._batch = BatchStatement
        self._batch_type = BatchType.COUNTER if self.counter else BatchType.UNLOGGED
        self.keyspace = target
        self.metadata = conn.metadata
        self.last_partition: list[bytes | None] | None = None
        self.replicas: tuple[Any, ...] = ()  # the replicas of last_partition
        self.batch: list[Any] = []
        self.batch_partition: Any = None
        self.batch_replicas: tuple[Any, ...] = ()
        self.batch_partitions = 0
        self.batch_bytes = 0

    # -- statements
    def _statement(self, cols: tuple[int, ...], with_clustering: bool) -> Any:
        key = (cols, with_clustering)
        stmt = self.prepared.get(key)
        if stmt is None:
            keys = self.pk + (self.ck if with_clustering else [])
            q = lambda i: quote(self.columns[i].name)  # noqa: E731
            if self.counter:
                sets = ", ".join(f"{q(i)} = {q(i)} + ?" for i in cols)
                where = " AND ".join(f"{q(i)} = ?" for i in keys)
                cql = f"UPDATE {self.name} SET {sets} WHERE {where}"
            else:
                names = [q(i) for i in keys + list(cols)]
                cql = f"INSERT INTO {self.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
                if cols:
                    cql += " USING TIMESTAMP ? AND TTL ?"
            stmt = retrying(self.source.conn, f"preparing the writes of {self.label}",
                            lambda: self.conn.session.prepare(cql))
            stmt.is_idempotent = not self.counter
            self.prepared[key] = stmt
        return stmt

    def _send(self, partition: Any, prepared: Any, values: list[Any], size: int) -> None:
        """Add one statement of ``size`` bytes (as Cassandra counts a batch's size) to the batch."""
        bound = self._bound(prepared)
        bound.values = values
        new_partition = partition != self.batch_partition
        if new_partition:
            size += PARTITION_SIZE + sum(len(v) for v in partition if v is not None)
        limit = BATCH_BYTES if new_partition or self.batch_partitions > 1 else SINGLE_PARTITION_BYTES
        if self.batch and (len(self.batch) >= BATCH_ROWS or self.batch_bytes + size > limit or (
                new_partition and (self.replicas != self.batch_replicas or self.batch_partitions >= BATCH_PARTITIONS))):
            if not new_partition:  # the statement's partition was counted with the batch's first one
                size += PARTITION_SIZE + sum(len(v) for v in partition if v is not None)
            self._flush()
            new_partition = True
        if not self.batch:
            self.batch_replicas = self.replicas
        self.batch.append(bound)
        self.batch_partitions += new_partition
        self.batch_partition = partition
        self.batch_bytes += size

    def _flush(self) -> None:
        if len(self.batch) == 1:
            self.writer.submit(self.batch[0])
        elif self.batch:
            batch = self._batch(batch_type=self._batch_type)
            for bound in self.batch:
                batch.add(bound)
            batch.is_idempotent = not self.counter
            self.writer.submit(batch)
        self.batch = []
        self.batch_partition = None
        self.batch_partitions = 0
        self.batch_bytes = 0

    # -- rows
    def page(self, count: int, fetched_at_ms: int, cells: bytes) -> None:
        elapsed = max(0, math.ceil(time.time() - fetched_at_ms / 1000))  # seconds the TTLs ran down since the read
        rows = rowformat.split_rows(cells, count, self.ncells, self.label)
        if self.counter:
            for row in rows:
                self._counter_row(row)
        else:
            for row in rows:
                self._row(row, elapsed)

    def _new_partition(self, row: list[bytes | None]) -> tuple[Any, bool]:
        partition = [row[i] for i in self.pk]
        new = partition != self.last_partition
        self.last_partition = partition
        if new:
            self.replicas = self._replicas(partition)
        return partition, new

    def _replicas(self, partition: list[bytes | None]) -> tuple[Any, ...]:
        """The nodes holding ``partition`` (the driver's token map; ``()`` if it has none)."""
        if len(partition) == 1:
            key = partition[0] or b""
        else:  # a composite partition key's routing key: each part as [uint16 length][bytes][0]
            key = b"".join(_KEY_PART.pack(len(v or b"")) + (v or b"") + b"\x00" for v in partition)
        return tuple(self.metadata.get_replicas(self.keyspace, key))

    def _row(self, row: list[bytes | None], elapsed: int) -> None:
        partition, new = self._new_partition(row)
        groups: dict[tuple[bytes, int], list[int]] = {}
        for col, wt_pos, ttl_pos, multicell in self.timed:
            if row[col] is None or (col in self.static and not new):
                continue
            ttl_raw = row[ttl_pos]
            if ttl_raw is None:
                ttl = 0
            else:
                if multicell:
                    ttls = rowformat.list_of_int32(ttl_raw)
                    if any(t is None for t in ttls) or not ttls:
                        ttl = 0  # some elements do not expire: keep the collection without TTL
                    else:
                        ttl = min(ttls)  # type: ignore[type-var]
                else:
                    ttl = rowformat.int32(ttl_raw)
                if ttl:
                    ttl -= elapsed
                    if ttl <= 0:
                        continue  # expired since the backup
            groups.setdefault((row[wt_pos], ttl), []).append(col)  # type: ignore[arg-type]
        has_clustering = all(row[i] is not None for i in self.ck)
        wrote_row = False
        for (wt, ttl), cols in groups.items():
            statics_only = all(c in self.static for c in cols)
            with_ck = has_clustering and not statics_only
            wrote_row = wrote_row or with_ck
            keys = self.pk + (self.ck if with_ck else [])
            values = [row[i] for i in keys] + [row[i] for i in cols] + [wt, rowformat.pack_int32(ttl)]
            self._send(partition, self._statement(tuple(cols), with_ck), values,
                       self._size(values, len(keys), cols, ttl))
        if has_clustering and not wrote_row:
            # The row exists with no (live) regular cell: insert its primary key alone.
            keys = self.pk + self.ck
            self._send(partition, self._statement((), True), [row[i] for i in keys],
                       self._size([row[i] for i in keys], len(keys), [], 0))

    def _size(self, values: list[Any], nkeys: int, cols: list[int], ttl: int) -> int:
        """An upper bound of the size Cassandra counts for an INSERT's row in a batch, without its partition.

        Keys are counted whole (only the clustering ones count there; being over is safe). A non-frozen
        collection or UDT is one cell per element, each with a path (a 16-byte timeuuid for lists):
        measured ~40 bytes an element of a list<int> serialized in 8; 9x its serialized size + 40 bounds
        even a list of empty values.
        """
        per_cell = CELL_SIZE + TTL_SIZE if ttl else CELL_SIZE
        size = ROW_SIZE + (TTL_SIZE if ttl else 0) + sum(len(v) for v in values[:nkeys] if v is not None)
        multicell = self.multicell
        for col, v in zip(cols, values[nkeys:]):
            n = len(v) if v is not None else 0
            size += 9 * n + 40 + per_cell if col in multicell else n + per_cell
        return size

    def _counter_row(self, row: list[bytes | None]) -> None:
        partition, new = self._new_partition(row)
        cols = tuple(i for i in self.counters if row[i] is not None and (i not in self.static or new))
        regular = [i for i in cols if i not in self.static]
        statics = tuple(i for i in cols if i in self.static)
        has_clustering = all(row[i] is not None for i in self.ck)
        if statics and (not regular or not has_clustering):
            values = [row[i] for i in statics] + [row[i] for i in self.pk]
            self._send(partition, self._statement(statics, False), values, _counter_size(values, len(statics)))
            cols = tuple(regular)
        if cols and has_clustering:
            keys = self.pk + self.ck
            values = [row[i] for i in cols] + [row[i] for i in keys]
            self._send(partition, self._statement(cols, True), values, _counter_size(values, len(cols)))

    def finish(self) -> None:
        self._flush()
        self.writer.finish()


def _counter_size(values: list[Any], ncells: int) -> int:
    """An upper bound of the size Cassandra counts for a counter update of ``ncells`` cells in a batch."""
    return ROW_SIZE + sum(len(v) for v in values if v is not None) + ncells * COUNTER_CELL_SIZE
