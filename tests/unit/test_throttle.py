"""data_manager/throttle.py: the token bucket (on a fake clock: no test depends on the machine's speed),
the storage wrapper around it, rates as written, and where the core applies it (config keys, DataManager)."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest

from data_manager.api import DataManager
from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.errors import ConfigError
from data_manager.testing import check_storage_contract
from data_manager.throttle import (
    BLOCK,
    MIN_BLOCK,
    ThrottledReader,
    ThrottledStorage,
    ThrottledWriter,
    TokenBucket,
    block_for,
    limits_from_settings,
    parse_rate,
    throttled,
)
from data_manager.types import ObjectWriter, Settings

MiB = 1 << 20


class FakeClock:
    """A clock that moves only when someone sleeps (or the test says time passed)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def bucket(self, rate: float, **kw: Any) -> TokenBucket:
        return TokenBucket(rate, clock=self, sleep=self.sleep, **kw)


# --------------------------------------------------------------------------- the bucket


def test_the_bucket_starts_empty_so_the_first_block_is_paid_for() -> None:
    clock = FakeClock()
    bucket = clock.bucket(MiB)
    assert bucket.take(MiB) == pytest.approx(1.0)
    assert clock.now == pytest.approx(1001.0)


@pytest.mark.parametrize("rate", [4096, 100_000, MiB, 10 * MiB, 300 * MiB])
@pytest.mark.parametrize("work", [0.0, 0.3, 0.9])
def test_a_sustained_transfer_averages_the_rate(rate: int, work: float) -> None:
    """Pieces paid for one after another, with a share ``work`` of each piece's time spent sending it
    (credited: the bucket saves up while the sender is busy), take total/rate: the average is the limit,
    neither above nor below it."""
    clock = FakeClock()
    bucket = clock.bucket(rate)
    total = 0
    start = clock.now
    for _ in range(200):
        bucket.take(bucket.burst)
        clock.now += work * bucket.burst / rate  # the write itself
        total += bucket.burst
    elapsed = clock.now - start
    assert total / elapsed == pytest.approx(rate, rel=0.01)


def test_a_sender_slower_than_the_limit_never_waits() -> None:
    clock = FakeClock()
    bucket = clock.bucket(MiB)
    bucket.take(MiB)
    for _ in range(5):
        clock.now += 1.5  # sending 1 MiB takes longer than the limit allows for
        assert bucket.take(MiB) == 0.0


def test_an_idle_bucket_saves_up_one_block_at_most() -> None:
    clock = FakeClock()
    bucket = clock.bucket(MiB)
    clock.now += 3600.0  # an hour idle: a source thinking in the middle of its stream
    assert bucket.take(MiB) == 0.0  # one block saved up, not an hour's worth
    assert bucket.take(MiB) == pytest.approx(1.0)
    assert bucket.take(MiB // 2) == pytest.approx(0.5)


def test_a_new_stream_after_a_pause_is_paced_from_its_first_byte() -> None:
    """What the bucket saved up while idle is forgotten when a stream starts: a transfer of three
    seconds' worth takes three seconds, not two (a free first block would put it 50% over the limit)."""
    clock = FakeClock()
    bucket = clock.bucket(MiB)
    clock.now += 60.0  # e.g. the lock settling before the first artifact
    writer = ThrottledWriter(RecordingWriter(clock), bucket)
    start = clock.now
    writer.write(b"x" * (3 * MiB))
    assert clock.now - start == pytest.approx(3.0)


def test_a_restart_keeps_a_debt() -> None:
    """Another stream's reservation still counts: a stream starting meanwhile waits behind it."""
    clock = FakeClock()
    bucket = TokenBucket(MiB, clock=clock, sleep=lambda s: None)  # the first taker's sleep has not ended
    bucket.take(MiB)
    bucket.restart()
    assert bucket.take(MiB) == pytest.approx(2.0)


@pytest.mark.parametrize(("rate", "block"), [(1, MIN_BLOCK), (MIN_BLOCK, MIN_BLOCK), (100_000, 100_000),
                                             (MiB, BLOCK), (50 * MiB, BLOCK)])
def test_blocks_are_one_second_worth_at_most_one_mib(rate: int, block: int) -> None:
    assert block_for(rate) == block
    assert FakeClock().bucket(rate).burst == block


def test_nothing_to_take_costs_nothing() -> None:
    clock = FakeClock()
    bucket = clock.bucket(MiB)
    assert bucket.take(0) == 0.0 and clock.slept == []


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)


