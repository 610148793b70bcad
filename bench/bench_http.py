"""The http source against ``curl -o``: one export served by a local server, downloaded by both in the same run.

    python bench/bench_http.py [--size-mb 1024] [--rounds 3] [--chunk-size 16MiB] [--dir /var/tmp] [--keep] [--old DIR]
    python bench/bench_http.py --resume [--size-mb 1024] [--rounds 3] [--dir /var/tmp]

A file of ``--size-mb`` MiB (a random 64 MiB block repeated: incompressible, as an export's zip is) is served
by a small threaded server of the standard library that answers ``Range`` requests with ``os.sendfile``
(cheap for the server, so the contenders are what is measured). Contenders, in alternation, ``--rounds``
times, each reported by its median run:

* ``curl -o FILE URL``: the baseline, one GET, written to the page cache;
* ``curl -o FILE URL; sync -f FILE``: the same made durable, for reference (data-manager fsyncs);
* ``data-manager backup``: the ``http`` source (ranged GETs of ``--chunk-size``) into a filesystem storage,
  BLAKE3 of the artifact, metadata, fsync;
* the same with the server sending ``Repr-Digest: sha-256`` that the source checks (one more hash);
* ``data-manager backup`` of a 1 KiB export from the same server: the fixed cost of any backup (interpreter,
  imports, config, the dataset lock and its settle time, metadata), which the per-byte work adds to.

``--resume``: instead, ``curl -o``, ``data-manager backup`` of the whole export, and ``data-manager backup
--resume`` of a backup killed (SIGKILL) once half of its 64 MiB parts were committed (the killed run is
set-up, not timed): what continuing costs against downloading it all again.

``--old DIR`` adds the two 1 GiB data-manager rows again with the http plugin of another checkout
(``git worktree add /tmp/http-old COMMIT``; DIR is that checkout), in the same rounds: before and after.

Everything (the served file, curl's output, the backups) lives in a temp dir under ``--dir``: on a disk,
data-manager's fsync is part of its time (compare with the ``sync -f`` row); on a tmpfs (``/dev/shm``) only
the software is measured.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from common import dm_command, medians, report, run

MiB = 1 << 20
KIB = 1 << 10
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def make_export(path: Path, size_mb: int) -> int:
    block = os.urandom(64 * MiB)
    with open(path, "wb") as f:
        left = size_mb * MiB
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
    return size_mb * MiB


def serve(path: Path, digest: str) -> ThreadingHTTPServer:
    """Serve ``path`` at /export (and /export-digest with a Repr-Digest header), with ranges, in a thread."""
    full = path.stat().st_size

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_HEAD(self) -> None:
            self.do_GET(body=False)

        def do_GET(self, body: bool = True) -> None:
            size = KIB if self.path.startswith("/small") else full
            start, end, status = 0, size - 1, 200
            m = _RANGE.match(self.headers.get("Range", ""))
            if m:
                start = int(m[1])
                end = min(int(m[2]) if m[2] else size - 1, size - 1)
                status = 206
            self.send_response(status)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", '"bench-1"')
            if self.path.startswith("/export-digest"):
                self.send_header("Repr-Digest", digest)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            if not body:
                return
            self.wfile.flush()
            with open(path, "rb") as f:
                offset, left = start, end - start + 1
                while left:
                    try:
                        sent = os.sendfile(self.connection.fileno(), f.fileno(), offset, left)
                    except (BrokenPipeError, ConnectionResetError):  # a client killed (--resume's set-up)
                        return
                    if sent == 0:
                        break
                    offset, left = offset + sent, left - sent

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def cut_at_half(dm: list[str], backups: Path, nbytes: int, env: dict[str, str]) -> None:
    """Start ``backup export`` and kill it (SIGKILL) once half of its 64 MiB parts are committed."""
    half = max(1, nbytes // (64 * MiB) // 2)
    proc = subprocess.Popen([*dm, "-q", "backup", "export"], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not list(backups.glob(f"export/*/db/.committed/export.parts/*/{half:06d}.json")):
            if proc.poll() is not None:
                raise SystemExit("the backup to cut ended before half of it was committed")
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunk-size", default="16MiB")
    ap.add_argument("--dir", default="/var/tmp", help="where the temp dir goes (default /var/tmp)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--old", type=Path, help="another checkout whose http plugin runs as more contenders")
    ap.add_argument("--resume", action="store_true", help="a backup cut at 50%% and resumed, against a whole one")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dm-bench-http-", dir=args.dir))
    try:
        export = work / "export.zip"
        nbytes = make_export(export, args.size_mb)
        sha = hashlib.sha256()
        with open(export, "rb") as f:
            while block := f.read(16 * MiB):
                sha.update(block)
        httpd = serve(export, f"sha-256=:{base64.b64encode(sha.digest()).decode()}:")
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        config = work / "dm.toml"
        config.write_text(
            f'[storages.local]\ntype = "filesystem"\nroot = "{work / "backups"}"\n'
            f'[datasets.export]\n[[datasets.export.sources]]\nname = "db"\ntype = "http"\n'
            f'url = "{base}/export"\nchunk_size = "{args.chunk_size}"\nchecksum_header = "none"\n'
            f'[datasets.checked]\n[[datasets.checked.sources]]\nname = "db"\ntype = "http"\n'
            f'url = "{base}/export-digest"\nchunk_size = "{args.chunk_size}"\nchecksum_header = "Repr-Digest"\n'
            f'[datasets.small]\n[[datasets.small.sources]]\nname = "db"\ntype = "http"\n'
            f'url = "{base}/small"\nchecksum_header = "none"\n'
        )
        env = {"DATA_MANAGER_STATE": str(work / "state.db")}
        dm = [*dm_command(), "--config", str(config)]
        old_env = dict(env)
        if args.old:
            plugin = args.old.resolve() / "plugins" / "data-manager-http"
            old_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin), os.environ.get("PYTHONPATH")]))
        out = work / "curl.out"
        rounds = []
        for i in range(args.rounds):
            row = []
            contenders = [
                ("curl -o", ["curl", "-sS", "-o", str(out), f"{base}/export"], False, env),
                ("curl -o; sync -f", f"curl -sS -o {out} {base}/export && sync -f {out}", True, env),
                ("data-manager backup", [*dm, "-q", "backup", "export"], False, env),
                ("data-manager backup, sha-256 checked", [*dm, "-q", "backup", "checked"], False, env),
                ("data-manager backup, 1 KiB export", [*dm, "-q", "backup", "small"], False, env),
            ]
            if args.resume:
                contenders = [contenders[0], contenders[2],
                              ("data-manager backup --resume, cut at 50%", [*dm, "-q", "backup", "export", "--resume"],
                               False, env)]
            if args.old:
                contenders += [
                    ("old plugin: data-manager backup", [*dm, "-q", "backup", "export"], False, old_env),
                    ("old plugin: sha-256 checked", [*dm, "-q", "backup", "checked"], False, old_env),
                ]
            for name, cmd, shell, cmd_env in contenders:
                shutil.rmtree(work / "backups", ignore_errors=True)
                out.unlink(missing_ok=True)
                if "--resume" in name:
                    cut_at_half(dm, work / "backups", nbytes, cmd_env)
                os.sync()  # each contender starts with no dirty pages of the one before
                m = run(name, cmd, shell=shell, env=cmd_env, nbytes=KIB if "1 KiB" in name else nbytes)
                kept = ""
                if "--resume" in name:
                    [meta] = (work / "backups").glob("export/*/db/source.json")
                    kept = f", {json.loads(meta.read_text())['info']['resumed_bytes'] / nbytes:.0%} kept"
                print(f"round {i + 1}: {name}: {m.seconds:.2f} s, CPU {m.cpu_seconds:.2f} s, "
                      f"peak RSS {m.peak_rss_mb:.0f} MB{kept}", flush=True)
                row.append(m)
            print(f"round {i + 1}: data-manager / curl -o = {row[-1 if args.resume else 2].seconds / row[0].seconds:.2f}",
                  flush=True)
            rounds.append(row)
        report(f"http export{' resumed' if args.resume else ''} to fs: {nbytes / 1e6:.0f} MB, chunk_size {args.chunk_size}, median of {args.rounds} rounds",
               medians(rounds), baseline="curl -o",
               extra={"source_bytes": nbytes, "dir": args.dir, "rounds": [[asdict(m) for m in row] for row in rounds]})
        httpd.shutdown()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
