import array
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
import zstandard
from blake3 import blake3

from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.errors import CorruptBackupError, UsageError
from data_manager.engines.records import SourceRecord
from data_manager.engines.worm import WormEngine
from data_manager.timestamps import format_timestamp, parse_timestamp
from data_manager.types import Settings


@pytest.fixture
def repo(tmp_path: Path) -> WormEngine:
    return WormEngine(FilesystemStorage("t", Settings({"root": str(tmp_path / "b")})))


def write_backup(repo: WormEngine, artifacts: dict[str, bytes], data_id: str = "d", commit: bool = True,
                 compression: str = "auto") -> str:
    w = repo.start_backup(data_id)
    sink = w.source(SourceRecord("s", "test", {}, {}))
    for name, data in artifacts.items():
        with sink.open(name, compression=compression) as out:  # type: ignore[arg-type]
            for i in range(0, len(data), 300_000):
                out.write(data[i : i + 300_000])
    w.add_done(sink.finish())
    if commit:
        w.commit()
    return w.timestamp


def read(repo: WormEngine, ts: str, name: str, data_id: str = "d") -> bytes:
    info = repo.resolve(data_id, ts)
    with repo.artifacts(info, "s").open(name) as f:
        return f.read()


def test_timestamps_round_trip_and_reject_garbage() -> None:
    when = datetime(2026, 11, 23, 7, 29, tzinfo=timezone.utc)
    assert format_timestamp(when) == "20261123T072900Z"
    assert parse_timestamp("20261123T072900Z") == when
    for bad in ("2026-11-23", "20261323T072900Z", "latest2", "../etc"):
        with pytest.raises(UsageError, match="bad timestamp"):
            parse_timestamp(bad)


def test_compression_is_chosen_by_content(repo: WormEngine) -> None:
    text, noise = b"abc" * 1_000_000, os.urandom(2_000_000)
    ts = write_backup(repo, {"text": text, "noise": noise, "empty": b""})
    manifest = repo.read_manifest("d", ts)
    arts = {a["name"]: a for a in manifest["sources"][0]["artifacts"]}
    assert arts["text"]["compression"] == "zstd" and arts["text"]["stored_size"] < len(text) / 50
    assert arts["noise"]["compression"] == "none" and arts["noise"]["stored_size"] == len(noise)
    assert read(repo, ts, "text") == text and read(repo, ts, "noise") == noise and read(repo, ts, "empty") == b""


