"""SIGKILL sweeps of ``data-manager backup`` into a ``dedup`` storage (tests/e2e/killer.py): the real command
is killed just before each of its storage writes and commits (the dataset lock, the heartbeat, every part
and commit of every pack, the index files, the snapshot pointer), and after the pointer, before each
delete (the heartbeat's removal, the lock's release). After every kill the earlier backups restore byte for
byte, the killed one is listed only if its pointer was committed, ``check`` exits 0 (what the killed run
left is only noted), and the next backup succeeds, restores, and reuses what the killed run had indexed."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from data_manager.api import DataManager
from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.engines.dedup.chunker import ChunkerParams
from data_manager.engines.dedup.engine import DedupEngine
from data_manager.types import Settings

from ..helpers import cli, killed, snapshot

KDF = {"memory_kib": 8, "iterations": 1, "lanes": 1}  # cheap Argon2id: tests, not security
SMALL = ChunkerParams(64 << 10, 64 << 10, 256 << 10)  # chunks of ~128 KiB (avg + min), each fills a 64 KiB pack
PASSPHRASE = "correct horse"
HEAD = 60  # every step up to here, then a stride


def _config(tmp_path: Path, src: Path, work: Path) -> Path:
    """A dedup storage in ``work/store`` (its cache in ``work/cache``) with 64 KiB packs: several packs,
    an index file every 8 of them, the pointer last."""
    config = tmp_path / "dm.toml"
    config.write_text(f"""
[locks]
settle = "0.02s"

[storages.vault]
type = "filesystem"
root = "{work / 'store'}"
engine = "dedup"
passphrase = "${{DM_PASSPHRASE}}"
pack_size = "64KiB"
cache_dir = "{work / 'cache'}"

[datasets.exp42]
storage = "vault"

[[datasets.exp42.sources]]
name = "raw"
type = "directory"
path = "{src}"
""")
    return config


def _tree(src: Path) -> None:
    """Two files that do not compress (several chunks each, each chunk a pack), one that does, an empty
    file, a small one and a symlink."""
    rnd = random.Random(0)
    (src / "sub").mkdir(parents=True)
    (src / "empty").write_bytes(b"")
    (src / "sub" / "small.bin").write_bytes(rnd.randbytes(10))
    (src / "notes.txt").write_text("a,b\n" * 20_000)
    os.symlink("sub", src / "link")
    _rewrite(src, 0)


def _rewrite(src: Path, seed: int) -> None:
    """New bytes in the big files, their sizes and the directories unchanged: the next backup's new chunks
    all come from one of the directory source's volumes, so its packs and steps are the same every run."""
    rnd = random.Random(seed + 1)
    for path, size in ((src / "a.bin", 400_000), (src / "sub" / "b.bin", 700_000)):
        path.write_bytes(rnd.randbytes(size))
        os.utime(path, ns=(1_700_000_000_000_000_000 + seed, 1_700_000_000_000_000_000 + seed))


def _committed(work: Path, top: str) -> int:
    """Objects under ``top`` (a killed write leaves a hidden ``.part`` file, never an object)."""
    return sum(p.is_file() and not p.name.startswith(".") for p in (work / "store" / top).rglob("*"))


def _state(work: Path) -> tuple[tuple[str, bool, int], ...]:
    """What a killed run left, coarsely: per top-level name, how many objects and ``.part`` files. Kills
    between two writes of one object leave the same state."""
    seen = Counter((p.relative_to(work / "store").parts[0], p.name.startswith("."))
                   for p in (work / "store").rglob("*") if p.is_file())
    return tuple(sorted((top, part, n) for (top, part), n in seen.items()))


def _restored(dm: DataManager, which: str, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    dm.restore("exp42", which, overrides={"raw": {"path": str(out)}})
    return snapshot(out)


def _check_ok(config: Path) -> dict[str, Any]:
    """``data-manager check vault --read-data-subset 100%``: exit 0, no error; its report."""
    r = cli("check", "vault", "--read-data-subset", "100%", "--json", config=config)
    assert r.returncode == 0 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    (report,) = json.loads(r.stdout)
    assert report["ok"] and not report["errors"], report
    return report


@dataclass
class Setup:
    config: Path
    work: Path
    template: Path
    first: str  # the committed backup's TIMESTAMP
    first_tree: dict
    second_tree: dict  # the source now
    whole: int  # stored_size of the next backup, uninterrupted
    steps: int  # its writes and commits
    fresh: Callable[[], None]  # the repository (and cache) as they were before it


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    """A dedup repository made with cheap keys and small chunks (the command opens it as any other), one
    backup in it, then ~1 MB of new data in the source: about 9 data packs and a meta pack, so an index file
    is written while the next backup runs, and one at its end."""
    monkeypatch.setenv("DM_PASSPHRASE", PASSPHRASE)
    src, work, template = tmp_path / "src", tmp_path / "work", tmp_path / "template"
    src.mkdir()
    config = _config(tmp_path, src, work)
    storage = FilesystemStorage("vault", Settings({"root": str(work / "store")}))
    DedupEngine.create(storage, Settings({"passphrase": PASSPHRASE}), chunker=SMALL, kdf=KDF,
                       cache_dir=work / "cache").close()
    _tree(src)
    first_tree = snapshot(src)
    r = cli("backup", "exp42", "--json", config=config)
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)["timestamp"]
    _rewrite(src, 1)
    shutil.copytree(work, template, symlinks=True)

    def fresh() -> None:
        shutil.rmtree(work)
        shutil.copytree(template, work, symlinks=True)

    counted = tmp_path / "count"
    r = killed(config, 0, "backup", "exp42", "--json", count=counted)
    assert r.returncode == 0, r.stderr
    assert _committed(work, "index") - _committed(template, "index") == 2  # one while it ran, one at its end
    steps = int(counted.read_text())
    # lock, heartbeat, 9 packs of 3 writes or more (small blobs are written gathered), 2 index files, the pointer
    assert steps > 30, steps
    fresh()
    return Setup(config, work, template, first, first_tree, snapshot(src), json.loads(r.stdout)["stored_size"],
                 steps, fresh)


