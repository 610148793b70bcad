"""``forget`` + two-phase ``prune`` on the ``dedup`` engine against ``restic forget --prune`` (issue #18).

    .venv/bin/python bench/bench_prune.py                  # 30 days of a 256 MB set: a few minutes here
    .venv/bin/python bench/bench_prune.py --size 1GB       # the issue's figure
    options: --days N (default 30), --dir /var/tmp, --code HEAD|REV|checkout, --keep (leave the temp dirs),
             --out FILE (default bench/results/prune.json)

The history: a dataset of ``--size`` (about half compressible CSV text, half incompressible binaries, files
of 16 KiB to 4 MiB) backed up once a day for ``--days`` days by both contenders. Between two backups a few
percent of it changes: 1% of the files are rewritten (new content), 1% get a region of 4-64 KiB
overwritten in place, 2% grow by 16-256 KiB (appended), one file is deleted and one new file is added.
Both contenders back up the same tree on the same day:

- data-manager: a filesystem storage with ``engine = "dedup"`` (defaults, ``passphrase =
  "${DM_PASSPHRASE}"``, created by ``data-manager repo init``). ``data-manager backup`` takes no time
  option, so each backup runs under ``faketime -f "@2026-01-DD 12:00:00"`` (Debian package faketime):
  its TIMESTAMP is that day.
- restic 0.14 (Debian), repository format 2, ``--compression auto``, ``restic backup --time "2026-01-DD
  12:00:00"`` (TZ=UTC for both).

Then, timed (wall, CPU of the process tree, peak RSS, via common.run and GNU time), on the real clock:

- data-manager: ``forget bench --keep-daily 7 --keep-weekly 4 --prune`` (the forget and the mark, in one
  process) and ``prune vault --delete-delay 0s`` (the sweep, as the next day's run would); reported one by
  one and as the whole.
- restic: ``forget --keep-daily 7 --keep-weekly 4 --prune`` (its defaults: ``--max-unused 5%``).

The fair comparison is the whole against restic's one command (both forget and prune); the issue's
targets are checked on it: time <= restic's, peak RSS <= restic's, repository size after <= restic's.
Repository sizes are the bytes of the files under each repository (caches apart) before and after.
Afterwards, untimed: both keep the same set of days (and the days the rules say), the newest backup
restores byte for byte for both (``data-manager restore``, ``restic restore``), ``check`` passes for both.

data-manager runs from a ``git archive`` of ``--code`` (default HEAD) in the temp dir, as in
bench_dedup.py (others commit in this checkout while a run lasts minutes). One round: on this shared
machine wall times of one run vary by up to 2x; CPU times vary less. Keeps the figures in
bench/results/prune.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from common import RESULTS, Measurement, dm_command, report, run

from bench_dedup import differences, du, export_code, tree_digest, tree_state, version

SEED = 18
FIRST_DAY = date(2026, 1, 1)
KEEP_DAILY, KEEP_WEEKLY = 7, 4
BASELINE = "restic forget --prune"
NOTES: list[str] = []


def note(text: str) -> None:
    if text not in NOTES:
        NOTES.append(text)
        print(f"note: {text}", file=sys.stderr, flush=True)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """``256MB``, ``1GB`` (powers of 1000), ``512MiB``, ``1GiB`` (powers of 1024), or bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256MB, 1GB)")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** " kmgt".index(m.group(2) or " "))


# --------------------------------------------------------------------------- the data and its history


