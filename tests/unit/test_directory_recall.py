"""The directory source asks the engine (``recall``) before it opens a file: an unchanged file is not opened
on ``sync`` (small or large) nor, when large, on ``dedup``; any change the engine's key sees is read again;
``checksum = true`` reads everything; a recall gone stale by ``reuse`` time is read after all. Opens of the
source's files are counted by wrapping ``os.open`` for the in-process run."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from data_manager.api import DataManager
from data_manager.volumes import Volumes
from tests.helpers import make_tree, snapshot


def config(tmp_path: Path, src: Path, engine: str, **settings: Any) -> dict[str, Any]:
    storage: dict[str, Any] = {"type": "filesystem", "root": str(tmp_path / "vault"), "engine": engine, **settings}
    if engine == "dedup":
        storage["passphrase"] = "pw"
        storage["cache_dir"] = str(tmp_path / "cache")
    return {"storages": {"vault": storage},
            "datasets": {"exp": {"storage": "vault",
                                 "sources": [{"name": "raw", "type": "directory", "path": str(src)}]}}}


def tree(root: Path) -> Path:
    """make_tree's entries plus small and large files of every kind the source tells apart."""
    make_tree(root)
    (root / "many").mkdir()
    for i in range(40):
        (root / "many" / f"s{i:02d}.bin").write_bytes(os.urandom(100 + 997 * i))  # 100 B .. 39 KiB
    (root / "big.txt").write_text("line of text\n" * 20_000)  # 260 KB, compresses
    (root / "photo.jpg").write_bytes(os.urandom(200_000))  # stored as-is by its suffix
    (root / "noise").write_bytes(os.urandom(1_500_000))  # stored as-is by its sample, over a CHUNK
    return root


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Paths of the source's files (not directories) opened while the fixture is active."""
    got: list[str] = []
    real = os.open

    def spy(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        fd = real(path, flags, mode, dir_fd=dir_fd)
        if not flags & os.O_DIRECTORY:
            got.append(os.readlink(f"/proc/self/fd/{fd}"))
        return fd

    monkeypatch.setattr(os, "open", spy)
    yield got


def source_files(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def opened_in(opened: list[str], src: Path) -> set[str]:
    return {p for p in opened if p.startswith(f"{src}/")}


def restore_same(dm: DataManager, tmp_path: Path, src: Path, name: str) -> None:
    out = tmp_path / name
    dm.restore("exp", "latest", overrides={"raw": {"path": str(out)}})
    a, b = snapshot(src), snapshot(out)
    a.pop(b"."), b.pop(b".")
    assert a == b
    assert dm.verify("exp").ok


def sync_stats(dm: DataManager) -> dict[str, Any]:
    info = dm.repository("vault").resolve("exp", "latest")
    assert info.manifest is not None
    return info.manifest["sync"]["sources"]["raw"]


def test_sync_unchanged_files_are_never_opened(tmp_path: Path, opened: list[str]) -> None:
    src = tree(tmp_path / "src")
    dm = DataManager.from_dict(config(tmp_path, src, "sync"))
    dm.backup("exp")
    assert opened_in(opened, src) == source_files(src)  # the first backup reads everything
    opened.clear()
    dm.backup("exp")
    assert opened_in(opened, src) == set()  # only stat: not one file opened
    assert sync_stats(dm)["uploaded"] == 0
    restore_same(dm, tmp_path, src, "out")


def test_sync_a_touched_or_resized_file_is_read_and_uploaded(tmp_path: Path, opened: list[str]) -> None:
    src = tree(tmp_path / "src")
    dm = DataManager.from_dict(config(tmp_path, src, "sync"))
    dm.backup("exp")
    small, large = src / "many" / "s07.bin", src / "noise"
    for p in (small, large):  # same size, new bytes, a new mtime
        size = p.stat().st_size
        p.write_bytes(os.urandom(size))
        os.utime(p, ns=(time.time_ns(), p.stat().st_mtime_ns + 1_000_000))
    (src / "hello.txt").touch()  # a new mtime only
    grown = src / "big.txt"  # another size, the old mtime put back
    mtime = grown.stat().st_mtime_ns
    with open(grown, "a") as f:
        f.write("one more line\n")
    os.utime(grown, ns=(mtime, mtime))
    opened.clear()
    dm.backup("exp")
    assert opened_in(opened, src) == {str(small), str(large), str(src / "hello.txt"), str(grown)}
    assert sync_stats(dm)["uploaded"] == 3  # hello.txt: read, hashed, the same bytes: not uploaded
    assert (tmp_path / "vault" / "exp" / "mirror" / "raw" / "big.txt").read_bytes() == grown.read_bytes()
    mirror = tmp_path / "vault" / "exp" / "mirror" / "raw"
    assert (mirror / "many" / "s07.bin").read_bytes() == small.read_bytes()
    assert (mirror / "noise").read_bytes() == large.read_bytes()
    restore_same(dm, tmp_path, src, "out")


def test_sync_with_checksum_reads_everything(tmp_path: Path, opened: list[str]) -> None:
    src = tree(tmp_path / "src")
    dm = DataManager.from_dict(config(tmp_path, src, "sync", checksum=True))
    dm.backup("exp")
    opened.clear()
    dm.backup("exp")
    assert opened_in(opened, src) == source_files(src)
    assert sync_stats(dm)["uploaded"] == 0  # read, hashed, found the same
    restore_same(dm, tmp_path, src, "out")


def test_a_recall_gone_stale_is_read_after_all(tmp_path: Path, opened: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine recalls a file but no longer reuses it (its cache changed between the two questions): the
    header is written already, the file is read into that member, and the backup restores byte for byte."""
    src = tree(tmp_path / "src")
    dm = DataManager.from_dict(config(tmp_path, src, "sync"))
    dm.backup("exp")
    monkeypatch.setattr(Volumes, "reuse", lambda self, item, size: None)
    opened.clear()
    dm.backup("exp")
    assert opened_in(opened, src) == {p for p in source_files(src) if os.path.getsize(p)}  # empty: nothing to read
    restore_same(dm, tmp_path, src, "out")
    # the index records each file's digest as read, not the recalled one (restore does not compare them)
    import json

    from blake3 import blake3

    info = dm.repository("vault").resolve("exp", "latest")
    with dm.repository("vault").artifacts(info, "raw").open("files.jsonl") as f:
        files = [e for e in map(json.loads, f.read().splitlines()) if e["type"] == "file"]
    assert files and all(e["blake3"] == blake3((src / e["path"]).read_bytes()).hexdigest() for e in files)


def test_dedup_unchanged_large_files_are_never_opened(tmp_path: Path, opened: list[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """On dedup small files are grouped into shared chunks: still read. Large ones: not opened, and each goes
    to the volume stream (compressed or stored) remembered with it, the one its sample chose."""
    streams: dict[str, list[str]] = {"remember": [], "reuse": []}
    remember, reuse = Volumes.remember, Volumes.reuse

    def spy_remember(self: Volumes, item: str, size: int, extra: Any) -> None:
        streams["remember"].append(f"{item.split(chr(0))[1]}:{self._compression}")
        remember(self, item, size, extra)

    def spy_reuse(self: Volumes, item: str, size: int) -> Any:
        out = reuse(self, item, size)
        if out is not None:
            streams["reuse"].append(f"{item.split(chr(0))[1]}:{self._compression}")
        return out

    monkeypatch.setattr(Volumes, "remember", spy_remember)
    monkeypatch.setattr(Volumes, "reuse", spy_reuse)
    src = tree(tmp_path / "src")
    dm = DataManager.from_dict(config(tmp_path, src, "dedup"))
    dm.repository("vault").init_repository()
    dm.backup("exp")
    assert "noise:none" in streams["remember"] and "big.txt:zstd" in streams["remember"]
    opened.clear()
    os.chmod(src / "big.txt", 0o600)  # a new ctime and mode: another fingerprint, read again
    dm.backup("exp")
    large = {str(p) for p in map(Path, source_files(src)) if p.stat().st_size >= 64 << 10}
    got = opened_in(opened, src)
    assert got & large == {str(src / "big.txt")}
    assert got - large == source_files(src) - large
    assert sorted(streams["reuse"]) == sorted(s for s in streams["remember"] if not s.startswith("big.txt:"))
    restore_same(dm, tmp_path, src, "out")


def test_volumes_recall_asks_the_probe_while_no_volume_is_open() -> None:
    class Writer:
        def recall(self, item: str, size: int, header: Any) -> Any:
            return {"blake3": "x", "item": item, "size": size, "path": header["path"]}

    class Plain:  # a writer of an engine without a files cache
        pass

    vols = Volumes(object(), "zstd", 1 << 20, lambda: "v")  # type: ignore[arg-type]
    assert vols.recall("fp", 512, {"path": "a"}) is None  # no volume, no probe
    vols.probe = Plain()  # type: ignore[assignment]
    assert vols.recall("fp", 512, {"path": "a"}) is None
    vols.probe = Writer()  # type: ignore[assignment]
    assert vols.recall("fp", 512, {"path": "a"}) == {"blake3": "x", "item": "fp", "size": 512, "path": "a"}
    assert vols.names == []  # asking opened nothing


def _index(dm: DataManager) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """The latest backup's files.jsonl lines by path, and its artifacts' names."""
    import json

    info = dm.repository("vault").resolve("exp", "latest")
    arts = dm.repository("vault").artifacts(info, "raw")
    with arts.open("files.jsonl") as f:
        lines = {e["path"]: e for e in map(json.loads, f.read().splitlines())}
    return lines, {a.name for a in arts.record.artifacts}


@pytest.mark.parametrize("engine", ["worm", "sync", "dedup"])
def test_every_index_line_names_the_files_digest_and_its_volume_also_when_recalled(tmp_path: Path,
                                                                                  engine: str) -> None:
    """files.jsonl is what find, diff and one-file restores read (a restore checks only names and sizes): its
    digests and volumes must be right for files read and for files an engine recalls unread, and a recalled
    file goes to the stream (compressed or stored) its name chose the first time."""
    from blake3 import blake3

    src = tree(tmp_path / "src")
    dm = DataManager.from_dict(config(tmp_path, src, engine))
    if engine == "dedup":
        dm.repository("vault").init_repository()
    dm.backup("exp")
    first, _ = _index(dm)
    dm.backup("exp")  # unchanged: recalled where the engine can
    lines, names = _index(dm)
    files = {p: e for p, e in lines.items() if e["type"] == "file"}
    assert files.keys() == {p for p, e in first.items() if e["type"] == "file"}
    for path, e in files.items():
        assert e["blake3"] == blake3((src / path).read_bytes()).hexdigest(), path
        assert e["volume"] in names, (path, e["volume"])
    for index in (first, lines):  # stored as-is by its suffix, recalled or not: not with the text
        assert index["photo.jpg"]["volume"] != index["big.txt"]["volume"]
