"""Shared by the benchmarks: run contenders as child processes, measure wall time and peak RSS, report.

Every benchmark compares data-manager against what a user would use otherwise, on the same data in the
same run, and prints one table: seconds, MB/s, ratio to the baseline, peak RSS of the process tree.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
GNU_TIME = "/usr/bin/time"
LOCK = Path(os.environ.get("DM_BENCH_LOCK", "/var/tmp/data-manager-bench.lock"))


def _one_benchmark_at_a_time() -> None:
    """Wait until no other benchmark runs on this machine: two at once would measure each other."""
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"waiting for another benchmark to finish ({LOCK}) ...", file=sys.stderr, flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)
    # fd stays open: the lock is held until this process exits


_one_benchmark_at_a_time()

# data-manager is measured as pip installs it, with bytecode compiled. Without it (PYTHONDONTWRITEBYTECODE is
# set on some machines, this one included) every process first compiles the ~150 modules it imports: 0.4-0.6 s
# per command here, more than restic's whole unchanged backup. The cache goes to a prefix dir, not the tree.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ.setdefault("PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / "dm-bench-pycache"))
TOP = Path(__file__).resolve().parent.parent


def precompile(*dirs: str | Path) -> None:
    """Compile ``dirs`` and the plugins of this checkout (installed editable, so never compiled by pip) into
    the bytecode cache, as ``pip install`` would, so that no timed run pays for it."""
    targets = [str(d) for d in dirs] + [str(p) for p in sorted((TOP / "plugins").glob("*/*")) if p.is_dir()]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *targets], check=True, stdout=subprocess.DEVNULL)


@dataclass
class Measurement:
    name: str
    seconds: float
    peak_rss_mb: float
    bytes: int = 0
    cpu_seconds: float = 0.0  # user + system of the process tree (what GNU time reports)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0


def run(name: str, cmd: str | list[str], *, nbytes: int = 0, env: dict[str, str] | None = None,
        shell: bool = False, cwd: str | None = None) -> Measurement:
    """Run ``cmd`` to completion; wall time, the peak RSS of the largest process in its tree, and the CPU
    time (user + system) of the whole tree.

    The command runs under GNU ``time`` (Debian package ``time``): a child forked straight from this
    Python process would count this process's own pages in its peak RSS. ``time`` reports the maximum
    over the tree it waited for, so a pipeline (``tar | sha256sum``) reports its largest member, and
    the CPU time of every process of the tree that was waited for.
    """
    if not os.path.exists(GNU_TIME):
        raise SystemExit(f"{GNU_TIME} is missing: apt-get install -y time")
    argv = [GNU_TIME, "-f", "%M %U %S", *(["sh", "-c", cmd] if shell else list(cmd))]  # type: ignore[arg-type]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env={**os.environ, **(env or {})}, cwd=cwd,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - t0
    stderr = proc.stderr.decode(errors="replace").strip()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}): {stderr[-2000:]}")
    peak_kb, user, system = stderr.splitlines()[-1].split()
    return Measurement(name, seconds, int(peak_kb) / 1024, nbytes, float(user) + float(system))


def report(title: str, rows: list[Measurement], baseline: str, extra: dict | None = None) -> None:
    """Print the table and keep it as JSON under bench/results/."""
    base = next(r for r in rows if r.name == baseline)
    print(f"\n{title}")
    print(f"{'contender':<34}{'seconds':>9}{'MB/s':>9}{'ratio':>8}{'peak RSS MB':>13}")
    for r in rows:
        print(f"{r.name:<34}{r.seconds:>9.2f}{r.mb_per_s:>9.1f}{r.seconds / base.seconds:>8.2f}{r.peak_rss_mb:>13.1f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{title.split(':')[0].replace(' ', '_')}.json"
    out.write_text(json.dumps({
        "title": title, "baseline": baseline, "machine": platform.platform(), "cpus": os.cpu_count(),
        "python": sys.version.split()[0], "rows": [asdict(r) | {"ratio": r.seconds / base.seconds} for r in rows],
        **(extra or {}),
    }, indent=2))
    print(f"(saved {out})")


def medians(rounds: list[list[Measurement]]) -> list[Measurement]:
    """Per contender (same position in every round), its run of median time.

    On a shared machine one run of each says little (the same run varied by 30% here): contenders run
    in alternation, round after round, and each is reported by its median run.
    """
    out = []
    for runs in zip(*rounds):
        ordered = sorted(runs, key=lambda m: m.seconds)
        out.append(ordered[(len(ordered) - 1) // 2])
    return out


def dm_command() -> list[str]:
    """The data-manager CLI of this interpreter."""
    return [sys.executable, "-m", "data_manager"]
