"""Dataset locks in the filesystem storage: one holder at a time, stale locks reported and broken only on
request, dead local holders removed. No fake services: locks.py against the built-in storage."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from data_manager import locks
from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.errors import ConfigError, RefusedError, StorageError
from data_manager.locks import DatasetLock, LockInfo, LockSettings, break_locks, list_locks
from data_manager.types import Entry, Settings

FAST = LockSettings(ttl=600, settle=0.02)


@pytest.fixture
def storage(tmp_path: Path) -> FilesystemStorage:
    return FilesystemStorage("t", Settings({"root": str(tmp_path / "backups")}))


@pytest.fixture
def lagging(storage: FilesystemStorage) -> FilesystemStorage:
    """The same storage, declared to list lazily (as Google Drive or NFS may): locks always settle."""
    storage.consistent_listing = False
    return storage


def lock(storage: FilesystemStorage, job: str, settings: LockSettings = FAST) -> DatasetLock:
    return DatasetLock(storage, "d", job, "backup", settings)


def plant(storage: FilesystemStorage, job: str, *, created: float, host: str = "elsewhere", pid: int = 4242,
          ttl: float = 600, text: str | None = None) -> Path:
    """A lock object of another job, as its own process would have written it."""
    path = Path(storage.location()) / "d" / ".locks" / f"{job}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"job_id": job, "operation": "restore", "host": host, "pid": pid, "created": created,
           "expires": created + ttl}
    path.write_text(text if text is not None else json.dumps(doc))
    return path


def held(storage: FilesystemStorage) -> list[str]:
    return [lk.job_id for lk in list_locks(storage, "d")]


@pytest.fixture
def no_poll(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(locks, "_POLL", 0.02)
    yield


@pytest.mark.parametrize("consistent", [True, False])
def test_lock_race_never_two_winners(storage: FilesystemStorage, consistent: bool) -> None:
    """Many contenders at once (threads: same host and pid, distinct jobs): never two hold the lock. Without
    a consistent listing the oldest always wins; with one, contenders that withdrew together may leave a
    round without a winner, which is safe (they retry with --wait), but must stay rare."""
    storage.consistent_listing = consistent
    rounds = 6
    won = 0
    for rnd in range(rounds):
        barrier = threading.Barrier(5)
        winners: list[int] = []
        errors: list[BaseException] = []
        refused: list[int] = []

        def contend(i: int) -> None:
            contender = lock(storage, f"r{rnd}j{i}")
            barrier.wait()
            try:
                contender.acquire()
            except RefusedError:
                refused.append(i)
                return
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return
            winners.append(i)
            deadline = time.monotonic() + 30  # hold it until every loser decided (a loaded machine is slow)
            while len(refused) + len(winners) + len(errors) < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
            contender.release()

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and len(winners) <= 1, (rnd, winners, errors)
        assert consistent or len(winners) == 1, (rnd, winners)
        won += len(winners)
    assert won >= rounds // 2
    assert list(storage.walk("d")) == []


def test_a_second_job_is_refused_while_the_first_holds(storage: FilesystemStorage) -> None:
    first, second = lock(storage, "job1"), lock(storage, "job2")
    first.acquire()
    with pytest.raises(RefusedError) as refused:
        second.acquire()
    text = str(refused.value)
    assert text.startswith("d is locked by backup job job1 (host ") and f"pid {os.getpid()})" in text
    assert text.endswith("; try later or pass --wait SECONDS") and "STALE" not in text
    assert held(storage) == ["job1"]  # the loser took its object away
    first.release()
    assert held(storage) == []
    second.acquire()
    assert held(storage) == ["job2"]
    second.release()
    assert list(storage.walk("d")) == []


def test_an_older_lock_object_wins_a_newer_one_does_not(lagging: FilesystemStorage) -> None:
    storage = lagging
    plant(storage, "newer", created=time.time() + 60, host=socket.gethostname(), pid=os.getpid())
    mine = lock(storage, "mine")
    mine.acquire()  # ours was written first: the other contender is the one to back off
    assert held(storage) == ["mine", "newer"]
    mine.release()
    plant(storage, "older", created=time.time() - 1, host=socket.gethostname(), pid=os.getpid())
    with pytest.raises(RefusedError, match="locked by restore job older"):
        lock(storage, "late").acquire()
    assert held(storage) == ["older", "newer"]


def test_consistent_listing_alone_holds_at_once(storage: FilesystemStorage) -> None:
    assert storage.consistent_listing  # a local filesystem
    t0 = time.monotonic()
    mine = lock(storage, "mine", LockSettings(settle=5))
    mine.acquire()
    assert time.monotonic() - t0 < 2.5  # no settle time: anyone writing later sees ours
    assert held(storage) == ["mine"]
    mine.release()


def test_consistent_listing_the_oldest_yields_to_a_younger_one_that_stays(storage: FilesystemStorage) -> None:
    """A younger object still there after the settle time may belong to a holder that listed before ours
    was visible: the oldest withdraws rather than hold the lock beside it."""
    plant(storage, "younger", created=time.time() + 60, host=socket.gethostname(), pid=os.getpid())
    with pytest.raises(RefusedError, match="locked by restore job younger"):
        lock(storage, "mine").acquire()
    assert held(storage) == ["younger"]


def test_consistent_listing_the_oldest_holds_once_the_younger_withdrew(storage: FilesystemStorage,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = plant(storage, "younger", created=time.time() + 60, host=socket.gethostname(), pid=os.getpid())
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # the settle wait: the younger contender saw ours and withdraws
        slept.append(seconds)
        path.unlink()

    monkeypatch.setattr(locks, "time", types.SimpleNamespace(time=time.time, monotonic=time.monotonic, sleep=sleep))
    mine = lock(storage, "mine", LockSettings(settle=0.5))
    mine.acquire()
    assert slept[0] >= 0.5 and held(storage) == ["mine"]
    mine.release()


def test_equal_creation_times_are_ordered_by_job_id(storage: FilesystemStorage) -> None:
    now = time.time()
    for job in ("b", "c", "a"):
        plant(storage, job, created=now)
    plant(storage, "z", created=now - 1)
    assert held(storage) == ["z", "a", "b", "c"]


def test_a_contender_seen_only_after_the_settle_time_wins(lagging: FilesystemStorage,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A winner lists again after settling: an older object whose write was still in flight beats it."""
    storage = lagging
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 1:  # the settle wait: the other job's write lands now
            plant(storage, "inflight", created=time.time() - 5, host=socket.gethostname(), pid=os.getpid())

    monkeypatch.setattr(locks, "time", types.SimpleNamespace(time=time.time, monotonic=time.monotonic, sleep=sleep))
    with pytest.raises(RefusedError, match="locked by restore job inflight"):
        lock(storage, "mine", LockSettings(settle=0.5)).acquire()
    assert slept[0] >= 0.5
    assert held(storage) == ["inflight"]


