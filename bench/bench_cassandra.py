"""Backup and restore of a Cassandra table against ``cqlsh COPY TO`` / ``COPY FROM``, in the same run.

    python bench/bench_cassandra.py [--rows 1000000] [--host 127.0.0.1 --port 9042 --user cassandra --password cassandra]

Makes keyspace ``dm_bench_cassandra`` with one table of ``--rows`` rows (10 rows a partition: int key,
int clustering, text, double, timestamp, a short blob). Then:

* backup: ``cqlsh -e "COPY ... TO 'rows.csv'"`` (baseline) and ``data-manager backup`` (filesystem
  storage; zstd and BLAKE3 done by the core);
* restore: ``cqlsh -e "COPY ... FROM 'rows.csv'"`` into an empty copy of the table, and
  ``data-manager restore --set db.keyspace=...`` into a fresh keyspace (it creates the schema itself).

Row counts are checked after each restore. cqlsh (pip package ``cqlsh``) is installed in its own virtualenv
under ``~/.cache/dm-bench-cqlsh`` if it is not on PATH. Peak RSS is the largest process of each tree
(cqlsh COPY forks worker processes; ru_maxrss of children reports the largest).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import dm_command, report, run

KS = "dm_bench_cassandra"
TABLE = "events"
PER_PARTITION = 10


def cqlsh_path() -> str:
    found = shutil.which("cqlsh")
    if found:
        return found
    venv = Path.home() / ".cache" / "dm-bench-cqlsh"
    exe = venv / "bin" / "cqlsh"
    if not exe.exists():
        print("installing cqlsh into", venv, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "cqlsh"], check=True)
    return str(exe)


def connect(args: argparse.Namespace):
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster

    cluster = Cluster([args.host], port=args.port, auth_provider=PlainTextAuthProvider(args.user, args.password))
    return cluster, cluster.connect()


SCHEMA = (f"CREATE TABLE {{ks}}.{TABLE} (p int, c int, name text, value double, at timestamp, tag blob, "
          f"PRIMARY KEY (p, c))")


def make_data(args: argparse.Namespace, session) -> None:
    """Load the rows, one partition (10 rows) per unlogged batch: ~5x less CPU than a request a row."""
    from cassandra.concurrent import execute_concurrent
    from cassandra.query import BatchStatement, BatchType

    session.execute(f"DROP KEYSPACE IF EXISTS {KS}", timeout=300)
    session.execute(f"CREATE KEYSPACE {KS} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    session.execute(SCHEMA.format(ks=KS))
    ins = session.prepare(f"INSERT INTO {KS}.{TABLE} (p, c, name, value, at, tag) VALUES (?, ?, ?, ?, ?, ?)")

    def batches(lo: int, hi: int):
        for first in range(lo, hi, PER_PARTITION):
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for i in range(first, min(hi, first + PER_PARTITION)):
                batch.add(ins, (i // PER_PARTITION, i % PER_PARTITION, f"event {i} of run {i // 1000}",
                                i * 0.001 + 1 / (i + 3), 1_700_000_000_000 + i * 37,
                                (i * 2654435761 % 2**32).to_bytes(4, "big")))
            yield batch, ()

    step = 50_000
    for lo in range(0, args.rows, step):
        execute_concurrent(session, batches(lo, min(args.rows, lo + step)), concurrency=32,
                           raise_on_first_error=True)
        print(f"  {min(args.rows, lo + step)} rows", end="\r", flush=True)
    print()


def count(session, ks: str) -> int:
    """Rows of the table, counted over 64 token ranges (one count(*) of 1M rows exceeds the server's timeout)."""
    lo, hi, parts = -(2**63), 2**63 - 1, 64
    bounds = [lo + (hi - lo) * i // parts for i in range(parts)] + [hi]
    return sum(  # no key has the minimum token (Murmur3), and `token(p) = min` would mean the whole ring
        session.execute(f"SELECT count(*) FROM {ks}.{TABLE} WHERE token(p) > {a} AND token(p) <= {b}",
                        timeout=600).one()[0]
        for a, b in zip(bounds, bounds[1:]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--size-mb", type=int, default=None, help="ignored, for the common interface; use --rows")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9042)
    ap.add_argument("--user", default="cassandra")
    ap.add_argument("--password", default="cassandra")
    ap.add_argument("--keep", action="store_true", help="keep the keyspaces and files")
    args = ap.parse_args()
    cqlsh = cqlsh_path()
    work = Path(tempfile.mkdtemp(prefix="dm-bench-cassandra-"))
    cluster, session = connect(args)
    copy_ks, dm_ks = f"{KS}_copy", f"{KS}_dm"
    try:
        print(f"making {args.rows} rows in {KS}.{TABLE} ...", flush=True)
        t0 = time.monotonic()
        make_data(args, session)
        print(f"  loaded in {time.monotonic() - t0:.0f}s", flush=True)
        config = work / "dm.toml"
        config.write_text(
            f'[storages.local]\ntype = "filesystem"\nroot = "{work / "backups"}"\n'
            f'[datasets.bench]\n[[datasets.bench.sources]]\nname = "db"\ntype = "cassandra"\n'
            f'contact_points = ["{args.host}"]\nport = {args.port}\nusername = "{args.user}"\n'
            f'password = "${{DM_BENCH_PASSWORD}}"\nkeyspace = "{KS}"\nconsistency = "ONE"\nwrite_consistency = "ONE"\n'
        )
        env = {"DM_BENCH_PASSWORD": args.password}
        csv = work / "rows.csv"
        base = [cqlsh, args.host, str(args.port), "-u", args.user, "-p", args.password, "--request-timeout", "600"]

        rows = []
        rows.append(run("cqlsh COPY TO (csv)", base + ["-e", f"COPY {KS}.{TABLE} TO '{csv}'"]))
        rows.append(run("data-manager backup", dm_command() + ["--config", str(config), "-q", "backup", "bench"], env=env))
        csv_bytes = csv.stat().st_size
        stored = sum(f.stat().st_size for f in (work / "backups").rglob("*") if f.is_file())
        for r in rows:
            r.bytes = csv_bytes

        for ks in (copy_ks, dm_ks):
            session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=300)
        session.execute(f"CREATE KEYSPACE {copy_ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
        session.execute(SCHEMA.format(ks=copy_ks))
        restores = []
        restores.append(run("cqlsh COPY FROM (csv)", base + ["-e", f"COPY {copy_ks}.{TABLE} FROM '{csv}'"], nbytes=csv_bytes))
        restores.append(run("data-manager restore", dm_command() + [
            "--config", str(config), "-q", "restore", "--yes", "--set", f"db.keyspace={dm_ks}", "latest", "bench"],
            env=env, nbytes=csv_bytes))
        for ks in (copy_ks, dm_ks):
            n = count(session, ks)
            if n != args.rows:
                raise SystemExit(f"{ks}: {n} rows after restore, expected {args.rows}")

        def per_second(ms):
            return {m.name: round(args.rows / m.seconds) for m in ms}

        extra = {"rows": args.rows, "csv_bytes": csv_bytes, "dm_stored_bytes": stored,
                 "rows_per_second": per_second(rows + restores)}
        report(f"cassandra backup: {args.rows} rows", rows, baseline="cqlsh COPY TO (csv)", extra=extra)
        report(f"cassandra restore: {args.rows} rows", restores, baseline="cqlsh COPY FROM (csv)", extra=extra)
        print("\nrows per second:", ", ".join(f"{k} {v}" for k, v in extra["rows_per_second"].items()))
        print(f"csv {csv_bytes / 1e6:.1f} MB, data-manager backup stored {stored / 1e6:.1f} MB")
    finally:
        if not args.keep:
            for ks in (KS, copy_ks, dm_ks):
                session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=300)
            shutil.rmtree(work, ignore_errors=True)
        cluster.shutdown()


if __name__ == "__main__":
    main()
