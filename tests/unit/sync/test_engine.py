"""The ``sync`` engine against the filesystem storage: the mirror, cycles of changes, pending deletions,
damage, crafted metadata and an interrupted backup resumed."""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zstandard

from data_manager.api import DataManager
from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.errors import ConfigError, CorruptBackupError, DataManagerError
from data_manager.engines.sync.engine import SyncEngine
from data_manager.types import Settings
from tests.helpers import make_sqlite, make_tree, snapshot

BAD = b"latin1-\xe9t\xe9"


def config(tmp_path: Path, src: Path, **engine: Any) -> dict[str, Any]:
    return {
        "storages": {"vault": {"type": "filesystem", "root": str(tmp_path / "vault"), "engine": "sync", **engine}},
        "datasets": {"exp": {"storage": "vault", "sources": [{"name": "raw", "type": "directory", "path": str(src)}]}},
    }


def manager(tmp_path: Path, src: Path, storage: Any = None, **engine: Any) -> DataManager:
    dm = DataManager.from_dict(config(tmp_path, src, **engine))
    if storage is not None:
        dm._storages["vault"] = storage  # before the engine is made: it is built on this storage
    return dm


def mirror(tmp_path: Path) -> Path:
    return tmp_path / "vault" / "exp" / "mirror" / "raw"


