"""The ``worm`` engine: what the mutation sample of 2026-12-03 (the thirteenth session) found no test for. A
copy to an engine of another kind (re-encoded, restorable there); resume records: one without a commit time
is still offered, an artifact whose name ends in ``.json`` is not taken for a record, a missing object is
logged as missing; a copy's errors name where; a hold by a user the system cannot name."""

from __future__ import annotations

import getpass
import json
import logging
import os
from pathlib import Path

import pytest

from data_manager.api import DataManager
from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.engines.records import SourceRecord
from data_manager.engines.worm import WormEngine
from data_manager.errors import CorruptBackupError, RefusedError
from data_manager.types import Settings
from tests.helpers import make_tree, snapshot


def test_a_copy_to_a_dedup_storage_is_re_encoded_and_restores(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    (src / "big.bin").write_bytes(os.urandom(300_000))
    dm = DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "a")},
                     "vault": {"type": "filesystem", "root": str(tmp_path / "b"), "engine": "dedup",
                               "passphrase": "pw", "cache_dir": str(tmp_path / "cache")}},
        "datasets": {"d": {"storage": "local", "sources": [{"name": "raw", "type": "directory", "path": str(src)}]}},
    })
    dm.repository("vault").init_repository()
    ts = dm.backup("d").timestamp
    before = sorted((tmp_path / "b").rglob("*"))
    assert [c.state for c in dm.copy("d", ts, to="vault", dry_run=True).backups] == ["would copy"]
    assert sorted((tmp_path / "b").rglob("*")) == before and not dm.repository("vault").timestamps("d")

    def cancelled() -> None:
        raise RefusedError("the lock was lost")

    with pytest.raises(RefusedError):  # the copy checks as it goes (operations/copy passes its lock's check)
        dm.repository("local").copy_backup(dm.repository("vault"), "d", ts, check=cancelled)
    result = dm.copy("d", ts, to="vault")
    assert [(c.timestamp, c.state) for c in result.backups] == [(ts, "copied")]
    [copied] = dm.repository("vault").timestamps("d")
    assert copied == ts and not list((tmp_path / "b").rglob("vol-*"))  # packs, not worm's objects
    out = tmp_path / "out"
    dm2 = DataManager.from_dict({  # the dataset as kept in the vault
        "storages": {"vault": {"type": "filesystem", "root": str(tmp_path / "b"), "engine": "dedup",
                               "passphrase": "pw", "cache_dir": str(tmp_path / "cache")}},
        "datasets": {"d": {"storage": "vault", "sources": [{"name": "raw", "type": "directory", "path": str(out)}]}},
    })
    dm2.restore("d", ts)
    a, b = snapshot(src), snapshot(out)
    a.pop(b"."), b.pop(b".")
    assert a == b


def record() -> SourceRecord:
    return SourceRecord("src", "test", {"name": "test"}, {})


def stopped(tmp_path: Path, names: tuple[str, ...]) -> tuple[WormEngine, str, Path]:
    engine = WormEngine(FilesystemStorage("t", Settings({"root": str(tmp_path / "backups")})))
    writer = engine.start_backup("ds")
    sink = writer.source(record())
    assert sink.resumed() == {}
    for name in names:
        with sink.open(name, compression="none") as w:
            w.write(name.encode() * 10)
    writer.abort()
    return engine, writer.timestamp, tmp_path / "backups" / "ds" / writer.timestamp / "src"


def offered(engine: WormEngine, ts: str) -> dict[str, int]:
    writer = engine.start_backup("ds", timestamp=ts)
    writer.resume_source("src")
    return dict(writer.source(record()).resumed())


def test_an_artifact_named_like_a_record_is_not_read_as_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine, ts, _ = stopped(tmp_path, ("a.json", "b"))
    caplog.set_level(logging.WARNING)
    assert offered(engine, ts) == {"a.json": 60, "b": 10}
    assert "unreadable" not in caplog.text and "not kept" not in caplog.text


def test_a_record_without_a_commit_time_is_still_offered(tmp_path: Path) -> None:
    engine, ts, where = stopped(tmp_path, ("a", "b"))
    rec = where / ".committed" / "a.json"
    doc = json.loads(rec.read_text())
    del doc["committed_ns"]  # a record of an older version
    rec.write_text(json.dumps(doc))
    assert list(offered(engine, ts)) == ["a", "b"]  # as committed at time 0: first


def test_a_record_whose_object_is_missing_says_missing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine, ts, where = stopped(tmp_path, ("a", "b"))
    (where / "a").unlink()
    assert offered(engine, ts) == {"b": 10}
    assert f"ds/{ts}/src/a: missing, 10 recorded: not kept" in caplog.text


def test_an_unreadable_record_is_named_in_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine, ts, where = stopped(tmp_path, ("a", "b"))
    (where / ".committed" / "a.json").write_text("{not json")
    assert offered(engine, ts) == {"b": 10}
    key = f"ds/{ts}/src/.committed/a.json"
    assert f"{key}: unreadable ({key}: unreadable metadata" in caplog.text


