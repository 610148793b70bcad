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


@pytest.mark.parametrize("change, why", [
    ({"compression": "gzip"}, "does not match its name or is not a worm artifact"),
    ({"sha256": "00" * 32, "blake3": None}, "does not match its name or is not a worm artifact"),  # format 1's
    ({"size": "1000"}, "does not match its name or is not a worm artifact"),
    ({"stored_size": "1000"}, "does not match its name or is not a worm artifact"),
    ({"committed_ns": "soon"}, "does not match its name or is not a worm artifact"),
    ({"name": "c"}, "does not match its name or is not a worm artifact"),  # b's record naming another
])
def test_a_crafted_commit_record_is_not_offered_and_says_why(tmp_path: Path, change: dict, why: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    engine, ts, where = interrupted(tmp_path)
    path = where / ".committed" / "b.json"
    doc = {**json.loads(path.read_text()), **change}
    path.write_text(json.dumps({k: v for k, v in doc.items() if v is not None}))
    writer = engine.start_backup("ds", timestamp=ts)
    with caplog.at_level("WARNING", logger="data_manager.engines.worm"):
        writer.resume_source("src")
    assert list(writer.source(record()).resumed()) == ["a", "c"]
    assert [r.getMessage() for r in caplog.records] == [f"ds/{ts}/src/.committed/b.json: unreadable ({why}): not kept"]


def test_offers_come_in_the_order_they_were_committed_not_by_name(tmp_path: Path) -> None:
    engine, ts, where = interrupted(tmp_path)
    for name, when in (("a", 3), ("b", 1), ("c", 2)):
        path = where / ".committed" / f"{name}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "committed_ns": when}))
    writer = engine.start_backup("ds", timestamp=ts)
    writer.resume_source("src")
    assert list(writer.source(record()).resumed()) == ["b", "c", "a"]


def test_a_missing_or_resized_object_is_not_offered_and_the_log_says_which(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    engine, ts, where = interrupted(tmp_path)
    (where / "a").write_bytes(b"short")
    (where / "c").unlink()  # its record stays
    (where / "b").write_bytes(b"B" * 1000)  # same size, other bytes: offered, refused when read back
    writer = engine.start_backup("ds", timestamp=ts)
    with caplog.at_level("WARNING", logger="data_manager.engines.worm"):
        writer.resume_source("src")
    sink = writer.source(record())
    assert list(sink.resumed()) == ["b"]
    assert sorted(r.getMessage() for r in caplog.records) == [
        f"ds/{ts}/src/a: 5 bytes stored, 1000 recorded: not kept",
        f"ds/{ts}/src/c: missing, 1000 recorded: not kept"]
    with pytest.raises(CorruptBackupError, match=f"ds/{ts}/src/b: "):
        with sink.open_resumed("b") as f:
            f.read()


def test_a_compressed_artifact_is_offered_too(tmp_path: Path) -> None:
    engine = WormEngine(FilesystemStorage("t", Settings({"root": str(tmp_path / "backups")})))
    writer = engine.start_backup("ds")
    sink = writer.source(record())
    sink.resumed()
    with sink.open("z", compression="zstd") as w:
        w.write(b"z" * 100_000)
    writer.abort()
    again = engine.start_backup("ds", timestamp=writer.timestamp)
    again.resume_source("src")
    resumed = again.source(record())
    assert dict(resumed.resumed()) == {"z": 100_000}
    with resumed.open_resumed("z") as f:
        assert f.read() == b"z" * 100_000