def files_of(root: Path) -> dict[str, bytes]:
    """Every regular file below ``root`` (raw names decoded as the filesystem does), with its bytes."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def restored(dm: DataManager, tmp_path: Path, which: str = "latest", name: str = "out") -> Path:
    out = tmp_path / name
    dm.restore("exp", which, overrides={"raw": {"path": str(out)}})
    return out


def same_tree(a: Path, b: Path) -> None:
    x, y = snapshot(a), snapshot(b)
    x.pop(b"."), y.pop(b".")
    assert x == y


def stats(dm: DataManager) -> dict[str, Any]:
    info = dm.repository("vault").resolve("exp", "latest")
    assert info.manifest is not None
    return info.manifest["sync"]["sources"]["raw"]


def test_the_mirror_holds_every_file_by_its_path_and_restores(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    dm = manager(tmp_path, src)
    dm.backup("exp")
    got = files_of(mirror(tmp_path))
    want = files_of(src)
    # Names that are not UTF-8 are stored with \xNN escapes; the rest are the paths themselves.
    assert got.pop("latin1-\\xe9t\\xe9") == want.pop(os.fsdecode(BAD))
    assert got == want
    assert "spaces and ünïcödé.txt" in got
    same_tree(src, restored(dm, tmp_path))
    assert dm.verify("exp").ok
    assert stats(dm)["uploaded"] == len(files_of(src))

    # Nothing changed: nothing uploaded, and the large file was not even read (reuse).
    dm.backup("exp")
    assert stats(dm)["uploaded"] == 0 and stats(dm)["unchanged"] == len(files_of(src))
    same_tree(src, restored(dm, tmp_path, name="out2"))


def test_create_modify_delete_rename_cycles(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    dm = manager(tmp_path, src)
    rng = __import__("random").Random(7)
    names = [f"d{i % 3}/f {i}.bin" for i in range(12)]
    for n in names:
        (src / n).parent.mkdir(parents=True, exist_ok=True)
        (src / n).write_bytes(os.urandom(rng.choice([0, 10, 70_000, 1_300_000])))
    dm.backup("exp")
    for cycle in range(4):
        present = sorted(p for p in files_of(src))
        changed = present[cycle]
        (src / changed).write_bytes(os.urandom(5000 + cycle))  # modified
        (src / f"new {cycle}.txt").write_text(f"cycle {cycle}\n" * 100)  # created
        os.remove(src / present[-1 - cycle])  # deleted
        old = present[len(present) // 2]
        os.rename(src / old, src / f"renamed {cycle}")  # renamed
        time.sleep(0.01)
        dm.backup("exp")
        s = stats(dm)
        assert s["uploaded"] == 3, (cycle, s)  # the modified, the created and the renamed one
        same_tree(src, restored(dm, tmp_path, name=f"out{cycle}"))
        pend = dm.repository("vault").pending("exp")["raw"]
        assert present[-1 - cycle] in pend and old in pend
        # What was deleted stays in the mirror (pending deletion) with its old content.
        assert (mirror(tmp_path) / old).exists()
        for path, data in files_of(src).items():
            assert (mirror(tmp_path) / path).read_bytes() == data
    diff = dm.repository("vault").diff("exp", dm.repository("vault").backups("exp")[-2].timestamp)
    assert diff["raw"]["added"] == ["new 3.txt", "renamed 3"]


def test_a_file_replaced_by_a_directory_of_that_name_and_back(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a file")
    (src / "b").mkdir()
    (src / "b" / "inner").write_bytes(os.urandom(100_000))
    dm = manager(tmp_path, src)
    dm.backup("exp")
    os.remove(src / "a")
    (src / "a").mkdir()
    (src / "a" / "child").write_bytes(b"now a directory")
    (src / "b" / "inner").unlink()
    (src / "b").rmdir()
    (src / "b").write_bytes(b"now a file")
    dm.backup("exp")
    assert (mirror(tmp_path) / "a" / "child").read_bytes() == b"now a directory"
    assert (mirror(tmp_path) / "b").read_bytes() == b"now a file"
    assert dm.repository("vault").pending("exp")["raw"] == {}  # made way at once: nothing left to delete
    same_tree(src, restored(dm, tmp_path))
    assert dm.verify("exp").ok


def test_deleted_files_are_pending_until_delete_after_then_removed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep").write_text("keep")
    (src / "gone").write_text("gone")
    dm = manager(tmp_path, src, delete_after="2s")
    dm.backup("exp")
    first = dm.repository("vault").backups("exp")[-1].timestamp
    os.remove(src / "gone")
    dm.backup("exp")
    assert list(dm.repository("vault").pending("exp")["raw"]) == ["gone"]
    assert (mirror(tmp_path) / "gone").exists()
    same_tree(src, restored(dm, tmp_path, name="now"))
    assert (restored(dm, tmp_path, first, name="then") / "gone").read_text() == "gone"  # still restorable
    # delete_after is measured between TIMESTAMPs, whole seconds, and a backup in the same second as the one
    # before it takes the next second: 2 s of it can pass in 2.2 s of real time only on a good day
    time.sleep(3.2)
    dm.backup("exp")
    assert dm.repository("vault").pending("exp")["raw"] == {}
    assert stats(dm)["removed"] == 1
    assert not (mirror(tmp_path) / "gone").exists()
    with pytest.raises(CorruptBackupError, match="gone: missing"):
        dm.verify("exp", first)


def test_delete_after_never_keeps_them(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "gone").write_text("gone")
    dm = manager(tmp_path, src, delete_after="never")
    dm.backup("exp")
    os.remove(src / "gone")
    dm.backup("exp")
    time.sleep(1.1)
    dm.backup("exp")
    assert list(dm.repository("vault").pending("exp")["raw"]) == ["gone"]
    assert (mirror(tmp_path) / "gone").exists()


@pytest.mark.parametrize("value, message", [
    ("soon", "key 'delete_after': must be a duration"),
    (-3, "key 'delete_after': must be a duration"),
    ("yes", "key 'checksum': must be true or false"),
])
def test_bad_settings_are_config_errors(tmp_path: Path, value: Any, message: str) -> None:
    key = "checksum" if message.startswith("key 'checksum'") else "delete_after"
    with pytest.raises(ConfigError, match=message):
        DataManager.from_dict(config(tmp_path, tmp_path, **{key: value}))


def test_checksum_finds_a_change_size_and_mtime_miss(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.bin"
    big.write_bytes(b"a" * 200_000)
    st = big.stat()
    for checksum, uploaded in ((False, 0), (True, 1)):
        dm = manager(tmp_path / str(checksum), src, checksum=checksum)
        big.write_bytes(b"a" * 200_000)
        os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
        dm.backup("exp")
        big.write_bytes(b"b" * 200_000)  # same size, same mtime: only a digest sees it
        os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
        dm.backup("exp")
        assert stats(dm)["uploaded"] == uploaded


def test_verify_and_restore_find_a_file_changed_in_the_storage(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    dm = manager(tmp_path, src)
    dm.backup("exp")
    target = restored(dm, tmp_path)
    before = snapshot(target)
    (mirror(tmp_path) / "hello.txt").write_text("HELLO\n")  # someone else edits the bucket
    with pytest.raises(CorruptBackupError, match="hello.txt: differs from what this backup recorded") as exc:
        dm.verify("exp")
    assert exc.value.exit_code == 4
    with pytest.raises(CorruptBackupError):
        dm.restore("exp", overrides={"raw": {"path": str(target)}})
    assert snapshot(target) == before  # the failed restore left the target as it was
    report = dm.repository("vault").check_repository(read_fraction=1.0)
    assert not report.ok and "hello.txt" in report.errors[0]


def test_other_sources_are_refused_with_one_line(tmp_path: Path) -> None:
    db = make_sqlite(tmp_path / "n.db")
    cfg = config(tmp_path, tmp_path)
    cfg["datasets"]["exp"]["sources"] = [{"name": "notes", "type": "sqlite", "path": str(db)}]
    dm = DataManager.from_dict(cfg)
    with pytest.raises(DataManagerError, match=r"^source 'notes' is a sqlite source: storage 'vault' uses the "
                                               r"sync engine, which mirrors directory sources only$"):
        dm.backup("exp")


# --------------------------------------------------------------------------- an interrupted backup


class Crashing(FilesystemStorage):
    """Raises instead of the (N+1)th commit of an object, as a process killed there would leave it."""

    def __init__(self, root: Path, allowed: int) -> None:
        super().__init__("vault", Settings({"root": str(root)}))
        self.allowed = allowed
        self.commits = 0
        self.keys: list[str] = []
        self._lock = threading.Lock()

    def open_write(self, key: str) -> Any:
        return self._wrapped(super().open_write(key), key)

    def open_write_deferred(self, key: str, attrs: Any = None) -> Any:  # the mirror's objects
        return self._wrapped(super().open_write_deferred(key, attrs), key)

    def _wrapped(self, inner: Any, key: str) -> Any:
        outer = self

        class W:
            def write(self, data: Any) -> None:
                inner.write(data)

            def commit(self) -> None:
                with outer._lock:
                    outer.commits += 1
                    if outer.commits > outer.allowed:
                        inner.abort()
                        raise OSError("killed")
                    outer.keys.append(key)
                inner.commit()

            def abort(self) -> None:
                inner.abort()

            def __enter__(self) -> Any:
                return self

            def __exit__(self, et: Any, *rest: Any) -> None:
                self.commit() if et is None else self.abort()

        return W()


def test_an_interrupted_sync_is_resumed_without_uploading_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from data_manager.engines.sync import engine as engine_module

    monkeypatch.setattr(engine_module, "JOURNAL_EVERY", 5)
    src = tmp_path / "src"
    for i in range(40):
        (src / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 4}" / f"f{i}").write_bytes(os.urandom(2000 + i))
    dm = manager(tmp_path, src, storage=Crashing(tmp_path / "vault", 25))
    with pytest.raises(Exception):
        dm.backup("exp")
    killed = dm.repository("vault").backups("exp")[-1]
    assert killed.complete is False
    journals = (tmp_path / "vault" / "exp" / "backups" / killed.timestamp / "raw").glob("journal-*.jsonl")
    journaled = {json.loads(line)["path"] for j in journals for line in j.read_text().splitlines()}
    assert len(journaled) >= 5
    dm2 = manager(tmp_path, src, storage=Crashing(tmp_path / "vault", 10**9))
    dm2.backup("exp", resume=True)
    assert stats(dm2)["uploaded"] == 40 - len(journaled)  # what the killed run's journals list is not sent again
    mirrored = [k for k in dm2.storage("vault").keys if "/mirror/" in k]
    assert len(mirrored) == len(set(mirrored))
    same_tree(src, restored(dm2, tmp_path))
    assert dm2.verify("exp").ok


@pytest.mark.parametrize("allowed", [0, 3, 11, 30, 46, 49])
def test_a_backup_killed_anywhere_leaves_the_last_complete_one_restorable(tmp_path: Path, allowed: int) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(1000))
    manager(tmp_path, src).backup("exp")
    for i in range(0, 20, 2):
        (src / f"f{i}").write_bytes(os.urandom(1001))
    os.remove(src / "f1")
    dm = manager(tmp_path, src, storage=Crashing(tmp_path / "vault", allowed))
    try:
        dm.backup("exp")
    except Exception:
        pass
    again = manager(tmp_path, src)
    again.backup("exp", resume=not again.repository("vault").backups("exp")[-1].complete)
    same_tree(src, restored(again, tmp_path))
    assert again.verify("exp").ok


# --------------------------------------------------------------------------- crafted metadata


def _rewrite_skeleton(path: Path, change: Any) -> None:
    data = zstandard.ZstdDecompressor().stream_reader(path.read_bytes()).read()
    out, pos = bytearray(), 0
    while data[pos:pos + 1] != b"E":
        kind = data[pos:pos + 1]
        (n,) = struct.unpack("<I", data[pos + 1:pos + 5])
        body = data[pos + 5:pos + 5 + n]
        pos += 5 + n
        if kind == b"F":
            body = json.dumps(change(json.loads(body))).encode()
        out += kind + struct.pack("<I", len(body)) + body
    out += b"E"
    path.write_bytes(zstandard.ZstdCompressor().compress(bytes(out)))


def test_crafted_names_are_refused_and_nothing_is_written_outside_the_target(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "x").write_text("x")
    outside = tmp_path / "outside"
    outside.write_text("untouched")
    dm = manager(tmp_path, src)
    dm.backup("exp")
    ts = dm.repository("vault").backups("exp")[-1].timestamp
    base = tmp_path / "vault" / "exp" / "backups" / ts / "raw"
    skeleton = next((base / "artifacts").glob("*.tarsplit"))
    _rewrite_skeleton(skeleton, lambda doc: {**doc, "path": "../../../../outside"})
    with pytest.raises(CorruptBackupError, match="unsafe path '../../../../outside'"):
        dm.restore("exp", overrides={"raw": {"path": str(tmp_path / "target")}})
    assert outside.read_text() == "untouched" and not (tmp_path / "target").exists()

    # A pending list naming an object outside the mirror: refused, never deleted.
    (src / "x").unlink()
    lines = [json.dumps({"path": "../../backups/" + ts + "/backup.json", "size": 1, "mtime_ns": 0, "mode": 0o644,
                         "blake3": "0" * 64, "since": ts})]
    (base / "pending.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(CorruptBackupError, match="unsafe path"):
        dm.backup("exp")
    assert (base.parent / "backup.json").exists()


def test_a_crafted_file_list_cannot_reach_outside_the_mirror(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "x").write_text("x")
    dm = manager(tmp_path, src)
    dm.backup("exp")
    ts = dm.repository("vault").backups("exp")[-1].timestamp
    files = tmp_path / "vault" / "exp" / "backups" / ts / "raw" / "mirror.jsonl"
    doc = json.loads(files.read_text())
    files.write_text(json.dumps({**doc, "path": "/etc/passwd"}) + "\n")
    with pytest.raises(CorruptBackupError, match="unsafe path '/etc/passwd'"):
        dm.repository("vault").files("exp")
    with pytest.raises(CorruptBackupError, match="unsafe path"):
        dm.backup("exp")


def test_engine_settings(tmp_path: Path) -> None:
    storage = FilesystemStorage("vault", Settings({"root": str(tmp_path)}))
    assert SyncEngine(storage).delete_after == 7 * 86400
    assert SyncEngine(storage, Settings({"delete_after": "never"})).delete_after is None
    assert SyncEngine(storage, Settings({"delete_after": "36h", "checksum": True})).checksum is True


def test_an_object_deleted_or_resized_in_the_storage_is_uploaded_again(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    dm = manager(tmp_path, src)
    dm.backup("exp")
    (mirror(tmp_path) / "sub" / "deeper" / "random.bin").unlink()  # someone deleted it
    (mirror(tmp_path) / "hello.txt").write_text("longer than it was\n")  # someone replaced it
    dm.backup("exp")
    assert stats(dm)["uploaded"] == 2
    assert (mirror(tmp_path) / "hello.txt").read_bytes() == (src / "hello.txt").read_bytes()
    assert dm.verify("exp").ok
    same_tree(src, restored(dm, tmp_path))


def test_copied_to_a_worm_storage_and_restored_from_there(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    cfg = config(tmp_path, src)
    cfg["storages"]["plain"] = {"type": "filesystem", "root": str(tmp_path / "plain")}
    dm = DataManager.from_dict(cfg)
    dm.backup("exp")
    dm.copy("exp", to="plain")
    cfg["datasets"]["exp"]["storage"] = "plain"
    cfg["storages"].pop("vault")
    worm = DataManager.from_dict(cfg)
    assert worm.verify("exp").ok
    out = tmp_path / "from-worm"
    worm.restore("exp", overrides={"raw": {"path": str(out)}})
    same_tree(src, out)


def test_a_stopped_backup_records_every_upload_for_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped (Ctrl-C, a closing window): the journal is written on the way out, so resume uploads only the
    rest."""
    from data_manager.engines.sync import engine as engine_module

    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"f{i:02d}").write_bytes(os.urandom(3000))
    real = engine_module.SyncSourceSink.file_done
    seen = {"n": 0}

    def stop_at_ten(self: Any, *args: Any, **kw: Any) -> None:
        real(self, *args, **kw)
        seen["n"] += 1
        if seen["n"] == 10:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine_module.SyncSourceSink, "file_done", stop_at_ten)
    dm = manager(tmp_path, src)
    with pytest.raises(KeyboardInterrupt):
        dm.backup("exp")
    monkeypatch.setattr(engine_module.SyncSourceSink, "file_done", real)
    dm2 = manager(tmp_path, src)
    dm2.backup("exp", resume=True)
    assert stats(dm2)["uploaded"] == 2
    same_tree(src, restored(dm2, tmp_path))