def test_acquire_settles_before_it_holds(lagging: FilesystemStorage) -> None:
    storage = lagging
    t0 = time.monotonic()
    mine = lock(storage, "mine", LockSettings(settle=0.3))
    mine.acquire()
    assert time.monotonic() - t0 >= 0.3
    mine.release()


def test_wait_retries_until_the_holder_releases(storage: FilesystemStorage, no_poll: None) -> None:
    first = lock(storage, "job1")
    first.acquire()
    timer = threading.Timer(0.3, first.release)
    timer.start()
    try:
        t0 = time.monotonic()
        second = lock(storage, "job2")
        second.acquire(wait=20)
        assert 0.25 < time.monotonic() - t0 < 10
        assert held(storage) == ["job2"]
        second.release()
    finally:
        timer.join()


def test_wait_gives_up_naming_the_holder(storage: FilesystemStorage, no_poll: None) -> None:
    first = lock(storage, "job1")
    first.acquire()
    try:
        t0 = time.monotonic()
        with pytest.raises(RefusedError, match="locked by backup job job1 .*; still locked after waiting 0s"):
            lock(storage, "job2").acquire(wait=0.3)
        assert time.monotonic() - t0 >= 0.3
        assert held(storage) == ["job1"]
    finally:
        first.release()


def test_a_stale_lock_blocks_is_reported_and_is_broken_only_on_request(storage: FilesystemStorage) -> None:
    old = time.time() - 7200
    plant(storage, "abc", created=old)
    with pytest.raises(RefusedError) as refused:
        lock(storage, "mine").acquire()
    text = str(refused.value)
    assert "restore job abc (host elsewhere, pid 4242)" in text and "STALE: expired 1h ago" in text
    assert text.endswith("if that job is gone, break the lock: data-manager lock break d")
    [info] = list_locks(storage, "d")
    assert info.expired() and info.to_json()["stale"] is True and "(2h ago)" in info.describe()
    assert [lk.job_id for lk in break_locks(storage, "d")] == ["abc"]
    assert held(storage) == []
    lock(storage, "mine").acquire()


