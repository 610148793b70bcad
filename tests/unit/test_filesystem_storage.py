import os
import stat
from pathlib import Path

import pytest

from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.errors import NotFoundError, StorageError
from data_manager.testing import check_storage_contract
from data_manager.types import FileAttributes, Settings


def storage(root: Path) -> FilesystemStorage:
    return FilesystemStorage("t", Settings({"root": str(root)}))


def test_contract(tmp_path: Path) -> None:
    check_storage_contract(storage(tmp_path / "root"))


def test_crash_leftovers_are_invisible(tmp_path: Path) -> None:
    s = storage(tmp_path)
    w = s.open_write("d/obj")
    w.write(b"partial")  # the process dies here: no commit, no abort
    assert [e.name for e in s.list("d")] == []
    assert not s.exists("d/obj")


def test_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="bad key"):
        storage(tmp_path).open_write("../outside")


def test_check_reports_unusable_roots(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(StorageError, match="not a directory"):
        storage(f).check()
    storage(tmp_path / "new" / "root").check()  # creatable is fine


def test_commit_fsyncs_the_object_then_renames_then_fsyncs_the_directory(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash at any point leaves the old object or the whole new one, never a renamed, half-written file."""
    s = storage(tmp_path)
    final = tmp_path / "d" / "obj"
    calls: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            calls.append(("fsync dir", str(st.st_ino)))
        else:
            calls.append(("fsync file", str(st.st_ino), str(st.st_size)))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str], **kw: object) -> None:
        calls.append(("replace", str(os.stat(src).st_ino), os.fspath(dst)))
        real_replace(src, dst, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    w = s.open_write("d/obj")
    w.write(b"x" * 5000)
    w.write(b"y" * 3000)
    assert calls == []
    w.commit()
    monkeypatch.undo()
    obj, parent = str(final.stat().st_ino), str(final.parent.stat().st_ino)
    assert calls == [("fsync file", obj, "8000"), ("replace", obj, str(final)), ("fsync dir", parent)]
    assert final.read_bytes() == b"x" * 5000 + b"y" * 3000


def put(s: FilesystemStorage, key: str, data: bytes = b"x") -> None:
    with s.open_write(key) as w:
        w.write(data)


def test_listing_shows_objects_and_directories_but_no_unfinished_write(tmp_path: Path) -> None:
    s = storage(tmp_path / "root")
    put(s, "d/obj", b"12345")
    put(s, "d/sub/deeper")
    (tmp_path / "root" / "d" / ".locks").mkdir()
    unfinished = s.open_write("d/half")
    unfinished.write(b"partial")
    entries = {e.name: e for e in s.list("d")}
    assert set(entries) == {"obj", "sub", ".locks"}
    assert (entries["obj"].is_dir, entries["obj"].size) == (False, 5)
    assert (entries["sub"].is_dir, entries["sub"].size) == (True, None)
    mtime = (tmp_path / "root" / "d" / "obj").stat().st_mtime
    assert entries["obj"].modified is not None and abs(entries["obj"].modified.timestamp() - mtime) < 1e-5
    assert entries["obj"].modified.utcoffset() is not None and entries["obj"].modified.utcoffset().total_seconds() == 0
    assert list(s.list("missing")) == [] and list(s.list("d/obj")) == []  # no such directory, or a file
    assert s.exists("d/obj") and not s.exists("d/sub") and not s.exists("d/half") and not s.exists("nope")
    assert s.location() == str((tmp_path / "root").resolve())
    unfinished.abort()
    assert [p.name for p in (tmp_path / "root" / "d").iterdir() if p.name.endswith(".part")] == []


def test_ranged_reads(tmp_path: Path) -> None:
    s = storage(tmp_path)
    put(s, "o", b"0123456789")
    with s.open_read("o", 3, 4) as f:
        assert f.read(2) == b"34" and f.read() == b"56" and f.read(5) == b""
    with s.open_read("o", 8, 100) as f:
        assert f.read(-1) == b"89"
    with s.open_read("o", 0, 0) as f:
        assert f.read() == b""
    with s.open_read("o", 2, 4) as f:
        assert f.read(0) == b"" and f.read(3) == b"234" and f.read(1) == b"5" and f.read(1) == b""
    with s.open_read("o", 7) as f:
        assert f.read() == b"789"
    with pytest.raises(NotFoundError, match=f"^{tmp_path / 'missing'}: not found$"):
        s.open_read("missing")
    with pytest.raises(StorageError, match="cannot read"):
        s.open_read("")  # the root: a directory


def test_keys_are_relative_paths(tmp_path: Path) -> None:
    s = storage(tmp_path)
    put(s, "/a//b/", b"1")
    assert (tmp_path / "a" / "b").read_bytes() == b"1"
    for bad in ("a/../b", "./a", "a/."):
        with pytest.raises(StorageError, match="bad key"):
            s.open_read(bad)


def test_delete_drops_emptied_directories_up_to_the_root(tmp_path: Path) -> None:
    s = storage(tmp_path / "root")
    put(s, "d/t/s/a")
    put(s, "d/t/s/b")
    put(s, "d/other")
    s.delete("d/t/s/a")
    assert (tmp_path / "root" / "d" / "t" / "s").is_dir()  # b is still there
    s.delete("d/t/s/b")
    assert not (tmp_path / "root" / "d" / "t").exists() and (tmp_path / "root" / "d" / "other").exists()
    s.delete("d/other")
    assert (tmp_path / "root").is_dir() and list((tmp_path / "root").iterdir()) == []
    s.delete("d/other")  # missing: fine


def test_delete_tree_removes_unfinished_writes_and_never_the_root(tmp_path: Path) -> None:
    s = storage(tmp_path / "root")
    put(s, "d/ts/src/obj")
    put(s, "d/keep")
    s.open_write("d/ts/src/half").write(b"partial")  # a killed writer's .part file
    s.delete_tree("d/ts")
    assert not (tmp_path / "root" / "d" / "ts").exists() and (tmp_path / "root" / "d" / "keep").exists()
    s.delete_tree("d/keep")  # an object, not a directory
    assert not (tmp_path / "root" / "d").exists()  # and the emptied parent went too
    s.delete_tree("d/missing")
    for whole in ("", "/", "."):
        with pytest.raises(StorageError, match="refusing to delete the whole storage|bad key"):
            s.delete_tree(whole)
    assert (tmp_path / "root").is_dir()


def test_a_writer_is_single_use(tmp_path: Path) -> None:
    w = storage(tmp_path).open_write("o")
    w.write(b"1")
    w.commit()
    with pytest.raises(AssertionError):
        w.write(b"2")
    with pytest.raises(AssertionError):
        w.commit()
    w.abort()  # after a commit: nothing to undo, the object stays
    assert (tmp_path / "o").read_bytes() == b"1"


def test_bytes_lost_before_the_commit_fail_it(tmp_path: Path) -> None:
    s = storage(tmp_path)
    w = s.open_write("o")
    w.write(b"x" * 1000)
    [part] = tmp_path.glob(".o.*.part")
    os.truncate(part, 10)  # the filesystem dropped bytes
    with pytest.raises(StorageError, match=f"^cannot commit {tmp_path / 'o'}: 10 bytes on disk, 1000 written$"):
        w.commit()
    assert list(tmp_path.iterdir()) == []


def test_large_writes_are_flushed_in_the_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from data_manager.builtin import filesystem

    flushed: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        flushed.append(os.fstat(fd).st_size)
        real(fd)

    monkeypatch.setattr(filesystem, "_FLUSH_EVERY", 1000)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    w = storage(tmp_path).open_write("o")
    w.write(b"x" * 999)
    assert flushed == []
    w.write(b"x")
    w.commit()  # waits for the flush it started
    assert flushed and flushed[0] >= 1000
    assert (tmp_path / "o").stat().st_size == 1000


def test_a_directory_removed_under_a_new_writer_is_made_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = os.open, []

    def racing_open(path: object, *args: object, **kw: object) -> int:
        if str(path).endswith(".part"):
            calls.append(path)
            if len(calls) < limit:
                raise FileNotFoundError(2, "No such file or directory")  # a concurrent delete() won
        return real(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", racing_open)
    limit = 3
    put(storage(tmp_path), "d/o", b"1")
    assert len(calls) == 3 and (tmp_path / "d" / "o").read_bytes() == b"1"
    calls.clear()
    limit = 4
    with pytest.raises(StorageError, match=f"^cannot write {tmp_path / 'd' / 'p'}: No such file or directory$"):
        storage(tmp_path).open_write("d/p").write(b"2")  # the first write creates the file
    assert len(calls) == 3


def test_sweep_unfinished_takes_only_old_part_files_of_our_writes(tmp_path: Path) -> None:
    """Only ``.NAME.XXXX.part`` counts as a killed write, and only once older than ``older_than``: a
    dot-file or a ``*.part`` object of someone else's naming, or a write still running, is left alone."""
    storage = FilesystemStorage("t", Settings({"root": str(tmp_path)}))
    d = tmp_path / "d"
    d.mkdir()
    old = os.path.getmtime(d) - 3600
    for name in (".vol.tar.1a2b.part", ".hidden", "data.part", "plain"):
        (d / name).write_bytes(b"x")
        os.utime(d / name, (old, old))
    (d / ".running.3c4d.part").write_bytes(b"x")  # a write of this very minute
    assert storage.sweep_unfinished("d", 60, remove=False) == ["d/.vol.tar.1a2b.part"]
    assert storage.sweep_unfinished("d", 60, remove=True) == ["d/.vol.tar.1a2b.part"]
    assert sorted(p.name for p in d.iterdir()) == [".hidden", ".running.3c4d.part", "data.part", "plain"]


def test_a_deferred_write_is_whole_at_commit_and_durable_at_persist(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A mirror's files: no fsync per object; one syncfs per filesystem when the engine persists."""
    from data_manager.builtin import filesystem

    s = storage(tmp_path / "root")
    fsyncs: list[int] = []
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd))
    monkeypatch.setattr(filesystem, "sync_filesystem", lambda fd: synced.append(os.fstat(fd).st_dev))
    for key in ("a/one", "a/two", "b/three"):
        with s.open_write_deferred(key) as w:
            w.write(key.encode() * 1000)
    assert fsyncs == [] and synced == []
    assert (tmp_path / "root" / "b" / "three").read_bytes() == b"b/three" * 1000  # whole and visible at commit
    s.persist()
    assert synced == [(tmp_path / "root").stat().st_dev]  # one filesystem: one call
    s.persist()
    assert len(synced) == 1  # nothing committed since

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    put(s, "c/plain")  # an ordinary write is synced at once, and is not a persist's business
    with s.open_write_deferred("c/four") as w:
        w.write(b"4")
    monkeypatch.setattr(filesystem, "sync_filesystem", broken)
    with pytest.raises(StorageError, match="cannot sync .*Input/output error"):
        s.persist()
    monkeypatch.setattr(filesystem, "sync_filesystem", lambda fd: synced.append(os.fstat(fd).st_dev))
    s.persist()  # not durable yet: the next persist tries again
    assert len(synced) == 2


def test_the_file_is_made_at_the_first_write_and_an_abort_after_commit_keeps_the_object(tmp_path: Path) -> None:
    s = storage(tmp_path)
    w = s.open_write("d/never")
    assert not (tmp_path / "d").exists()  # nothing made yet: the writing thread makes it
    w.abort()
    assert not (tmp_path / "d").exists()
    empty = s.open_write("d/empty")
    empty.commit()
    empty.abort()
    assert (tmp_path / "d" / "empty").read_bytes() == b""
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["empty"]


def test_a_deferred_write_with_file_attributes_gets_the_files_mtime_never_its_mode(tmp_path: Path) -> None:
    s = storage(tmp_path / "root")
    with s.open_write_deferred("m/a.txt", FileAttributes(1_600_000_000_123_456_789, 0o4755)) as w:
        w.write(b"data")
    with s.open_write_deferred("m/empty", FileAttributes(1_500_000_000_000_000_001, 0o644)):
        pass
    s.persist()
    st = (tmp_path / "root" / "m" / "a.txt").stat()
    assert st.st_mtime_ns == 1_600_000_000_123_456_789 and stat.S_IMODE(st.st_mode) == 0o600
    assert (tmp_path / "root" / "m" / "empty").stat().st_mtime_ns == 1_500_000_000_000_000_001


def test_an_mtime_the_filesystem_cannot_hold_never_fails_the_write(tmp_path: Path) -> None:
    s = storage(tmp_path / "root")
    for i, mtime_ns in enumerate((2**100, -(2**100))):  # beyond what utime takes (OverflowError)
        with s.open_write_deferred(f"m/{i}", FileAttributes(mtime_ns, 0o644)) as w:
            w.write(b"kept")
        assert (tmp_path / "root" / "m" / str(i)).read_bytes() == b"kept"