def test_forget_removes_old_records_never_the_newest_nor_the_mirror(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    cfg = config(tmp_path, src)
    cfg["datasets"]["exp"]["retention"] = {"keep_last": 1}
    dm = DataManager.from_dict(cfg)
    for i in range(3):
        (src / "a").write_text("a" * (i + 1))
        dm.backup("exp")
    repo = dm.repository("vault")
    stamps = [b.timestamp for b in repo.backups("exp")]
    dm.forget("exp")
    assert [b.timestamp for b in repo.backups("exp")] == stamps[-1:]
    assert (mirror(tmp_path) / "a").read_text() == "aaa"
    with pytest.raises(DataManagerError, match="is the newest"):
        repo.forget("exp", stamps[-1:])
    (src / "b").write_text("b")
    dm.backup("exp")
    same_tree(src, restored(dm, tmp_path))


class FailingOne(FilesystemStorage):
    """Fails the commit of one mirror object, once: every other write succeeds."""

    def __init__(self, root: Path, victim: str) -> None:
        super().__init__("vault", Settings({"root": str(root)}))
        self.victim = victim

    def open_write_deferred(self, key: str, attrs: Any = None) -> Any:  # the mirror's objects
        inner = super().open_write_deferred(key, attrs)
        if not key.endswith("/" + self.victim):
            return inner
        outer = self

        class W:
            def write(self, data: Any) -> None:
                inner.write(data)

            def commit(self) -> None:
                time.sleep(0.05)  # the source is well ahead when this fails
                outer.victim = ""
                inner.abort()
                raise OSError("disk on fire")

            def abort(self) -> None:
                inner.abort()

        return W()


def test_a_failed_upload_never_makes_a_complete_backup(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"f{i:02d}").write_bytes(os.urandom(500))
    dm = manager(tmp_path, src, storage=FailingOne(tmp_path / "vault", "f29"))
    with pytest.raises(Exception, match="disk on fire"):
        dm.backup("exp")
    assert not dm.repository("vault").backups("exp")[-1].complete
    again = manager(tmp_path, src)
    again.backup("exp", resume=True)
    assert stats(again)["uploaded"] >= 1  # f29 at least
    same_tree(src, restored(again, tmp_path))
    assert again.verify("exp").ok


def test_checksum_streams_large_files_and_keeps_the_object_when_unchanged(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.bin"
    big.write_bytes(os.urandom(3 << 20))  # above the 1 MiB held in memory: streamed to the storage
    dm = manager(tmp_path, src, checksum=True)
    dm.backup("exp")
    stored = mirror(tmp_path) / "big.bin"
    inode = stored.stat().st_ino
    os.utime(big, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))  # touched: same bytes
    dm.backup("exp")
    assert stats(dm)["uploaded"] == 0 and stored.stat().st_ino == inode  # the upload was abandoned
    data = bytearray(big.read_bytes())
    data[100] ^= 1
    big.write_bytes(bytes(data))
    os.utime(big, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))
    dm.backup("exp")
    assert stats(dm)["uploaded"] == 1 and stored.read_bytes() == bytes(data)
    same_tree(src, restored(dm, tmp_path))


