"""Many small files (issue #24): data-manager's directory source against ``tar | zstd -1`` and restic.

    python bench/bench_small_files.py [--files 200000] [--million] [--rounds 1] [--no-restic]
                                      [--work DIR] [--keep] [--old-code DIR]

Trees: ``--files N`` files of 10-200 bytes of text-like data (default 200,000, 1,000 a directory), and with
``--million`` 1,000,000 files of a few bytes (slow to create: a minute or more). Each tree is backed up and
restored by every contender in the same run, from a warm page cache with nothing dirty in it (a
``sync`` before each contender, untimed):

- ``tar -c | zstd -1`` to a file, and ``zstd -d | tar -x`` of it (the baselines: what the kernel needs);
- data-manager: the ``directory`` source to a ``filesystem`` storage (the default ``worm`` engine), restored
  elsewhere with ``restore --set tree.path=...``. Its restore also checks every digest and the index and
  syncs the tree to disk (one ``syncfs``) before its atomic swap, which tar does not;
- restic (``--compression auto``), when installed.

Wall time, CPU time and the peak RSS of the largest process of each tree are measured (GNU ``time``); with
``--rounds N`` contenders alternate round after round and each is reported by its median run. Prints the
per-file cost and the ratios the issue targets: backup <= 2x tar + zstd, restore <= 2x tar -x, both faster
than restic, RSS < 256 MB at 1 M files. ``--work DIR`` keeps (and reuses) the trees there between runs;
``--old-code DIR`` adds rows for another version of data-manager (``git archive REV | tar -x -C DIR``).

The figures measured while working on issue #24 are in ``docs/sources/directory.md`` (section *Many small
files*).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from common import Measurement, dm_command, medians, report, run

RUN_OUTPUTS = ("backups", "backups-old", "restic", "restic-cache", "tar.zst", "x-tar", "x-dm", "x-dm-old", "x-restic")
WORDS = [b"sample", b"value", b"run", b"temp", b"id", b"ok", b"1.25", b"-0.75", b"42", b"x", b"y", b"z", b"\n"]


def make_tree(root: Path, files: int, lo: int, hi: int, per_dir: int = 1000) -> int:
    """``files`` files of ``lo``..``hi`` bytes, ``per_dir`` to a directory; returns their total size.

    Written with os.open/os.write (no pathlib), seeded: the same tree every run. A ``.complete`` marker
    says the tree was finished, so ``--work`` can reuse it."""
    marker = root.parent / f"{root.name}.complete"  # outside the tree: no contender needs an exclude
    if marker.exists():
        return int(marker.read_text())
    if root.exists():
        shutil.rmtree(root)
    rng = random.Random(24)
    pool = b" ".join(rng.choice(WORDS) for _ in range(100_000))
    os.makedirs(root)
    total = 0
    dfd = -1
    for i in range(files):
        if i % per_dir == 0:
            if dfd >= 0:
                os.close(dfd)
            d = f"{root}/d{i // per_dir:05d}"
            os.mkdir(d)
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        n = rng.randint(lo, hi)
        start = rng.randrange(len(pool) - n)
        fd = os.open(f"f{i:07d}.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfd)
        os.write(fd, pool[start : start + n])
        os.close(fd)
        total += n
    os.close(dfd)
    marker.write_text(str(total))
    return total


def rmtree(path: Path) -> None:
    subprocess.run(["rm", "-rf", str(path)], check=True)


def drop(path: Path) -> None:
    """Remove what a run left (not timed)."""
    if path.exists():
        rmtree(path)


class Contenders:
    """One tree's contenders, each a backup and a restore command."""

    def __init__(self, work: Path, src: Path, restic: bool, old_code: Path | None) -> None:
        self.work, self.src, self.restic, self.old_code = work, src, restic, old_code
        self.config, self.old_config = work / "dm.toml", work / "dm-old.toml"
        for config, backups in ((self.config, "backups"), (self.old_config, "backups-old")):
            config.write_text(
                f'[storages.local]\ntype = "filesystem"\nroot = "{work / backups}"\n'
                f'[datasets.bench]\n[[datasets.bench.sources]]\nname = "tree"\ntype = "directory"\npath = "{src}"\n'
            )
        self.restic_env = {"RESTIC_REPOSITORY": str(work / "restic"), "RESTIC_PASSWORD": "bench-small-files",
                           "RESTIC_CACHE_DIR": str(work / "restic-cache")}

    def round(self, nbytes: int, check: bool) -> list[Measurement]:
        """One run of every contender. Each restored tree is dropped as soon as it is measured (data-manager's
        compared with the source first, with ``check``): at most two trees exist at once, so a million files
        fit on a tmpfs ``--work``."""
        w, src = self.work, self.src
        for p in RUN_OUTPUTS:
            drop(w / p)
        rows = [
            timed("tar -c | zstd -1", f"tar -cf - -C {src} . | zstd -1 -q -T1 > {w}/tar.zst",
                shell=True, nbytes=nbytes),
            timed("data-manager backup", [*dm_command(), "--config", str(self.config), "backup", "bench"],
                nbytes=nbytes),
        ]
        old_env = {"PYTHONPATH": str(self.old_code)} if self.old_code else None
        if old_env:
            rows.append(timed("data-manager (old code) backup", [*dm_command(), "--config", str(self.old_config),
                                                                "backup", "bench"], env=old_env, nbytes=nbytes))
        if self.restic:
            subprocess.run(["restic", "init", "--repository-version", "2", "-q"], env={**os.environ, **self.restic_env},
                           check=True, stdout=subprocess.DEVNULL)
            rows.append(timed("restic backup", ["restic", "backup", "--compression", "auto", "--quiet", str(src)],
                            env=self.restic_env, nbytes=nbytes))
        os.mkdir(w / "x-tar")
        rows.append(timed("zstd -d | tar -x", f"zstd -d -c {w}/tar.zst | tar -xf - -C {w}/x-tar", shell=True,
                        nbytes=nbytes))
        drop(w / "x-tar")
        rows.append(timed("data-manager restore", [*dm_command(), "--config", str(self.config), "restore", "--yes",
                                                 "--set", f"tree.path={w / 'x-dm'}", "bench"], nbytes=nbytes))
        if check:
            same_tree(src, w / "x-dm")
        drop(w / "x-dm")
        if old_env:
            rows.append(timed("data-manager (old code) restore",
                            [*dm_command(), "--config", str(self.old_config), "restore", "--yes", "--set",
                             f"tree.path={w / 'x-dm-old'}", "bench"], env=old_env, nbytes=nbytes))
            drop(w / "x-dm-old")
        if self.restic:
            rows.append(timed("restic restore", ["restic", "restore", "latest", "--target", str(w / "x-restic")],
                            env=self.restic_env, nbytes=nbytes))
            drop(w / "x-restic")
        return rows