def _copy_config(tmp_path: Path) -> dict:
    src = tmp_path / "src"
    make_tree(src)
    return {"storages": {"local": {"type": "filesystem", "root": str(tmp_path / "a")},
                         "offsite": {"type": "filesystem", "root": str(tmp_path / "b")}},
            "datasets": {"d": {"storage": "local",
                               "sources": [{"name": "raw", "type": "directory", "path": str(src)}]}}}


def test_a_copy_of_a_backup_missing_an_object_says_which(tmp_path: Path) -> None:
    dm = DataManager.from_dict(_copy_config(tmp_path))
    ts = dm.backup("d").timestamp
    vol = next((tmp_path / "a" / "d" / ts / "raw").glob("vol-*"))
    vol.unlink()
    with pytest.raises(CorruptBackupError, match=f"d/{ts}/raw/{vol.name}: missing from the storage"):
        dm.copy("d", ts, to="offsite")


def test_a_copy_of_a_crafted_manifest_says_where(tmp_path: Path) -> None:
    dm = DataManager.from_dict(_copy_config(tmp_path))
    ts = dm.backup("d").timestamp
    meta = tmp_path / "a" / "d" / ts / "backup.json"
    doc = json.loads(meta.read_text())
    arts = doc["sources"][0]["artifacts"]
    zst = next(a for a in arts if a["compression"] == "zstd")
    arts.append({**zst, "name": zst["name"] + ".zst", "file": zst["file"], "compression": "none"})  # one object
    meta.write_text(json.dumps(doc))
    with pytest.raises(CorruptBackupError, match=f"d/{ts}.*: source 'raw': two artifacts stored as"):
        dm.copy("d", ts, to="offsite")


def test_a_hold_by_a_user_without_a_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dm = DataManager.from_dict(_copy_config(tmp_path))
    ts = dm.backup("d").timestamp

    def nameless() -> str:
        raise KeyError("getpwuid(): uid not found: 4242")

    monkeypatch.setattr(getpass, "getuser", nameless)
    dm.hold("d", ts, "keep it")
    hold = json.loads((tmp_path / "a" / "d" / ".holds" / f"{ts}.json").read_text())
    assert hold["user"] == "?" and hold["reason"] == "keep it"


def test_a_crafted_manifest_is_named_by_its_key(tmp_path: Path) -> None:
    dm = DataManager.from_dict(_copy_config(tmp_path))
    ts = dm.backup("d").timestamp
    meta = tmp_path / "a" / "d" / ts / "backup.json"
    doc = json.loads(meta.read_text())
    doc["sources"][0]["name"] = "../raw"
    meta.write_text(json.dumps(doc))
    with pytest.raises(CorruptBackupError, match=f"^d/{ts}/backup.json: "):
        dm.repository("local").resolve("d", ts)


def test_commit_records_that_cannot_be_deleted_leave_the_backup_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Append-only credentials: the ``.committed`` records stay (nothing reads them once source.json is
    written) and the log says why."""
    from data_manager.errors import StorageError

    dm = DataManager.from_dict(_copy_config(tmp_path))

    def refuse(self: FilesystemStorage, prefix: str) -> None:
        raise StorageError("AccessDenied: this key may not delete\nrequest id 42")

    monkeypatch.setattr(FilesystemStorage, "delete_tree", refuse)
    caplog.set_level(logging.INFO)
    ts = dm.backup("d").timestamp
    assert dm.list_backups("d")[0].complete
    assert f"d/{ts}/raw/.committed: not deleted (AccessDenied: this key may not delete); nothing reads it" in caplog.text


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_a_write_of_a_buffer_the_caller_reuses_is_stored_as_it_was(tmp_path: Path, compression: str) -> None:
    """Large writes of a bytearray or a memoryview (not bytes) are copied before write() returns: a source
    that refills its buffer right after (the directory source's read buffer) must not change what is stored."""
    from data_manager.engines.base import CHUNK

    engine = WormEngine(FilesystemStorage("t", Settings({"root": str(tmp_path / "backups")})))
    writer = engine.start_backup("ds")
    sink = writer.source(record())
    want = b""
    with sink.open("big", compression=compression) as w:
        for n in (2 * CHUNK + 1000, 3 * CHUNK, CHUNK + 7):  # whole CHUNKs sent on, tails staged
            buf = bytearray(os.urandom(n))
            w.write(buf if n % 2 else memoryview(buf))
            want += bytes(buf)
            buf[:] = bytes(n)  # the caller reuses its buffer
    writer.add_done(sink.finish())
    writer.commit()
    info = engine.resolve("ds", writer.timestamp)
    with engine.artifacts(info, "src").open("big") as f:
        assert f.read() == want