def test_writes_of_any_size_and_type_round_trip(repo: WormEngine) -> None:
    """Small writes are staged, large ones go out as they are; a caller may reuse its buffer at once."""
    MiB = 1 << 20
    text = b"".join(b"%d,%d\n" % (i, i % 13) for i in range(700_000))
    w = repo.start_backup("d")
    sink = w.source(SourceRecord("s", "test", {}, {}))
    expected = bytearray()
    reused = bytearray(3 * MiB + 5)
    for compression in ("zstd", "none"):
        with sink.open(compression, compression=compression) as out:  # type: ignore[arg-type]
            for i, size in enumerate([10, MiB, 3 * MiB + 5, 7, 70_000, 2 * MiB, MiB - 1, 1, 5 * MiB // 2]):
                piece = text[(i * 4099) % MiB :][:size]
                if i % 3 == 1:  # a reused buffer, overwritten as soon as write() returns
                    reused[:size] = piece
                    out.write(memoryview(reused)[:size] if i % 2 else reused[:size])
                    reused[:size] = b"\xff" * size
                else:
                    out.write(piece)
                if compression == "zstd":
                    expected += piece
        with sink.open(f"{compression}-words", compression=compression) as out:  # type: ignore[arg-type]
            out.write(memoryview(array.array("I", range(MiB // 2))))  # 2 MiB of 4-byte items
    w.add_done(sink.finish())
    ts = w.commit()["timestamp"]
    assert read(repo, ts, "zstd") == expected and read(repo, ts, "none") == expected
    words = array.array("I", range(MiB // 2)).tobytes()
    assert read(repo, ts, "zstd-words") == words and read(repo, ts, "none-words") == words
    assert {a.name: a.size for a in sink.record.artifacts}["zstd-words"] == len(words)
    stored = Path(repo.storage.location()) / "d" / ts / "s" / "zstd.zst"
    assert zstandard.ZstdDecompressor().stream_reader(stored.read_bytes(), read_across_frames=True).read() == expected


def test_manifest_is_human_readable_and_complete(repo: WormEngine) -> None:
    ts = write_backup(repo, {"a/b.bin": b"x" * 10})
    doc = json.loads((Path(repo.storage.location()) / "d" / ts / "backup.json").read_text())
    assert doc["format"] == "data-manager-backup/2" and doc["complete"] is True
    art = doc["sources"][0]["artifacts"][0]
    assert art["size"] == 10 and art["blake3"] == blake3(b"x" * 10).hexdigest()
    assert art["file"] in ("a/b.bin", "a/b.bin.zst")


def _as_format_1(repo: WormEngine, ts: str) -> None:
    """Rewrite a backup's metadata as format 1 wrote it: sha256 of each artifact's original bytes."""
    base = Path(repo.storage.location()) / "d" / ts
    for path in (base / "backup.json", base / "s" / "source.json"):
        doc = json.loads(path.read_text())
        for src in doc.get("sources", [doc]):
            for art in src["artifacts"]:
                del art["blake3"]
                art["sha256"] = hashlib.sha256(read(repo, ts, art["name"])).hexdigest()
        if "format" in doc:
            doc["format"] = "data-manager-backup/1"
        path.write_text(json.dumps(doc))


def test_format_1_backups_with_sha256_are_still_read_and_checked(repo: WormEngine) -> None:
    data = b"hello world " * 100_000
    ts = write_backup(repo, {"art": data}, compression="none")
    _as_format_1(repo, ts)
    assert read(repo, ts, "art") == data
    stored = Path(repo.storage.location()) / "d" / ts / "s" / "art"
    stored.write_bytes(data.replace(b"hello", b"jello", 1))
    with pytest.raises(CorruptBackupError, match="sha256 mismatch"):
        read(repo, ts, "art")


def test_incomplete_backup_is_listed_but_never_latest(repo: WormEngine) -> None:
    good = write_backup(repo, {"x": b"1"})
    bad = write_backup(repo, {"x": b"2"}, commit=False)
    assert bad > good
    listed = {b.timestamp: b.complete for b in repo.backups("d")}
    assert listed == {good: True, bad: False}
    assert repo.resolve("d", "latest").timestamp == good
    with pytest.raises(UsageError, match="incomplete"):
        repo.resolve("d", bad)
    with pytest.raises(UsageError, match="no backup d/20000101T000000Z"):
        repo.resolve("d", "20000101T000000Z")


def test_timestamps_are_unique_per_dataset(repo: WormEngine) -> None:
    stamps = [write_backup(repo, {"x": b"1"}) for _ in range(3)]
    assert len(set(stamps)) == 3 and stamps == sorted(stamps)


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_a_flipped_byte_is_caught(repo: WormEngine, compression: str) -> None:
    # Text that compresses but not to a few repeat blocks: in those, some bits (block flags) change nothing.
    text = b"".join(b"%d,sensor-%d,%.3f\n" % (i, i % 17, i / 7) for i in range(100_000))
    data = os.urandom(500_000) if compression == "none" else text
    ts = write_backup(repo, {"art": data}, compression=compression)
    stored = next((Path(repo.storage.location()) / "d" / ts / "s").glob("art*"))
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    stored.write_bytes(raw)
    with pytest.raises(CorruptBackupError, match=r"d/.*/s/art"):
        read(repo, ts, "art")


def test_a_damaged_manifest_is_one_clear_error(repo: WormEngine) -> None:
    ts = write_backup(repo, {"art": b"data"})
    path = Path(repo.storage.location()) / "d" / ts / "backup.json"
    path.write_text(path.read_text().replace('"blake3"', '"b3"'))
    with pytest.raises(CorruptBackupError, match=r"backup.json: unreadable metadata \(missing 'blake3'\)"):
        repo.resolve("d", ts)


def test_a_damaged_backup_is_listed_with_its_sources_and_never_hides_the_others(repo: WormEngine) -> None:
    good = write_backup(repo, {"art": b"data"})
    bad = write_backup(repo, {"art": b"more"})
    path = Path(repo.storage.location()) / "d" / bad / "backup.json"
    path.write_text("{not json")
    listed = {b.timestamp: b for b in repo.backups("d")}
    assert listed[good].complete and listed[good].damaged is None
    assert not listed[bad].complete and listed[bad].sources == ["s"]
    assert listed[bad].damaged is not None and "backup.json" in listed[bad].damaged


def test_truncated_and_missing_artifacts_are_caught(repo: WormEngine) -> None:
    ts = write_backup(repo, {"a": os.urandom(100_000), "b": os.urandom(100_000)})
    base = Path(repo.storage.location()) / "d" / ts / "s"
    (base / "a").write_bytes((base / "a").read_bytes()[:-1])
    (base / "b").unlink()
    info = repo.resolve("d", ts)
    with pytest.raises(CorruptBackupError, match="truncated"):
        repo.artifacts(info, "s").verify(["a"])
    with pytest.raises(CorruptBackupError, match="missing"):
        repo.artifacts(info, "s").verify(["b"])


def test_a_failed_artifact_leaves_nothing(repo: WormEngine) -> None:
    w = repo.start_backup("d")
    sink = w.source(SourceRecord("s", "test", {}, {}))
    with pytest.raises(RuntimeError):
        with sink.open("half") as out:
            out.write(b"x" * 3_000_000)
            raise RuntimeError("source died")
    assert list(repo.storage.walk("d")) == []
    assert sink.record.artifacts == []


def test_bad_artifact_names_are_refused(repo: WormEngine) -> None:
    sink = repo.start_backup("d").source(SourceRecord("s", "test", {}, {}))
    for bad in ("", "../x", "a//b", ".hidden", "source.json", "a/./b"):
        with pytest.raises(ValueError):
            sink.open(bad)
