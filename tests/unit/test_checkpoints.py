"""Checkpoints inside a source (data_manager.checkpoints) on the ``worm`` engine: a resumed run keeps the
volumes and checkpoints up to the last usable checkpoint and nothing else, and treats what it reads back as
the storage's word: a checkpoint out of order, malformed, naming a volume that is gone or not extending the
one before ends the chain there."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.checkpoints import Checkpoints
from data_manager.engines.records import SourceRecord
from data_manager.engines.worm import WormEngine
from data_manager.types import Settings

VOLUME = re.compile(r"vol-(\d{6})")


def record() -> SourceRecord:
    return SourceRecord("src", "test", {"name": "test"}, {})


def engine(tmp_path: Path) -> WormEngine:
    return WormEngine(FilesystemStorage("t", Settings({"root": str(tmp_path / "backups")})))


def stopped_run(tmp_path: Path, checkpoints: int = 3) -> tuple[WormEngine, str, Path]:
    """A run that wrote two volumes and a checkpoint ``checkpoints`` times, then one more volume, and stopped."""
    repo = engine(tmp_path)
    writer = repo.start_backup("ds")
    sink = writer.source(record())
    ckpt = Checkpoints.start(sink, VOLUME)
    assert ckpt is not None and ckpt.resume(lambda state: True) is None  # a first run: nothing to resume
    n = 0
    for k in range(checkpoints + 1):
        new = []
        for _ in range(2):
            n += 1
            with sink.open(f"vol-{n:06d}", compression="none") as w:
                w.write(b"v%d" % n * 100)
            new.append(f"vol-{n:06d}")
        if k < checkpoints:
            ckpt.save({"after": f"p{k}"}, new, f"line {k}\n".encode())
    writer.abort()
    return repo, writer.timestamp, tmp_path / "backups" / "ds" / writer.timestamp / "src"


def resume(repo: WormEngine, ts: str, check: Any = lambda state: True) -> tuple[Any, Any, Any, Any]:
    writer = repo.start_backup("ds", timestamp=ts)
    writer.resume_source("src")
    sink = writer.source(record())
    ckpt = Checkpoints.start(sink, VOLUME)
    assert ckpt is not None
    return writer, sink, ckpt, ckpt.resume(check)


def test_resume_keeps_the_volumes_and_checkpoints_up_to_the_last_and_deletes_the_rest(tmp_path: Path) -> None:
    repo, ts, where = stopped_run(tmp_path)
    writer, sink, ckpt, got = resume(repo, ts)
    assert got.state == {"after": "p2"}
    assert got.volumes == [f"vol-{n:06d}" for n in range(1, 7)]
    assert got.index == b"line 0\nline 1\nline 2\n"
    assert got.next_volume == 7
    with sink.open("vol-000007", compression="none") as w:
        w.write(b"new")
    ckpt.save({"after": "p3"}, ["vol-000007"], b"line 3\n")
    ckpt.finish()  # the index committed: every checkpoint goes
    writer.add_done(sink.finish())
    manifest = writer.commit()
    names = [a["name"] for a in manifest["sources"][0]["artifacts"]]
    assert sorted(names) == [f"vol-{n:06d}" for n in range(1, 8)]
    assert sorted(p.name for p in where.iterdir()) == ["source.json"] + [f"vol-{n:06d}" for n in range(1, 8)]
    assert (where / "vol-000008").exists() is False  # the stopped run's volume after its last checkpoint


def test_a_source_whose_engine_offers_nothing_writes_no_checkpoints() -> None:
    class Sink:
        resumable = False

    assert Checkpoints.start(Sink(), VOLUME) is None  # type: ignore[arg-type]
    assert Checkpoints.start(object(), VOLUME) is None  # type: ignore[arg-type]  # a plugin's test double


def _rewrite(where: Path, number: int, change: Any) -> None:
    """Replace checkpoint ``number`` by what ``change`` makes of its bytes, recording its new size and digest
    as the stopped run would have (a crafted checkpoint, not a damaged one)."""
    from blake3 import blake3
    import zstandard

    name = f"checkpoint-{number:06d}.jsonl"
    rec_path = where / ".committed" / f"{name}.json"
    rec = json.loads(rec_path.read_text())
    stored = where / rec["file"]
    data = change(zstandard.ZstdDecompressor().decompressobj().decompress(stored.read_bytes()))
    packed = zstandard.ZstdCompressor().compress(data)
    stored.write_bytes(packed)
    rec.update(size=len(data), stored_size=len(packed), blake3=blake3(data).hexdigest())
    rec_path.write_text(json.dumps(rec))


def _head(change: dict[str, Any]) -> Any:
    def edit(data: bytes) -> bytes:
        line, _, rest = data.partition(b"\n")
        head = {**json.loads(line), **change}
        return json.dumps(head).encode() + b"\n" + rest
    return edit


@pytest.mark.parametrize("change", [
    pytest.param(_head({"checkpoint": 7}), id="number"),
    pytest.param(_head({"volumes": ["vol-000001", "vol-000002", "vol-000099", "vol-000004"]}), id="volume gone"),
    pytest.param(_head({"volumes": ["../x"]}), id="volume name"),
    pytest.param(_head({"volumes": ["vol-000003", "vol-000004", "vol-000005", "vol-000006"]}),
                 id="not extending the one before"),
    pytest.param(_head({"volumes": ["vol-000001", "vol-000002", "vol-000002", "vol-000003"]}), id="twice"),
    pytest.param(_head({"state": "x"}), id="state"),
    pytest.param(lambda data: b"{not json\n" + data, id="not json"),
    pytest.param(lambda data: data + b"half a line", id="index cut"),
])
def test_a_crafted_checkpoint_ends_the_chain_before_it(tmp_path: Path, change: Any,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    repo, ts, where = stopped_run(tmp_path)
    _rewrite(where, 2, change)
    writer, sink, ckpt, got = resume(repo, ts)
    assert got.state == {"after": "p0"} and got.volumes == ["vol-000001", "vol-000002"]
    assert got.index == b"line 0\n" and got.next_volume == 3
    assert "checkpoint-000002.jsonl is not a checkpoint this source wrote (damaged" in caplog.text
    writer.add_done(sink.finish())  # what was not kept is deleted
    assert sorted(p.name for p in where.iterdir() if p.name.startswith("vol-")) == ["vol-000001", "vol-000002"]


def test_a_damaged_checkpoint_ends_the_chain_before_it(tmp_path: Path) -> None:
    """Other bytes than its record says, the same stored size (only a read to EOF tells): as if it were
    not there."""
    repo, ts, where = stopped_run(tmp_path)
    stored = where / "checkpoint-000002.jsonl.zst"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x20
    stored.write_bytes(bytes(data))
    *_, got = resume(repo, ts)
    assert got.state == {"after": "p0"} and got.index == b"line 0\n"


def test_a_state_the_source_refuses_ends_the_chain_too(tmp_path: Path) -> None:
    repo, ts, where = stopped_run(tmp_path)
    *_, got = resume(repo, ts, check=lambda state: state["after"] != "p1")
    assert got.state == {"after": "p0"}


def test_a_stop_before_the_first_checkpoint_starts_over(tmp_path: Path) -> None:
    repo, ts, where = stopped_run(tmp_path, checkpoints=0)
    writer, sink, ckpt, got = resume(repo, ts)
    assert got is None
    writer.add_done(sink.finish())
    assert not list(where.glob("vol-*"))


def test_a_checkpoint_that_cannot_be_deleted_leaves_the_backup_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    from data_manager.errors import StorageError

    repo, ts, where = stopped_run(tmp_path)
    writer, sink, ckpt, got = resume(repo, ts)

    def refuse(*args: Any) -> None:
        raise StorageError("AccessDenied: append-only")

    caplog.set_level("INFO")
    with monkeypatch.context() as m:
        m.setattr(type(sink), "delete_artifact", lambda self, rec: refuse())
        ckpt.finish()
    assert "not deleted (AccessDenied: append-only)" in caplog.text
    writer.add_done(sink.finish())
    names = [a["name"] for a in writer.commit()["sources"][0]["artifacts"]]
    assert not any(n.startswith("checkpoint-") for n in names)