def test_two_names_for_one_object_fail_the_backup_in_one_line(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a-\\xff").write_text("a literal backslash name")
    with open(os.fsencode(str(src)) + b"/a-\xff", "wb") as f:
        f.write(b"a latin-1 name")
    dm = manager(tmp_path, src)
    with pytest.raises(DataManagerError, match=r"have one mirror name 'a-\\\\xff'"):
        dm.backup("exp")


def test_a_held_backup_is_not_forgotten(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    cfg = config(tmp_path, src)
    cfg["datasets"]["exp"]["retention"] = {"keep_last": 1}
    dm = DataManager.from_dict(cfg)
    for _ in range(3):
        dm.backup("exp")
    stamps = [b.timestamp for b in dm.repository("vault").backups("exp")]
    dm.hold("exp", stamps[0], "audit")
    assert "audit" in dm.holds("exp")[stamps[0]]
    dm.forget("exp")
    assert [b.timestamp for b in dm.repository("vault").backups("exp")] == [stamps[0], stamps[2]]
    with pytest.raises(DataManagerError, match="is held"):
        dm.repository("vault").forget("exp", [stamps[0]])
    dm.unhold("exp", stamps[0])
    dm.forget("exp")
    assert [b.timestamp for b in dm.repository("vault").backups("exp")] == [stamps[2]]


# --------------------------------------------------------------------------- speed: what an unchanged backup costs


class Counting(FilesystemStorage):
    """Counts the object reads, writes and deletes a backup makes."""

    def __init__(self, root: Path) -> None:
        super().__init__("vault", Settings({"root": str(root)}))
        self.calls: dict[str, int] = {"open_write": 0, "open_read": 0, "delete": 0}
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1

    def open_write(self, key: str) -> Any:
        self._count("open_write")
        return super().open_write(key)

    def open_write_deferred(self, key: str, attrs: Any = None) -> Any:
        self._count("open_write")
        return super().open_write_deferred(key, attrs)

    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> Any:
        self._count("open_read")
        return super().open_read(key, offset, length)

    def delete(self, key: str) -> None:
        self._count("delete")
        super().delete(key)


def test_an_unchanged_backup_reads_and_writes_no_object_per_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(300):
        (src / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 10}" / f"f{i}").write_bytes(os.urandom(100 + (i % 7) * (40 << 10)))  # 100 B to 240 KiB
    manager(tmp_path, src).backup("exp")
    counting = Counting(tmp_path / "vault")
    dm = manager(tmp_path, src, storage=counting)
    dm.backup("exp")
    assert stats(dm)["uploaded"] == 0 and stats(dm)["unchanged"] == 300
    # Metadata only (the lock, manifests, skeletons, file lists, records): as many for 300 files as for 3
    # (here 8 writes, 11 reads, 1 delete).
    assert max(counting.calls.values()) <= 20, counting.calls
    same_tree(src, restored(dm, tmp_path))


def test_a_small_file_edited_without_a_new_size_or_mtime_keeps_its_object_unless_checksum(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    f = src / "small.txt"
    f.write_bytes(b"version 1")
    os.utime(f, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))
    dm = manager(tmp_path, src)
    dm.backup("exp")
    f.write_bytes(b"version 2")
    os.utime(f, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))
    dm.backup("exp")  # size + mtime, as rclone: unchanged, neither hashed nor uploaded
    assert stats(dm)["uploaded"] == 0 and (mirror(tmp_path) / "small.txt").read_bytes() == b"version 1"
    assert dm.verify("exp").ok  # the manifest records what the mirror holds
    dm = manager(tmp_path, src, checksum=True)
    dm.backup("exp")
    assert stats(dm)["uploaded"] == 1 and (mirror(tmp_path) / "small.txt").read_bytes() == b"version 2"


def test_large_files_stream_on_the_upload_threads_within_the_byte_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from data_manager.engines.sync import engine as engine_module

    monkeypatch.setattr(engine_module, "IN_FLIGHT", 1 << 20)  # one block in flight: the source waits on uploads
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"big{i:02d}").write_bytes(os.urandom((1 << 20) + 1 + i * 300_000))
        (src / f"small{i:02d}").write_bytes(os.urandom(5000))
    dm = manager(tmp_path, src)
    dm.backup("exp")
    assert stats(dm)["uploaded"] == 24
    assert files_of(mirror(tmp_path)) == files_of(src)
    same_tree(src, restored(dm, tmp_path))
    assert dm.verify("exp").ok


