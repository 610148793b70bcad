"""Locks with credentials that may not delete (an append-only client): a job releases its lock by overwriting
it with the ``released`` marker, which every contender on any host skips; a deleter removes the leftovers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from data_manager import locks
from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.errors import StorageError
from data_manager.locks import RELEASED, DatasetLock, LockSettings, break_locks, list_locks, released_locks
from data_manager.types import Settings

FAST = LockSettings(ttl=600, settle=0.01)


class NoDelete:
    """A storage whose every delete is refused, as under a policy denying s3:DeleteObject."""

    def __init__(self, inner: FilesystemStorage) -> None:
        self.inner = inner
        self.refused: list[str] = []

    def delete(self, key: str) -> None:
        self.refused.append(key)
        raise StorageError(f"{key}: AccessDenied")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def inner(tmp_path: Path) -> FilesystemStorage:
    return FilesystemStorage("t", Settings({"root": str(tmp_path / "backups")}))


def test_release_without_delete_leaves_a_marker_every_host_skips(inner: FilesystemStorage, monkeypatch) -> None:
    append = NoDelete(inner)
    first = DatasetLock(append, "d", "job1", "backup", FAST)  # type: ignore[arg-type]
    first.acquire()
    first.release()
    assert append.refused == ["d/.locks/job1.json"]
    assert released_locks(inner, "d") == ["d/.locks/job1.json"]
    assert (Path(inner.root) / "d/.locks/job1.json").read_bytes() == RELEASED
    assert list_locks(inner, "d") == []
    # another host (which cannot tell whether job1's process lives) takes the lock at once
    monkeypatch.setattr(locks.socket, "gethostname", lambda: "other-host")
    second = DatasetLock(append, "d", "job2", "restore", FAST)  # type: ignore[arg-type]
    second.acquire()
    assert [lk.job_id for lk in list_locks(inner, "d")] == ["job2"]
    second.release()
    assert sorted(released_locks(inner, "d")) == ["d/.locks/job1.json", "d/.locks/job2.json"]
    # credentials that may delete clean up when they next take the lock
    admin = DatasetLock(inner, "d", "job3", "forget", FAST)
    admin.acquire()
    assert released_locks(inner, "d") == [] and [lk.job_id for lk in list_locks(inner, "d")] == ["job3"]
    admin.release()
    assert list(inner.list("d/.locks")) == []


def test_a_dead_process_lock_that_cannot_be_deleted_is_released_for_every_host(inner: FilesystemStorage) -> None:
    append = NoDelete(inner)
    dead = DatasetLock(inner, "d", "dead", "backup", FAST)
    dead.acquire()
    dead._stop.set()  # as after kill -9: the object stays, its process (faked below) is gone
    doc = (Path(inner.root) / "d/.locks/dead.json").read_text().replace(f'"pid": {__import__("os").getpid()}',
                                                                        '"pid": 999999999')
    (Path(inner.root) / "d/.locks/dead.json").write_text(doc)
    taker = DatasetLock(append, "d", "next", "backup", FAST)  # type: ignore[arg-type]
    taker.acquire()
    assert (Path(inner.root) / "d/.locks/dead.json").read_bytes() == RELEASED  # other hosts skip it too
    taker.release()
    assert break_locks(inner, "d") == [] and list(inner.list("d/.locks")) == []


def test_release_says_how_it_released_and_what_to_do_when_it_could_not(inner: FilesystemStorage,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    storage = NoDelete(inner)
    lock = DatasetLock(storage, "d", "job1", "backup", FAST)  # type: ignore[arg-type]
    lock.acquire()
    with caplog.at_level("INFO", logger="data_manager.locks"):
        lock.release()
        lock.release()  # a second release is a no-op
    assert "d: released the lock d/.locks/job1.json by overwriting it (cannot delete: d/.locks/job1.json: " \
           "AccessDenied)" in caplog.text

    class ReadOnly(NoDelete):
        def open_write(self, key: str) -> Any:
            raise StorageError(f"{key}: read-only")

    caplog.clear()
    other = DatasetLock(storage, "d", "job2", "backup", FAST)  # type: ignore[arg-type]
    other.acquire()
    other.storage = ReadOnly(inner)  # type: ignore[assignment]
    with caplog.at_level("ERROR", logger="data_manager.locks"):
        other.release()  # never raises: the job's outcome is what counts; the leftover is named
    assert ("d: cannot remove the lock d/.locks/job2.json: d/.locks/job2.json: read-only "
            "(break it with: data-manager lock break d)") in caplog.text


def test_the_heartbeat_rewrites_every_third_of_the_ttl(inner: FilesystemStorage) -> None:
    lock = DatasetLock(inner, "d", "job1", "backup", LockSettings(ttl=90, settle=0.01))
    waited: list[float] = []

    class Stop:
        def wait(self, seconds: float) -> bool:
            waited.append(seconds)
            return True  # stopped at once

    lock._stop = Stop()  # type: ignore[assignment]
    lock._beat()
    assert waited == [30.0]


class _Beats:
    """A stop event that lets the heartbeat run ``n`` times, then stops it."""

    def __init__(self, n: int) -> None:
        self.n = n

    def wait(self, seconds: float) -> bool:
        self.n -= 1
        return self.n < 0


def test_the_heartbeat_says_when_our_lock_was_broken_and_stops(inner: FilesystemStorage,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    lock = DatasetLock(inner, "d", "job1", "backup", LockSettings(ttl=90, settle=0.01))
    lock.acquire()
    inner.delete(lock.key)  # lock break --force by someone else
    lock._stop = _Beats(3)  # type: ignore[assignment]
    lock._beat()
    assert lock.lost
    assert caplog.messages == ["d: our lock (job job1) was broken by someone else"]  # once: the beat stopped


def test_a_heartbeat_that_cannot_write_warns_and_tries_again(inner: FilesystemStorage, monkeypatch: Any,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    lock = DatasetLock(inner, "d", "job1", "backup", LockSettings(ttl=90, settle=0.01))
    lock.acquire()

    def fail() -> None:
        raise StorageError("d/.locks/job1.json: No space left on device")

    monkeypatch.setattr(lock, "_write", fail)
    lock._stop = _Beats(2)  # type: ignore[assignment]
    lock._beat()
    assert not lock.lost
    assert caplog.messages == ["d: cannot refresh the lock: d/.locks/job1.json: No space left on device"] * 2


def test_a_dead_process_lock_is_removed_with_one_warning_and_one_more_when_it_cannot_be(
        inner: FilesystemStorage, caplog: pytest.LogCaptureFixture) -> None:
    import os

    dead = DatasetLock(inner, "d", "dead", "backup", FAST)
    dead.acquire()
    dead._stop.set()
    path = Path(inner.root) / "d/.locks/dead.json"
    path.write_text(path.read_text().replace(f'"pid": {os.getpid()}', '"pid": 999999999'))
    owner = next(lk for lk in list_locks(inner, "d") if lk.job_id == "dead").owner()

    class Stuck(NoDelete):
        """May neither delete nor overwrite the dead lock (it may write its own)."""

        def open_write(self, key: str) -> Any:
            if "dead" in key:
                raise StorageError(f"{key}: read-only")
            return self.inner.open_write(key)

    taker = DatasetLock(Stuck(inner), "d", "next", "backup", FAST)  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="data_manager.locks"):
        taker.acquire()
    taker._stop.set()
    assert caplog.messages[:2] == [
        f"d: removing the lock of {owner}: that process is gone",
        "d: cannot remove d/.locks/dead.json (d/.locks/dead.json: read-only); ignoring it: its process is gone",
    ]


def test_a_lock_that_fails_after_its_write_is_removed_or_the_log_says_why_not(
        inner: FilesystemStorage, caplog: pytest.LogCaptureFixture) -> None:
    """The listing fails right after our lock object is written: the error propagates, and the object
    that could not be removed is named (never hidden behind the first error)."""

    class Broken(NoDelete):
        """Writes our lock once; then may neither list, delete nor overwrite it."""

        writes = 0

        def open_write(self, key: str) -> Any:
            self.writes += 1
            if self.writes > 1:
                raise StorageError(f"{key}: read-only")
            return self.inner.open_write(key)

        def list(self, prefix: str) -> Any:
            raise StorageError(f"{prefix}: listing refused")

    lock = DatasetLock(Broken(inner), "d", "job1", "backup", FAST)  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="listing refused"):
        lock.acquire()
    assert caplog.messages == ["d: cannot remove the lock d/.locks/job1.json: d/.locks/job1.json: read-only"]


def test_waiting_for_a_lock_says_who_holds_it(inner: FilesystemStorage, caplog: pytest.LogCaptureFixture) -> None:
    from data_manager.errors import RefusedError

    first = DatasetLock(inner, "d", "job1", "backup", FAST)
    first.acquire()
    try:
        second = DatasetLock(inner, "d", "job2", "restore", FAST)
        with caplog.at_level("INFO", logger="data_manager.locks"):
            with pytest.raises(RefusedError):
                second.acquire(wait=0.3)
        owner = next(lk for lk in list_locks(inner, "d") if lk.job_id == "job1").owner()
        assert any(m.startswith(f"d is locked by {owner}; waiting (") and m.endswith("s left)")
                   for m in caplog.messages), caplog.messages
    finally:
        first.release()


def test_a_process_that_exits_holding_a_lock_is_not_kept_alive_by_its_heartbeat(tmp_path: Path) -> None:
    """The heartbeat is a daemon thread: a job that dies without releasing (an unexpected exit) still exits;
    its lock expires after the ttl."""
    import subprocess
    import sys

    code = ("import sys; from data_manager.builtin.filesystem import FilesystemStorage; "
            "from data_manager.locks import DatasetLock, LockSettings; from data_manager.types import Settings; "
            f"s = FilesystemStorage('t', Settings({{'root': {str(tmp_path)!r}}})); "
            "DatasetLock(s, 'd', 'job1', 'backup', LockSettings(ttl=600, settle=0.01)).acquire(); sys.exit(0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [lk.job_id for lk in list_locks(FilesystemStorage("t", Settings({"root": str(tmp_path)})), "d")] == ["job1"]


def test_lock_times_are_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert locks._when(0) == "1970-01-01T00:00:00.000Z"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_an_unreadable_lock_object_is_listed_with_unknown_owner_and_its_file_time(inner: FilesystemStorage) -> None:
    import os

    path = Path(inner.root) / "d/.locks/job9.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    os.utime(path, (1_700_000_000, 1_700_000_000))
    [info] = list_locks(inner, "d")
    assert (info.job_id, info.operation, info.host, info.pid, info.created, info.expires, info.key) == (
        "job9", "?", "?", 0, 1_700_000_000.0, 0.0, "d/.locks/job9.json")
    assert info.unreadable
