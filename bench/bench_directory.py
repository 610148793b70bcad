"""Backup of a directory (one large file and many small ones) against ``tar -c | sha256sum``.

    python bench/bench_directory.py [--big-mb 1024] [--small 20000] [--keep]

Both read the same tree from a warm page cache in the same run. data-manager does more (per-file sha256 and
per-volume BLAKE3, compression decisions, zstd for what compresses, fsync): the ratio says what that costs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from common import dm_command, report, run


def make_tree(root: Path, big_mb: int, small: int) -> int:
    root.mkdir(parents=True)
    total = 0
    with open(root / "big.bin", "wb") as f:  # incompressible, like instrument data or images
        block = os.urandom(1 << 20)
        for i in range(big_mb):
            f.write(block[i % 251 :] + block[: i % 251])
    total += big_mb << 20
    for i in range(small):
        d = root / f"d{i // 1000:03d}"
        d.mkdir(exist_ok=True)
        data = (f"sample {i}, value {i * 0.37:.5f}\n" * (1 + i % 200)).encode()
        (d / f"f{i:06d}.txt").write_bytes(data)
        total += len(data)
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big-mb", type=int, default=1024)
    ap.add_argument("--small", type=int, default=20_000)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dm-bench-dir-"))
    try:
        src = work / "src"
        nbytes = make_tree(src, args.big_mb, args.small)
        config = work / "dm.toml"
        config.write_text(
            f'[storages.local]\ntype = "filesystem"\nroot = "{work / "backups"}"\n'
            f'[datasets.bench]\n[[datasets.bench.sources]]\nname = "tree"\ntype = "directory"\npath = "{src}"\n'
        )
        # through cat: GNU tar writing straight to /dev/null skips reading the files and warms nothing
        run("warm page cache (tar | cat > /dev/null)", f"tar -cf - -C {src} . | cat > /dev/null", shell=True)
        rows = [
            run("tar -c | sha256sum", f"tar -cf - -C {src} . | sha256sum", shell=True, nbytes=nbytes),
            run("data-manager backup", [*dm_command(), "--config", str(config), "backup", "bench"], nbytes=nbytes),
        ]
        restore_to = work / "restored"
        rows.append(run("data-manager restore (elsewhere)",
                        [*dm_command(), "--config", str(config), "restore", "--yes", "--set",
                         f"tree.path={restore_to}", "bench"], nbytes=nbytes))
        run("make a plain tar", f"tar -cf {work}/plain.tar -C {src} . && mkdir {work}/x", shell=True)
        rows.append(run("tar -x (of a plain tar)", f"tar -xf {work}/plain.tar -C {work}/x", shell=True, nbytes=nbytes))
        stored = sum(p.stat().st_size for p in (work / "backups").rglob("*") if p.is_file())
        report(f"directory: {args.big_mb} MiB file + {args.small} small files ({nbytes / 1e6:.0f} MB)",
               rows, baseline="tar -c | sha256sum", extra={"stored_bytes": stored, "source_bytes": nbytes})
        print(f"stored {stored / 1e6:.0f} MB for {nbytes / 1e6:.0f} MB of data")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