class History:
    """A tree of files under ``root`` that changes a little every day."""

    MIN, MAX = 16 << 10, 4 << 20

    def __init__(self, root: Path, total: int, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.serial = 0
        sensors = [f"sensor_{i:03d}" for i in range(64)]
        states = ["OK", "OK", "OK", "OK", "WARN", "CAL"]
        self.lines = [f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
                      f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z,"
                      f"{rng.choice(sensors)},{rng.gauss(20, 5):.4f},{rng.gauss(0, 0.01):.6f},"
                      f"{rng.choice(states)}\n" for _ in range(50_000)]
        (root / "tables").mkdir(parents=True)
        (root / "raw").mkdir()
        written = 0
        while written < total:
            written += self.new_file(min(self.size(), max(total - written, 1)))
        self.total = written

    def size(self) -> int:
        return int(math.exp(self.rng.uniform(math.log(self.MIN), math.log(self.MAX))))

    def content(self, text: bool, n: int) -> bytes:
        if text:
            return "".join(self.rng.choices(self.lines, k=n // 45 + 1)).encode()[:n]
        return self.rng.randbytes(n)

    def new_file(self, n: int) -> int:
        self.serial += 1
        text = self.rng.random() < 0.5
        path = self.root / ("tables" if text else "raw") / f"f{self.serial:05d}.{'csv' if text else 'bin'}"
        path.write_bytes(self.content(text, n))
        return n

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file())

    def change(self) -> dict[str, int]:
        """One day's changes; what changed, in files and bytes written."""
        rng = self.rng
        files = self.files()
        n = len(files)
        written = 0
        picked = rng.sample(files, min(n, max(1, n // 100) * 2 + max(1, n // 50) + 1))
        rewrite = picked[:max(1, n // 100)]
        edit = picked[len(rewrite):len(rewrite) + max(1, n // 100)]
        append = picked[len(rewrite) + len(edit):-1]
        delete = picked[-1]
        for p in rewrite:  # a new version of the file
            size = max(1, int(p.stat().st_size * rng.uniform(0.9, 1.1)))
            p.write_bytes(self.content(p.suffix == ".csv", size))
            written += size
        for p in edit:  # a region overwritten in place
            size = p.stat().st_size
            length = min(size, rng.randint(4 << 10, 64 << 10))
            with open(p, "r+b") as f:
                f.seek(rng.randrange(size - length + 1))
                f.write(self.content(p.suffix == ".csv", length))
            written += length
        for p in append:  # a growing file
            length = rng.randint(16 << 10, 256 << 10)
            with open(p, "ab") as f:
                f.write(self.content(p.suffix == ".csv", length))
            written += length
        deleted = delete.stat().st_size
        delete.unlink()
        written += self.new_file(self.size())
        return {"rewritten": len(rewrite), "edited": len(edit), "appended": len(append), "deleted": 1,
                "added": 1, "bytes_written": written, "bytes_deleted": deleted}


# --------------------------------------------------------------------------- the contenders


class Restic:
    name = "restic"

    def __init__(self, work: Path, src: Path) -> None:
        self.src = src
        self.work = work
        self.repo = work / "repo-restic"
        self.cache = work / "cache-restic"
        self.env = {"RESTIC_REPOSITORY": str(self.repo), "RESTIC_PASSWORD": secrets.token_hex(16),
                    "RESTIC_CACHE_DIR": str(self.cache), "TZ": "UTC"}

    def init(self) -> None:
        setup(["restic", "init", "--repository-version", "2"], self.env, self.work)

    def backup(self, day: date) -> list[str]:
        return ["restic", "backup", "--compression", "auto", "--quiet", "--time", f"{day} 12:00:00", str(self.src)]

    def prune(self) -> list[tuple[str, list[str]]]:
        return [(BASELINE, ["restic", "forget", "--keep-daily", str(KEEP_DAILY), "--keep-weekly", str(KEEP_WEEKLY),
                            "--prune"])]

    def days(self) -> list[str]:
        out = setup(["restic", "snapshots", "--json"], self.env, self.work)
        return sorted(s["time"][:10] for s in json.loads(out))

    def restore(self, target: Path) -> tuple[list[str], Path]:
        # restic keeps the absolute path under the target
        return ["restic", "restore", "latest", "--target", str(target)], target / self.src.relative_to(self.src.anchor)

    def check(self) -> list[str]:
        return ["restic", "check"]


class DataManager:
    name = "dm dedup"
    code = str(Path(__file__).resolve().parent.parent)  # the directory holding the data_manager package run

    def __init__(self, work: Path, src: Path) -> None:
        self.src = src
        self.work = work
        self.repo = work / "repo-dm"
        self.cache = work / "cache-dm"
        self.config = work / "dm.toml"
        self.env = {"DM_PASSPHRASE": secrets.token_hex(16), "TZ": "UTC",
                    "PYTHONPATH": os.pathsep.join(filter(None, [self.code, os.environ.get("PYTHONPATH")]))}
        self.config.write_text("\n".join([
            "[storages.vault]", 'type = "filesystem"', f'root = "{self.repo}"', 'engine = "dedup"',
            'passphrase = "${DM_PASSPHRASE}"', f'cache_dir = "{self.cache}"', "",
            "[state]", f'path = "{work / "state-dm.db"}"', "",
            "[datasets.bench]", "[[datasets.bench.sources]]", 'name = "tree"', 'type = "directory"',
            f'path = "{src}"', ""]))

    def dm(self, *args: str) -> list[str]:
        return [*dm_command(), "--config", str(self.config), *args]

    def init(self) -> None:
        setup(self.dm("repo", "init", "vault"), self.env, self.work)

    def backup(self, day: date) -> list[str]:
        # no time option: the process runs on that day's clock (libfaketime; a running clock from noon)
        return ["faketime", "-f", f"@{day} 12:00:00", *self.dm("backup", "bench")]

    def prune(self) -> list[tuple[str, list[str]]]:
        return [("dm forget --prune: mark", self.dm("forget", "bench", "--keep-daily", str(KEEP_DAILY),
                                                    "--keep-weekly", str(KEEP_WEEKLY), "--prune", "--json")),
                ("dm prune: sweep", self.dm("prune", "vault", "--delete-delay", "0s", "--json"))]

    def days(self) -> list[str]:
        out = setup(self.dm("list", "backup", "bench", "--json"), self.env, self.work)
        return sorted(f"{b['timestamp'][:4]}-{b['timestamp'][4:6]}-{b['timestamp'][6:8]}"
                      for b in json.loads(out) if b.get("complete"))

    def restore(self, target: Path) -> tuple[list[str], Path]:
        return self.dm("restore", "--yes", "--set", f"tree.path={target}", "latest", "bench"), target

    def check(self) -> list[str]:
        return self.dm("check", "vault")


def setup(cmd: list[str], env: dict[str, str], cwd: Path) -> str:
    """An untimed command; its stdout (exit on failure)."""
    proc = subprocess.run(cmd, env={**os.environ, **env}, cwd=str(cwd), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def timed(name: str, cmd: list[str], c: Restic | DataManager, stdout: Path | None = None) -> Measurement:
    """``cmd`` through common.run (never the checkout as working directory: ``python -m`` would import its
    data_manager first); its stdout kept in ``stdout`` if given (the shell that redirects it is tiny)."""
    if stdout is None:
        return run(name, cmd, env=c.env, cwd=str(c.work))
    return run(name, f"{shlex.join(cmd)} > {shlex.quote(str(stdout))}", env=c.env, cwd=str(c.work), shell=True)


def expected_days(days: list[date]) -> list[str]:
    """What keep daily 7, weekly 4 keeps of one backup a day (restic's rules; the oldest rule of restic
    0.16 and data-manager keeps nothing more here while the history is longer than both rules)."""
    newest = sorted(days, reverse=True)
    keep = set(newest[:KEEP_DAILY])
    weeks: list[tuple[int, int]] = []
    for d in newest:
        week = d.isocalendar()[:2]
        if week not in weeks:
            weeks.append(week)
            if len(weeks) <= KEEP_WEEKLY:
                keep.add(d)
    if len(days) < KEEP_DAILY or len(weeks) < KEEP_WEEKLY:
        keep.add(min(days))  # the oldest rule (restic >= 0.16, data-manager)
    return sorted(str(d) for d in keep)


# --------------------------------------------------------------------------- the run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("256MB"), help="the dataset (default 256MB)")
    ap.add_argument("--days", type=int, default=30, help="daily backups (default 30)")
    ap.add_argument("--dir", default="/var/tmp", help="where the temp dirs go (default /var/tmp)")
    ap.add_argument("--code", default="HEAD",
                    help="the data-manager measured: a commit exported to the temp dir (default HEAD), or checkout")
    ap.add_argument("--keep", action="store_true", help="leave the temp dirs (data and repositories)")
    ap.add_argument("--out", default=str(RESULTS / "prune.json"), help="the JSON (default bench/results/prune.json)")
    args = ap.parse_args()
    for tool, package in (("restic", "restic"), ("faketime", "faketime")):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install -y {package}")
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    DataManager.code, code_text = export_code(args.code, base)
    before_code = tree_state(Path(DataManager.code))
    log(f"data-manager: {code_text}, from {DataManager.code}")
    work = Path(tempfile.mkdtemp(prefix="dm-bench-prune-", dir=base))
    src = work / "src"
    t0 = time.monotonic()
    history = History(src, args.size, random.Random(SEED))
    log(f"{len(history.files())} files, {history.total / 1e6:.0f} MB made in {time.monotonic() - t0:.0f} s ({work})")
    restic, dm = Restic(work, src), DataManager(work, src)
    contenders = [dm, restic]
    for c in contenders:
        c.init()

    # 30 daily backups of the same tree (untimed for the targets; their totals are kept)
    days = [FIRST_DAY + timedelta(days=i) for i in range(args.days)]
    changes: list[dict[str, int]] = []
    backup_seconds = {c.name: 0.0 for c in contenders}
    backup_cpu = {c.name: 0.0 for c in contenders}
    backup_rss = {c.name: 0.0 for c in contenders}
    for i, day in enumerate(days):
        if i:
            changes.append(history.change())
        for c in contenders:
            m = timed(f"{c.name} backup {day}", c.backup(day), c)
            backup_seconds[c.name] += m.seconds
            backup_cpu[c.name] += m.cpu_seconds
            backup_rss[c.name] = max(backup_rss[c.name], m.peak_rss_mb)
        log(f"  {day}: " + ", ".join(f"{c.name} {du(c.repo) / 1e6:.1f} MB" for c in contenders)
            + (f"; changed {changes[-1]['bytes_written'] / 1e6:.1f} MB written, "
               f"{changes[-1]['bytes_deleted'] / 1e6:.1f} MB deleted" if i else ""))
    size_now = sum(p.stat().st_size for p in history.files())
    expected = tree_digest(src)

    # forget + prune, timed
    sizes: dict[str, dict[str, int]] = {}
    rows: list[Measurement] = []
    phases: dict[str, Any] = {}
    for c in (restic, dm):  # restic first: dm's repository is the one written last, as warm as restic's
        sizes[c.name] = {"before": du(c.repo)}
        measured = []
        for name, cmd in c.prune():
            out = work / f"{name.replace(' ', '_').replace(':', '')}.out"
            m = timed(name, cmd, c, out)
            m.bytes = sizes[c.name]["before"]
            measured.append(m)
            if c is dm:
                text = out.read_text()
                phases[name] = json.loads(text) if text.strip() else None
            log(f"  {name:<24}{m.seconds:8.2f} s  cpu {m.cpu_seconds:7.2f} s  rss {m.peak_rss_mb:7.1f} MB  "
                f"repository {du(c.repo) / 1e6:8.1f} MB")
        sizes[c.name]["after"] = du(c.repo)
        sizes[c.name]["cache_after"] = du(c.cache)
        rows += measured
        if c is dm:
            rows.append(Measurement("dm forget + prune (all)", sum(x.seconds for x in measured),
                                    max(x.peak_rss_mb for x in measured), measured[0].bytes,
                                    sum(x.cpu_seconds for x in measured)))
    check_phase_statuses(phases)

    # afterwards: the same days kept, the newest restores byte for byte, check passes
    kept = {c.name: c.days() for c in contenders}
    rule = expected_days(days)
    restored: dict[str, str] = {}
    checked: dict[str, str] = {}
    for c in contenders:
        target = work / f"restored-{c.name.replace(' ', '-')}"
        cmd, root = c.restore(target)
        try:
            timed(f"{c.name} restore", cmd, c)
            diff = differences(expected, tree_digest(root))
            restored[c.name] = "byte-exact" if not diff else f"DIFFERS: {diff}"
        except SystemExit as exc:
            restored[c.name] = f"FAILED: {' '.join(str(exc).split())[-300:]}"
        shutil.rmtree(target, ignore_errors=True)
        try:
            timed(f"{c.name} check", c.check(), c)
            checked[c.name] = "ok"
        except SystemExit as exc:
            checked[c.name] = f"FAILED: {' '.join(str(exc).split())[-300:]}"

    # report
    title = (f"prune: forget (keep daily {KEEP_DAILY}, weekly {KEEP_WEEKLY}) and prune after {args.days} daily "
             f"backups of {history.total / 1e6:.0f} MB ({size_now / 1e6:.0f} MB at the end); MB/s = repository MB "
             f"before prune per second")
    fair = next(r for r in rows if r.name == "dm forget + prune (all)")
    base_row = next(r for r in rows if r.name == BASELINE)
    print(f"\n{'repository':<24}{'before MB':>11}{'after MB':>10}{'freed MB':>10}{'after x restic':>16}"
          f"{'backups s':>11}{'backup CPU s':>14}{'backup RSS MB':>15}")
    for c in contenders:
        s = sizes[c.name]
        print(f"{c.name:<24}{s['before'] / 1e6:>11.1f}{s['after'] / 1e6:>10.1f}{(s['before'] - s['after']) / 1e6:>10.1f}"
              f"{s['after'] / sizes['restic']['after']:>16.2f}{backup_seconds[c.name]:>11.1f}"
              f"{backup_cpu[c.name]:>14.1f}{backup_rss[c.name]:>15.1f}")
    targets = []

    def target(text: str, ours: float, limit: float, unit: str) -> None:
        ok = ours <= limit
        line = f"{'PASS' if ok else 'FAIL'}  {text}: dm {ours:.2f} {unit}, restic {limit:.2f} {unit} (x{ours / limit:.2f})"
        targets.append({"target": text, "dm": ours, "restic": limit, "ratio": ours / limit, "pass": ok})
        print(line)

    print()
    target("forget + prune wall time <= restic forget --prune", fair.seconds, base_row.seconds, "s")
    target("peak RSS <= restic's", fair.peak_rss_mb, base_row.peak_rss_mb, "MB")
    target("repository after prune <= restic's", sizes["dm dedup"]["after"] / 1e6, sizes["restic"]["after"] / 1e6, "MB")
    same = kept["dm dedup"] == kept["restic"]
    print(f"{'PASS' if same else 'FAIL'}  same days kept: dm {len(kept['dm dedup'])}, restic {len(kept['restic'])}"
          + ("" if same else f" (dm {kept['dm dedup']}, restic {kept['restic']})")
          + ("; as the rules say" if kept["dm dedup"] == rule else f"; the rules say {rule}")
          + ("; restic 0.14 has no oldest rule" if set(kept["dm dedup"]) - set(kept["restic"]) == {str(days[0])} else ""))
    print(f"      kept: {', '.join(kept['dm dedup'])}")
    for c in contenders:
        ok = restored[c.name] == "byte-exact" and checked[c.name] == "ok"
        print(f"{'PASS' if ok else 'FAIL'}  {c.name}: newest backup restores {restored[c.name]}; check {checked[c.name]}")
    if tree_state(Path(DataManager.code)) != before_code:
        note(f"data_manager/ in {DataManager.code} changed during the run: the figures mix two versions")
    for n in NOTES:
        print(f"note: {n}")
    extra = {
        "versions": {"restic": version(["restic", "version"]), "data-manager": code_text,
                     "faketime": version(["dpkg-query", "-W", "-f", "${Version}", "faketime"])},
        "settings": {"size": args.size, "days": args.days, "files_at_end": len(history.files()),
                     "dataset_bytes_start": history.total, "dataset_bytes_end": size_now,
                     "restic": "repository version 2, --compression auto, forget --prune defaults (--max-unused 5%)",
                     "dm dedup": "engine dedup, defaults; forget --prune (forget, mark), prune --delete-delay 0s (sweep)"},
        "daily_changes": {"mean_bytes_written": sum(x["bytes_written"] for x in changes) / max(1, len(changes)),
                          "per_day": changes},
        "repository_bytes": sizes, "backups": {"seconds": backup_seconds, "cpu_seconds": backup_cpu,
                                               "peak_rss_mb": backup_rss},
        "kept_days": kept, "rule_days": rule, "restore": restored, "check": checked, "targets": targets,
        "dm_phases": phases, "notes": NOTES,
    }
    report(title, rows, BASELINE, extra)
    saved = RESULTS / f"{title.split(':')[0].replace(' ', '_')}.json"
    if Path(args.out).resolve() != saved.resolve():
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(saved, args.out)
        print(f"(moved to {args.out})")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
        if args.code != "checkout":
            shutil.rmtree(DataManager.code, ignore_errors=True)
    else:
        print(f"(kept {work})")


def check_phase_statuses(phases: dict[str, Any]) -> None:
    """The mark must have marked and the sweep swept: else the figures measure nothing."""
    try:
        mark = phases["dm forget --prune: mark"]["prune"][0]["phases"]
        sweep = phases["dm prune: sweep"][0]["phases"]
    except (KeyError, IndexError, TypeError):
        note("prune --json printed no phases: could not check that mark and sweep did their work")
        return
    if not any(p["phase"] == "mark" and p["status"] == "done" for p in mark):
        note(f"the mark run did not mark: {[(p['phase'], p['status'], p['reason']) for p in mark]}")
    if not any(p["phase"] == "sweep" and p["status"] == "done" for p in sweep):
        note(f"the sweep run did not sweep: {[(p['phase'], p['status'], p['reason']) for p in sweep]}")


if __name__ == "__main__":
    main()
