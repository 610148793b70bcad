"""Backup and restore of a MariaDB database against ``mysqldump`` and ``mysql < dump``, in the same run.

    python bench/bench_memsql.py [--size-mb 1024] [--host 127.0.0.1 --port 3306 --user dm --password dm] [--keep]

Makes a database ``dm_bench_memsql`` of about ``--size-mb`` MB of row data (sum of the values' lengths)
with MariaDB's sequence engine: one wide "events" table (integers, DECIMAL, DOUBLE, DATETIME(6), short and
long strings, a small binary column, NULLs) and one narrow "samples" table. Then:

* backup: ``mysqldump --single-transaction`` to a file (baseline), the same piped through ``zstd -3``,
  and ``data-manager backup`` (filesystem storage; zstd and BLAKE3 done by the core) three times: as
  configured by default (zstd, one reader), with ``compress = false`` (like for like with
  ``mysqldump > file``) and with ``parallel = 2`` readers;
* restore: ``mysql`` replaying the dump into a fresh database, and ``data-manager restore --set
  db.database=...`` into a fresh database.

Peak RSS is the largest process of each contender's tree (for the mysqldump pipelines: mysqldump or zstd).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import dm_command, report, run

DB = "dm_bench_memsql"


def client(args: argparse.Namespace, sql: str, database: str | None = None) -> str:
    import pymysql

    conn = pymysql.connect(host=args.host, port=args.port, user=args.user, password=args.password,
                           database=database, autocommit=True, charset="utf8mb4")
    try:
        with conn.cursor() as cur:
            out = ""
            for stmt in [s for s in sql.split(";\n") if s.strip()]:
                cur.execute(stmt)
                rows = cur.fetchall()
                if rows:
                    out = "\n".join("\t".join(str(v) for v in r) for r in rows)
            return out
    finally:
        conn.close()


def make_data(args: argparse.Namespace) -> int:
    """About size_mb MB of rows; returns the sum of the value lengths (what 'MB of rows' means here)."""
    events = max(1000, int(args.size_mb * 1e6 * 0.85 / 300))  # ~300 bytes a row
    samples = max(1000, int(args.size_mb * 1e6 * 0.15 / 24))  # ~24 bytes a row
    client(args, f"DROP DATABASE IF EXISTS {DB};\nCREATE DATABASE {DB} CHARACTER SET utf8mb4")
    client(args, """
CREATE TABLE events (
  id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  run_id INT NOT NULL,
  channel SMALLINT NOT NULL,
  amount DECIMAL(14,4),
  value DOUBLE,
  at DATETIME(6) NOT NULL,
  tag VARCHAR(40),
  note VARCHAR(255),
  payload VARBINARY(32),
  KEY (run_id, at)
) ENGINE=InnoDB;
CREATE TABLE samples (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  sensor MEDIUMINT NOT NULL,
  reading FLOAT NOT NULL,
  ok TINYINT(1) NOT NULL
) ENGINE=InnoDB""", DB)
    step = 200_000
    for lo in range(1, events + 1, step):
        hi = min(events, lo + step - 1)
        client(args, f"""
INSERT INTO events SELECT seq, seq DIV 1000, seq MOD 64, (seq * 7919 MOD 1000000) / 100,
  IF(seq MOD 50 = 0, NULL, seq * 0.000123 + 1 / (seq + 3)),
  '2024-01-01 00:00:00' + INTERVAL seq * 37 MICROSECOND + INTERVAL seq SECOND,
  CONCAT('tag-', seq MOD 97), CONCAT_WS(' ', MD5(seq), SHA1(seq), MD5(seq + 1), SHA1(seq * 3),
  'é ü 🙂 ''quoted'' \\\\ back', seq),
  UNHEX(SHA2(seq, 256))