def _kill_at(s: Setup, at: int, tmp_path: Path) -> None:
    """The backup killed just before its ``at``-th write or commit, from the state before it. How many small
    blobs share a pack depends on which packer thread adds first, so a run may take a step or two fewer than
    the counted one: then it is run again (the last step, the pointer's commit, is reached in most runs)."""
    count = tmp_path / "count-run"
    for _ in range(12):
        s.fresh()
        r = killed(s.config, at, "backup", "exp42", count=count)
        if r.returncode == -9:
            return
        assert r.returncode == 0 and int(count.read_text()) < at, (at, r.returncode, r.stderr)
    raise AssertionError(f"no run of 12 took {at} steps")


def test_a_dedup_backup_killed_before_any_write_or_commit_never_counts(setup: Setup, tmp_path: Path) -> None:
    s = setup
    sweep = list(range(1, min(s.steps, HEAD) + 1)) + list(range(HEAD + 1, s.steps + 1, 5))
    if s.steps not in sweep:
        sweep.append(s.steps)  # the pointer's commit
    reused, orphans, states = 0, 0, set()
    for at in sweep:
        _kill_at(s, at, tmp_path)
        report = None
        if _state(s.work) not in states:  # the command's check on every distinct state, in process on the others
            states.add(_state(s.work))
            report = _check_ok(s.config)
        new_packs = _committed(s.work, "packs") - _committed(s.template, "packs")
        indexed = _committed(s.work, "index") > _committed(s.template, "index")
        if at % 2:  # every other time the next run is on another machine: no local cache
            shutil.rmtree(s.work / "cache")
        dm = DataManager.from_file(s.config)
        try:
            report = report or dm.repository("vault").check_repository(1.0).to_json()
            assert report["ok"] and report["counts"]["snapshots"] == 1, (at, report)
            if new_packs and not indexed:  # packs no index lists yet: noted, not errors
                assert report["counts"]["orphan_packs"] == new_packs, (at, report)
                assert any("in no index" in n for n in report["notes"]), (at, report)
                orphans += 1
            assert [(b.timestamp, b.complete) for b in dm.list_backups("exp42")] == [(s.first, True)], at
            assert _restored(dm, s.first, tmp_path / "out") == s.first_tree, at
            result = dm.backup("exp42")
            if indexed:  # what the killed run indexed is not stored again
                assert result.stored_size < s.whole, (at, result.stored_size, s.whole)
                reused += 1
            assert [b.timestamp for b in dm.list_backups("exp42")] == [s.first, result.timestamp], at
            assert _restored(dm, "latest", tmp_path / "out") == s.second_tree, at
        finally:
            dm.close()
    assert reused and orphans and len(states) > 10, (reused, orphans, states)


def test_a_dedup_backup_killed_after_its_pointer_counts_and_leaves_only_notes(setup: Setup, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed before the heartbeat's removal or the lock's release (the deletes counted as the only steps),
    the backup is committed (its pointer is written), restores, and the next backup takes over."""
    s = setup
    monkeypatch.setenv("DM_KILL_DELETES", "1")  # (a kill before the pointer's commit: the sweep above)
    counted = tmp_path / "count-deletes"
    r = killed(s.config, 0, "backup", "exp42", count=counted)
    assert r.returncode == 0, r.stderr
    assert int(counted.read_text()) == 2  # the heartbeat, the lock
    for at in (1, 2):
        s.fresh()
        r = killed(s.config, at, "backup", "exp42")
        assert r.returncode == -9, (at, r.returncode, r.stderr)
        report = _check_ok(s.config)
        dm = DataManager.from_file(s.config)
        try:
            listed = dm.list_backups("exp42")
            assert report["counts"]["snapshots"] == 2, (at, report)
            if at == 1:  # the heartbeat stays: a note
                assert any(n.startswith("writers/") for n in report["notes"]), (at, report)
            assert [b.complete for b in listed] == [True, True], at
            killed_ts = listed[1].timestamp
            assert _restored(dm, killed_ts, tmp_path / "out") == s.second_tree, at
            assert _restored(dm, s.first, tmp_path / "out") == s.first_tree, at
            result = dm.backup("exp42")  # the dead process's lock on this host is taken over
            assert result.stored_size == 0, (at, result.stored_size)  # nothing new
            assert [b.timestamp for b in dm.list_backups("exp42")] == [s.first, killed_ts, result.timestamp], at
            assert _restored(dm, "latest", tmp_path / "out") == s.second_tree, at
        finally:
            dm.close()
