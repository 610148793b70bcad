import os
import stat
from pathlib import Path

import pytest

from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.errors import StorageError
from data_manager.testing import check_storage_contract
from data_manager.types import Settings


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