FROM seq_{lo}_to_{hi}""", DB)
    for lo in range(1, samples + 1, step * 4):
        hi = min(samples, lo + step * 4 - 1)
        client(args, f"INSERT INTO samples SELECT seq, seq MOD 5000, SIN(seq) * 1000, seq MOD 2 "
                     f"FROM seq_{lo}_to_{hi}", DB)
    total = client(args, """SELECT (SELECT SUM(8+4+2+IFNULL(LENGTH(amount),0)+8+8+IFNULL(LENGTH(tag),0)
  +IFNULL(LENGTH(note),0)+IFNULL(LENGTH(payload),0)) FROM events) + (SELECT COUNT(*) * 12 FROM samples)""", DB)
    return int(float(total))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=3306)
    ap.add_argument("--user", default="dm")
    ap.add_argument("--password", default="dm")
    ap.add_argument("--keep", action="store_true", help="keep the databases and files")
    args = ap.parse_args()
    dump = shutil.which("mariadb-dump") or shutil.which("mysqldump")
    mysql = shutil.which("mariadb") or shutil.which("mysql")
    if not dump or not mysql:
        sys.exit("needs mysqldump and mysql (Debian package mariadb-client)")
    work = Path(tempfile.mkdtemp(prefix="dm-bench-memsql-"))
    env = {"MYSQL_PWD": args.password, "DM_BENCH_PASSWORD": args.password}
    conn = f"-h{args.host} -P{args.port} -u{args.user}"
    targets = [f"{DB}_dump_restored", f"{DB}_dm_restored"]
    try:
        print(f"making ~{args.size_mb} MB of rows in {DB} ...", flush=True)
        nbytes = make_data(args)
        config = work / "dm.toml"
        text = f'[storages.local]\ntype = "filesystem"\nroot = "{work / "backups"}"\n'
        for dataset, extra in (("bench", ""), ("bench_raw", "compress = false\n"), ("bench_two", "parallel = 2\n")):
            text += (f'[datasets.{dataset}]\n[[datasets.{dataset}.sources]]\nname = "db"\ntype = "memsql"\n'
                     f'host = "{args.host}"\nport = {args.port}\nuser = "{args.user}"\n'
                     f'password = "${{DM_BENCH_PASSWORD}}"\ndatabase = "{DB}"\n{extra}')
        config.write_text(text)
        run("warm buffer pool (mysqldump > /dev/null)",
            f"{dump} {conn} --single-transaction {DB} > /dev/null", shell=True, env=env)
        rows = [
            run("mysqldump > file", f"{dump} {conn} --single-transaction {DB} > {work}/dump.sql",
                shell=True, env=env, nbytes=nbytes),
        ]
        if shutil.which("zstd"):
            rows.append(run("mysqldump | zstd -3 > file",
                            f"{dump} {conn} --single-transaction {DB} | zstd -q -3 > {work}/dump.sql.zst",
                            shell=True, env=env, nbytes=nbytes))
        rows.append(run("data-manager backup", [*dm_command(), "--config", str(config), "backup", "bench"],
                        env=env, nbytes=nbytes))
        stored = sum(p.stat().st_size for p in (work / "backups").rglob("*") if p.is_file())
        rows.append(run("data-manager backup, compress=false",
                        [*dm_command(), "--config", str(config), "backup", "bench_raw"], env=env, nbytes=nbytes))
        rows.append(run("data-manager backup, parallel=2",
                        [*dm_command(), "--config", str(config), "backup", "bench_two"], env=env, nbytes=nbytes))
        for t in targets:
            client(args, f"DROP DATABASE IF EXISTS {t};\nCREATE DATABASE {t} CHARACTER SET utf8mb4")
        rows.append(run("mysql < dump (fresh database)", f"{mysql} {conn} {targets[0]} < {work}/dump.sql",
                        shell=True, env=env, nbytes=nbytes))
        rows.append(run("data-manager restore (fresh database)",
                        [*dm_command(), "--config", str(config), "restore", "--yes", "--set",
                         f"db.database={targets[1]}", "bench"], env=env, nbytes=nbytes))
        same = client(args, f"CHECKSUM TABLE {DB}.events, {targets[1]}.events, {DB}.samples, {targets[1]}.samples")
        sums = [line.split("\t")[1] for line in same.splitlines()]
        dump_size = (work / "dump.sql").stat().st_size
        report(f"memsql: {nbytes / 1e6:.0f} MB of rows (MariaDB), backup and restore", rows,
               baseline="mysqldump > file",
               extra={"row_bytes": nbytes, "stored_bytes": stored, "dump_bytes": dump_size,
                      "checksums_equal": sums[0] == sums[1] and sums[2] == sums[3]})
        print(f"dump {dump_size / 1e6:.0f} MB; data-manager stored {stored / 1e6:.0f} MB; "
              f"CHECKSUM TABLE original vs restored: {'equal' if sums[0] == sums[1] and sums[2] == sums[3] else sums}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            try:
                client(args, ";\n".join(f"DROP DATABASE IF EXISTS {d}" for d in [DB, *targets]))
            except Exception as exc:  # the server may be what failed
                print(f"cleanup: {exc}", file=sys.stderr)


if __name__ == "__main__":
    os.chdir(Path(__file__).parent)
    main()
