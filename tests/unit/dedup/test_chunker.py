"""The chunker: streaming equals whole-buffer chunking, both algorithms, and the per-repository gear seed."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.engines.dedup.chunker import Chunker, ChunkerParams
from data_manager.engines.dedup.engine import DedupEngine
from data_manager.types import Settings

KDF = {"memory_kib": 8, "iterations": 1, "lanes": 1}
SMALL = ChunkerParams(16 << 10, 64 << 10, 256 << 10)
DATA = random.Random(3).randbytes(3_000_000)


def chunks(params: ChunkerParams, data: bytes, pieces: list[int], seed: int = 0) -> list[bytes]:
    c, out, at = Chunker(params, seed, window=600_000), [], 0
    for n in pieces:
        out += [bytes(x) for x in c.feed(data[at:at + n])]
        at += n
    return out + [bytes(x) for x in c.finish()]


@pytest.mark.parametrize("algorithm", ["fastcdc2020", "fastcdc"])
def test_chunks_do_not_depend_on_write_sizes(algorithm: str) -> None:
    params = ChunkerParams(SMALL.min_size, SMALL.avg_size, SMALL.max_size, algorithm)
    whole = chunks(params, DATA, [len(DATA)], seed=77)
    rnd = random.Random(5)
    pieces: list[int] = []
    while sum(pieces) < len(DATA):
        pieces.append(rnd.randint(1, 200_000))
    assert chunks(params, DATA, pieces, seed=77) == whole and b"".join(whole) == DATA
    assert len(whole) > 10 and all(params.min_size <= len(c) <= params.max_size for c in whole[:-1])


def test_the_legacy_algorithm_cuts_where_the_fastcdc_package_does() -> None:
    """Repositories made before fastcdc2020 go on deduplicating: their cut points are unchanged."""
    from fastcdc.fastcdc_cy import chunk_generator

    legacy = ChunkerParams.from_json({"chunker": "fastcdc", "chunk_min": 16 << 10, "chunk_avg": 64 << 10,
                                      "chunk_max": 256 << 10})
    assert legacy.algorithm == "fastcdc"
    expected = [DATA[c.offset:c.offset + c.length]
                for c in chunk_generator(DATA, 16 << 10, 64 << 10, 256 << 10, False, None)]
    assert chunks(legacy, DATA, [100_000] * 30, seed=12345) == expected  # the seed plays no part


def test_the_seed_moves_the_cut_points() -> None:
    sizes = {seed: [len(c) for c in chunks(SMALL, DATA, [len(DATA)], seed)] for seed in (0, 1, 2**62 + 5)}
    assert len({tuple(s) for s in sizes.values()}) == 3


def test_params_round_trip_and_refuse_what_no_chunker_does() -> None:
    assert ChunkerParams().to_json()["chunker"] == "fastcdc2020"
    assert ChunkerParams.from_json(SMALL.to_json()) == SMALL
    assert ChunkerParams.from_json({}) == ChunkerParams(256 << 10, 1 << 20, 4 << 20, "fastcdc")  # from before
    with pytest.raises(ValueError, match="unknown chunker"):
        ChunkerParams.from_json({"chunker": "rabin"})
    with pytest.raises(ValueError, match="fastcdc2020"):
        ChunkerParams(256 << 10, 8 << 20, 32 << 20)
    ChunkerParams(256 << 10, 8 << 20, 32 << 20, "fastcdc")  # the legacy chunker's bounds are wider


def test_two_repositories_cut_the_same_data_differently(tmp_path: Path) -> None:
    """The gear seed comes from each repository's id key: whoever holds the storage cannot match chunk
    sizes against those of known content."""
    seeds = []
    for name in ("a", "b"):
        storage = FilesystemStorage("vault", Settings({"root": str(tmp_path / name)}))
        engine = DedupEngine.create(storage, Settings({"passphrase": "pw"}), chunker=SMALL, kdf=KDF,
                                    cache_dir=tmp_path / f"cache-{name}")
        assert engine.ring.params["chunker"] == "fastcdc2020"
        seed = engine.ring.chunker_seed()
        assert 0 < seed < 2**63 and seed == engine.ring.chunker_seed()
        seeds.append(seed)
    assert seeds[0] != seeds[1]
    assert chunks(SMALL, DATA, [len(DATA)], seeds[0]) != chunks(SMALL, DATA, [len(DATA)], seeds[1])


def test_a_repository_of_the_legacy_chunker_still_deduplicates(tmp_path: Path) -> None:
    from tests.unit.dedup.test_engine import backup, restore

    legacy = ChunkerParams(SMALL.min_size, SMALL.avg_size, SMALL.max_size, "fastcdc")
    storage = FilesystemStorage("vault", Settings({"root": str(tmp_path / "repo")}))
    engine = DedupEngine.create(storage, Settings({"passphrase": "pw", "pack_size": "256KiB"}), chunker=legacy,
                                kdf=KDF, cache_dir=tmp_path / "cache")
    data = {"s": {"a": DATA + os.urandom(1000)}}
    first = backup(engine, "d", data)
    second = backup(engine, "d", data)
    assert engine.ring.params["chunker"] == "fastcdc"
    assert first["stored_size"] > len(DATA) // 2
    assert second["stored_size"] < 10_000  # a chunk list at most
    assert restore(engine, "d") == data


def test_a_chunker_this_version_does_not_know_is_one_clear_error(tmp_path: Path) -> None:
    from data_manager.errors import CorruptBackupError

    storage = FilesystemStorage("vault", Settings({"root": str(tmp_path / "repo")}))
    engine = DedupEngine.create(storage, Settings({"passphrase": "pw"}), chunker=SMALL, kdf=KDF,
                                cache_dir=tmp_path / "cache")
    engine.ring.params = {**engine.ring.params, "chunker": "fastcdc2099"}  # as a newer version would sign it
    with pytest.raises(CorruptBackupError, match="unknown chunker 'fastcdc2099'.*newer data-manager"):
        _ = engine.chunker_params
