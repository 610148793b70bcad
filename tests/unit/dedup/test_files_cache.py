"""The files cache: an unchanged file is appended from what the last backup stored, never read again; a
changed one is read; a stale cache (index rebuilt, chunks gone) is never trusted."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from data_manager.api import DataManager
from data_manager.engines.dedup import engine as dedup_engine
from data_manager.engines.dedup.engine import CHUNKS_DIGEST, DedupArtifactWriter
from tests.helpers import snapshot


@pytest.fixture
def dm(tmp_path: Path) -> DataManager:
    raw = tmp_path / "raw"
    (raw / "sub").mkdir(parents=True)
    (raw / "big.bin").write_bytes(os.urandom(3 << 20))
    (raw / "sub" / "mid.csv").write_bytes(b"x,1.5,abc\n" * 30_000)
    (raw / "small.txt").write_text("tiny\n")
    manager = DataManager.from_dict({
        "storages": {"vault": {"type": "filesystem", "root": str(tmp_path / "vault"), "engine": "dedup",
                               "passphrase": "pw", "cache_dir": str(tmp_path / "cache")}},
        "datasets": {"d": {"storage": "vault", "sources": [{"name": "raw", "type": "directory", "path": str(raw)}]}},
    })
    manager.repository("vault").init_repository()
    return manager


@pytest.fixture
def reused(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Every reuse() answer: (the file's path, what it returned)."""
    seen: list[tuple[str, Any]] = []
    real = DedupArtifactWriter.reuse

    def spy(self: DedupArtifactWriter, item: str, size: int) -> Any:
        out = real(self, item, size)
        seen.append((item.split("\0")[1], out))
        return out

    monkeypatch.setattr(DedupArtifactWriter, "reuse", spy)
    return seen


def restored(dm: DataManager, tmp_path: Path, which: str = "latest") -> dict[bytes, Any]:
    out = tmp_path / f"out-{which}"
    dm.restore("d", which, overrides={"raw": {"path": str(out)}})
    return snapshot(out)


def test_unchanged_files_are_not_read_again(dm: DataManager, tmp_path: Path, reused: list[tuple[str, Any]]) -> None:
    raw = tmp_path / "raw"
    first = dm.backup("d")
    assert [path for path, out in reused if out is not None] == []  # nothing to reuse yet
    reused.clear()
    second = dm.backup("d")
    assert sorted(path for path, out in reused if out is not None) == ["big.bin", "sub/mid.csv"]
    assert second.stored_size < 20_000  # the metadata only
    info = dm.find_backup("d")[1]
    # the volume holding reused files records a digest over its chunks (each chunk checked by its id)
    assert any(CHUNKS_DIGEST in a for s in info.manifest["sources"] for a in s["artifacts"])
    assert restored(dm, tmp_path) == snapshot(raw)
    assert restored(dm, tmp_path, first.timestamp) == snapshot(raw)
    dm.verify("d")
    assert dm.repository("vault").check_repository(1.0).ok


def test_a_changed_file_is_read_again(dm: DataManager, tmp_path: Path, reused: list[tuple[str, Any]]) -> None:
    raw = tmp_path / "raw"
    dm.backup("d")
    reused.clear()
    data = bytearray((raw / "big.bin").read_bytes())
    data[1000] ^= 1
    st = (raw / "big.bin").stat()
    (raw / "big.bin").write_bytes(bytes(data))
    os.utime(raw / "big.bin", ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: ctime still moves
    dm.backup("d")
    assert sorted(path for path, out in reused if out is not None) == ["sub/mid.csv"]
    assert restored(dm, tmp_path) == snapshot(raw)


def test_a_stale_files_cache_is_never_trusted(dm: DataManager, tmp_path: Path, reused: list[tuple[str, Any]],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "raw"
    dm.backup("d")
    # The chunks it names vanish from the index (say, a prune elsewhere): nothing may be appended blindly.
    monkeypatch.setattr(dedup_engine.BlobStore, "known", lambda self, blob_id: False)
    reused.clear()
    dm.backup("d")
    assert [path for path, out in reused if out is not None] == []
    monkeypatch.undo()
    assert restored(dm, tmp_path) == snapshot(raw)


def test_the_files_cache_is_only_a_cache(dm: DataManager, tmp_path: Path, reused: list[tuple[str, Any]]) -> None:
    raw = tmp_path / "raw"
    dm.backup("d")
    dm.close()
    shutil.rmtree(tmp_path / "cache")
    reused.clear()
    dm.backup("d")
    assert [path for path, out in reused if out is not None] == []
    assert restored(dm, tmp_path) == snapshot(raw)