class FailingWrite(FilesystemStorage):
    """The object ``victim`` fails on its second block written: mid-stream, on an upload thread."""

    def __init__(self, root: Path, victim: str) -> None:
        super().__init__("vault", Settings({"root": str(root)}))
        self.victim = victim

    def open_write_deferred(self, key: str, attrs: Any = None) -> Any:  # the mirror's objects
        inner = super().open_write_deferred(key, attrs)
        if not key.endswith("/" + self.victim):
            return inner

        class W:
            blocks = 0

            def write(self, data: Any) -> None:
                self.blocks += 1
                if self.blocks == 2:
                    raise OSError("disk on fire")
                inner.write(data)

            def commit(self) -> None:
                inner.commit()

            def abort(self) -> None:
                inner.abort()

        return W()


def test_a_large_upload_failing_mid_stream_stops_the_backup_without_hanging(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from data_manager.engines.sync import engine as engine_module

    monkeypatch.setattr(engine_module, "IN_FLIGHT", 1 << 20)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"big{i}").write_bytes(os.urandom(3 << 20))
    dm = manager(tmp_path, src, storage=FailingWrite(tmp_path / "vault", "big2"))
    done: list[BaseException] = []

    def run() -> None:
        try:
            dm.backup("exp")
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            done.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the backup hung after a failed upload"
    assert done and "disk on fire" in str(done[0])
    assert not dm.repository("vault").backups("exp")[-1].complete
    assert not (mirror(tmp_path) / "big2").exists()
    again = manager(tmp_path, src)
    again.backup("exp", resume=True)
    same_tree(src, restored(again, tmp_path))
    assert again.verify("exp").ok


