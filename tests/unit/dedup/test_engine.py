"""The dedup engine against the filesystem storage: round trips, dedup, damage, repair, concurrency, crashes."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.engines.dedup.chunker import ChunkerParams
from data_manager.engines.dedup.engine import DedupEngine
from data_manager.engines.records import SourceRecord
from data_manager.errors import CorruptBackupError, RefusedError
from data_manager.types import Settings

KDF = {"memory_kib": 8, "iterations": 1, "lanes": 1}  # cheap Argon2id: tests, not security
SMALL = ChunkerParams(16 << 10, 64 << 10, 256 << 10)
MARKER = b"PLAINTEXT-MARKER-7f3a"


def make_storage(root: Path) -> FilesystemStorage:
    return FilesystemStorage("vault", Settings({"root": str(root)}))


def new_repo(tmp_path: Path, **settings: Any) -> DedupEngine:
    s = Settings({"passphrase": "correct horse", "pack_size": "256KiB", **settings})
    return DedupEngine.init_repository(make_storage(tmp_path / "repo"), s, chunker=SMALL, kdf=KDF,
                                       cache_dir=tmp_path / "cache")


def reopen(engine: DedupEngine, tmp_path: Path, cache: str = "cache", storage: Any = None) -> DedupEngine:
    return DedupEngine(storage or engine.storage, engine.settings, ring=engine.ring, cache_dir=tmp_path / cache)


def backup(engine: DedupEngine, data_id: str, sources: dict[str, dict[str, bytes]], piece: int = 100_000,
           cut: bool = False) -> dict[str, Any]:
    writer = engine.start_backup(data_id, {"storage": {"name": "vault", "type": "filesystem"}})
    try:
        for sname, arts in sources.items():
            sink = writer.source(SourceRecord(sname, "test", {"name": "test"}, {"path": "/x"}))
            for aname, data in arts.items():
                with sink.open(aname) as w:
                    for i in range(0, len(data), piece):
                        w.write(data[i:i + piece])
                        if cut:
                            sink.cut()
            writer.add_done(sink.finish())
        return writer.commit()
    finally:
        writer.abort()


def restore(engine: DedupEngine, data_id: str, which: str = "latest") -> dict[str, dict[str, bytes]]:
    info = engine.resolve(data_id, which)
    out: dict[str, dict[str, bytes]] = {}
    for rec in engine.source_records(info):
        arts = engine.artifacts(info, rec.name)
        out[rec.name] = {}
        for name in arts.names():
            with arts.open(name) as f:
                out[rec.name][name] = f.read()
    return out


def text(n: int, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    words = [b"alpha", b"beta", b"gamma", b"delta", MARKER, b"42.125", b"\n", b"row,"]
    out = bytearray()
    while len(out) < n:
        out += rnd.choice(words) + b" "
    return bytes(out[:n])


def sample() -> dict[str, dict[str, bytes]]:
    return {"db": {"empty.bin": b"", "small.txt": MARKER + b" hello", "tables/big.copy": text(1_500_000),
                   "random.bin": os.urandom(700_000)},
            "files": {"vol-000001.tar": text(300_000, 2) + os.urandom(200_000)}}


def stored_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_round_trip(tmp_path: Path) -> None:
    engine = new_repo(tmp_path)
    data = sample()
    manifest = backup(engine, "exp42", data)
    assert manifest["format"] == "data-manager-dedup/1"
    assert restore(engine, "exp42") == data
    info = engine.resolve("exp42", "latest")
    assert info.complete and info.size == sum(len(v) for s in data.values() for v in s.values())
    assert engine.data_ids() == ["exp42"]
    # a fresh cache (another machine) reads the same
    assert restore(reopen(engine, tmp_path, "cache2"), "exp42") == data


def test_second_backup_stores_almost_nothing_and_shifted_data_dedups(tmp_path: Path) -> None:
    engine = new_repo(tmp_path)
    root = tmp_path / "repo"
    data = {"s": {"a": text(2_000_000, 3) + os.urandom(1_000_000)}}
    backup(engine, "d", data)
    first = stored_bytes(root)
    m2 = backup(engine, "d", data)
    second = stored_bytes(root) - first
    assert second < 20_000, second  # a snapshot, a pointer, an index file
    assert m2["stored_size"] < 10_000
    shifted = {"s": {"a": b"inserted at the front" + data["s"]["a"]}}
    before = stored_bytes(root)
    backup(engine, "d", shifted)
    assert stored_bytes(root) - before < 0.15 * len(shifted["s"]["a"])
    assert restore(engine, "d") == shifted
    assert len(engine.backups("d")) == 3


def test_no_plaintext_in_storage(tmp_path: Path) -> None:
    engine = new_repo(tmp_path)
    backup(engine, "secret-dataset-id", {"MARKERSOURCE": {"MARKERNAME.txt": MARKER * 1000, "other": MARKER}})
    for p in (tmp_path / "repo").rglob("*"):
        if p.is_file():
            blob = p.read_bytes()
            for needle in (MARKER, b"MARKERNAME", b"MARKERSOURCE", b"secret-dataset-id",
                           engine.resolve("secret-dataset-id", "latest").timestamp.encode()):
                assert needle not in blob, (p, needle)
            assert needle not in p.name.encode()


def test_write_only_key_cannot_read(tmp_path: Path) -> None:
    engine = new_repo(tmp_path)
    backup(engine, "d", {"s": {"a": text(100_000)}})
    wo = DedupEngine(engine.storage, engine.settings, ring=WriteOnly(engine.ring), cache_dir=tmp_path / "wo")
    data = {"s": {"a": text(100_000) + b"more"}}
    backup(wo, "d", data)  # it can write (and dedups against the index)
    with pytest.raises(RefusedError):
        wo.backups("d")
    info = engine.resolve("d", "latest")
    with pytest.raises(RefusedError):
        wo.artifacts(info, "s")
    assert restore(engine, "d") == data


class WriteOnly:
    """A stand-in for a write-only key: the admin ring without what only readers have."""

    role = "write-only"
    can_read = False
    can_delete = False

    def __init__(self, ring: Any) -> None:
        self._ring = ring
        self.repo_id, self.key_id, self.params = ring.repo_id, ring.key_id, ring.params

    def __getattr__(self, name: str) -> Any:
        if name in ("pack_opener", "unseal"):
            def refuse(*a: Any) -> Any:
                raise RefusedError("write-only")
            return refuse
        return getattr(self._ring, name)