def test_a_live_lock_is_broken_only_with_force(storage: FilesystemStorage) -> None:
    plant(storage, "live", created=time.time())
    with pytest.raises(RefusedError, match="lock of restore job live .* is live \\(not expired\\); pass --force"):
        break_locks(storage, "d")
    assert held(storage) == ["live"]
    with pytest.raises(RefusedError, match="d has no lock of job other"):
        break_locks(storage, "d", job_id="other")
    assert [lk.job_id for lk in break_locks(storage, "d", job_id="live", force=True)] == ["live"]
    assert held(storage) == []


def test_break_by_job_id_leaves_the_other_locks(storage: FilesystemStorage) -> None:
    plant(storage, "one", created=time.time() - 7200)
    plant(storage, "two", created=time.time() - 7000)
    assert [lk.job_id for lk in break_locks(storage, "d", job_id="two")] == ["two"]
    assert held(storage) == ["one"]


def test_the_lock_of_a_dead_local_process_is_removed(storage: FilesystemStorage) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    plant(storage, "crashed", created=time.time() - 10, host=socket.gethostname(), pid=gone.pid)
    [info] = list_locks(storage, "d")
    assert info.process_gone() and not info.expired()
    mine = lock(storage, "mine")
    mine.acquire()
    assert held(storage) == ["mine"]
    mine.release()
    # Without --force: a dead local holder is no live lock.
    plant(storage, "crashed", created=time.time() - 10, host=socket.gethostname(), pid=gone.pid)
    assert [lk.job_id for lk in break_locks(storage, "d")] == ["crashed"]


def test_an_unreadable_lock_object_blocks_as_stale(storage: FilesystemStorage) -> None:
    plant(storage, "garbled", created=0, text="{not json")
    [info] = list_locks(storage, "d")
    assert info.unreadable == "JSONDecodeError" and info.expired()
    assert info.owner() == f"unreadable lock object d/.locks/garbled.json (JSONDecodeError)"
    with pytest.raises(RefusedError, match="unreadable lock object .*; if that job is gone, break the lock"):
        lock(storage, "mine").acquire()
    assert held(storage) == ["garbled"]
    break_locks(storage, "d")
    assert held(storage) == []


def test_the_heartbeat_extends_the_lock_and_notices_it_was_broken(storage: FilesystemStorage) -> None:
    mine = lock(storage, "mine", LockSettings(ttl=0.3, settle=0.01))
    mine.acquire()
    try:
        first = list_locks(storage, "d")[0].expires
        time.sleep(0.35)
        [now] = list_locks(storage, "d")
        assert now.expires > first and now.created == list_locks(storage, "d")[0].created
        assert not mine.lost
        break_locks(storage, "d", force=True)
        deadline = time.monotonic() + 5
        while not mine.lost and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mine.lost
    finally:
        mine.release()
    assert held(storage) == []


def test_a_storage_that_does_not_list_the_lock_is_an_error(tmp_path: Path) -> None:
    class Blind(FilesystemStorage):
        def list(self, prefix: str) -> Iterator[Entry]:
            return iter(())

    blind = Blind("t", Settings({"root": str(tmp_path / "backups")}))
    with pytest.raises(StorageError, match="the lock object just written is not listed"):
        lock(blind, "mine").acquire()  # type: ignore[arg-type]
    assert list(FilesystemStorage("t", Settings({"root": str(tmp_path / "backups")})).walk("d")) == []


