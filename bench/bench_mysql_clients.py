"""Reading every row of a MariaDB database: our packet reader against public clients and dump tools.

    python bench/bench_mysql_clients.py [--size-mb 256] [--rounds 1] [--host 127.0.0.1 --port 3306 --user dm
                                        --password dm] [--keep]

Issue 20 asks whether a public client speaking the binary protocol (or a dump tool) could replace
``wire.py``, which reads result packets past pymysql through its private internals. This benchmark makes the
tables of ``bench_memsql.py`` (its ``make_data``, imported) and reads both of them completely with each
contender, each a child process measured by ``common.run()`` (wall, CPU of the tree, peak RSS), all in one run:

* ``plugin Source.backup``: the memsql plugin's own public entry point, ``MemsqlSource.backup()``, writing its
  artifacts (binary-protocol row packets, framed) to a sink that only counts bytes: the plugin's share of a
  backup without the core's zstd and BLAKE3;
* ``data-manager backup`` and ``... compress=false``: the whole CLI backup to a filesystem storage: with the
  row above, the core's share (zstd, hashing, storage), which any reader would pay as well;
* ``connector/C raw`` and ``connector/C prepared``: mysql-connector-python with its C extension
  (``pip install mysql-connector-python``), unbuffered; ``raw=True`` gives the text protocol's values as
  bytes; ``prepared=True`` reads the binary protocol and converts every value to a Python object;
* ``mariadb text`` and ``mariadb binary``: MariaDB Connector/Python (``apt-get install -y libmariadb-dev``,
  then ``pip install mariadb``), unbuffered cursors, values as Python objects;
* ``mysqldump > /dev/null``, ``mysqldump > file`` (the baseline), ``mydumper -t 1`` and ``-t 2``
  (``apt-get install -y mydumper``; files in a directory, chunks of 200,000 rows, ``--trx-consistency-only``).

The Python clients turn each row into bytes, the form a backup stores: a value that arrives as bytes is kept,
any other is ``str(v).encode()`` (``repr`` of a float, exact), NULL is ``\\N``, values joined with ``\\x1f``
and rows with ``\\n``, written in 1 MiB chunks to /dev/null. That encoding is not even unambiguous (a real
format would escape or length-prefix every value), so it is a lower bound of their cost. Every client reads in
one ``START TRANSACTION WITH CONSISTENT SNAPSHOT`` at REPEATABLE READ, with ``time_zone = '+00:00'``.

A contender whose package or tool is missing is skipped with one line saying how to install it. The C
extension of mysql-connector-python 26.x bundles OpenSSL 3.2+ while Debian 12 has 3.0: it loads only when
``_mysql_connector`` is imported before anything loads the system's libssl (Python's ``ssl``), which the
worker does; the contender is skipped if ``mysql.connector.HAVE_CEXT`` is still false.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

TABLES = ("events", "samples")
CHUNK = 1 << 20
FETCH = 1000  # rows per fetchmany()


# --------------------------------------------------------------------------- workers (child processes)


class _NullWriter:
    """An artifact that goes nowhere: what the plugin writes, counted."""

    digest = ""

    def __init__(self, counter: list[int]) -> None:
        self.counter = counter

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.counter[0] += len(data)
        return len(data)

    def cut(self) -> None:
        pass

    def reuse(self, item: str, size: int) -> None:
        return None

    def remember(self, item: str, size: int, extra: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def __enter__(self) -> _NullWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class _NullSink:
    """An ``ArtifactSink`` that stores nothing: the plugin's read path alone, without the core."""

    source_name = "db"
    chunked = False

    def __init__(self) -> None:
        self.counter = [0]
        self.info: dict[str, Any] = {}

    def open(self, name: str, *, compression: str = "auto") -> _NullWriter:
        return _NullWriter(self.counter)

    def set_info(self, **info: Any) -> None:
        self.info.update(info)


def _encode(value: Any) -> bytes:
    """One value as the bytes a backup would keep (see the module docstring)."""
    if value is None:
        return b"\\N"
    if value.__class__ is bytes:
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return str(value).encode()


def _drain(batches: Iterable[list[Any]], raw: bool) -> tuple[int, int]:
    """Encode the rows of ``batches`` and write them to /dev/null in ~1 MiB chunks; (rows, bytes)."""
    rows = size = 0
    out: list[bytes] = []
    pending = 0
    with open(os.devnull, "wb") as f:
        for batch in batches:
            rows += len(batch)
            if raw:  # every value is bytes or None already
                lines = [b"\x1f".join([b"\\N" if v is None else v for v in row]) for row in batch]
            else:
                lines = [b"\x1f".join([_encode(v) for v in row]) for row in batch]
            text = b"\n".join(lines) + b"\n"
            out.append(text)
            pending += len(text)
            if pending >= CHUNK:
                f.write(b"".join(out))
                size += pending
                out.clear()
                pending = 0
        f.write(b"".join(out))
        size += pending
    return rows, size


