"""The repository engine seam: engines chosen per storage, and what the base class gives every engine
(resolving, resuming, copying between any two engines)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from data_manager.api import DataManager
from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.engines import engine_class, names
from data_manager.engines.base import RepositoryEngine
from data_manager.engines.records import SourceRecord
from data_manager.engines.worm import WormEngine
from data_manager.errors import ConfigError, UsageError
from data_manager.types import Settings


def worm(root: Path) -> WormEngine:
    return WormEngine(FilesystemStorage("t", Settings({"root": str(root)})))


def backup(repo: RepositoryEngine, data: dict[str, bytes], *, commit: bool = True) -> str:
    w = repo.start_backup("d", {"storage": {"name": "t", "type": "filesystem"}})
    sink = w.source(SourceRecord("s", "test", {"name": "test"}, {"path": "/x"}, "a test source", {"k": 1}))
    for name, blob in data.items():
        with sink.open(name) as out:
            out.write(blob)
    w.add_done(sink.finish())
    if commit:
        w.commit()
    return w.timestamp


def test_engines_are_chosen_per_storage_and_worm_is_the_default(tmp_path: Path) -> None:
    dm = DataManager.from_dict({"storages": {
        "plain": {"type": "filesystem", "root": str(tmp_path / "a")},
        "named": {"type": "filesystem", "root": str(tmp_path / "b"), "engine": "worm"},
    }})
    assert [dm.config.storages[n].engine for n in ("plain", "named")] == ["worm", "worm"]
    assert isinstance(dm.repository("named"), WormEngine)
    assert dm.repository("named") is dm.repository("named")  # one per DataManager: a key unlocks once
    assert "engine" not in dm.config.storages["named"].settings  # the storage plugin never sees it
    assert engine_class("worm") is WormEngine and "dedup" in names()


@pytest.mark.parametrize("value, message", [
    ("nope", r"key 'engine': unknown engine 'nope' \(known: dedup, sync, worm\)"),
    (3, r"key 'engine': must be a string, not 3"),
])
def test_a_bad_engine_is_a_config_error(tmp_path: Path, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DataManager.from_dict({"storages": {"s": {"type": "filesystem", "root": str(tmp_path), "engine": value}}})


def test_resumable_is_the_newest_incomplete_backup_unless_a_complete_one_is_newer(tmp_path: Path) -> None:
    repo = worm(tmp_path)
    with pytest.raises(UsageError, match="nothing to resume: d has no incomplete backup"):
        repo.resumable("d")
    stuck = backup(repo, {"a": b"1"}, commit=False)
    assert repo.resumable("d") == stuck
    backup(repo, {"a": b"2"})
    with pytest.raises(UsageError, match="is complete; older incomplete ones are removed by: data-manager cleanup d"):
        repo.resumable("d")


def test_the_generic_copy_reads_back_and_writes_through_the_target_engine(tmp_path: Path) -> None:
    src, dst = worm(tmp_path / "src"), worm(tmp_path / "dst")
    data = {"small": b"tiny", "big": bytes(range(256)) * 9000, "empty": b""}
    ts = backup(src, data)
    # The base class's path (what a copy between two different engines takes).
    done = RepositoryEngine.copy_backup(src, dst, "d", ts)
    assert (done.state, done.artifacts, done.bytes) == ("copied", 3, sum(map(len, data.values())))
    info = dst.resolve("d", "latest")
    assert info.timestamp == ts and info.manifest is not None and info.manifest["storage"]["name"] == "t"
    [rec] = dst.source_records(info)
    assert (rec.name, rec.type, rec.describe, rec.info, rec.settings) == ("s", "test", "a test source", {"k": 1}, {"path": "/x"})
    for name, blob in data.items():
        with dst.artifacts(info, "s").open(name) as f:
            assert f.read() == blob
    assert RepositoryEngine.copy_backup(src, dst, "d", ts).state == "already complete"
    assert RepositoryEngine.copy_backup(src, dst, "d", ts, dry_run=True).state == "already complete"


def test_an_interrupted_generic_copy_never_counts_on_the_target(tmp_path: Path) -> None:
    src, dst = worm(tmp_path / "src"), worm(tmp_path / "dst")
    ts = backup(src, {"a": b"x" * 1000})
    calls = []

    def stop() -> None:
        calls.append(1)
        if len(calls) == 2:  # after the source, before the commit
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        RepositoryEngine.copy_backup(src, dst, "d", ts, check=stop)
    assert [b.complete for b in dst.backups("d")] == [False]
    assert RepositoryEngine.copy_backup(src, dst, "d", ts).state == "copied"  # the next one completes it
    assert [b.complete for b in dst.backups("d")] == [True]


def test_cleanup_never_removes_a_complete_backup(tmp_path: Path) -> None:
    repo = worm(tmp_path)
    ts = backup(repo, {"a": b"x"})
    with pytest.raises(UsageError, match="is complete; cleanup never removes it"):
        repo.delete_incomplete("d", ts)
    assert repo.resolve("d", ts).complete


def test_check_finds_missing_resized_and_corrupt_artifacts(tmp_path: Path) -> None:
    repo = worm(tmp_path)
    ts = backup(repo, {"a": b"x" * 5000, "b": b"y" * 5000, "c": os.urandom(10240)})
    backup(repo, {"a": b"z"}, commit=False)
    report = repo.check_repository(1.0)
    assert report.ok and report.counts == {"backups": 2, "artifacts": 3} and report.read_bytes == 20240
    assert report.notes == [f"d/{repo.backups('d')[1].timestamp}: incomplete (an interrupted backup)"]
    src = tmp_path / "d" / ts / "s"
    (src / "a.zst").unlink()
    with open(src / "b.zst", "ab") as f:
        f.write(b"!")
    blob = bytearray((src / "c").read_bytes())
    blob[100] ^= 1
    (src / "c").write_bytes(bytes(blob))
    quick = repo.check_repository()
    assert sorted(quick.errors) == [f"d/{ts}/s/a.zst: missing from the storage",
                                    f"d/{ts}/s/b.zst: {len((src / 'b.zst').read_bytes())} bytes stored, "
                                    f"{len((src / 'b.zst').read_bytes()) - 1} recorded"]
    full = repo.check_repository(1.0)
    assert any("s/c" in e and "mismatch" in e for e in full.errors) and not full.ok


def test_forget_buckets_backups_where_the_engine_says_they_were_taken(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """retention_times: an engine that does not believe a backup's claimed time (a forged one) has it
    ranked at the time it knows; forget's plan follows it."""
    from data_manager.timestamps import parse_timestamp

    dm = DataManager.from_dict({"storages": {"s": {"type": "filesystem", "root": str(tmp_path / "b")}},
                                "datasets": {"d": {"storage": "s", "sources": [{"name": "x", "type": "directory",
                                                                                "path": str(tmp_path)}]}}})
    repo = dm.repository("s")
    stamps = ["20260101T000000Z", "20260201T000000Z", "20260301T000000Z"]
    for ts in stamps:
        w = repo.start_backup("d", {}, ts)
        sink = w.source(SourceRecord("x", "directory", {}, {}))
        w.add_done(sink.finish())
        w.commit()
    policy = {"keep_monthly": 2}
    assert dm.forget("d", dry_run=True, overrides=policy).kept == stamps[1:]
    # The engine knows the March backup was really written in January: it no longer fills March's bucket.
    monkeypatch.setattr(WormEngine, "retention_times", lambda self, data_id: {stamps[2]: parse_timestamp(stamps[0])})
    reasons = {d.timestamp: d.reasons for d in dm.forget("d", dry_run=True, overrides=policy).decisions}
    assert "newest" in reasons[stamps[1]] and reasons[stamps[0]] == ["no rule keeps it"], reasons