def test_lock_settings_from_config() -> None:
    assert LockSettings.from_config({}) == LockSettings(600.0, 0.25)
    assert LockSettings.from_config({"locks": {"ttl": "2m", "settle": "0.5s"}}) == LockSettings(120.0, 0.5)
    with pytest.raises(ConfigError) as e:
        LockSettings.from_config({"locks": {"ttl": "1m", "setle": "1s"}}, "/etc/dm.toml")
    assert str(e.value) == "/etc/dm.toml: [locks]: key 'setle': unknown (known: settle, ttl)" and e.value.key == "setle"
    with pytest.raises(ConfigError, match="^/etc/dm.toml: key 'locks': must be a table$"):
        LockSettings.from_config({"locks": 5}, "/etc/dm.toml")
    with pytest.raises(ConfigError, match="^/etc/dm.toml: \\[locks\\]: key 'ttl'"):
        LockSettings.from_config({"locks": {"ttl": "soon"}}, "/etc/dm.toml")
    with pytest.raises(ConfigError, match="^/etc/dm.toml: \\[locks\\]: key 'settle'"):
        LockSettings.from_config({"locks": {"settle": "soon"}}, "/etc/dm.toml")
    with pytest.raises(ConfigError) as e:
        LockSettings.from_config({"locks": []})
    assert str(e.value) == "<config>: key 'locks': must be a table" and e.value.key == "locks"


def info(created: float, expires: float, **kw: object) -> LockInfo:
    return LockInfo(**{"data_id": "d", "job_id": "abc", "operation": "backup", "host": "elsewhere", "pid": 4242,
                       "created": created, "expires": expires, "key": "d/.locks/abc.json", **kw})  # type: ignore[arg-type]


def test_lock_info_says_who_since_when_and_how_stale() -> None:
    t = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    lk = info(t, t + 600)
    assert lk.expired(t + 600) and not lk.expired(t + 599.9)  # expiry is the first stale moment
    assert lk.describe(t) == "backup job abc (host elsewhere, pid 4242), since 2023-11-14T22:13:20.000Z (0s ago)"
    assert lk.describe(t + 0.9).endswith("(0s ago)")
    assert lk.describe(t + 59.9).endswith("(59s ago)") and lk.describe(t + 60).endswith("(1m ago)")
    assert "(59m ago), STALE: expired 49m ago" in lk.describe(t + 3599) and "(1h ago)" in lk.describe(t + 3600)
    assert lk.describe(t + 86400).endswith("(1d ago), STALE: expired 23h ago")
    assert lk.describe(t + 3 * 86400) == ("backup job abc (host elsewhere, pid 4242), since 2023-11-14T22:13:20.000Z "
                                          "(3d ago), STALE: expired 2d ago")
    assert lk.describe(t + 7200).endswith("(2h ago), STALE: expired 1h ago")
    assert lk.to_json() == {"data_id": "d", "job_id": "abc", "operation": "backup", "host": "elsewhere", "pid": 4242,
                            "created": "2023-11-14T22:13:20.000Z", "expires": "2023-11-14T22:23:20.000Z",
                            "key": "d/.locks/abc.json", "unreadable": None, "stale": True}
    fresh = info(time.time(), time.time() + 600)
    assert fresh.to_json()["stale"] is False and "STALE" not in fresh.describe()
    assert fresh.describe(time.time() + 7200).endswith("STALE: expired 1h ago")  # stale as of the time asked about
    garbled = info(t, 0.0, unreadable="JSONDecodeError")
    assert garbled.expired(t) and garbled.describe(t) == "unreadable lock object d/.locks/abc.json (JSONDecodeError)"
    assert not garbled.process_gone()


def test_breaking_a_lock_is_logged_with_its_owner(storage: FilesystemStorage, caplog: pytest.LogCaptureFixture) -> None:
    plant(storage, "abc", created=time.time() - 7200)
    with caplog.at_level("WARNING", logger="data_manager.locks"):
        break_locks(storage, "d")
    assert caplog.messages == ["broke the lock of restore job abc (host elsewhere, pid 4242) on d"]


def test_verify_reads_the_lock_back(storage: FilesystemStorage) -> None:
    mine = lock(storage, "mine")
    mine.acquire()
    try:
        key = Path(storage.location()) / "d" / ".locks" / "mine.json"
        assert mine.verify() is True and not mine.lost
        doc = json.loads(key.read_text())
        for changed in ({**doc, "created": doc["created"] + 1}, {**doc, "job_id": "other"}, [doc], "{torn"):
            key.write_text(changed if isinstance(changed, str) else json.dumps(changed))
            assert mine.verify() is False and mine.lost, changed  # rewritten by someone else: not ours
            mine.lost = False
        key.unlink()
        assert mine.verify() is False and mine.lost
        key.write_text(json.dumps(doc))
        assert mine.verify() is False  # once lost, lost: a lock object that comes back is not ours again
    finally:
        mine.release()