def _fetching(cur: Any) -> Iterator[list[Any]]:
    while True:
        batch = cur.fetchmany(FETCH)
        if not batch:
            return
        yield batch


def _read_tables(args: argparse.Namespace, cursor_of: Callable[[], Any], raw: bool) -> tuple[int, int]:
    """Open the snapshot on a fresh cursor's connection and read every table through ``cursor_of()``."""
    setup = cursor_of()
    for stmt in ("SET SESSION time_zone = '+00:00'", "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                 "START TRANSACTION WITH CONSISTENT SNAPSHOT"):
        setup.execute(stmt)
    setup.close()
    rows = size = 0
    for table in TABLES:
        cur = cursor_of()
        cur.execute(f"SELECT * FROM `{args.database}`.`{table}`")
        r, s = _drain(_fetching(cur), raw)
        cur.close()
        rows, size = rows + r, size + s
    return rows, size


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Run one contender in this process; what it read."""
    kind = args.worker
    if kind == "plugin":
        from data_manager.types import Settings
        from data_manager_memsql.source import MemsqlSource

        sink = _NullSink()
        source = MemsqlSource("db", Settings({"host": args.host, "port": args.port, "user": args.user,
                                              "password": args.password, "database": args.database}))
        source.backup(sink)  # type: ignore[arg-type]  # a duck-typed sink
        return {"rows": sink.info["rows"], "bytes": sink.counter[0]}
    if kind.startswith("connector"):
        import _mysql_connector  # noqa: F401  # first: its bundled OpenSSL 3.2, before ssl loads Debian's 3.0

        import mysql.connector

        if not mysql.connector.HAVE_CEXT:
            raise SystemExit("mysql-connector-python's C extension does not load")
        conn = mysql.connector.connect(host=args.host, port=args.port, user=args.user, password=args.password,
                                       use_pure=False, charset="utf8mb4", autocommit=True)
        if kind == "connector-raw":
            rows, size = _read_tables(args, lambda: conn.cursor(raw=True, buffered=False), raw=True)
        else:
            rows, size = _read_tables(args, lambda: conn.cursor(prepared=True), raw=False)
        conn.close()
        return {"rows": rows, "bytes": size}
    if kind.startswith("mariadb"):
        import mariadb

        conn = mariadb.connect(host=args.host, port=args.port, user=args.user, password=args.password,
                               autocommit=True)
        binary = kind == "mariadb-binary"
        rows, size = _read_tables(args, lambda: conn.cursor(buffered=False, binary=binary), raw=False)
        conn.close()
        return {"rows": rows, "bytes": size}
    raise SystemExit(f"unknown worker {kind!r}")


# --------------------------------------------------------------------------- the benchmark (parent)


def _available(module: str, hint: str) -> bool:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        print(f"skipped: {module} is not installed ({hint})", flush=True)
        return False
    return True


def main(args: argparse.Namespace) -> None:
    from bench_memsql import DB, client, make_data  # the same tables as bench_memsql.py
    from common import Measurement, dm_command, medians, precompile, report, run

    args.database = DB
    dump = shutil.which("mariadb-dump") or shutil.which("mysqldump")
    if not dump:
        sys.exit("needs mysqldump (Debian package mariadb-client)")
    mydumper = shutil.which("mydumper")
    if not mydumper:
        print("skipped: mydumper is not installed (apt-get install -y mydumper)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="dm-bench-mysql-clients-"))
    env = {"MYSQL_PWD": args.password, "DM_BENCH_PASSWORD": args.password}
    conn = f"-h{args.host} -P{args.port} -u{args.user}"
    me = [sys.executable, str(Path(__file__).resolve()), "--host", args.host, "--port", str(args.port),
          "--user", args.user, "--password", args.password, "--database", DB]
    read: dict[str, dict[str, Any]] = {}
    try:
        precompile()
        print(f"making ~{args.size_mb} MB of rows in {DB} ...", flush=True)
        nbytes = make_data(args)
        config = work / "dm.toml"
        text = f'[storages.local]\ntype = "filesystem"\nroot = "{work / "backups"}"\n'
        for dataset, extra in (("bench", ""), ("bench_raw", "compress = false\n")):
            text += (f'[datasets.{dataset}]\n[[datasets.{dataset}.sources]]\nname = "db"\ntype = "mysql"\n'
                     f'host = "{args.host}"\nport = {args.port}\nuser = "{args.user}"\n'
                     f'password = "${{DM_BENCH_PASSWORD}}"\ndatabase = "{DB}"\n{extra}')
        config.write_text(text)

        contenders: list[tuple[str, Callable[[], Measurement]]] = []

        def add(name: str, cmd: str | list[str], shell: bool = False, summary: bool = False) -> None:
            def go() -> Measurement:
                if isinstance(cmd, list) and summary:
                    out = work / "summary.json"
                    m = run(name, [*cmd, "--summary", str(out)], env=env, nbytes=nbytes)
                    read[name] = json.loads(out.read_text())
                    return m
                if "mydumper" in name:
                    shutil.rmtree(work / "mydumper", ignore_errors=True)
                return run(name, cmd, shell=shell, env=env, nbytes=nbytes)
            contenders.append((name, go))

        add("mysqldump > file", f"{dump} {conn} --single-transaction {DB} > {work}/dump.sql", shell=True)
        add("mysqldump > /dev/null", f"{dump} {conn} --single-transaction {DB} > /dev/null", shell=True)
        if mydumper:
            for threads in (1, 2):
                add(f"mydumper -t {threads} > dir",
                    [mydumper, "-h", args.host, "-P", str(args.port), "-u", args.user, "-p", args.password,
                     "-B", DB, "-o", str(work / "mydumper"), "-t", str(threads), "-r", "200000",
                     "--trx-consistency-only", "-v", "1"])
        add("plugin Source.backup, no core", [*me, "--worker", "plugin"], summary=True)
        add("data-manager backup", [*dm_command(), "--config", str(config), "backup", "bench"])
        add("data-manager backup, compress=false", [*dm_command(), "--config", str(config), "backup", "bench_raw"])
        if _available("_mysql_connector", "pip install mysql-connector-python"):
            add("connector/C raw (text)", [*me, "--worker", "connector-raw"], summary=True)
            add("connector/C prepared (binary)", [*me, "--worker", "connector-prepared"], summary=True)
        if _available("mariadb", "apt-get install -y libmariadb-dev; pip install mariadb"):
            add("mariadb text", [*me, "--worker", "mariadb-text"], summary=True)
            add("mariadb binary", [*me, "--worker", "mariadb-binary"], summary=True)

        run("warm buffer pool (mysqldump > /dev/null)",
            f"{dump} {conn} --single-transaction {DB} > /dev/null", shell=True, env=env)
        rounds = []
        for i in range(args.rounds):
            order = contenders if i % 2 == 0 else contenders[::-1]  # alternate, against drift of the load
            got = {name: go() for name, go in order}
            rounds.append([got[name] for name, _ in contenders])
            print(f"round {i + 1}: " + ", ".join(f"{m.name} {m.seconds:.2f}s" for m in rounds[-1]), flush=True)
        rows = medians(rounds)
        by_name = {m.name: m for m in rows}
        plugin = by_name["plugin Source.backup, no core"]
        core = by_name["data-manager backup"].seconds - plugin.seconds
        core_cpu = by_name["data-manager backup"].cpu_seconds - plugin.cpu_seconds
        base = by_name["mysqldump > file"]
        print(f"\nCPU seconds of each tree, and what was read (row values {nbytes / 1e6:.0f} MB):")
        for m in rows:
            what = read.get(m.name)
            more = f"  {what['rows']} rows, {what['bytes'] / 1e6:.0f} MB produced" if what else ""
            print(f"  {m.name:<38} cpu {m.cpu_seconds:7.2f}{more}")
        print(f"\ncore's share (data-manager backup - plugin alone): {core:.2f} s wall, {core_cpu:.2f} s CPU")
        print("reader + core's share, against mysqldump > file:")
        for m in rows:
            if m.name in read:
                print(f"  {m.name:<38} {m.seconds + core:7.2f} s  {(m.seconds + core) / base.seconds:5.2f}x")
        report(f"mysql_clients: {nbytes / 1e6:.0f} MB of rows (MariaDB), read every row", rows,
               baseline="mysqldump > file",
               extra={"row_bytes": nbytes, "read": read, "core_share_seconds": core,
                      "core_share_cpu_seconds": core_cpu, "rounds": args.rounds})
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            try:
                client(args, f"DROP DATABASE IF EXISTS {DB}")
            except Exception as exc:  # the server may be what failed
                print(f"cleanup: {exc}", file=sys.stderr)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=1, help="rounds, alternating the order; medians reported")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=3306)
    ap.add_argument("--user", default="dm")
    ap.add_argument("--password", default="dm")
    ap.add_argument("--keep", action="store_true", help="keep the database and files")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one contender
    ap.add_argument("--database", help=argparse.SUPPRESS)
    ap.add_argument("--summary", help=argparse.SUPPRESS)
    return ap.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.worker:  # a child: must not import common (it would wait for the lock its parent holds)
        result = worker(arguments)
        Path(arguments.summary).write_text(json.dumps(result))
    else:
        os.chdir(Path(__file__).parent)
        sys.path.insert(0, str(Path(__file__).parent))
        main(arguments)
