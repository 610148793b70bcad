"""The resume seam of ``ArtifactSink`` in the ``worm`` engine: what an interrupted run committed is offered
(checked: object present, stored size as recorded), kept in order or deleted when the source finishes, read
back with its digest checked, and never trusted beyond what the interrupted run recorded."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.engines.records import SourceRecord
from data_manager.engines.worm import WormEngine
from data_manager.errors import CorruptBackupError
from data_manager.types import Settings


def record() -> SourceRecord:
    return SourceRecord("src", "test", {"name": "test"}, {})


def interrupted(tmp_path: Path) -> tuple[WormEngine, str, Path]:
    """A backup whose source ``src`` committed a, b, c and left d half written (never closed)."""
    engine = WormEngine(FilesystemStorage("t", Settings({"root": str(tmp_path / "backups")})))
    writer = engine.start_backup("ds")
    sink = writer.source(record())
    assert sink.resumed() == {}  # a source that can resume asks first: from now on commits are recorded
    for name in ("a", "b", "c"):
        with sink.open(name, compression="none") as w:
            w.write(name.encode() * 1000)
    half = sink.open("d")
    half.write(b"d" * (2 << 20))  # two blocks: an object being written
    where = tmp_path / "backups" / "ds" / writer.timestamp / "src"
    while not list(where.glob(".d*.part")):
        time.sleep(0.01)
    time.sleep(0.1)  # its blocks written
    writer.abort()
    return engine, writer.timestamp, tmp_path / "backups" / "ds" / writer.timestamp / "src"


def test_committed_artifacts_are_offered_kept_in_order_and_the_rest_deleted(tmp_path: Path) -> None:
    engine, ts, where = interrupted(tmp_path)
    writer = engine.start_backup("ds", timestamp=ts)
    writer.resume_source("src")
    sink = writer.source(record())
    assert dict(sink.resumed()) == {"a": 1000, "b": 1000, "c": 1000}
    assert list(sink.resumed()) == ["a", "b", "c"]  # commit order
    with sink.open_resumed("b") as f:
        assert f.read() == b"b" * 1000
    sink.keep("b")
    with pytest.raises(ValueError):
        sink.keep("zzz")
    with sink.open("c", compression="none") as w:  # written anew: replaces the offered one
        w.write(b"new")
    writer.add_done(sink.finish())
    manifest = writer.commit()
    assert [a["name"] for a in manifest["sources"][0]["artifacts"]] == ["b", "c"]
    assert sorted(p.name for p in where.iterdir()) == ["b", "c", "source.json"]  # a gone, d's temp file swept
    assert (where / "c").read_bytes() == b"new"
    info = engine.resolve("ds", ts)
    with engine.artifacts(info, "src").open("b") as f:
        assert f.read() == b"b" * 1000


def test_what_does_not_match_its_record_is_not_offered(tmp_path: Path) -> None:
    engine, ts, where = interrupted(tmp_path)
    (where / "a").write_bytes(b"short")  # another stored size
    (where / "b").write_bytes(b"B" * 1000)  # same size, other bytes: only a read back tells
    (where / ".committed" / "c.json").write_text(json.dumps({"name": "../x", "size": 1}))  # forged record
    writer = engine.start_backup("ds", timestamp=ts)
    writer.resume_source("src")
    sink = writer.source(record())
    assert list(sink.resumed()) == ["b"]
    with pytest.raises(CorruptBackupError, match="mismatch"):
        with sink.open_resumed("b") as f:
            f.read()
    assert not (where / "a").exists() and not (where / "c").exists()
    writer.add_done(sink.finish())
    assert writer.commit()["sources"][0]["artifacts"] == []
    assert sorted(p.name for p in where.iterdir()) == ["source.json"]


def test_a_discarded_artifact_leaves_the_record_and_the_storage(tmp_path: Path) -> None:
    engine = WormEngine(FilesystemStorage("t", Settings({"root": str(tmp_path / "backups")})))
    writer = engine.start_backup("ds")
    sink = writer.source(record())
    for name in ("x", "y"):
        with sink.open(name, compression="none") as w:
            w.write(b"1234")
    sink.discard("x")
    with pytest.raises(ValueError):
        sink.discard("x")
    writer.add_done(sink.finish())
    assert [a["name"] for a in writer.commit()["sources"][0]["artifacts"]] == ["y"]
    where = tmp_path / "backups" / "ds" / writer.timestamp / "src"
    assert sorted(p.name for p in where.iterdir()) == ["source.json", "y"]


def test_a_source_that_never_asks_pays_nothing_and_starts_over(tmp_path: Path) -> None:
    engine = WormEngine(FilesystemStorage("t", Settings({"root": str(tmp_path / "backups")})))
    writer = engine.start_backup("ds")
    sink = writer.source(record())
    with sink.open("a", compression="none") as w:
        w.write(b"1234")
    where = tmp_path / "backups" / "ds" / writer.timestamp / "src"
    assert sorted(p.name for p in where.iterdir()) == ["a"]  # no .committed record
    writer = engine.start_backup("ds", timestamp=writer.timestamp)
    writer.resume_source("src")
    assert not where.exists()  # deleted whole, as before
    assert writer.source(record()).resumed() == {}
