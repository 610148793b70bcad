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
