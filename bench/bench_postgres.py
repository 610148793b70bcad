"""Backup and restore of a PostgreSQL database against ``pg_dump -Fc`` / ``pg_restore`` on the same server.

    python bench/bench_postgres.py [--size-mb 1024] [--dsn postgresql://dm:dm@127.0.0.1:5432/postgres] [--keep]

The data (``--size-mb`` of table data, made server-side with generate_series) is a typical experiment
table: a bigint key, a timestamp, a few floats, a short text and a small jsonb per row, plus a primary key.
Every contender runs as a child process in the same run; the table prints seconds, MB/s (of table data),
the ratio to the baseline and the peak RSS of the largest process in the contender's tree.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from common import dm_command, report, run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024, help="table data to generate (MB)")
    ap.add_argument("--dsn", default=os.environ.get("DM_BENCH_PG_DSN", "postgresql://dm:dm@127.0.0.1:5432/postgres"),
                    help="a database of the server to use (new databases are created beside it)")
    ap.add_argument("--keep", action="store_true", help="keep the databases and files")
    args = ap.parse_args()

    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(args.dsn)
    password = str(params.pop("password", "") or "")
    env = {"PGPASSWORD": password} if password else {}
    admin = make_conninfo(**params)
    tag = secrets.token_hex(3)
    src_db, dm_db, pg_db = f"bench_pg_{tag}", f"bench_pg_{tag}_dm", f"bench_pg_{tag}_pgr"
    work = Path(tempfile.mkdtemp(prefix="dm-bench-pg-"))

    def execute(dbname: str, statement: str) -> list:
        with psycopg.connect(admin, dbname=dbname, password=password or None, autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []

    try:
        execute(params.get("dbname", "postgres"), f'CREATE DATABASE "{src_db}"')
        rows = args.size_mb * 1_000_000 // 120  # ~120 bytes of table data per row
        t0 = time.perf_counter()
        execute(src_db, "SET synchronous_commit = off; CREATE TABLE samples (id bigint, at timestamptz, "
                "x double precision, y double precision, z real, label text, meta jsonb)")
        step = 2_000_000
        for lo in range(1, rows + 1, step):  # in slices: bounded WAL and memory on a shared machine
            hi = min(rows, lo + step - 1)
            execute(src_db, "SET synchronous_commit = off; INSERT INTO samples SELECT g, "
                    "timestamptz '2024-01-01' + g * interval '1 ms', random(), g * 0.001, (g % 1000) / 7.0, "
                    "md5(g::text), jsonb_build_object('run', g % 97, 'ok', g % 3 = 0) "
                    f"FROM generate_series({lo}, {hi}) g")
        execute(src_db, "ALTER TABLE samples ADD PRIMARY KEY (id)")
        execute(src_db, "VACUUM ANALYZE samples")
        nbytes = execute(src_db, "SELECT pg_table_size('samples')")[0][0]
        print(f"made {rows} rows, {nbytes / 1e6:.0f} MB of table data in {time.perf_counter() - t0:.0f}s")

        db_dsn = make_conninfo(**{**params, "dbname": src_db})
        config = work / "dm.toml"
        config.write_text(
            f'[storages.local]\ntype = "filesystem"\nroot = "{work / "backups"}"\n'
            f'[datasets.bench]\nstorage = "local"\n[[datasets.bench.sources]]\nname = "db"\ntype = "postgres"\n'
            f"dsn = '{db_dsn}'\n"
        )
        dump_file = work / "plain.dump"
        run("warm cache (pg_dump -Fc -Z0 > /dev/null)", f"pg_dump -Fc -Z0 -d '{db_dsn}' > /dev/null", shell=True,
            env=env)
        backups = [
            run("pg_dump -Fc > file", f"pg_dump -Fc -d '{db_dsn}' > {dump_file}", shell=True, env=env, nbytes=nbytes),
            run("data-manager backup", [*dm_command(), "--config", str(config), "backup", "bench"], env=env,
                nbytes=nbytes),
        ]
        stored = sum(p.stat().st_size for p in (work / "backups").rglob("*") if p.is_file())
        report(f"postgres backup: {nbytes / 1e6:.0f} MB of table data", backups, baseline="pg_dump -Fc > file",
               extra={"table_bytes": nbytes, "stored_bytes": stored, "pg_dump_file_bytes": dump_file.stat().st_size})
        print(f"stored: data-manager {stored / 1e6:.0f} MB, pg_dump -Fc {dump_file.stat().st_size / 1e6:.0f} MB")

        restores = [
            run("createdb + pg_restore -1", f"createdb --maintenance-db='{admin}' {pg_db} && pg_restore --single-transaction "
                f"-d '{make_conninfo(**{**params, 'dbname': pg_db})}' {dump_file}", shell=True, env=env, nbytes=nbytes),
            run("data-manager restore (new db)", [*dm_command(), "--config", str(config), "restore", "--yes", "--set",
                                                  f"db.database={dm_db}", "bench"], env=env, nbytes=nbytes),
            run("data-manager restore (over it)", [*dm_command(), "--config", str(config), "restore", "--yes", "--set",
                                                   f"db.database={dm_db}", "bench"], env=env, nbytes=nbytes),
        ]
        report(f"postgres restore: {nbytes / 1e6:.0f} MB of table data", restores, baseline="createdb + pg_restore -1")
        counts = [execute(db, "SELECT count(*) FROM samples")[0][0] for db in (src_db, dm_db, pg_db)]
        assert counts[0] == counts[1] == counts[2], counts
    finally:
        if not args.keep:
            for db in (dm_db, pg_db, src_db):
                try:
                    execute(params.get("dbname", "postgres"), f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                except Exception as exc:  # keep going: drop the others
                    print(f"could not drop {db}: {exc}")
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
