"""Backup windows: when each window opens and closes (DST nights, cron windows, several windows), and a real
service stopping a backup at a window's end and resuming it in the next until it is done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from data_manager.service.windows import parse_windows

from .conftest import wait_job

BERLIN = "Europe/Berlin"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def windows(value: Any, tz: str = "UTC") -> Any:
    got, why = parse_windows(value, tz)
    assert got is not None, why
    return got


@pytest.mark.parametrize("now, state", [
    ("2026-06-01 19:59", {"open": False, "opens_at": "2026-06-01T20:00:00Z"}),  # 22:00 CEST
    ("2026-06-01 20:00", {"open": True, "closes_at": "2026-06-02T04:00:00Z"}),
    ("2026-06-02 03:59", {"open": True, "closes_at": "2026-06-02T04:00:00Z"}),
    ("2026-06-02 04:00", {"open": False, "opens_at": "2026-06-02T20:00:00Z"}),
    # the night clocks go forward: 22:00 CET to 06:00 CEST, 7 hours
    ("2026-03-28 21:00", {"open": True, "closes_at": "2026-03-29T04:00:00Z"}),
    # the night clocks go back: 22:00 CEST to 06:00 CET, 9 hours
    ("2026-10-24 20:00", {"open": True, "closes_at": "2026-10-25T05:00:00Z"}),
    ("2026-10-25 04:30", {"open": True, "closes_at": "2026-10-25T05:00:00Z"}),
])
def test_a_nightly_window_in_a_zone_with_dst(now: str, state: dict[str, Any]) -> None:
    got = windows("22:00-06:00", BERLIN).state(utc(now))
    assert {k: v for k, v in got.items() if k != "window"} == state
    assert got["window"] == f"22:00-06:00 ({BERLIN})"


def test_times_in_a_dst_gap_or_repeat() -> None:
    w = windows("02:30-03:30", BERLIN)
    # 02:30 does not exist on 2026-03-29: the window opens when the gap ends (03:00 CEST = 01:00 UTC)
    assert w.next_open(utc("2026-03-28 23:00")) == utc("2026-03-29 01:00")
    assert w.closes_at(utc("2026-03-29 01:10")) == utc("2026-03-29 01:30")
    # 02:30 happens twice on 2026-10-25: the first one (CEST, 00:30 UTC); 03:30 CET is 02:30 UTC
    assert w.next_open(utc("2026-10-24 23:00")) == utc("2026-10-25 00:30")
    assert w.closes_at(utc("2026-10-25 00:45")) == utc("2026-10-25 02:30")


def test_cron_windows_and_several() -> None:
    weekend = windows({"cron": "0 20 * * 5", "length": "60h"})  # Friday 20:00 to Monday 08:00
    assert weekend.next_open(utc("2026-12-02 12:00")) == utc("2026-12-04 20:00")  # a Wednesday
    assert weekend.closes_at(utc("2026-12-06 12:00")) == utc("2026-12-07 08:00")
    assert weekend.closes_at(utc("2026-12-07 08:00")) is None
    both = windows(["22:00-06:00", "05:00-07:00", "12:00-13:00"])
    assert both.closes_at(utc("2026-05-01 23:00")) == utc("2026-05-02 07:00")  # overlapping windows join
    assert both.next_open(utc("2026-05-01 08:00")) == utc("2026-05-01 12:00")
    assert both.closes_at(utc("2026-05-01 12:59:59")) == utc("2026-05-01 13:00")
    seconds = windows("10:00:05-10:00:25")
    assert seconds.closes_at(utc("2026-05-01 10:00:05")) == utc("2026-05-01 10:00:25")
    assert seconds.closes_at(utc("2026-05-01 10:00:04")) is None


def hms(t: datetime) -> str:
    return t.strftime("%H:%M:%S")


# dedup keeps the packs a stopped run stored; on worm the directory source keeps the volumes before its last
# checkpoint (one after every 8 MiB volume here)
ENGINES = {
    "dedup": 'engine = "dedup"\npassphrase = "${DM_PASSPHRASE}"\npack_size = "1MiB"\ncache_dir = "{cache}"',
    "worm": 'engine = "worm"',
}


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_a_backup_longer_than_its_window_stops_at_the_close_and_finishes_in_later_windows(
        tmp_path: Path, serve_factory: Any, engine: str) -> None:
    """A backup that needs about 50 s (48 MiB at 1 MiB/s) and windows of 20 s, 10 s apart: each attempt
    stops within 5 s of its window's close, releases the dataset, resumes in the next window with --resume
    and stores only what was not stored yet; the backup completes and restores exactly."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        (data / f"part{i}.bin").write_bytes(os.urandom(8 << 20))
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=4)
    spans = [(start + timedelta(seconds=30 * i), start + timedelta(seconds=30 * i + 20)) for i in range(5)]
    window = ", ".join(f'"{hms(a)}-{hms(b)}"' for a, b in spans)
    config = tmp_path / "dm.toml"
    config.write_text(f"""
[storages.vault]
type = "filesystem"
root = "{tmp_path / 'vault'}"
{ENGINES[engine].replace("{cache}", str(tmp_path / "cache"))}
limit_upload = "1MiB"

[state]
path = "{tmp_path / 'state.db'}"

[locks]
settle = "0.05s"

[datasets.big]
storage = "vault"

[datasets.big.schedule]
cron = "0 0 1 1 *"
timezone = "UTC"
window = [{window}]

[[datasets.big.sources]]
name = "files"
type = "directory"
path = "{data}"
volume_size = "8MiB"
""")
    env = {**os.environ, "DM_PASSPHRASE": "correct horse"}
    env.pop("DATA_MANAGER_STATE", None)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "data_manager", "--config", str(config), *args],
                              capture_output=True, text=True, env=env, timeout=120)

    if engine == "dedup":
        assert cli("repo", "init", "vault").returncode == 0
    server = serve_factory(config, env={"DM_PASSPHRASE": "correct horse"}).start()
    with httpx.Client(base_url=server.url, timeout=10) as c:
        if datetime.now(timezone.utc) < start:  # posted before the first window: it waits for it
            job = c.post("/v1/backups", json={"data_id": "big"}).json()
            waiting = c.get("/v1/datasets/big").json()["schedule"]["window"]
            assert waiting["open"] is False and waiting["sources_restarting"] == []
        else:
            job = c.post("/v1/backups", json={"data_id": "big"}).json()
        done = wait_job(c, job["id"], timeout=150)
    assert server.stop() == 0
    assert done["state"] == "done", done
    attempts = done["attempts"]
    assert len(attempts) >= 2, attempts
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    for a in attempts:
        began, ended = parse(a["started_at"]), parse(a["ended_at"])
        span = next((s for s in spans if s[0] - timedelta(seconds=1) <= began < s[1]), None)
        assert span is not None, f"attempt {a['n']} started outside every window: {a}"
        if a["outcome"] == "window closed":
            assert ended - span[1] <= timedelta(seconds=5), f"attempt {a['n']} stopped late: {a}"
        else:  # the dedup engine lists no incomplete backup: --resume has nothing to continue and the
            # job runs again at once as a plain backup, which reuses every pack the stopped one stored
            assert a["outcome"] in ("done", "nothing to resume") and ended <= span[1] + timedelta(seconds=5), a
    outcomes = [a["outcome"] for a in attempts]
    assert outcomes[-1] == "done" and outcomes.count("window closed") >= 2, outcomes
    # the stopped attempts' packs were kept: about 48 MiB stored once, not once per window
    stored = sum(p.stat().st_size for p in (tmp_path / "vault").rglob("*") if p.is_file())
    assert 48 << 20 < stored < 56 << 20, stored
    out = cli("restore", "latest", "big", "--set", f"files.path={tmp_path / 'back'}", "--yes", "--json")
    assert out.returncode == 0, out.stderr
    for p in data.iterdir():
        assert (tmp_path / "back" / p.name).read_bytes() == p.read_bytes()
    listed = json.loads(cli("list", "backup", "big", "--json").stdout)
    assert [b["complete"] for b in listed] == [True]


