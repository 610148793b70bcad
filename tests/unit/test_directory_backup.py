"""What a directory backup records: the index line of every entry and the source's info."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
from blake3 import blake3

from data_manager.api import DataManager
from tests.helpers import make_tree


def backup(tmp_path: Path, src: Path) -> tuple[Path, dict]:
    dm = DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "datasets": {"d": {"sources": [{"name": "raw", "type": "directory", "path": str(src)}]}},
    })
    ts = dm.backup("d").timestamp
    base = tmp_path / "backups" / "d" / ts
    manifest = json.loads((base / "backup.json").read_text())
    return base / "raw", manifest["sources"][0]


def test_the_index_and_info_describe_every_entry(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = make_tree(tmp_path / "src")
    os.mkfifo(src / "pipe")
    os.chmod(src, 0o751)
    os.utime(src, ns=(1_650_000_000_000_000_001, 1_650_000_000_000_000_001))
    with caplog.at_level(logging.WARNING, logger="data_manager.builtin.directory"):
        base, record = backup(tmp_path, src)
    assert caplog.messages == ["source raw: skipped 1 special files (sockets, fifos, devices)"]
    info = record["info"]
    stored_volumes = sorted(a["name"] for a in record["artifacts"] if a["name"].startswith("vol-"))
    regular = [p for p in src.rglob("*") if p.is_file() and not p.is_symlink() and stat.S_ISREG(p.lstat().st_mode)]
    assert info == {
        "index": "files.jsonl", "root_mode": 0o751, "root_mtime_ns": 1_650_000_000_000_000_001,
        "volumes": stored_volumes, "files": len(regular), "directories": 3, "symlinks": 2,
        "bytes": sum(p.stat().st_size for p in regular), "skipped": ["pipe"], "changed_during_backup": [],
    }
    index = {e["path"]: e for e in map(json.loads, (base / "files.jsonl").read_text().splitlines())}
    assert "pipe" not in index and len(index) == len(regular) + 3 + 2
    hello = index["hello.txt"]
    st = (src / "hello.txt").stat()
    assert hello == {"path": "hello.txt", "mode": 0o640, "mtime_ns": st.st_mtime_ns, "type": "file", "size": 6,
                     "blake3": blake3(b"hello\n").hexdigest(), "volume": hello["volume"], "offset": hello["offset"]}
    assert index["link"] == {"path": "link", "mode": 0o777, "mtime_ns": (src / "link").lstat().st_mtime_ns,
                             "type": "symlink", "target": "hello.txt", "volume": index["link"]["volume"]}
    assert index["sub/deeper"]["type"] == "dir" and index["sub/deeper"]["mode"] == stat.S_IMODE((src / "sub/deeper").stat().st_mode)
    assert list(index) == sorted(index, key=lambda p: p.split("/"))  # parents before children, in name order
    assert {e["volume"] for e in index.values()} == set(info["volumes"])


def test_an_unreadable_file_fails_the_backup_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from data_manager.errors import SourceError

    src = tmp_path / "src"
    src.mkdir()
    (src / "secret").write_text("x")
    real_open = os.open

    def deny(path: object, *args: object, **kw: object) -> object:
        # The source opens files relative to their directory's fd: the leaf name is what it passes.
        if str(path) in ("secret", str(src / "secret")):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(SourceError, match=f"^source 'raw': cannot read {src / 'secret'}: Permission denied$"):
        backup(tmp_path, src)


def test_an_unreadable_root_fails_the_backup_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from data_manager.errors import SourceError

    src = tmp_path / "src"
    src.mkdir()
    real_open = os.open

    def deny(path: object, *args: object, **kw: object) -> object:
        if str(path) == str(src):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(SourceError, match=f"^source 'raw': cannot read {src}: Permission denied$"):
        backup(tmp_path, src)


def test_files_that_grow_while_read_are_recorded_and_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A small file read whole that has one byte more than its stat said: recorded (as it was at the stat)
    in ``changed_during_backup`` and named in one warning."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.txt", "grows.txt", "z.txt"):
        (src / name).write_text("data\n")
    real_read = os.read

    def read(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        return data + b"+" if os.readlink(f"/proc/self/fd/{fd}").endswith("grows.txt") else data

    monkeypatch.setattr(os, "read", read)
    with caplog.at_level(logging.WARNING, logger="data_manager.builtin.directory"):
        base, record = backup(tmp_path, src)
    assert record["info"]["changed_during_backup"] == ["grows.txt"]
    assert caplog.messages == ["source raw: 1 files changed while being read: ['grows.txt']"]


def test_a_source_path_that_is_not_a_readable_directory_is_one_line(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from data_manager.errors import SourceError

    (tmp_path / "file").write_text("x")
    with pytest.raises(SourceError, match=f"^source 'raw': {tmp_path / 'file'} is not a directory$"):
        backup(tmp_path, tmp_path / "file")
    (tmp_path / "src").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: str(path) != str(tmp_path / "src")
                        and real_access(path, mode, **kw))  # as a user who may not read it
    with pytest.raises(SourceError, match=f"^source 'raw': {tmp_path / 'src'} is not readable$"):
        backup(tmp_path, tmp_path / "src")
