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
from data_manager.engines.dedup.engine import PACKERS, DedupEngine
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
    return DedupEngine.create(make_storage(tmp_path / "repo"), s, chunker=SMALL, kdf=KDF,
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


# --------------------------------------------------------------------------- damage and repair

from data_manager.engines.dedup.packs import FOOTER, parse_pack_header  # noqa: E402


def data_packs(root: Path) -> set[Path]:
    return set((root / "packs" / "data").rglob("*"))


def two_backups(tmp_path: Path) -> tuple[DedupEngine, dict, dict, list[Path]]:
    """'good' and 'bad' share nothing; returns the data packs only 'bad' uses."""
    engine = new_repo(tmp_path)
    root = tmp_path / "repo"
    good = {"s": {"a": text(600_000, 10)}}
    backup(engine, "good", good)
    before = {p for p in data_packs(root) if p.is_file()}
    bad = {"s": {"a": os.urandom(300_000) + text(600_000, 11)}}
    backup(engine, "bad", bad)
    mine = sorted(p for p in data_packs(root) if p.is_file() and p not in before)
    assert len(mine) >= 2
    return engine, good, bad, mine


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def first_blob_offsets(path: Path) -> tuple[int, int]:
    header = parse_pack_header(path.read_bytes()[:4096], str(path))
    return header.size, header.size + header.sealed_header_size


@pytest.mark.parametrize("damage", ["data", "header", "truncated", "deleted"])
def test_damaged_pack_fails_restore_naming_the_artifact_and_check_finds_it(tmp_path: Path, damage: str) -> None:
    engine, good, bad, mine = two_backups(tmp_path)
    pack = mine[0]
    blob_header, blob = first_blob_offsets(pack)
    if damage == "data":
        flip(pack, blob + 100)
    elif damage == "header":
        flip(pack, blob_header + 5)
    elif damage == "truncated":
        pack.write_bytes(pack.read_bytes()[: pack.stat().st_size // 2])
    else:
        pack.unlink()
    fresh = reopen(engine, tmp_path, "cache-after")
    ts = fresh.resolve("bad", "latest").timestamp
    with pytest.raises(CorruptBackupError, match=f"bad/{ts}/s/a"):
        restore(fresh, "bad")
    assert restore(fresh, "good") == good
    report = fresh.check_repository(read_fraction=1.0)
    assert not report.ok and any(pack.name in e for e in report.errors), report.errors
    if damage in ("truncated", "deleted"):
        assert not fresh.check_repository().ok  # found without reading data
    # repair index from the packs alone: everything else still restores
    for p in (tmp_path / "repo" / "index").iterdir():
        p.unlink()
    fresh.repair_index()
    assert restore(fresh, "good") == good


def test_damaged_trailer_is_found_and_the_index_rebuilt_by_walking(tmp_path: Path) -> None:
    engine, good, bad, mine = two_backups(tmp_path)
    for pack in mine:
        flip(pack, pack.stat().st_size - FOOTER.size - 5)
    fresh = reopen(engine, tmp_path, "cache-after")
    assert restore(fresh, "bad") == bad  # restores go through the index, not the trailer
    report = fresh.check_repository(read_fraction=1.0)
    assert sum("trailer" in e for e in report.errors) == len(mine), report.errors
    for p in (tmp_path / "repo" / "index").iterdir():
        p.unlink()
    summary = fresh.repair_index()
    assert len(summary.damaged) == len(mine)
    assert restore(reopen(engine, tmp_path, "cache-3"), "bad") == bad
    assert restore(fresh, "good") == good


def test_repair_index_after_deleting_it_restores_byte_identical(tmp_path: Path) -> None:
    engine = new_repo(tmp_path)
    data = sample()
    backup(engine, "d", data)
    data2 = {"db": {**data["db"], "more": text(400_000, 5)}}
    backup(engine, "d", data2)
    for p in (tmp_path / "repo" / "index").iterdir():
        p.unlink()
    fresh = reopen(engine, tmp_path, "cache-fresh")
    with pytest.raises(CorruptBackupError):
        restore(fresh, "d")
    summary = fresh.repair_index()
    assert summary.packs_scanned > 0 and not summary.damaged and summary.written
    assert restore(fresh, "d") == data2
    assert restore(fresh, "d", engine.backups("d")[0].timestamp) == data
    assert restore(reopen(engine, tmp_path), "d") == data2  # the old cache notices the index changed
    assert fresh.check_repository(read_fraction=1.0).ok


def test_repair_snapshots_after_deleting_them_gives_the_same_listing(tmp_path: Path) -> None:
    engine = new_repo(tmp_path)
    backup(engine, "d", sample())
    backup(engine, "e", {"s": {"a": b"x" * 1000}})
    backup(engine, "d", {"s": {"a": b"y" * 1000}})
    before = {d: [(b.timestamp, b.manifest) for b in engine.backups(d)] for d in ("d", "e")}
    for p in (tmp_path / "repo" / "snapshots").iterdir():
        p.unlink()
    assert engine.data_ids() == []
    summary = engine.repair_snapshots()
    assert len(summary.written) == 3
    fresh = reopen(engine, tmp_path, "cache-fresh")
    assert {d: [(b.timestamp, b.manifest) for b in fresh.backups(d)] for d in ("d", "e")} == before
    assert engine.repair_snapshots().written == []  # idempotent
    assert fresh.check_repository(read_fraction=1.0).ok


def test_damaged_pointer_is_listed_damaged_and_hides_nothing(tmp_path: Path) -> None:
    engine = new_repo(tmp_path)
    backup(engine, "d", {"s": {"a": b"one"}})
    backup(engine, "d", {"s": {"a": b"two"}})
    pointers = sorted((tmp_path / "repo" / "snapshots").iterdir())
    flip(pointers[0], pointers[0].stat().st_size - 3)
    fresh = reopen(engine, tmp_path, "cache-fresh")
    infos = fresh.backups("d")
    assert sum(b.complete for b in infos) == 1 and sum(bool(b.damaged) for b in infos) == 1
    assert not fresh.check_repository().ok


# --------------------------------------------------------------------------- concurrency and crashes


def test_two_writers_at_once_into_one_repository(tmp_path: Path) -> None:
    engine = new_repo(tmp_path)
    shared = text(800_000, 7)
    datasets = {f"d{i}": {"s": {"a": shared + os.urandom(200_000), "b": shared}} for i in range(2)}
    engines = [reopen(engine, tmp_path, f"cache-{i}") for i in range(2)]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            backup(engines[i], f"d{i}", datasets[f"d{i}"], piece=7_000)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    fresh = reopen(engine, tmp_path, "cache-fresh")
    for name, data in datasets.items():
        assert restore(fresh, name) == data
    assert fresh.check_repository(read_fraction=1.0).ok


class Crashing(FilesystemStorage):
    """Raises instead of the (N+1)th commit of an object, as a process killed there would leave it."""

    def __init__(self, root: Path, allowed: int) -> None:
        super().__init__("vault", Settings({"root": str(root)}))
        self.allowed = allowed
        self.commits = 0
        self._lock = threading.Lock()

    def open_write(self, key: str) -> Any:
        inner = super().open_write(key)
        outer = self

        class W:
            def write(self, data: Any) -> None:
                inner.write(data)

            def commit(self) -> None:
                with outer._lock:
                    outer.commits += 1
                    if outer.commits > outer.allowed:
                        inner.abort()
                        raise OSError("killed")
                inner.commit()

            def abort(self) -> None:
                inner.abort()

            def __enter__(self) -> Any:
                return self

            def __exit__(self, et: Any, *a: Any) -> None:
                self.commit() if et is None else self.abort()

        return W()


def test_crash_after_every_commit(tmp_path: Path) -> None:
    base = {"s": {"a": text(300_000, 20)}}
    work = {"s": {"a": text(300_000, 20) + os.urandom(400_000), "b": text(200_000, 21)}}
    # count the commits of one backup on a repository like the ones below
    template = new_repo(tmp_path / "t")
    backup(template, "base", base)
    counting = Crashing(tmp_path / "t" / "repo", 10**9)
    probe = DedupEngine(counting, template.settings, ring=template.ring, cache_dir=tmp_path / "t" / "cache")
    probe.index_every = 1  # an index file after every pack: crashes between them too
    backup(probe, "work", work)
    total = counting.commits
    assert total >= 8  # heartbeat, data packs, index files, meta pack, pointer
    for n in range(total):
        case = tmp_path / f"n{n}"
        eng = new_repo(case)
        backup(eng, "base", base)
        crashing = Crashing(case / "repo", n)
        dying = DedupEngine(crashing, eng.settings, ring=eng.ring, cache_dir=case / "cache")
        dying.index_every = 1
        with pytest.raises(Exception):
            backup(dying, "work", work)
        after = reopen(eng, case)
        assert after.data_ids() == ["base"], n
        assert restore(after, "base") == base
        report = after.check_repository(read_fraction=1.0)
        assert report.ok, (n, report.errors)
        backup(after, "work", work)
        assert restore(reopen(eng, case, "cache-fresh"), "work") == work


def test_cut_hints_and_many_chunk_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from data_manager.engines.dedup import engine as engine_module

    monkeypatch.setattr(engine_module, "LIST_MAX", 3)  # an artifact of 20 chunks needs 7 list blobs
    engine = new_repo(tmp_path)
    data = {"s": {"a": text(1_200_000, 30) + os.urandom(300_000), "b": b"z" * 50_000}}
    manifest = backup(engine, "d", data, piece=30_000, cut=True)
    lists = manifest["sources"][0]["artifacts"][0]["location"]["lists"]
    assert len(lists) > 3
    assert restore(reopen(engine, tmp_path, "cache-2"), "d") == data
    assert engine.check_repository(read_fraction=1.0).ok


def test_real_write_only_key_writes_but_cannot_read(tmp_path: Path) -> None:
    from data_manager.engines.dedup.keys import add_key

    engine = new_repo(tmp_path)
    backup(engine, "d", {"s": {"a": text(200_000)}})
    add_key(engine.ring, engine.storage, "put only", "write-only", kdf=KDF)
    wo = DedupEngine(engine.storage, Settings({"passphrase": "put only", "pack_size": "256KiB"}),
                     cache_dir=tmp_path / "wo-cache")
    assert wo.ring.role == "write-only"
    data = {"s": {"a": text(200_000) + b"appended"}}
    backup(wo, "d", data)
    for call in (lambda: wo.backups("d"), lambda: wo.artifacts(engine.resolve("d", "latest"), "s"),
                 lambda: wo.repair_index()):
        with pytest.raises(RefusedError):
            call()
    fresh = DedupEngine(engine.storage, engine.settings, cache_dir=tmp_path / "admin-2")  # the passphrase opens it
    assert restore(fresh, "d") == data
    assert fresh.check_repository(read_fraction=1.0).ok  # the write-only key's signature verifies


def test_a_failing_pack_write_ends_every_worker_and_reaches_the_writer(tmp_path: Path) -> None:
    engine = new_repo(tmp_path)
    real_open = engine.storage.open_write

    def open_write(key: str) -> Any:
        out = real_open(key)
        if key.startswith("packs/data/"):  # the data packs only: the disk fills while chunks are packed

            def full(data: bytes) -> int:
                raise OSError(28, "No space left on device")

            out.write = full
        return out

    engine.storage.open_write = open_write  # type: ignore[method-assign]
    before = set(threading.enumerate())
    writer = engine.start_backup("d", {"storage": {"name": "vault", "type": "filesystem"}})
    sink = writer.source(SourceRecord("s", "test", {"name": "test"}, {"path": "/x"}))
    with pytest.raises(OSError, match="No space left"):
        with sink.open("a") as w:
            for _ in range(40):  # more than the queues hold: the error must reach this thread
                w.write(os.urandom(100_000))
    writer.abort()
    for t in set(threading.enumerate()) - before:
        t.join(timeout=5)
        assert not t.is_alive(), t.name
    assert engine.backups("d") == []


def test_a_source_failing_mid_artifact_ends_every_worker(tmp_path: Path) -> None:
    engine = new_repo(tmp_path)
    before = set(threading.enumerate())
    writer = engine.start_backup("d", {"storage": {"name": "vault", "type": "filesystem"}})
    sink = writer.source(SourceRecord("s", "test", {"name": "test"}, {"path": "/x"}))
    with pytest.raises(RuntimeError, match="source broke"):
        with sink.open("a") as w:
            w.write(os.urandom(300_000))
            raise RuntimeError("source broke")  # the workers wait on empty queues now
    writer.abort()
    for t in set(threading.enumerate()) - before:
        t.join(timeout=5)
        assert not t.is_alive(), t.name


def test_many_artifacts_share_the_packs_being_filled(tmp_path: Path) -> None:
    """Each artifact has packer threads of its own; the data packs being filled are shared through the
    backup, so 20 artifacts open at once make about as many packs as their bytes need, not a partial pack
    per packer thread."""
    engine = new_repo(tmp_path)  # 256 KiB packs
    data = {f"table{i:02d}": os.urandom(30_000) for i in range(20)}
    writer = engine.start_backup("d", {"storage": {"name": "vault", "type": "filesystem"}})
    try:
        sink = writer.source(SourceRecord("s", "test", {"name": "test"}, {"path": "/x"}))
        open_ = [(sink.open(name), payload) for name, payload in data.items()]
        for w, payload in open_:
            w.write(payload)
        for w, _ in open_:
            w.close()
        writer.add_done(sink.finish())
        writer.commit()
    finally:
        writer.abort()
    packs = [p for p in (tmp_path / "repo" / "packs" / "data").rglob("*") if p.is_file()]
    assert 0 < len(packs) <= 600_000 // (256 << 10) + 1 + 2 * PACKERS, len(packs)
    assert restore(reopen(engine, tmp_path, "cache-2"), "d") == {"s": data}


def test_an_index_file_once_enough_blobs_wait_whatever_the_packs(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Blob ids wait in memory until an index file lists them: past INDEX_BLOBS one is written, even before
    the usual 8 packs (small chunks make packs of very many blobs)."""
    from data_manager.engines.dedup import engine as engine_module

    monkeypatch.setattr(engine_module, "INDEX_BLOBS", 1)
    engine = new_repo(tmp_path)  # 256 KiB packs, 8 packs per index file otherwise
    data = {"s": {"a": os.urandom(3_000_000)}}
    backup(engine, "d", data)
    packs = [p for p in (tmp_path / "repo" / "packs").rglob("*") if p.is_file()]
    indexes = [p for p in (tmp_path / "repo" / "index").iterdir() if p.is_file()]
    assert len(packs) > 8 and len(indexes) >= len(packs) - 1, (len(packs), len(indexes))
    assert restore(reopen(engine, tmp_path, "cache-2"), "d") == data


def test_cuts_noted_in_a_block_give_the_chunks_cuts_made_at_once_give(tmp_path: Path) -> None:
    """The writer makes the cuts of a staged block when it chunks the block (small groups looked up together):
    the chunk list is the one a chunker cut at every call gives, whatever mix of writes and cuts."""
    from data_manager.engines.dedup.chunker import Chunker
    from data_manager.engines.dedup.snapshots import decode_chunk_list

    engine = new_repo(tmp_path)
    rnd = random.Random(11)
    ops: list[bytes | None] = []  # None: a cut
    for _ in range(600):
        r = rnd.random()
        if r < 0.75:  # a small file and, usually, the cut after it
            ops.append(rnd.randbytes(rnd.randint(1, 9000)))
            if rnd.random() < 0.6:
                ops.append(None)
        elif r < 0.85:  # more than the chunker's minimum: its own cut points
            ops.append(text(rnd.randint(16_000, 300_000), rnd.randint(1, 99)))
        elif r < 0.9:  # a block or more at once, written as it is
            ops.append(rnd.randbytes(rnd.randint(1 << 20, 3 << 20)))
        else:
            ops += [None, None]
    writer = engine.start_backup("d", {"storage": {"name": "vault", "type": "filesystem"}})
    try:
        sink = writer.source(SourceRecord("s", "test", {"name": "test"}, {"path": "/x"}))
        with sink.open("a") as w:
            for op in ops:
                if op is None:
                    sink.cut()
                else:
                    w.write(op)
        writer.add_done(sink.finish())
        manifest = writer.commit()
    finally:
        writer.abort()
    chunker, expected = Chunker(SMALL, engine.ring.chunker_seed()), []
    for op in ops:
        expected += [bytes(c) for c in (chunker.cut() if op is None else chunker.feed(op))]
    expected += [bytes(c) for c in chunker.finish()]
    lists = manifest["sources"][0]["artifacts"][0]["location"]["lists"]
    got = [ref for lid in lists for ref in decode_chunk_list(engine.read_blob(bytes.fromhex(lid), "list"), "list")]
    assert got == [(engine.ring.chunk_id(c), len(c)) for c in expected]
    assert sum(1 for op in ops if op is None) > 300 and len(got) > 300
    data = b"".join(op for op in ops if op is not None)
    assert restore(engine, "d") == {"s": {"a": data}}


def test_the_digest_is_over_the_chunks_unless_the_source_asks_for_the_plain_one(tmp_path: Path) -> None:
    from blake3 import blake3

    engine = new_repo(tmp_path)
    data = text(700_000, 5) + os.urandom(300_000)
    writer = engine.start_backup("d", {"storage": {"name": "vault", "type": "filesystem"}})
    sink = writer.source(SourceRecord("s", "test", {"name": "test"}, {"path": "/x"}))
    with sink.open("chunked") as chunked:
        chunked.write(data)
    with sink.open("plain", digest=True) as plain:
        plain.write(data)
    writer.add_done(sink.finish())
    manifest = writer.commit()
    assert chunked.digest == "" and plain.digest == blake3(data).hexdigest()  # one pass less when not asked
    arts = {a["name"]: a for a in manifest["sources"][0]["artifacts"]}
    assert "blake3" not in arts["chunked"] and len(arts["chunked"]["blake3-chunks"]) == 64
    assert arts["plain"]["blake3"] == plain.digest
    assert restore(engine, "d") == {"s": {"chunked": data, "plain": data}}  # both checked at EOF
