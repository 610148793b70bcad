"""The retention plan (data_manager/retention.py) against restic's own ``forget``, on the same timestamps.

Three histories (a daily one across the turn of 2020, the year with 53 ISO weeks; a sparse one over four
years; a dense one over two days) are backed up as restic snapshots of a tiny directory with
``restic backup --time``, one host each, and every policy restic can express is run through
``restic forget --dry-run --json --group-by host``. The kept sets must match, and each kept backup's rules
(daily, weekly, within 10d...) too.

Our rules are restic >= 0.16's. Debian 12 ships restic 0.14, which lacked one of them: a rule with count
left when it reaches the oldest snapshot keeps that one too (restic PR #4366, in 0.16.0). For a policy
where no backup is kept by that rule alone the versions agree and the sets must be equal; where one is, an
older restic must keep exactly our set without those backups (our reasons mark them ``(oldest)``), a
restic >= 0.16 exactly our set. Without a restic the test fails: it is never skipped.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from data_manager.retention import COUNT_KEYS, Policy, duration_text, plan
from data_manager.timestamps import format_timestamp

UTC = timezone.utc
ENV = {**os.environ, "RESTIC_PASSWORD": "differential", "TZ": "UTC", "RESTIC_PROGRESS_FPS": "0"}


def _at(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def _histories() -> dict[str, list[datetime]]:
    daily = [_at("2020-12-20 03:00") + timedelta(days=d) for d in range(22)]
    daily += [_at("2020-12-31 22:00"), _at("2021-01-03 23:30"), _at("2021-01-10 12:00")]
    rng = random.Random(18)
    start, span = _at("2016-01-01 00:00"), int((_at("2020-06-30 00:00") - _at("2016-01-01 00:00")).total_seconds())
    sparse = [start + timedelta(seconds=rng.randrange(span)) for _ in range(18)]
    sparse += [t + timedelta(minutes=10) for t in sparse[:4]]  # same hour, same day as another
    dense = [_at("2022-03-01 08:05") + timedelta(minutes=47 * i) for i in range(16)]
    return {h: sorted(t.replace(second=0) for t in times) for h, times in
            (("daily", daily), ("sparse", sparse), ("dense", dense))}


HISTORIES = _histories()

POLICIES = [
    Policy(keep_last=5),
    Policy(keep_hourly=10),
    Policy(keep_daily=7),
    Policy(keep_daily=100),  # more days than any history has: the oldest rule
    Policy(keep_weekly=4),
    Policy(keep_weekly=12),
    Policy(keep_monthly=3),
    Policy(keep_monthly=24),
    Policy(keep_yearly=2),
    Policy(keep_yearly=10),
    Policy(keep_within=10 * 86400.0),
    Policy(keep_within=36 * 3600.0),
    Policy(keep_last=3, keep_daily=7, keep_weekly=4, keep_monthly=12),
    Policy(keep_daily=5, keep_within=3 * 86400.0),
    Policy(keep_hourly=24, keep_daily=3, keep_yearly=1),
]


def restic_version(restic: str) -> tuple[int, int]:
    out = subprocess.run([restic, "version"], capture_output=True, text=True, env=ENV, check=True).stdout
    m = re.search(r"restic (\d+)\.(\d+)", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    restic = shutil.which("restic")
    if restic is None:
        pytest.fail("restic is not installed (apt-get install restic): the differential test needs it")
    base = tmp_path_factory.mktemp("restic")
    (base / "data").mkdir()
    (base / "data" / "file").write_text("tiny\n")
    repo = base / "repo"
    subprocess.run([restic, "init", "--repo", str(repo)], capture_output=True, text=True, env=ENV, check=True)

    def backup(host: str, when: datetime) -> None:
        r = subprocess.run([restic, "backup", "--quiet", "--no-cache", "--repo", str(repo), "--host", host,
                            "--time", when.strftime("%Y-%m-%d %H:%M:%S"), str(base / "data")],
                           capture_output=True, text=True, env=ENV, timeout=120)
        assert r.returncode == 0, r.stderr

    # restic spends most of a backup's second waiting on its lock checks, not on the CPU: three at once.
    with ThreadPoolExecutor(3) as pool:
        for f in [pool.submit(backup, host, when) for host, times in HISTORIES.items() for when in times]:
            f.result()
    return restic, repo


def restic_args(policy: Policy) -> list[str]:
    args = []
    for key in COUNT_KEYS:
        if getattr(policy, key):
            args += [f"--{key.replace('_', '-')}", str(getattr(policy, key))]
    if policy.keep_within:
        args += ["--keep-within", duration_text(policy.keep_within)]  # only days or hours here: restic's too
    return args


def restic_forget(restic: str, repo: Path, policy: Policy) -> dict[str, dict[str, set[str]]]:
    """host -> TIMESTAMP of each snapshot restic keeps -> its reasons (``oldest `` dropped: 0.18 adds it)."""
    r = subprocess.run([restic, "forget", "--dry-run", "--json", "--no-cache", "--group-by", "host", "--repo",
                        str(repo), *restic_args(policy)], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    out: dict[str, dict[str, set[str]]] = {}
    for group in json.loads(r.stdout):
        kept = out.setdefault(group["host"], {})
        for reason in group["reasons"] or []:
            stamp = _stamp(reason["snapshot"]["time"])
            kept[stamp] = {m.removeprefix("oldest ") for m in reason["matches"]}
        assert set(kept) == {_stamp(s["time"]) for s in group["keep"] or []}
    return out


def _stamp(text: str) -> str:
    return format_timestamp(datetime.fromisoformat(text.replace("Z", "+00:00")))


def our_rules(reasons: list[str], policy: Policy) -> set[str]:
    """Our reasons in restic's words: ``daily 3 of 7`` -> ``daily snapshot``; ``within 10d`` as it is."""
    out = set()
    for r in reasons:
        if r == "newest":
            continue
        if r.startswith("within "):
            out.add(r)
        else:
            out.add(r.split()[0] + " snapshot")
    return out


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.describe())
def test_the_plan_keeps_what_restic_keeps(repository: tuple[str, Path], policy: Policy) -> None:
    restic, repo = repository
    version = restic_version(restic)
    theirs = restic_forget(restic, repo, policy)
    assert set(theirs) == set(HISTORIES)
    for host, times in HISTORIES.items():
        ours = plan(policy, [format_timestamp(t) for t in times])
        # Kept by restic >= 0.16's oldest rule alone: what restic < 0.16 removes.
        oldest_only = {d.timestamp for d in ours.decisions
                       if d.keep and all(r.endswith("(oldest)") for r in d.reasons)}
        expected: dict[str, Any] = {}
        for d in ours.decisions:
            if not d.keep or (version < (0, 16) and d.timestamp in oldest_only):
                continue
            reasons = [r for r in d.reasons if version >= (0, 16) or not r.endswith("(oldest)")]
            expected[d.timestamp] = our_rules(reasons, policy)
        what = f"{host}, {policy.describe()}, restic {version[0]}.{version[1]}" + (
            f" (oldest rule alone keeps {sorted(oldest_only)})" if oldest_only else " (the versions agree)")
        assert set(theirs[host]) == set(expected), what
        assert theirs[host] == expected, what


def test_the_differential_covers_both_kinds_of_policy() -> None:
    """Some policies keep a backup by the oldest rule alone (where restic versions differ), most do not:
    both kinds are compared above."""
    kinds = set()
    for policy in POLICIES:
        for times in HISTORIES.values():
            ours = plan(policy, [format_timestamp(t) for t in times])
            kinds.add(any(d.keep and all(r.endswith("(oldest)") for r in d.reasons) for d in ours.decisions))
    assert kinds == {True, False}
