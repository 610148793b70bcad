"""The ``dedup`` engine against restic and borg (issue #17), with the ``worm`` engine as a reference row.

    .venv/bin/python bench/bench_dedup.py                                # 628 MB set + 200,000 small files
    .venv/bin/python bench/bench_dedup.py --mb 100 --small-files 5000    # a quick run
    options: --rounds N (medians), --dir /var/tmp, --datasets research,small,
             --contenders restic,borg,dedup,worm, --code HEAD|REV|checkout, --keep (leave the temp dirs),
             --out FILE (default bench/results/dedup.json)

data-manager runs from a ``git archive`` of ``--code`` (default HEAD: the last commit) put in the temp dir
and put first on PYTHONPATH: others edit and commit in this checkout while a run lasts minutes, and a
format change half way through would mix two versions (it did: index files written before a commit were
"damaged" after it). ``--code checkout`` runs the working tree as it is, and says so if it changed during
the run.

Same data, same run, warm page cache (every file read once before timing), each contender in its own
fresh repository (and its own cache) in a temp dir under ``--dir``. Encryption on for all but worm (which
has none): restic 0.14 with repository format 2 and ``--compression auto``; borg 1.2 ``repokey`` with
``--compression zstd,1`` (the level of our engine); data-manager's ``dedup`` storage. Passphrases go
through environment variables (RESTIC_PASSWORD, BORG_PASSPHRASE, DM_PASSPHRASE).

Two datasets: a research-like set of ``--mb`` MB (compressible CSV, incompressible binaries, float arrays
with noisy low bits, small notes, one big random file plus an identical copy and a copy shifted by 7
bytes: dedup must store the big file once), and a tree of ``--small-files`` small files (32 B to 4 KiB,
text and binary). For each contender: first backup, unchanged second backup, third backup after editing a
few bytes in 1% of the files and appending to one, restore of the latest into an empty directory (compared
with the source, file by file), ``check``, and ``check`` reading all data back. Each is timed (wall, CPU
of the process tree, peak RSS); stored bytes are the repository's files' sizes after each phase.

Prints one table per dataset, ratios to restic, and the issue's targets as PASS/FAIL; keeps the figures
in bench/results/dedup.json. On this shared machine one run's wall times vary by up to 2x (other work
runs beside the lock): use ``--rounds 3`` before calling a target met or missed; CPU times vary less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import asdict, dataclass, field
from math import sin
from pathlib import Path
from typing import Any

from blake3 import blake3

from common import RESULTS, Measurement, dm_command, precompile, run

BASELINE = "restic"
PHASES = ("backup 1 (first)", "backup 2 (unchanged)", "backup 3 (1% edited)", "restore latest", "check",
          "check, read all data")
BACKUPS = PHASES[:3]
SEED = 17
NOTES: list[str] = []  # what the run had to work around, printed and saved


def note(text: str) -> None:
    if text not in NOTES:
        NOTES.append(text)
        print(f"note: {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the data


def make_research(root: Path, mb: int, rng: random.Random) -> int:
    """About ``mb`` MB shaped like an experiment's data; its size in bytes."""
    total = mb * 1_000_000
    big = total // 10
    (root / "raw").mkdir(parents=True)
    (root / "tables").mkdir()
    (root / "arrays").mkdir()
    (root / "notes").mkdir()
    (root / "copies").mkdir()
    written = 0

    def put(path: Path, data: bytes) -> None:
        nonlocal written
        path.write_bytes(data)
        written += len(data)

    # the big file three times: as is, an identical copy, and one shifted by 7 bytes
    blob = rng.randbytes(big)
    put(root / "raw" / "run-0001.bin", blob)
    put(root / "copies" / "run-0001-copy.bin", blob)
    put(root / "copies" / "run-0001-shifted.bin", b"HEADER\n" + blob)
    del blob

    def sizes(share: float, n: int) -> list[int]:
        weights = [rng.uniform(0.5, 1.5) for _ in range(n)]
        s = sum(weights)
        return [max(1, int(total * share * w / s)) for w in weights]

    sensors = [f"sensor_{i:03d}" for i in range(64)]
    states = ["OK", "OK", "OK", "OK", "WARN", "CAL"]
    pool = [f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
            f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z,"
            f"{rng.choice(sensors)},{rng.gauss(20, 5):.4f},{rng.gauss(0, 0.01):.6f},{rng.choice(states)}\n"
            for _ in range(50_000)]
    for i, n in enumerate(sizes(0.35, 60)):  # CSV: compressible text, no two files alike
        rows = n // 52 + 1
        text = "row,time,sensor,value,error,state\n" + "".join(
            f"{j}," + line for j, line in enumerate(rng.choices(pool, k=rows)))
        put(root / "tables" / f"table-{i:03d}.csv", text.encode()[:n])
    for i, n in enumerate(sizes(0.20, 60)):  # incompressible: images, compressed instrument output
        put(root / "raw" / f"frame-{i:03d}.bin", rng.randbytes(n))
    wave = array("f", (sin(i / 97.0) * 1000 + sin(i / 13.0) * 10 for i in range(1 << 16))).tobytes()
    low_bits = bytes(b & 3 for b in range(256))
    for i, n in enumerate(sizes(0.15, 30)):  # float32 signals, noise in the low bits: partly compressible
        start = rng.randrange(len(wave))
        base = (wave * (n // len(wave) + 2))[start:start + n]
        noise = rng.randbytes(n).translate(low_bits)
        put(root / "arrays" / f"signal-{i:03d}.f32",
            (int.from_bytes(base, "little") ^ int.from_bytes(noise, "little")).to_bytes(n, "little"))
    for i in range(150):  # small notes and metadata
        put(root / "notes" / f"note-{i:03d}.json",
            json.dumps({"run": i, "operator": rng.choice(["ana", "bo", "cy"]), "comment": " ".join(
                rng.choices(["calibrated", "stable", "drift", "retake", "ok", "noisy"], k=rng.randint(20, 400)))},
                indent=1).encode())
    return written


def make_small_files(root: Path, n: int, rng: random.Random) -> int:
    """``n`` files of 32 B to 4 KiB (log-uniform), 70% text, 30% binary, 1000 a directory; their bytes."""
    words = ["alpha", "beta", "gamma", "delta", "sample", "value", "run", "ok", "0.125", "42", "\n"]
    written = 0
    for i in range(n):
        d = root / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            d.mkdir(parents=True)
        size = int(32 * 128 ** rng.random())
        head = f"file {i}\n".encode()
        if rng.random() < 0.7:
            body = " ".join(rng.choices(words, k=size // 5 + 1)).encode()
        else:
            body = rng.randbytes(size)
        data = (head + body)[:max(size, len(head))]
        (d / f"f{i:06d}.{'txt' if body.isascii() else 'bin'}").write_bytes(data)
        written += len(data)
    return written


def files_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def edit_one_percent(root: Path, rng: random.Random) -> int:
    """Change 4 bytes in place in 1% of the files (every 100th, at least one) and append 4 KiB to one of
    them; how many files changed."""
    files = files_of(root)
    chosen = files[::100] or files[:1]
    for p in chosen:
        size = p.stat().st_size
        with open(p, "r+b") as f:
            at = rng.randrange(max(1, size - 4))
            f.seek(at)
            old = f.read(4)
            f.seek(at)
            f.write(bytes(b ^ 0xFF for b in old))
    with open(chosen[0], "ab") as f:
        f.write(rng.randbytes(4096))
    return len(chosen)


def read_all(root: Path) -> None:
    """Every file read once: the page cache is warm for every contender alike."""
    buf = bytearray(1 << 20)
    for p in files_of(root):
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def tree_digest(root: Path) -> dict[str, tuple[int, str]]:
    """Every file's size and BLAKE3, by path relative to ``root``; directories with an empty digest."""
    out: dict[str, tuple[int, str]] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_dir():
            out[rel] = (-1, "")
        elif p.is_file():
            h = blake3()
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            out[rel] = (p.stat().st_size, h.hexdigest())
        else:
            out[rel] = (-2, "other")
    return out


def differences(expected: dict[str, tuple[int, str]], got: dict[str, tuple[int, str]]) -> str:
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    changed = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    parts = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in
             (("missing", missing), ("unexpected", extra), ("different", changed)) if v]
    return "; ".join(parts)


def du(path: Path) -> int:
    """Bytes in the files under ``path`` (what a bucket would bill)."""
    if not path.exists():
        return 0
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# --------------------------------------------------------------------------- the contenders


class Contender:
    """One backup tool, its repository, cache and environment in ``work``."""

    name = ""

    def __init__(self, work: Path, src: Path) -> None:
        self.work = work
        self.src = src
        self.repo = work / f"repo-{self.name}"
        self.cache = work / f"cache-{self.name}"
        self.env: dict[str, str] = {}

    def init(self) -> None:
        raise NotImplementedError

    def backup(self, n: int) -> tuple[list[str], str | None]:
        """The command of backup number ``n`` (1, 2, 3) and its working directory."""
        raise NotImplementedError

    def restore(self, target: Path) -> tuple[list[str], str | None]:
        raise NotImplementedError

    def restored_root(self, target: Path) -> Path:
        return target

    def check(self, read_all_data: bool) -> list[str]:
        raise NotImplementedError

    def _setup(self, cmd: list[str], cwd: str | None = None) -> None:
        proc = subprocess.run(cmd, env={**os.environ, **self.env}, cwd=cwd or str(self.work),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{self.name}: {' '.join(cmd[:3])} failed: {proc.stderr.strip()[-1000:]}")


class Restic(Contender):
    name = "restic"

    def __init__(self, work: Path, src: Path) -> None:
        super().__init__(work, src)
        self.env = {"RESTIC_REPOSITORY": str(self.repo), "RESTIC_PASSWORD": secrets.token_hex(16),
                    "RESTIC_CACHE_DIR": str(self.cache)}

    def init(self) -> None:
        self._setup(["restic", "init", "--repository-version", "2"])

    def backup(self, n: int) -> tuple[list[str], str | None]:
        return ["restic", "backup", "--compression", "auto", "--quiet", str(self.src)], None

    def restore(self, target: Path) -> tuple[list[str], str | None]:
        return ["restic", "restore", "latest", "--target", str(target)], None

    def restored_root(self, target: Path) -> Path:
        nested = target / self.src.relative_to(self.src.anchor)  # restic keeps the absolute path
        return nested if nested.is_dir() else target

    def check(self, read_all_data: bool) -> list[str]:
        return ["restic", "check", *(["--read-data"] if read_all_data else [])]


class Borg(Contender):
    name = "borg"

    def __init__(self, work: Path, src: Path) -> None:
        super().__init__(work, src)
        self.env = {"BORG_PASSPHRASE": secrets.token_hex(16), "BORG_BASE_DIR": str(self.cache)}

    def init(self) -> None:
        self._setup(["borg", "init", "--encryption", "repokey", str(self.repo)])

    def backup(self, n: int) -> tuple[list[str], str | None]:
        return ["borg", "create", "--compression", "zstd,1", f"{self.repo}::b{n}", "."], str(self.src)

    def restore(self, target: Path) -> tuple[list[str], str | None]:
        target.mkdir()
        return ["borg", "extract", f"{self.repo}::b3"], str(target)

    def check(self, read_all_data: bool) -> list[str]:
        return ["borg", "check", *(["--verify-data"] if read_all_data else []), str(self.repo)]


class DataManagerEngine(Contender):
    """data-manager with one filesystem storage using ``engine`` and one dataset, ``bench``."""

    engine = ""
    code = str(Path(__file__).resolve().parent.parent)  # the directory holding the data_manager package run

    def __init__(self, work: Path, src: Path) -> None:
        super().__init__(work, src)
        self.config = work / f"{self.name}.toml"
        storage = [f'[storages.{self.storage}]', 'type = "filesystem"', f'root = "{self.repo}"']
        if self.engine == "dedup":
            storage += ['engine = "dedup"', 'passphrase = "${DM_PASSPHRASE}"', f'cache_dir = "{self.cache}"']
            self.env = {"DM_PASSPHRASE": secrets.token_hex(16)}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [self.code, os.environ.get("PYTHONPATH")]))
        self.config.write_text("\n".join([
            *storage, "", "[state]", f'path = "{work / f"state-{self.name}.db"}"', "",
            "[datasets.bench]", "[[datasets.bench.sources]]", 'name = "tree"', 'type = "directory"',
            f'path = "{src}"', ""]))

    @property
    def storage(self) -> str:
        return "vault" if self.engine == "dedup" else "local"

    def dm(self, *args: str) -> list[str]:
        return [*dm_command(), "--config", str(self.config), *args]

    def init(self) -> None:
        pass

    def backup(self, n: int) -> tuple[list[str], str | None]:
        return self.dm("backup", "bench"), None

    def restore(self, target: Path) -> tuple[list[str], str | None]:
        return self.dm("restore", "--yes", "--set", f"tree.path={target}", "latest", "bench"), None

    def check(self, read_all_data: bool) -> list[str]:
        return self.dm("check", self.storage, *(["--read-data-subset", "100%"] if read_all_data else []))


class Dedup(DataManagerEngine):
    name = "dm dedup"
    engine = "dedup"

    def init(self) -> None:
        proc = subprocess.run(self.dm("repo", "init", "vault"), env={**os.environ, **self.env},
                              cwd=str(self.work), capture_output=True, text=True)
        if proc.returncode == 0:
            return
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        note(f"'data-manager repo init vault' failed ({last}); the repository was created with "
             f"DedupEngine.init_repository(storage, settings) instead")
        self._setup([sys.executable, "-c", (
            "import sys\n"
            "from data_manager import DataManager\n"
            "from data_manager.engines.dedup.engine import DedupEngine\n"
            "dm = DataManager.from_file(sys.argv[1])\n"
            "DedupEngine.init_repository(dm.storage('vault'), dm.config.storages['vault'].engine_settings)\n"),
            str(self.config)])


class Worm(DataManagerEngine):
    name = "dm worm"
    engine = "worm"


CONTENDERS = {"restic": Restic, "borg": Borg, "dedup": Dedup, "worm": Worm}


# --------------------------------------------------------------------------- one round


@dataclass
class Result:
    """One phase of one contender in one round."""

    dataset: str
    phase: str
    contender: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    stored_bytes: int = 0
    cache_bytes: int = 0
    error: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def timed(dataset: str, phase: str, c: Contender, cmd: list[str], cwd: str | None, nbytes: int) -> Result:
    print(f"  {phase:<22} {c.name:<10}", end=" ", file=sys.stderr, flush=True)
    try:
        # never the checkout as working directory: ``python -m`` would import its data_manager first
        m: Measurement = run(f"{c.name} {phase}", cmd, nbytes=nbytes, env=c.env, cwd=cwd or str(c.work))
    except SystemExit as exc:
        msg = " ".join(str(exc).split())[-600:]
        print(f"FAILED: {msg}", file=sys.stderr, flush=True)
        return Result(dataset, phase, c.name, error=msg, stored_bytes=du(c.repo), cache_bytes=du(c.cache))
    r = Result(dataset, phase, c.name, m.seconds, m.cpu_seconds, m.peak_rss_mb, du(c.repo), du(c.cache))
    print(f"{r.seconds:8.2f} s  cpu {r.cpu_seconds:7.2f} s  rss {r.peak_rss_mb:7.1f} MB  "
          f"stored {r.stored_bytes / 1e6:8.1f} MB", file=sys.stderr, flush=True)
    return r


def one_round(dataset: str, base: Path, kinds: list[str], make: Any, rng_seed: int,
              order: int) -> tuple[list[Result], dict[str, Any]]:
    """Every phase for every contender on a fresh copy of ``dataset``; contenders take turns in each
    phase (their order rotated by ``order`` between rounds)."""
    work = Path(tempfile.mkdtemp(prefix=f"dm-bench-dedup-{dataset}-", dir=base))
    src = work / "src"
    t0 = time.monotonic()
    nbytes = make(src, random.Random(rng_seed))
    nfiles = len(files_of(src))
    print(f"{dataset}: {nfiles} files, {nbytes / 1e6:.0f} MB made in {time.monotonic() - t0:.0f} s ({work})",
          file=sys.stderr, flush=True)
    contenders = [CONTENDERS[k](work, src) for k in kinds]
    contenders = contenders[order % len(contenders):] + contenders[:order % len(contenders)]
    for c in contenders:
        c.init()
    results: list[Result] = []
    read_all(src)
    for n, phase in enumerate(BACKUPS, 1):
        if n == 3:
            edited = edit_one_percent(src, random.Random(rng_seed + 1))
            read_all(src)
        for c in contenders:
            cmd, cwd = c.backup(n)
            results.append(timed(dataset, phase, c, cmd, cwd, nbytes))
    expected = tree_digest(src)
    for c in contenders:
        target = work / f"restored-{c.name.replace(' ', '-')}"
        cmd, cwd = c.restore(target)
        r = timed(dataset, PHASES[3], c, cmd, cwd, nbytes)
        if not r.error:
            diff = differences(expected, tree_digest(c.restored_root(target)))
            if diff:
                r.error = f"restored tree differs from the source: {diff}"
                print(f"    {c.name}: {r.error}", file=sys.stderr, flush=True)
        shutil.rmtree(target, ignore_errors=True)
        results.append(r)
    for phase, read_all_data in ((PHASES[4], False), (PHASES[5], True)):
        for c in contenders:
            results.append(timed(dataset, phase, c, c.check(read_all_data), None, nbytes))
    info = {"files": nfiles, "bytes": nbytes, "edited_files": edited, "work": str(work)}
    return results, info


# --------------------------------------------------------------------------- report


def median_result(runs: list[Result]) -> Result:
    """The run of median time (a failed run counts as slowest); its figures, with every round's time."""
    ordered = sorted(runs, key=lambda r: (bool(r.error), r.seconds))
    pick = ordered[(len(ordered) - 1) // 2]
    out = Result(**asdict(pick))
    out.details["rounds_seconds"] = [round(r.seconds, 3) for r in runs]
    if any(r.error for r in runs):
        out.error = next(r.error for r in runs if r.error)
    return out


def ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}" if base else "-"


def table(title: str, rows: list[Result]) -> None:
    print(f"\n{title}")
    head = (f"{'phase':<22}{'contender':<11}{'wall s':>9}{'x restic':>9}{'CPU s':>9}{'peak RSS MB':>12}"
            f"{'x restic':>9}{'stored MB':>11}{'x restic':>9}{'cache MB':>10}")
    print(head)
    print("-" * len(head))
    for phase in PHASES:
        here = [r for r in rows if r.phase == phase]
        base = next((r for r in here if r.contender == BASELINE and not r.error), None)
        for i, r in enumerate(here):
            label = phase if i == 0 else ""
            if r.error and not r.seconds:
                print(f"{label:<22}{r.contender:<11}  FAILED: {r.error[:140]}")
                continue
            print(f"{label:<22}{r.contender:<11}{r.seconds:>9.2f}{ratio(r.seconds, base and base.seconds):>9}"
                  f"{r.cpu_seconds:>9.2f}{r.peak_rss_mb:>12.1f}{ratio(r.peak_rss_mb, base and base.peak_rss_mb):>9}"
                  f"{r.stored_bytes / 1e6:>11.1f}{ratio(r.stored_bytes, base and base.stored_bytes):>9}"
                  f"{r.cache_bytes / 1e6:>10.1f}" + (f"  ! {r.error[:100]}" if r.error else ""))


def targets(rows: list[Result]) -> list[dict[str, Any]]:
    """The issue's targets for the dedup engine against restic (borg shown for the unchanged backup)."""
    def get(phase: str, who: str) -> Result | None:
        return next((r for r in rows if r.phase == phase and r.contender == who), None)

    def peak(who: str) -> float | None:
        rs = [r for r in rows if r.contender == who and r.phase in (*BACKUPS, PHASES[3])]
        return None if not rs or any(r.error for r in rs) else max(r.peak_rss_mb for r in rs)

    out = []

    def add(text: str, ours: float | None, limit: float | None, unit: str, extra: str = "") -> None:
        ok = ours is not None and limit is not None and ours <= limit
        fmt = (lambda v: "n/a" if v is None else f"{v:.2f} {unit}")
        line = f"{'PASS' if ok else 'FAIL'}  {text}: dm dedup {fmt(ours)}, limit {fmt(limit)}{extra}"
        print(line)
        out.append({"target": text, "dedup": ours, "limit": limit, "pass": ok})

    def seconds(phase: str, who: str) -> float | None:
        r = get(phase, who)
        return None if r is None or r.error else r.seconds

    restic_first = seconds(BACKUPS[0], BASELINE)
    add("first backup <= 0.5x restic's wall time", seconds(BACKUPS[0], "dm dedup"),
        restic_first and 0.5 * restic_first, "s", f" (restic {restic_first or 0:.2f} s)")
    borg_second = seconds(BACKUPS[1], "borg")
    add("unchanged second backup <= restic's wall time", seconds(BACKUPS[1], "dm dedup"),
        seconds(BACKUPS[1], BASELINE), "s", f" (borg {borg_second:.2f} s)" if borg_second is not None else "")
    stored = {who: (r.stored_bytes / 1e6 if (r := get(BACKUPS[2], who)) and not r.error else None)
              for who in ("dm dedup", BASELINE, "borg")}
    add("stored bytes after the three backups <= restic's", stored["dm dedup"], stored[BASELINE], "MB",
        f" (borg {stored['borg']:.1f} MB)" if stored["borg"] is not None else "")
    add("restore <= restic's wall time", seconds(PHASES[3], "dm dedup"), seconds(PHASES[3], BASELINE), "s")
    add("peak RSS (max over backups and restore) <= restic's", peak("dm dedup"), peak(BASELINE), "MB")
    return out


def version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


TOP = Path(__file__).resolve().parent.parent


def export_code(rev: str, base: Path) -> tuple[str, str]:
    """The directory to run data-manager from, and what it is: ``rev``'s data_manager/ exported into a
    temp dir, or the working tree for ``checkout``."""
    if rev == "checkout":
        precompile(TOP / "data_manager")
        dirty = subprocess.run(["git", "-C", str(TOP), "status", "--porcelain", "--", "data_manager"],
                               capture_output=True, text=True).stdout.splitlines()
        head = version(["git", "-C", str(TOP), "rev-parse", "--short", "HEAD"])
        return str(TOP), f"working tree at {head}" + (f" (+{len(dirty)} uncommitted files under data_manager/)"
                                                      if dirty else "")
    commit = version(["git", "-C", str(TOP), "rev-parse", "--short", rev])
    if commit == "?":
        raise SystemExit(f"--code {rev}: no such commit")
    out = Path(tempfile.mkdtemp(prefix=f"dm-bench-dedup-code-{commit}-", dir=base))
    subprocess.run(f"git -C {TOP} archive {commit} data_manager | tar -x -C {out}", shell=True, check=True)
    precompile(out)
    return str(out), f"commit {commit} ({version(['git', '-C', str(TOP), 'log', '-1', '--format=%ci %s', commit])[:100]})"


def tree_state(root: Path) -> list[tuple[str, int]]:
    """The files under data_manager/ and their mtimes: enough to tell that someone edited one."""
    return sorted((str(p), p.stat().st_mtime_ns) for p in (root / "data_manager").rglob("*.py"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=628, help="size of the research-like set in MB (default 628)")
    ap.add_argument("--small-files", type=int, default=200_000, help="files in the small-file tree (default 200000)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat everything, report medians (default 1)")
    ap.add_argument("--dir", default="/var/tmp", help="where the temp dirs go (default /var/tmp)")
    ap.add_argument("--datasets", default="research,small", help="research,small (default both)")
    ap.add_argument("--contenders", default="restic,borg,dedup,worm", help="restic,borg,dedup,worm (default all)")
    ap.add_argument("--code", default="HEAD",
                    help="the data-manager measured: a commit exported to the temp dir (default HEAD), or checkout")
    ap.add_argument("--keep", action="store_true", help="leave the temp dirs (data and repositories)")
    ap.add_argument("--out", default=str(RESULTS / "dedup.json"), help="the JSON (default bench/results/dedup.json)")
    args = ap.parse_args()
    kinds = args.contenders.split(",")
    datasets = {
        "research": (f"research-like set, {args.mb} MB", lambda root, rng: make_research(root, args.mb, rng)),
        "small": (f"{args.small_files} small files", lambda root, rng: make_small_files(root, args.small_files, rng)),
    }
    chosen = args.datasets.split(",")
    for name in [*chosen, *kinds]:
        if name not in datasets and name not in CONTENDERS:
            raise SystemExit(f"unknown dataset or contender {name!r}")
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    DataManagerEngine.code, code_text = export_code(args.code, base)
    before = tree_state(Path(DataManagerEngine.code))
    print(f"data-manager: {code_text}, from {DataManagerEngine.code}", file=sys.stderr, flush=True)
    doc: dict[str, Any] = {
        "title": "dedup: the dedup engine against restic and borg (issue #17)", "baseline": BASELINE,
        "machine": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
        "versions": {"restic": version(["restic", "version"]), "borg": version(["borg", "--version"]),
                     "data-manager": code_text},
        "settings": {"restic": "repository version 2, --compression auto", "borg": "repokey, --compression zstd,1",
                     "dm dedup": "engine dedup, defaults", "dm worm": "engine worm (no encryption)",
                     "rounds": args.rounds, "mb": args.mb, "small_files": args.small_files},
        "datasets": [],
    }
    for key in chosen:
        title, make = datasets[key]
        per_round: list[list[Result]] = []
        info: dict[str, Any] = {}
        for rnd in range(args.rounds):
            results, info = one_round(key, base, kinds, make, SEED, rnd)
            per_round.append(results)
            if not args.keep:
                shutil.rmtree(info["work"], ignore_errors=True)
        rows = []
        for phase in PHASES:
            for who in [CONTENDERS[k].name for k in kinds]:
                runs = [r for rs in per_round for r in rs if r.phase == phase and r.contender == who]
                if runs:
                    rows.append(median_result(runs))
        full = (f"{title}: {info['files']} files, {info['bytes'] / 1e6:.0f} MB; {info['edited_files']} files "
                f"edited before backup 3; {'median of ' + str(args.rounds) + ' rounds' if args.rounds > 1 else '1 round'}")
        table(full, rows)
        print()
        doc["datasets"].append({"name": key, "title": full, **{k: v for k, v in info.items() if k != "work"},
                                "rows": [asdict(r) for r in rows], "targets": targets(rows)})
    if tree_state(Path(DataManagerEngine.code)) != before:
        note(f"data_manager/ in {DataManagerEngine.code} changed during the run: the figures mix two versions")
    if args.code != "checkout" and not args.keep:
        shutil.rmtree(DataManagerEngine.code, ignore_errors=True)
    doc["notes"] = NOTES
    for n in NOTES:
        print(f"note: {n}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"(saved {out})")


if __name__ == "__main__":
    main()