def test_threads_sharing_a_bucket_share_the_rate() -> None:
    """Each caller reserves behind the previous ones: with the clock standing still, the waits of eight
    threads taking one block each are 1..8 block-times, whatever order they came in."""
    now = [0.0]
    waits: list[float] = []
    lock = threading.Lock()

    def sleep(seconds: float) -> None:
        with lock:
            waits.append(seconds)

    bucket = TokenBucket(MiB, clock=lambda: now[0], sleep=sleep)
    threads = [threading.Thread(target=bucket.take, args=(MiB,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(waits) == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])


# --------------------------------------------------------------------------- writers and readers


class RecordingWriter(ObjectWriter):
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.pieces: list[tuple[float, bytes]] = []
        self.state = "open"

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.pieces.append((self.clock.now, bytes(data)))

    def commit(self) -> None:
        self.state = "committed"

    def abort(self) -> None:
        self.state = "aborted"


def test_a_writer_splits_big_writes_into_paid_blocks() -> None:
    clock = FakeClock()
    inner = RecordingWriter(clock)
    writer = ThrottledWriter(inner, clock.bucket(MiB))
    payload = bytes(range(256)) * (3 * MiB // 256 + 7)
    writer.write(payload)
    writer.write(bytearray(b"tail"))
    assert b"".join(p for _, p in inner.pieces) == payload + b"tail"
    assert max(len(p) for _, p in inner.pieces) == BLOCK  # a burst is one block at most
    # each block is sent once it has been paid for: at 1, 2, 3 s...
    assert [round(t - 1000.0, 6) for t, _ in inner.pieces[:3]] == [1.0, 2.0, 3.0]
    writer.commit()
    assert inner.state == "committed"


def test_a_writer_aborts_through() -> None:
    clock = FakeClock()
    inner = RecordingWriter(clock)
    with pytest.raises(RuntimeError):
        with ThrottledWriter(inner, clock.bucket(MiB)) as w:
            w.write(b"x")
            raise RuntimeError("boom")
    assert inner.state == "aborted"


def test_a_reader_returns_everything_paced() -> None:
    clock = FakeClock()
    payload = bytes(range(256)) * (5 * MiB // 256 // 2)  # 2.5 MiB
    reader = ThrottledReader(io.BytesIO(payload), clock.bucket(MiB))
    assert reader.read(10) == payload[:10]
    assert len(reader.read(10 * MiB)) == BLOCK  # never more than one block per read
    buf = bytearray(100)
    assert reader.readinto(buf) == 100 and bytes(buf) == payload[10 + BLOCK : 110 + BLOCK]
    rest = reader.read()  # to the end, as metadata readers do
    assert payload[: 110 + BLOCK] + rest == payload
    assert clock.now - 1000.0 == pytest.approx(len(payload) / MiB)
    assert reader.read() == b"" and reader.read(5) == b""
    reader.close()
    assert reader.closed


# --------------------------------------------------------------------------- the storage wrapper


def test_unlimited_means_the_storage_itself(tmp_path: Path) -> None:
    storage = FilesystemStorage("local", Settings({"root": str(tmp_path)}))
    assert throttled(storage, None, None) is storage
    assert throttled(storage, 0, 0) is storage


def test_the_wrapper_honours_the_storage_contract(tmp_path: Path) -> None:
    inner = FilesystemStorage("local", Settings({"root": str(tmp_path)}))
    storage = throttled(inner, 2000 * MiB, 2000 * MiB)
    assert isinstance(storage, ThrottledStorage)
    assert storage.name == "local" and storage.location() == inner.location()
    check_storage_contract(storage)
    assert storage.root == inner.root  # a plugin storage's own attributes stay reachable


def test_only_the_limited_direction_is_wrapped(tmp_path: Path) -> None:
    storage = ThrottledStorage(FilesystemStorage("local", Settings({"root": str(tmp_path)})), upload=MiB)
    with storage.open_write("a/b") as w:
        assert isinstance(w, ThrottledWriter)
        w.write(b"data")
    with storage.open_read("a/b") as f:
        assert not isinstance(f, ThrottledReader) and f.read() == b"data"
    down = ThrottledStorage(FilesystemStorage("local", Settings({"root": str(tmp_path)})), download=MiB)
    assert not isinstance(down.open_write("a/c"), ThrottledWriter)
    with down.open_read("a/b") as f:
        assert isinstance(f, ThrottledReader) and f.read() == b"data"


# --------------------------------------------------------------------------- rates as written


@pytest.mark.parametrize(("text", "rate"), [
    ("10MiB", 10 * MiB), ("10MiB/s", 10 * MiB), ("10 MiB/s", 10 * MiB), ("512k/s", 512 << 10),
    ("1g", 1 << 30), ("2mb/sec", 2 * MiB), (1048576, MiB), ("0", 0), (0, 0),
])
def test_rates_are_sizes_per_second(text: Any, rate: int) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["fast", "10MiB/h", "-5", -5, "", "1.5MiB", True, None, "10/s/s"])
def test_bad_rates(text: Any) -> None:
    assert parse_rate(text) is None


def test_limits_from_a_storage_table() -> None:
    settings = Settings({"limit_upload": "20MiB", "limit_download": "1MiB/s"}, where="f: storage 'x'")
    assert limits_from_settings(settings) == (20 * MiB, MiB)
    assert limits_from_settings(Settings({})) == (None, None)
    for bad in ("fast", 0, "0"):
        with pytest.raises(ConfigError) as info:
            limits_from_settings(Settings({"limit_download": bad}, where="f: storage 'x'"))
        assert info.value.key == "limit_download"
        assert str(info.value).startswith("f: storage 'x': key 'limit_download': must be a rate")


# --------------------------------------------------------------------------- where the core applies it


def _config(root: Path, **storage: Any) -> dict[str, Any]:
    return {"storages": {"local": {"type": "filesystem", "root": str(root), **storage}},
            "datasets": {"d": {"sources": [{"name": "a", "type": "directory", "path": str(root)}]}}}


def test_the_plugin_never_sees_the_limit_keys(tmp_path: Path) -> None:
    """The filesystem storage rejects unknown keys; limit_* are taken out for the core before it looks."""
    dm = DataManager.from_dict(_config(tmp_path, limit_upload="${UP:-2MiB}", limit_download="3MiB/s"))
    cfg = dm.config.storages["local"]
    assert "limit_upload" not in cfg.settings and "limit_download" not in cfg.settings
    assert (cfg.limit_upload, cfg.limit_download) == (2 * MiB, 3 * MiB)
    storage = dm.storage("local")
    assert isinstance(storage, ThrottledStorage)
    assert storage.upload is not None and storage.upload.rate == 2 * MiB
    assert storage.download is not None and storage.download.rate == 3 * MiB


def test_the_command_line_wins_over_the_config(tmp_path: Path) -> None:
    dm = DataManager.from_dict(_config(tmp_path, limit_upload="2MiB"))
    dm.storage("local")  # built before: set_limits rebuilds it
    dm.set_limits(upload=5 * MiB, download=None)
    storage = dm.storage("local")
    assert isinstance(storage, ThrottledStorage) and storage.upload is not None and storage.upload.rate == 5 * MiB
    assert storage.download is None
    dm.set_limits(upload=0)  # 0: no limit, whatever the config says
    assert isinstance(dm.storage("local"), FilesystemStorage)


def test_no_limit_no_wrapper(tmp_path: Path) -> None:
    assert isinstance(DataManager.from_dict(_config(tmp_path)).storage("local"), FilesystemStorage)


@pytest.mark.parametrize("bad", ["fast", 0, "-1MiB", True, [1]])
def test_a_bad_limit_in_the_config_names_the_key(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ConfigError) as info:
        DataManager.from_dict(_config(tmp_path, limit_upload=bad))
    assert info.value.key == "limit_upload"
    assert str(info.value).startswith("<config>: storage 'local': key 'limit_upload': must be a rate")


def test_the_wrapper_passes_the_sweep_of_unfinished_writes_through(tmp_path: Path) -> None:
    import os

    from data_manager.builtin.filesystem import FilesystemStorage
    from data_manager.throttle import ThrottledStorage
    from data_manager.types import Settings

    inner = FilesystemStorage("s", Settings({"root": str(tmp_path)}))
    (tmp_path / "d").mkdir()
    stale = tmp_path / "d" / ".x.1234.part"
    stale.write_bytes(b"x")
    os.utime(stale, (1, 1))
    assert ThrottledStorage(inner, upload=1 << 20).sweep_unfinished("d", 60, remove=True) == ["d/.x.1234.part"]
    assert not stale.exists()