def test_status_tells_the_window_and_the_sources_that_start_over(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "dm.toml"
    config.write_text(f"""
[storages.local]
type = "filesystem"
root = "{tmp_path / 'store'}"

[datasets.d1]
storage = "local"

[datasets.d1.schedule]
cron = "@daily"
timezone = "Europe/Berlin"
window = ["22:00-06:00", {{cron = "0 12 * * 1-5", length = "1h"}}]

[[datasets.d1.sources]]
name = "files"
type = "directory"
path = "{data}"

[[datasets.d1.sources]]
name = "db"
type = "sqlite"
path = "{tmp_path / 'lab.db'}"
""")
    env = {**os.environ, "DATA_MANAGER_STATE": str(tmp_path / "state.db")}
    run = lambda *a: subprocess.run([sys.executable, "-m", "data_manager", "--config", str(config), "status", *a],  # noqa: E731
                                    capture_output=True, text=True, env=env, timeout=60)
    doc = json.loads(run("--json").stdout)
    window = doc["datasets"][0]["window"]
    assert window["window"] == "22:00-06:00 (Europe/Berlin), cron '0 12 * * 1-5' for 1h (Europe/Berlin)"
    # the directory source continues from its last checkpoint on worm; a sqlite copy starts over
    assert ("closes_at" in window) == window["open"] and window["sources_restarting"] == ["db"]
    text = run().stdout
    assert "backup window 22:00-06:00" in text and "db start over" in text