def timed(name: str, cmd: str | list[str], **kwargs: Any) -> Measurement:
    """:func:`common.run` after ``sync``: each contender starts with nothing dirty in the page cache. A
    restore that syncs its tree (data-manager's one ``syncfs``) would otherwise also write out what the
    contender before it left dirty (``tar -x`` leaves its whole tree there)."""
    os.sync()
    return run(name, cmd, **kwargs)


def same_tree(a: Path, b: Path) -> None:
    """The restored tree holds what the source holds (``diff -r``: names, types and contents)."""
    proc = subprocess.run(["diff", "-rq", "--no-dereference", str(a), str(b)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"data-manager's restore differs from the source:\n{proc.stdout[:2000]}{proc.stderr[:2000]}")


def summarize(title: str, rows: list[Measurement], files: int) -> None:
    by = {r.name: r for r in rows}
    dm_b, dm_r = by["data-manager backup"], by["data-manager restore"]
    tar_b, tar_r = by["tar -c | zstd -1"], by["zstd -d | tar -x"]
    print(f"{title}: per file, backup {dm_b.seconds / files * 1e6:.1f} µs (tar+zstd {tar_b.seconds / files * 1e6:.1f}),"
          f" restore {dm_r.seconds / files * 1e6:.1f} µs (tar -x {tar_r.seconds / files * 1e6:.1f})")
    checks = [
        (f"backup  {dm_b.seconds / tar_b.seconds:5.2f}x tar + zstd (target <= 2)", dm_b.seconds <= 2 * tar_b.seconds),
        (f"restore {dm_r.seconds / tar_r.seconds:5.2f}x tar -x (target <= 2)", dm_r.seconds <= 2 * tar_r.seconds),
    ]
    if "restic backup" in by:
        rb, rr = by["restic backup"], by["restic restore"]
        checks += [
            (f"backup  {dm_b.seconds / rb.seconds:5.2f}x restic (target < 1)", dm_b.seconds < rb.seconds),
            (f"restore {dm_r.seconds / rr.seconds:5.2f}x restic (target < 1)", dm_r.seconds < rr.seconds),
        ]
    peak = max(dm_b.peak_rss_mb, dm_r.peak_rss_mb)
    checks.append((f"peak RSS {peak:.0f} MB (target < 256)", peak < 256))
    for text, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")


def bench_tree(work: Path, name: str, files: int, lo: int, hi: int, rounds: int, restic: bool,
               old_code: Path | None) -> None:
    src = work / name
    print(f"making {files} files of {lo}-{hi} bytes in {src} ...", flush=True)
    nbytes = make_tree(src, files, lo, hi)
    tree_work = work / f"{name}-runs"
    tree_work.mkdir(exist_ok=True)
    contenders = Contenders(tree_work, src, restic, old_code)
    # Through a pipe: GNU tar writing to /dev/null itself skips reading the files' data.
    run("warm page cache (tar | cat > /dev/null)", f"tar -cf - -C {src} . | cat > /dev/null", shell=True)
    results = []
    for i in range(rounds):
        results.append(contenders.round(nbytes, check=i == 0))
    rows = medians(results)
    title = f"small files: {files} files of {lo}-{hi} bytes ({nbytes / 1e6:.1f} MB)"
    report(title.replace("small files", f"small_files_{files}"), rows, baseline="tar -c | zstd -1",
           extra={"files": files, "rounds": rounds})
    summarize(title, rows, files)
    for p in RUN_OUTPUTS:
        drop(tree_work / p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=200_000, help="files of 10-200 bytes (0: skip this tree)")
    ap.add_argument("--million", action="store_true", help="also 1,000,000 files of 1-8 bytes (slow to create)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--no-restic", action="store_true")
    ap.add_argument("--work", type=Path, help="keep the trees here and reuse them (default: a temporary dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--old-code", type=Path, help="a tree of older data-manager code to run beside this one "
                    "(e.g. git archive REV | tar -x -C DIR), on its PYTHONPATH")
    args = ap.parse_args()
    restic = not args.no_restic and shutil.which("restic") is not None
    if not restic and not args.no_restic:
        print("restic is not installed (apt-get install -y restic): its rows are left out")
    work = args.work or Path(tempfile.mkdtemp(prefix="dm-bench-small-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.files:
            bench_tree(work, f"small-{args.files}", args.files, 10, 200, args.rounds, restic, args.old_code)
        if args.million:
            bench_tree(work, "tiny-1000000", 1_000_000, 1, 8, args.rounds, restic, args.old_code)
    finally:
        if args.work is None and not args.keep:
            rmtree(work)


if __name__ == "__main__":
    main()
