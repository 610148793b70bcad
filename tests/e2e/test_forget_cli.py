"""``forget``, ``hold``, ``unhold`` and ``holds`` through the real command, on a worm storage: a dry run
changes nothing, forget removes what the policy does not keep (never a held backup), an interrupted forget
leaves an incomplete backup ``cleanup`` removes and never a listed backup with missing data, exit codes,
--json, crafted hold objects."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.helpers import REPO, cli

DAY = timedelta(days=1)

# The real command with a filesystem storage that SIGKILLs the process at one point of a forget.
KILLER = """
import os, signal, sys
from pathlib import Path
from data_manager.builtin import filesystem
from data_manager.cli import main

mode = os.environ["DM_FORGET_KILL"]
real_delete, real_tree = filesystem.FilesystemStorage.delete, filesystem.FilesystemStorage.delete_tree

def delete(self, key):
    if key.endswith("/backup.json") and mode == "before-manifest":
        os.kill(os.getpid(), signal.SIGKILL)
    real_delete(self, key)
    if key.endswith("/backup.json") and mode == "after-manifest":
        os.kill(os.getpid(), signal.SIGKILL)

def delete_tree(self, prefix):
    if mode == "mid-tree":
        victim = next(p for p in sorted(self._path(prefix).rglob("*")) if p.is_file())
        victim.unlink()  # one object of the backup gone, the others still there
        os.kill(os.getpid(), signal.SIGKILL)
    real_tree(self, prefix)

filesystem.FilesystemStorage.delete = delete
filesystem.FilesystemStorage.delete_tree = delete_tree
main(sys.argv[1:], prog_name="data-manager")
"""


def killed_forget(config: Path, mode: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", KILLER, "--config", str(config), "forget", *args],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "DM_FORGET_KILL": mode}, timeout=120)


def write_config(tmp_path: Path, retention: str | None = "keep_daily = 3") -> Path:
    src = tmp_path / "src"
    if not src.exists():
        (src / "sub").mkdir(parents=True)
        (src / "a.txt").write_text("hello\n" * 1000)
        (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 100)
    config = tmp_path / "dm.toml"
    config.write_text(f"""
[locks]
settle = "0.02s"
[storages.local]
type = "filesystem"
root = "{tmp_path / 'backups'}"
[datasets.exp42]
[[datasets.exp42.sources]]
name = "raw"
type = "directory"
path = "{src}"
""" + (f"[datasets.exp42.retention]\n{retention}\n" if retention is not None else ""))
    return config


def stamp(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%SZ")


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """One real backup now, and copies of it as if taken at 03:00 on each of the 6 days before, and at 01:00
    the day before: 8 backups, oldest first."""
    config = write_config(tmp_path)
    r = cli("backup", "exp42", "--json", config=config)
    assert r.returncode == 0, r.stderr
    real = json.loads(r.stdout)["timestamp"]
    root = tmp_path / "backups" / "exp42"
    today = datetime.strptime(real[:8], "%Y%m%d").replace(tzinfo=timezone.utc)
    stamps = [stamp(today - n * DAY + timedelta(hours=3)) for n in range(6, 1, -1)]
    stamps += [stamp(today - DAY + timedelta(hours=1)), stamp(today - DAY + timedelta(hours=3))]
    for ts in stamps:
        clone(root, real, ts)
    return config, root, stamps + [real]


def clone(root: Path, real: str, ts: str) -> None:
    shutil.copytree(root / real, root / ts)
    manifest = root / ts / "backup.json"
    doc = json.loads(manifest.read_text())
    doc["timestamp"] = ts
    manifest.write_text(json.dumps(doc, indent=2))


def objects(root: Path) -> dict[str, bytes]:
    """Every object of the storage but lock objects (and the empty directories they leave)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".locks" not in p.parts}


def listed(config: Path) -> dict[str, str]:
    r = cli("list", "backup", "exp42", "--json", config=config)
    assert r.returncode == 0, r.stderr
    return {b["timestamp"]: "complete" if b["complete"] else "damaged" if b.get("damaged") else "incomplete"
            for b in json.loads(r.stdout)}


def test_a_dry_run_shows_every_backup_and_changes_nothing(history: tuple[Path, Path, list[str]]) -> None:
    config, root, stamps = history
    before = objects(root.parent)
    r = cli("forget", "exp42", "--dry-run", config=config)
    assert r.returncode == 0, r.stderr
    assert objects(root.parent) == before
    lines = {line.split()[0]: line for line in r.stdout.splitlines() if line[:1].isdigit()}
    assert list(lines) == stamps
    assert "keep" in lines[stamps[-1]] and "newest, daily 1 of 3" in lines[stamps[-1]]
    assert "keep" in lines[stamps[-2]] and "daily 2 of 3" in lines[stamps[-2]]
    # Yesterday holds two backups: the newest of the day is kept, the other is not.
    assert "would remove" in lines[stamps[-3]] and "no rule keeps it" in lines[stamps[-3]]
    assert "daily 3 of 3" in lines[stamps[-4]]
    assert "3 kept, 5 would be removed (dry run: nothing changed)" in r.stdout
    j = cli("forget", "exp42", "--dry-run", "--json", "--keep-last", "1", "--keep-daily", "0", config=config)
    assert j.returncode == 0, j.stderr
    doc = json.loads(j.stdout)
    assert doc["dry_run"] is True and doc["policy"] == {"keep_last": 1} and doc["removed"] == []
    assert [(b["timestamp"], b["action"]) for b in doc["backups"]] == (
        [(ts, "would remove") for ts in stamps[:-1]] + [(stamps[-1], "keep")])
    assert objects(root.parent) == before


