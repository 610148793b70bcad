"""The ``sync`` engine against ``rclone sync`` (issue #23): a tree with 1% of its bytes changed, mirrored again.

    .venv/bin/python bench/bench_sync.py                 # a 500 MB tree
    .venv/bin/python bench/bench_sync.py --mb 2000       # the issue's 2 GB tree
    options: --dir /var/tmp, --code HEAD|REV|checkout, --keep (leave the temp dir),
             --out FILE (default bench/results/sync.json)

Same data, same run, each side with its own target under a temp dir of ``--dir`` (a filesystem storage
for data-manager, a local directory for rclone: both write to the same disk). The tree: 70% of the bytes in
files of 1-8 MiB, 30% in files of 4-128 KiB, incompressible (random), 20 to a directory. Phases, each
timed (wall, CPU of the process tree, peak RSS):

1. first mirror: ``data-manager backup`` to an empty ``engine = "sync"`` storage / ``rclone sync`` to an
   empty directory;
2. unchanged: both again;
3. 1% changed: files holding ~1% of the bytes rewritten, as many new files created, as many deleted; both
   again. This is the issue's figure: target ≤ rclone's time, flat memory.

Each contender starts on a quiet disk (``sync`` first). rclone leaves its copy in the page cache, while a
backup counts only once on disk; the first mirror also times ``rclone sync`` followed by ``sync`` into a
second directory, the like-for-like figure. Phases 2 and 3 also time the floor: a backup of an empty directory to a sync storage of its own (what
every backup costs whatever the tree: interpreter, imports, config, state database, the lock's settle time,
metadata). data-manager's bytecode is compiled first, as ``pip install`` does (``common.precompile``).

rclone runs with its defaults (size + modification time decide what is copied, 4 transfers, 8 checkers).
data-manager runs from a ``git archive`` of ``--code`` (default HEAD) on PYTHONPATH, so edits others make in
this checkout during the run do not mix in (``--code checkout``: the working tree as it is); it runs in the
temp dir, since ``python -m`` puts the current directory first on the path. Both results
are compared with the source, file by file, after the last phase.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from common import RESULTS, Measurement, dm_command, precompile, run

SEED = 23
REPO = Path(__file__).resolve().parents[1]


def make_tree(root: Path, mb: int, rng: random.Random) -> tuple[int, int]:
    """About ``mb`` MB of random files; (files, bytes)."""
    total = mb * 1_000_000
    written = files = 0
    big_share = int(total * 0.7)
    while written < total:
        size = rng.randint(1 << 20, 8 << 20) if written < big_share else rng.randint(4 << 10, 128 << 10)
        d = root / f"d{files // 20:04d}"
        if files % 20 == 0:
            d.mkdir(parents=True)
        (d / f"file {files:06d}.bin").write_bytes(rng.randbytes(size))
        written += size
        files += 1
    return files, written


def change_one_percent(root: Path, rng: random.Random) -> int:
    """Rewrite files holding ~1% of the bytes, create and delete as many; the bytes rewritten or created."""
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in paths)
    rng.shuffle(paths)
    changed = 0
    n = 0
    for p in paths:
        if changed >= total // 100:
            break
        size = p.stat().st_size
        p.write_bytes(rng.randbytes(size))
        changed += size
        n += 1
    for i in range(n):
        (root / "d0000" / f"new {i}.bin").write_bytes(rng.randbytes(64 << 10))
        changed += 64 << 10
    for p in paths[-n:]:
        p.unlink()
    return changed


def timed(name: str, cmd: str | list[str], **kw: object) -> Measurement:
    """:func:`common.run` on a quiet disk: what the last contender left dirty in the page cache is written
    out first, not during this one (each contender's own writeback is its own)."""
    os.sync()
    return run(name, cmd, **kw)  # type: ignore[arg-type]


def same_files(a: Path, b: Path) -> bool:
    def listing(root: Path) -> dict[str, tuple[int, bytes]]:
        out = {}
        for p in root.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    out[str(p.relative_to(root))] = (p.stat().st_size, f.read(4096))
        return out

    return listing(a) == listing(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=500)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--code", default="HEAD")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "sync.json"))
    args = ap.parse_args()
    if not shutil.which("rclone"):
        raise SystemExit("rclone is missing: apt-get install -y rclone")
    rng = random.Random(SEED)
    tmp = Path(tempfile.mkdtemp(prefix="dm-bench-sync-", dir=args.dir))
    try:
        env = {"DATA_MANAGER_STATE": str(tmp / "state.db")}
        if args.code != "checkout":
            code = tmp / "code"
            code.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.code], check=True, capture_output=True)
            subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")]))
            precompile(code)
        else:
            precompile(REPO / "data_manager")
        src = tmp / "src"
        print(f"making a {args.mb} MB tree in {src} ...", file=sys.stderr, flush=True)
        files, nbytes = make_tree(src, args.mb, rng)
        config = tmp / "dm.toml"
        config.write_text(f"""
[storages.mirror]
type = "filesystem"
root = "{tmp / 'vault'}"
engine = "sync"

[datasets.bench]
storage = "mirror"

[[datasets.bench.sources]]
name = "tree"
type = "directory"
path = "{src}"
""")
        empty = tmp / "empty"
        empty.mkdir()
        (tmp / "floor.toml").write_text(config.read_text().replace(f'"{src}"', f'"{empty}"')
                                        .replace(f'"{tmp / "vault"}"', f'"{tmp / "vault-floor"}"'))
        dm = [*dm_command(), "--config", str(config), "backup", "bench"]
        # What any backup costs whatever the tree (interpreter, imports, config, state database, the lock's
        # settle time, metadata): an empty directory mirrored, after a first time.
        floor = [*dm_command(), "--config", str(tmp / "floor.toml"), "backup", "bench"]
        rclone = ["rclone", "sync", str(src), str(tmp / "rclone"), "--config", "/dev/null"]
        for p in src.rglob("*"):  # warm the page cache: both sides read a cached tree
            if p.is_file():
                p.read_bytes()
        # the tree's 2 GB on disk first: left dirty, their writeback ran during the first mirror and made it
        # vary by 20% between runs of the same code
        os.sync()
        phases: dict[str, list[Measurement]] = {}
        for phase in ("first mirror", "unchanged", "1% changed"):
            if phase == "1% changed":
                changed = change_one_percent(src, rng)
                print(f"changed {changed / 1e6:.1f} MB", file=sys.stderr, flush=True)
            rows = [timed("rclone sync", rclone, nbytes=nbytes),
                    timed("data-manager backup (sync)", dm, nbytes=nbytes, env=env, cwd=str(tmp))]
            if phase == "first mirror":
                # rclone leaves its copy in the page cache; data-manager's counts once on disk: the copy
                # made durable too (another target, the same files), for the like-for-like figure
                durable = " ".join(shlex.quote(a) for a in [*rclone[:2], str(src), str(tmp / "rclone2"), *rclone[4:]])
                rows.append(timed("rclone sync, then sync", f"{durable} && sync", nbytes=nbytes, shell=True))
            if phase != "first mirror":
                rows.append(timed("data-manager, empty tree (floor)", floor, env=env, cwd=str(tmp)))
            else:
                timed("data-manager, empty tree (first)", floor, env=env, cwd=str(tmp))
            phases[phase] = rows
            base = rows[0]
            print(f"\n{phase}: {files} files, {nbytes / 1e6:.0f} MB")
            print(f"{'contender':<30}{'seconds':>9}{'CPU s':>8}{'ratio':>8}{'peak RSS MB':>13}")
            for r in rows:
                print(f"{r.name:<30}{r.seconds:>9.2f}{r.cpu_seconds:>8.2f}{r.seconds / base.seconds:>8.2f}"
                      f"{r.peak_rss_mb:>13.1f}")
        mirror = tmp / "vault" / "bench" / "mirror" / "tree"
        ok = same_files(src, tmp / "rclone") and all(
            (mirror / p.relative_to(src)).stat().st_size == p.stat().st_size for p in src.rglob("*") if p.is_file())
        print(f"\nresults match the source: {ok}")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "mb": args.mb, "files": files, "bytes": nbytes, "code": args.code, "cpus": os.cpu_count(),
            "phases": {k: [asdict(r) | {"ratio": r.seconds / v[0].seconds} for r in v] for k, v in phases.items()},
            "results_match": ok, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }, indent=2))
        print(f"(saved {args.out})")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
