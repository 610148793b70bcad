"""The repository layer's metadata and bookkeeping, field by field: what backup.json and source.json record,
timestamps, listing, resuming, and the errors a source (or a damaged backup) gets."""

from __future__ import annotations

import json
import logging
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

import pytest
from blake3 import blake3

from data_manager import __version__
from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.errors import CorruptBackupError, DataManagerError, UsageError
from data_manager.engines.records import SourceRecord
from data_manager.engines.worm import WormEngine
from data_manager.timestamps import is_timestamp
from data_manager.units import human_size
from data_manager.types import Settings


@pytest.fixture
def repo(tmp_path: Path) -> WormEngine:
    return WormEngine(FilesystemStorage("t", Settings({"root": str(tmp_path / "b")})))


def root(repo: WormEngine) -> Path:
    return Path(repo.storage.location())


def record(name: str = "s") -> SourceRecord:
    return SourceRecord(name, "test", {"name": "p", "package": "pkg", "version": "1"}, {"path": "/x"}, describe="/x")


def test_every_field_of_the_manifest(repo: WormEngine) -> None:
    text, noise = b"a,b,c\n" * 50_000, os.urandom(100_000)
    w = repo.start_backup("d", {"storage": {"name": "t", "type": "filesystem"}})
    progress: list[int] = []
    sink = w.source(record(), progress.append)
    with sink.open("text.csv") as out:
        out.write(text)
    with sink.open("dir/noise.bin") as out:
        out.write(noise[:1000])
        out.write(noise[1000:])
    sink.set_info(files=2, nested={"a": [1, 2]})
    w.add_done(sink.finish())
    doc = w.commit()
    assert progress == [len(text), 0, 1000, len(noise) - 1000, 0]  # bytes written; 0: an artifact committed

    on_disk = json.loads((root(repo) / "d" / w.timestamp / "backup.json").read_text())
    assert on_disk == doc
    source = json.loads((root(repo) / "d" / w.timestamp / "s" / "source.json").read_text())
    assert doc["sources"] == [source]
    assert doc["format"] == "data-manager-backup/2" and doc["complete"] is True
    assert (doc["data_id"], doc["timestamp"]) == ("d", w.timestamp)
    assert doc["tool"] == {"name": "data-manager", "version": __version__} and doc["host"] == socket.gethostname()
    assert doc["storage"] == {"name": "t", "type": "filesystem"}
    assert doc["started_at"].endswith("Z") and doc["started_at"] <= doc["finished_at"]
    assert isinstance(doc["duration_seconds"], float) and 0 <= doc["duration_seconds"] < 60

    stored = {p.name: p.stat().st_size for p in (root(repo) / "d" / w.timestamp / "s").rglob("*") if p.is_file()}
    arts = {a["name"]: a for a in source["artifacts"]}
    assert arts["text.csv"] == {"name": "text.csv", "file": "text.csv.zst", "size": len(text),
                                "blake3": blake3(text).hexdigest(), "stored_size": stored["text.csv.zst"],
                                "compression": "zstd"}
    assert arts["dir/noise.bin"] == {"name": "dir/noise.bin", "file": "dir/noise.bin", "size": len(noise),
                                     "blake3": blake3(noise).hexdigest(), "stored_size": len(noise), "compression": "none"}
    assert [a["name"] for a in source["artifacts"]] == ["text.csv", "dir/noise.bin"]  # in commit order
    assert source["size"] == doc["size"] == len(text) + len(noise)
    assert source["stored_size"] == doc["stored_size"] == stored["text.csv.zst"] + len(noise)
    assert (source["name"], source["type"], source["describe"]) == ("s", "test", "/x")
    assert source["plugin"] == {"name": "p", "package": "pkg", "version": "1"} and source["settings"] == {"path": "/x"}
    assert source["info"] == {"files": 2, "nested": {"a": [1, 2]}}
    assert source["started_at"] <= source["finished_at"] and source["duration_seconds"] >= 0

    info = repo.resolve("d", "latest")
    expected = {"data_id": "d", "timestamp": w.timestamp, "complete": True, "size": doc["size"],
                "stored_size": doc["stored_size"], "sources": ["s"], "damaged": None,
                "verified": None, "verified_sample": None}
    assert {k: v for k, v in info.to_json().items() if k in expected} == expected  # and whatever else it lists
    assert info.when == datetime.strptime(w.timestamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    arts_set = repo.artifacts(info, "s")
    assert arts_set.names() == ["text.csv", "dir/noise.bin"] and arts_set.size("text.csv") == len(text)
    assert arts_set.info == {"files": 2, "nested": {"a": [1, 2]}} and arts_set.settings == {"path": "/x"}
    read: list[int] = []
    with repo.artifacts(info, "s", read.append).open("text.csv") as f:
        assert f.read() == text
    assert sum(read) == len(text)
    assert [r.name for r in repo.source_records(info)] == ["s"]
    with pytest.raises(UsageError, match=f"backup d/{w.timestamp} has no source 'nope'"):
        repo.artifacts(info, "nope")
    with pytest.raises(CorruptBackupError, match="no artifact 'nope' in the metadata"):
        arts_set.open("nope")


def test_small_samples_are_always_compressed(repo: WormEngine) -> None:
    w = repo.start_backup("d")
    sink = w.source(record())
    for name, size in (("small", 4095), ("large", 4096)):
        with sink.open(name) as out:
            out.write(os.urandom(size))
    assert {a.name: a.compression for a in sink.record.artifacts} == {"small": "zstd", "large": "none"}


def test_a_source_must_close_what_it_opens_and_name_each_artifact_once(repo: WormEngine) -> None:
    sink = repo.start_backup("d").source(record())
    with sink.open("a") as out:
        out.write(b"1")
    assert out.digest == blake3(b"1").hexdigest()
    with pytest.raises(ValueError, match="artifact 'a' written twice by source 's'"):
        sink.open("a")
    left = sink.open("b")
    with pytest.raises(ValueError, match="artifact 'b' written twice"):
        sink.open("b")
    with pytest.raises(DataManagerError, match="^source 's' left artifacts open: b \\(plugin bug\\)$"):
        sink.finish()
    left.write(b"2")
    left.close()
    left.close()  # idempotent
    with pytest.raises(ValueError, match="artifact b is closed"):
        left.write(b"3")
    with pytest.raises(TypeError):
        sink.set_info(when=datetime.now())  # not JSON: fails in the source, not at commit
    assert [a.name for a in sink.finish().artifacts] == ["a", "b"]


def test_new_timestamps_are_now_or_the_next_free_second(repo: WormEngine) -> None:
    when = datetime(2026, 11, 23, 7, 29, 0, 999_999, tzinfo=timezone.utc)
    assert repo.new_timestamp("d", when) == "20261123T072900Z"
    (root(repo) / "d" / "20261123T072930Z").mkdir(parents=True)
    (root(repo) / "d" / "not-a-timestamp").mkdir()
    assert repo.timestamps("d") == ["20261123T072930Z"]
    assert repo.new_timestamp("d", when) == "20261123T072931Z"
    assert repo.new_timestamp("d", datetime(2027, 1, 1, tzinfo=timezone.utc)) == "20270101T000000Z"
    assert repo.start_backup("d", timestamp="20300101T000000Z").timestamp == "20300101T000000Z"
    assert is_timestamp("20261123T072930Z") and not is_timestamp("latest")


def test_listing_resuming_and_deleting(repo: WormEngine, caplog: pytest.LogCaptureFixture) -> None:
    w = repo.start_backup("d")
    sink = w.source(record("one"))
    with sink.open("x") as out:
        out.write(b"data")
    done = sink.finish()
    half = w.source(record("two"))
    with half.open("y") as out:
        out.write(b"more data")
    (root(repo) / "d" / ".locks").mkdir()
    (root(repo) / ".hidden").mkdir()
    assert repo.data_ids() == ["d"]
    assert repo.resumable("d") == w.timestamp
    [listed] = repo.backups("d")
    assert (listed.complete, listed.sources, listed.size) == (False, ["one", "two"], None)
    assert listed.stored_size == sum(p.stat().st_size for p in (root(repo) / "d" / w.timestamp).rglob("*") if p.is_file())
    again = repo.start_backup("d", timestamp=w.timestamp)
    assert again.finished_source("one") == done
    assert again.finished_source("two") is None  # never finished
    (root(repo) / "d" / w.timestamp / "one" / "source.json").write_text("{torn")
    with caplog.at_level(logging.WARNING, logger="data_manager.engines.worm"):
        assert again.finished_source("one") is None
    assert caplog.messages == [f"d/{w.timestamp}/one/source.json: unreadable, redoing that source"]
    with pytest.raises(UsageError, match=f"^no complete backup of 'd' in {root(repo)}$"):
        repo.resolve("d", "latest")
    assert again.discard_other_sources({"one"}) == ["two"]
    assert [b.sources for b in repo.backups("d")] == [["one"]]
    repo.delete_incomplete("d", w.timestamp)
    assert repo.timestamps("d") == []


def test_damaged_metadata_is_one_clear_error(repo: WormEngine) -> None:
    w = repo.start_backup("d")
    sink = w.source(record())
    with sink.open("art", compression="none") as out:
        out.write(b"0123456789")
    w.add_done(sink.finish())
    w.commit()
    path = root(repo) / "d" / w.timestamp / "backup.json"
    good = json.loads(path.read_text())
    info = repo.resolve("d", w.timestamp)

    short = json.loads(json.dumps(good))
    short["sources"][0]["artifacts"][0]["size"] = 5
    path.write_text(json.dumps(short))
    with pytest.raises(CorruptBackupError, match=f"d/{w.timestamp}/s/art: longer than the 5 bytes recorded"):
        repo.artifacts(repo.resolve("d", w.timestamp), "s").verify()
    digest = json.loads(json.dumps(good))
    digest["sources"][0]["artifacts"][0]["blake3"] = blake3(b"other").hexdigest()
    path.write_text(json.dumps(digest))
    with pytest.raises(CorruptBackupError, match="art: blake3 mismatch, the stored data is corrupt"):
        repo.artifacts(repo.resolve("d", w.timestamp), "s").verify(["art"])
    path.write_text(json.dumps({**good, "format": "data-manager-backup/9"}))
    with pytest.raises(CorruptBackupError, match="unreadable metadata \\(unknown format 'data-manager-backup/9'\\)"):
        repo.read_manifest("d", w.timestamp)
    path.write_text("[]")
    with pytest.raises(CorruptBackupError, match="backup.json: unreadable metadata"):
        repo.read_manifest("d", w.timestamp)
    assert repo.read_manifest("d", "20000101T000000Z") is None
    assert info.complete


@pytest.mark.parametrize("n, text", [
    (None, "-"), (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), ((1 << 20) - 1, "1024.0 KiB"),
    (1 << 20, "1.0 MiB"), (5 << 30, "5.0 GiB"), (3 << 40, "3.0 TiB"), (1 << 50, "1024.0 TiB"),
])
def test_human_size(n: int | None, text: str) -> None:
    assert human_size(n) == text


def test_an_aborted_artifact_is_forgotten_and_closed(repo: WormEngine) -> None:
    import threading

    threads = threading.active_count()
    sink = repo.start_backup("d").source(record())
    with pytest.raises(RuntimeError):
        with sink.open("half") as out:
            assert out.writable()
            out.write(b"x" * 3_000_000)
            raise RuntimeError("source died")
    with pytest.raises(ValueError, match="artifact half is closed"):
        out.write(b"more")
    out.abort()  # again: nothing happens
    assert [p for p in root(repo).rglob("*") if p.is_file()] == []  # no .part file either
    assert sink.finish().artifacts == []  # the sink does not wait for it
    assert threading.active_count() == threads  # its hashing/compressing thread ended
    with sink.open("again") as out:  # and the name may be used again
        out.write(b"1")