def test_forget_removes_what_the_policy_does_not_keep(history: tuple[Path, Path, list[str]]) -> None:
    config, root, stamps = history
    r = cli("forget", "exp42", "--json", config=config)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    kept = [stamps[-4], stamps[-2], stamps[-1]]  # the newest of each of the 3 newest days
    assert sorted(doc["removed"]) == sorted(set(stamps) - set(kept)) and doc["job_id"]
    assert {b["timestamp"]: b["action"] for b in doc["backups"]} == {
        ts: "keep" if ts in kept else "removed" for ts in stamps}
    assert listed(config) == {ts: "complete" for ts in kept}
    assert sorted(p.name for p in root.iterdir()) == kept  # nothing left of the removed ones
    assert cli("verify", "--all", "exp42", config=config).returncode == 0
    again = cli("forget", "exp42", config=config)  # applying the policy twice changes nothing
    assert again.returncode == 0 and "3 kept, 0 removed" in again.stdout, again.stdout
    status = json.loads(cli("status", "--json", config=config).stdout)
    assert any(j["kind"] == "forget" and j["state"] == "done" for j in status["recent"]), status["recent"]


def test_held_backups_are_kept_until_released(history: tuple[Path, Path, list[str]]) -> None:
    config, root, stamps = history
    r = cli("hold", stamps[0], "exp42", "--reason", "legal hold, case 17", config=config)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"held exp42/{stamps[0]}: legal hold, case 17 (")
    h = cli("holds", "exp42", "--json", config=config)
    assert [x["timestamp"] for x in json.loads(h.stdout)] == [stamps[0]]
    f = cli("forget", "exp42", "--keep-last", "1", "--keep-daily", "0", config=config)
    assert f.returncode == 0, f.stderr
    assert "held: legal hold, case 17" in next(line for line in f.stdout.splitlines() if line.startswith(stamps[0]))
    assert set(listed(config)) == {stamps[0], stamps[-1]}
    assert cli("verify", stamps[0], "exp42", config=config).returncode == 0
    u = cli("unhold", stamps[0], "exp42", "--json", config=config)
    assert u.returncode == 0 and json.loads(u.stdout) == {"data_id": "exp42", "timestamp": stamps[0], "held": False}
    assert cli("holds", "exp42", config=config).stdout.strip() == "no held backups of exp42"
    assert cli("forget", "exp42", "--keep-last", "1", "--keep-daily", "0", config=config).returncode == 0
    assert set(listed(config)) == {stamps[-1]}


@pytest.mark.parametrize("args, message", [
    (("hold", "20200101T000000Z", "exp42"), "no backup exp42/20200101T000000Z"),
    (("hold", "latest", "exp42"), "bad timestamp 'latest'"),
    (("hold", "2020-01-01", "exp42"), "bad timestamp"),
    (("unhold", "20200101T000000Z", "exp42"), "is not held"),
    (("hold", "20200101T000000Z", "nope"), "unknown dataset 'nope'"),
    (("hold", "20200101T000000Z", "exp42", "--reason", "two\nlines"), "--reason: one line"),
    (("holds", "nope"), "unknown dataset 'nope'"),
    (("forget", "exp42", "--keep-daily", "seven"), "--keep-daily 'seven': expected a whole number"),
    (("forget", "exp42", "--keep-last", "-1"), "--keep-last '-1': expected a whole number"),
    (("forget", "exp42", "--ttl", "5 parsecs"), "--ttl '5 parsecs': expected a duration"),
    (("forget", "exp42", "--keep-within", "9999999999d"), "--keep-within '9999999999d': at most"),
    (("forget", "exp42", "--keep-daily", "0"), "no retention policy: [datasets.exp42.retention]"),
    (("forget", "nope", "--keep-last", "1"), "unknown dataset 'nope'"),
])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(history: tuple[Path, Path, list[str]],
                                                          args: tuple[str, ...], message: str) -> None:
    config, root, stamps = history
    before = objects(root.parent)
    r = cli(*args, config=config)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("data-manager: error: ") and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert objects(root.parent) == before