class Recording(FilesystemStorage):
    """Records the order of mirror commits (deferred, not durable yet), persists and other writes."""

    def __init__(self, root: Path) -> None:
        super().__init__("vault", Settings({"root": str(root)}))
        self.events: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _note(self, what: str, key: str) -> None:
        with self._lock:
            self.events.append((what, key))

    def open_write(self, key: str) -> Any:
        self._note("write", key)
        return super().open_write(key)

    def open_write_deferred(self, key: str, attrs: Any = None) -> Any:
        inner = super().open_write_deferred(key, attrs)
        outer = self

        class W:
            def write(self, data: Any) -> None:
                inner.write(data)

            def commit(self) -> None:
                inner.commit()
                outer._note("committed", key)

            def abort(self) -> None:
                inner.abort()

        return W()

    def persist(self) -> None:
        super().persist()
        self._note("persist", "")


def test_no_journal_or_file_list_names_a_mirror_object_not_yet_durable(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Mirror objects skip the per-object fsync; the engine persists them before any record says they exist."""
    import data_manager.engines.sync.engine as sync_engine

    monkeypatch.setattr(sync_engine, "JOURNAL_EVERY", 3)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        (src / f"f{i}.txt").write_text(f"file {i}\n" * (i + 1))
    vault = Recording(tmp_path / "vault")
    dm = manager(tmp_path, src, vault)
    dm.backup("exp")
    records = [i for i, (what, key) in enumerate(vault.events)
               if what == "write" and key.rpartition("/")[2].startswith(("journal-", "mirror.jsonl", "backup.json"))]
    assert len(records) >= 3, vault.events  # journals every 3 files, the file list, the manifest
    committed = [i for i, (what, _) in enumerate(vault.events) if what == "committed"]
    assert len(committed) == 10
    for r in records:
        unsynced = [c for c in committed if c < r and not any(c < p < r for p, (w, _) in enumerate(vault.events)
                                                              if w == "persist")]
        assert not unsynced, (vault.events[r], [vault.events[c] for c in unsynced])
    same_tree(src, restored(dm, tmp_path))


def test_the_source_does_not_sample_its_files_for_a_compression_the_mirror_never_uses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from data_manager.builtin import directory

    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(200_000))  # large enough to be sampled for other engines
    sampled: list[str] = []
    real = directory.incompressible
    monkeypatch.setattr(directory, "incompressible", lambda name, *a, **k: sampled.append(name) or real(name, *a, **k))
    dm = manager(tmp_path, src)
    dm.backup("exp")
    assert sampled == []
    same_tree(src, restored(dm, tmp_path))


def _index(dm: DataManager) -> dict[str, dict[str, Any]]:
    info = dm.list_backups("exp")[0]
    with dm.repository("vault").artifacts(info, "raw").open("files.jsonl") as f:
        return {e["path"]: e for e in map(json.loads, f.read().decode().splitlines()) if e.get("type") == "file"}


def test_a_large_file_is_hashed_once_and_its_line_records_the_engines_digest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine hashes each file for its object (``hashes_files``): the directory source takes that digest
    instead of hashing the same bytes again."""
    import blake3 as blake3_module

    from data_manager.builtin import directory

    src = tmp_path / "src"
    src.mkdir()
    # .zip goes to the volume stored as it is (by name), .bin to the other one: both hand the digest over
    data = {"big.bin": os.urandom(3_000_000), "mid.bin": os.urandom(70_000), "arch.zip": os.urandom(500_000)}
    for name, content in data.items():
        (src / name).write_bytes(content)
    streams: list[object] = []
    real = directory.blake3
    monkeypatch.setattr(directory, "blake3", lambda *a, **k: streams.append(a) if not a else real(*a, **k))
    dm = manager(tmp_path, src)
    dm.backup("exp")
    assert streams == []  # no hasher of the source's own for a large file
    lines = _index(dm)
    for name, content in data.items():
        assert lines[name]["blake3"] == blake3_module.blake3(content).hexdigest()
    same_tree(src, restored(dm, tmp_path))
    assert dm.verify("exp").ok


def test_a_file_that_shrinks_while_read_records_what_the_mirror_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream keeps a shrunk file's size with zeros: its line's digest is the one of those bytes, the
    mirror's object, so verify and restore agree with it."""
    import blake3 as blake3_module

    src = tmp_path / "src"
    src.mkdir()
    content = os.urandom(3_000_000)
    (src / "shrinks.bin").write_bytes(content)
    real_read = os.read
    cut = 1_000_000

    def read(fd: int, n: int) -> bytes:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("shrinks.bin"):
            at = os.lseek(fd, 0, os.SEEK_CUR)
            return real_read(fd, max(0, min(n, cut - at)))
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", read)
    dm = manager(tmp_path, src)
    dm.backup("exp")
    monkeypatch.setattr(os, "read", real_read)
    held = content[:cut] + bytes(len(content) - cut)
    assert (mirror(tmp_path) / "shrinks.bin").read_bytes() == held
    assert _index(dm)["shrinks.bin"]["blake3"] == blake3_module.blake3(held).hexdigest()
    assert dm.verify("exp").ok


def test_mirror_files_carry_each_files_mtime_and_stay_private(tmp_path: Path) -> None:
    """Browsable: ``ls -l``, rsync and rclone see each file's own mtime in the mirror (small files uploaded
    whole and large ones streamed alike); the objects keep the storage's private mode whatever the file's."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    files = {"small.txt": b"x" * 100, "d/large.bin": os.urandom(3_000_000)}
    for i, (name, content) in enumerate(files.items()):
        (src / name).write_bytes(content)
        os.chmod(src / name, 0o755)
        os.utime(src / name, ns=(1_600_000_000_123_456_789 + i, 1_600_000_000_123_456_789 + i))
    dm = manager(tmp_path, src)
    dm.backup("exp")
    for i, name in enumerate(files):
        st = (mirror(tmp_path) / name).stat()
        assert st.st_mtime_ns == 1_600_000_000_123_456_789 + i
        assert st.st_mode & 0o777 == 0o600
    same_tree(src, restored(dm, tmp_path))