def test_no_policy_refuses_and_json_errors(tmp_path: Path) -> None:
    config = write_config(tmp_path, retention=None)
    assert cli("backup", "exp42", config=config).returncode == 0
    before = objects(tmp_path / "backups")
    r = cli("forget", "exp42", config=config)
    assert r.returncode == 2 and "no retention policy: exp42 has no [datasets.exp42.retention]" in r.stderr, r.stderr
    j = cli("forget", "exp42", "--json", config=config)
    err = json.loads(j.stderr)["error"]
    assert j.returncode == 2 and err["code"] == "usage" and err["exit_code"] == 2
    write_config(tmp_path, retention="keep_dayly = 3")
    c = cli("list", "backup", config=config)  # a bad table is a config error of every command
    assert c.returncode == 2 and "dataset 'exp42', retention: key 'keep_dayly': unknown key" in c.stderr, c.stderr
    assert objects(tmp_path / "backups") == before


def test_a_dataset_locked_by_another_job_is_refused(history: tuple[Path, Path, list[str]]) -> None:
    config, root, stamps = history
    locks = root / ".locks"
    locks.mkdir(exist_ok=True)
    now = time.time()
    (locks / "otherjob.json").write_text(json.dumps({"job_id": "otherjob", "operation": "backup", "host": "elsewhere",
                                                      "pid": 1, "created": now - 5, "expires": now + 600}))
    before = objects(root.parent)
    for args in (("forget", "exp42"), ("hold", stamps[0], "exp42"), ("unhold", stamps[0], "exp42")):
        r = cli(*args, config=config)
        assert r.returncode == 3 and "locked" in r.stderr and "elsewhere" in r.stderr, (args, r.stderr)
    assert objects(root.parent) == before
    assert cli("forget", "exp42", "--dry-run", config=config).returncode == 0  # reads only: no lock


@pytest.mark.parametrize("mode", ["before-manifest", "after-manifest", "mid-tree"])
def test_an_interrupted_forget_never_leaves_a_listed_backup_with_missing_data(
        history: tuple[Path, Path, list[str]], mode: str) -> None:
    config, root, stamps = history
    kept = {stamps[-4], stamps[-2], stamps[-1]}
    r = killed_forget(config, mode, "exp42")
    assert r.returncode == -9, (r.returncode, r.stderr)
    first = stamps[0]  # removed first: the oldest
    state = listed(config)
    assert state[first] == ("complete" if mode == "before-manifest" else "incomplete"), state
    assert all(state[ts] == "complete" for ts in stamps if ts != first)
    # Every backup still listed complete is whole: it verifies; latest never picks the broken one.
    v = cli("verify", "--all", "exp42", "--json", config=config)
    assert v.returncode == 0 and {x["timestamp"] for x in json.loads(v.stdout)} == {
        ts for ts, s in state.items() if s == "complete"}, v.stdout
    # The next forget (taking over the dead process's lock) finishes; cleanup removes what was left.
    f = cli("forget", "exp42", config=config)
    assert f.returncode == 0, f.stderr
    if mode != "before-manifest":
        assert "1 incomplete backup(s) not counted" in f.stderr and "cleanup exp42" in f.stderr, f.stderr
        c = cli("cleanup", "exp42", "--older-than", "0", config=config)
        assert c.returncode == 0 and f"removed: exp42/{first}" in c.stdout, (c.stdout, c.stderr)
    assert listed(config) == {ts: "complete" for ts in kept}
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == sorted(kept)
    assert cli("verify", "--all", "exp42", config=config).returncode == 0


def test_crafted_hold_objects_hold_and_are_one_line(history: tuple[Path, Path, list[str]]) -> None:
    config, root, stamps = history
    holds = root / ".holds"
    holds.mkdir()
    (holds / f"{stamps[0]}.json").write_text("{not json\n\x1b[31m")
    (holds / f"{stamps[1]}.json").write_text(json.dumps({"data_id": "exp42", "timestamp": stamps[1],
                                                        "reason": "a\nb\x1b[2J" + "x" * 5000, "user": 5}))
    (holds / "garbage.json").write_text("{}")
    r = cli("forget", "exp42", config=config)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "\x1b" not in r.stdout
    rows = {line.split()[0]: line for line in r.stdout.splitlines() if line[:1].isdigit()}
    assert "held: unreadable hold object, still a hold" in rows[stamps[0]]
    assert "held: a?b?[2J" in rows[stamps[1]] and len(rows[stamps[1]]) < 400
    assert {stamps[0], stamps[1]} <= set(listed(config))
    h = cli("holds", "exp42", config=config)
    assert h.returncode == 0 and len(h.stdout.splitlines()) == 2, h.stdout
    assert cli("unhold", stamps[0], "exp42", config=config).returncode == 0  # a crafted hold can be released


def test_a_directory_named_almost_like_a_timestamp_is_no_backup(history: tuple[Path, Path, list[str]]) -> None:
    config, root, stamps = history
    odd = stamps[0][:6] + stamps[0][7:]  # 2026112T030000Z: strptime alone would take it for a TIMESTAMP
    clone(root, stamps[0], odd)
    assert odd not in listed(config)
    r = cli("forget", "exp42", config=config)
    assert r.returncode == 0, r.stderr
    assert (root / odd).is_dir()  # not a backup: forget never touches it

