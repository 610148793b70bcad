"""Dataset locks kept in the storage, so two jobs on one dataset never overlap, even from two machines.

The storage contract has no atomic create-if-absent, so the scheme is one lock object per contender:

1. write ``DATA_ID/.locks/JOB_ID.json`` (owner host, pid, job id, operation, created, expires);
2. list ``DATA_ID/.locks/``. On a storage whose listings show every committed object
   (``Storage.consistent_listing``: filesystem, S3, MinIO), a contender alone in the listing holds the
   lock at once: anyone who writes later sees it. Otherwise the oldest lock (earliest ``created``, ties
   broken by job id) may win, the others withdraw;
3. that oldest waits a settle time (``[locks] settle``, at least 5x its own write+list time) and lists
   again. With a consistent listing it holds the lock only if it is then alone (a younger one still there
   may hold it, having listed before our write was visible); otherwise if it is still the oldest (a
   contender whose write was in flight is seen by then). A loser deletes its object and fails with exit
   code 3 (or retries, jittered, until ``--wait`` runs out).

A holder rewrites its object every ``ttl / 3`` (heartbeat) with a new ``expires``, and a job reads its
object back at every source boundary (:meth:`DatasetLock.verify`), so a lock broken under it (``lock break
--force``) stops it before the next source, not up to ``ttl / 3`` later. A lock past its expiry
is *stale*: it still blocks (its job may only be slow or cut off from the storage), is reported with its
owner and age, and is broken only by ``data-manager lock break DATA_ID``. The one exception: a lock of a
process on this very host that no longer exists (kill -9, crash) is certainly dead and is removed.

Releasing needs no delete: credentials that may only write (an append-only client, a MinIO policy denying
``s3:DeleteObject``) overwrite their lock object with :data:`RELEASED` instead, which every contender skips
by its size alone (no read). Whoever may delete removes such leftovers when it next takes or breaks a lock.

Without a consistent listing, clocks of the machines sharing a storage must agree to well within the
settle time (NTP).
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from .errors import ConfigError, DataManagerError, NotFoundError, RefusedError, StorageError
from .jobs import parse_duration, pid_alive
from .timestamps import iso
from .types import Entry, Storage

log = logging.getLogger(__name__)

LOCK_DIR = ".locks"
DEFAULT_TTL = 600.0
DEFAULT_SETTLE = 0.25
_POLL = 2.0
RELEASED = b'{"released": true}\n'  # what a released lock object holds when it could not be deleted


@dataclass
class LockSettings:
    ttl: float = DEFAULT_TTL
    settle: float = DEFAULT_SETTLE

    @classmethod
    def from_config(cls, config: Mapping[str, Any], file: str = "<config>") -> LockSettings:
        table = config.get("locks", {})
        if not isinstance(table, dict):
            raise ConfigError(f"{file}: key 'locks': must be a table", key="locks")
        unknown = sorted(set(table) - {"ttl", "settle"})
        if unknown:
            raise ConfigError(f"{file}: [locks]: key {unknown[0]!r}: unknown (known: settle, ttl)", key=unknown[0])
        where = f"{file}: [locks]"
        return cls(
            ttl=parse_duration(table["ttl"], where, "ttl") if "ttl" in table else DEFAULT_TTL,
            settle=parse_duration(table["settle"], where, "settle") if "settle" in table else DEFAULT_SETTLE,
        )


@dataclass
class LockInfo:
    """One lock object, as read from the storage."""

    data_id: str
    job_id: str
    operation: str
    host: str
    pid: int
    created: float  # unix time
    expires: float
    key: str
    unreadable: str | None = None

    @property
    def order(self) -> tuple[float, str]:
        return (self.created, self.job_id)

    def expired(self, now: float | None = None) -> bool:
        return self.unreadable is not None or (now or time.time()) >= self.expires

    def process_gone(self) -> bool:
        """The owner ran on this host and its process no longer exists."""
        return self.unreadable is None and self.host == socket.gethostname() and not pid_alive(self.pid)

    def owner(self) -> str:
        if self.unreadable:
            return f"unreadable lock object {self.key} ({self.unreadable})"
        return f"{self.operation} job {self.job_id} (host {self.host}, pid {self.pid})"

    def describe(self, now: float | None = None) -> str:
        now = now or time.time()
        if self.unreadable:
            return self.owner()
        text = f"{self.owner()}, since {_when(self.created)} ({_age(now - self.created)} ago)"
        if self.expired(now):
            text += f", STALE: expired {_age(now - self.expires)} ago"
        return text

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["created"] = _when(self.created)
        doc["expires"] = _when(self.expires)
        doc["stale"] = self.expired()
        return doc


def _when(t: float) -> str:
    return iso(datetime.fromtimestamp(t, timezone.utc))


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _prefix(data_id: str) -> str:
    return f"{data_id}/{LOCK_DIR}"


def released_locks(storage: Storage, data_id: str, entries: list[Entry] | None = None) -> list[str]:
    """Keys of lock objects released by overwriting (:data:`RELEASED`): leftovers for a deleter to remove.
    ``entries``: the lock prefix's listing, if the caller has it already."""
    listed = storage.list(_prefix(data_id)) if entries is None else entries
    return [f"{_prefix(data_id)}/{e.name}" for e in listed
            if not e.is_dir and e.name.endswith(".json") and e.size == len(RELEASED)]


def remove_released(storage: Storage, data_id: str, entries: list[Entry] | None = None) -> None:
    """Delete released leftovers, if these credentials may."""
    for key in released_locks(storage, data_id, entries):
        try:
            storage.delete(key)
        except DataManagerError:
            return  # no delete permission: they are skipped all the same


def list_locks(storage: Storage, data_id: str, entries: list[Entry] | None = None) -> list[LockInfo]:
    """Every lock object of ``data_id`` that holds or waits for the lock, oldest first (released ones,
    :data:`RELEASED`, are skipped by their size). ``entries``: the lock prefix's listing, if at hand."""
    out = []
    for entry in storage.list(_prefix(data_id)) if entries is None else entries:
        if entry.is_dir or not entry.name.endswith(".json") or entry.size == len(RELEASED):
            continue
        key = f"{_prefix(data_id)}/{entry.name}"
        job_id = entry.name[: -len(".json")]
        try:
            with storage.open_read(key) as f:
                raw = f.read()
            if raw == RELEASED:  # a storage that lists no sizes
                continue
            doc = json.loads(raw)
            out.append(LockInfo(data_id, str(doc["job_id"]), str(doc["operation"]), str(doc["host"]), int(doc["pid"]),
                                float(doc["created"]), float(doc["expires"]), key))
        except NotFoundError:
            continue  # released while we listed
        except (ValueError, KeyError, TypeError) as exc:
            created = entry.modified.timestamp() if entry.modified else 0.0
            out.append(LockInfo(data_id, job_id, "?", "?", 0, created, 0.0, key, unreadable=type(exc).__name__))
    return sorted(out, key=lambda lock: lock.order)


def break_locks(storage: Storage, data_id: str, *, job_id: str | None = None, force: bool = False) -> list[LockInfo]:
    """Delete stale locks of ``data_id`` (or only ``job_id``'s); live ones only with ``force``.

    Raises :class:`RefusedError` naming a live lock when asked to break it without ``force``.
    """
    locks = [lock for lock in list_locks(storage, data_id) if job_id is None or lock.job_id == job_id]
    if job_id is not None and not locks:
        raise RefusedError(f"{data_id} has no lock of job {job_id}")
    live = [lock for lock in locks if not lock.expired() and not lock.process_gone()]
    if live and not force:
        raise RefusedError(
            f"{data_id}: lock of {live[0].describe()} is live (not expired); pass --force if that job is really gone"
        )
    for lock in locks:
        storage.delete(lock.key)
        log.warning("broke the lock of %s on %s", lock.owner(), data_id)
    if job_id is None:
        remove_released(storage, data_id)
    return locks


class DatasetLock:
    """The lock of one job on one dataset: :meth:`acquire`, then :meth:`release` (always)."""

    def __init__(self, storage: Storage, data_id: str, job_id: str, operation: str, settings: LockSettings) -> None:
        self.storage = storage
        self.data_id = data_id
        self.job_id = job_id
        self.operation = operation
        self.settings = settings
        self.key = f"{_prefix(data_id)}/{job_id}.json"
        self.lost = False
        self._cleaned = False
        self._created = 0.0
        self._written = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _write(self) -> None:
        doc = {
            "job_id": self.job_id,
            "operation": self.operation,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "created": self._created,
            "expires": time.time() + self.settings.ttl,
            "created_at": _when(self._created),
            "tool": "data-manager",
        }
        with self.storage.open_write(self.key) as w:
            w.write((json.dumps(doc, indent=2) + "\n").encode())
        self._written = True

    def _delete(self) -> None:
        """Remove our object; where these credentials may not delete, overwrite it with :data:`RELEASED`."""
        if not self._written:
            return
        try:
            self.storage.delete(self.key)
        except NotFoundError:
            pass
        except StorageError as exc:
            with self.storage.open_write(self.key) as w:
                w.write(RELEASED)
            log.info("%s: released the lock %s by overwriting it (cannot delete: %s)", self.data_id, self.key, exc)
        self._written = False

    def _contenders(self) -> list[LockInfo]:
        """The live lock objects, ours among them, oldest first."""
        entries = list(self.storage.list(_prefix(self.data_id)))  # one listing for both uses below
        locks = list_locks(self.storage, self.data_id, entries)
        if not self._cleaned:
            self._cleaned = True
            remove_released(self.storage, self.data_id, entries)
        for lock in locks:
            if lock.job_id != self.job_id and lock.process_gone():
                log.warning("%s: removing the lock of %s: that process is gone", self.data_id, lock.owner())
                try:
                    self.storage.delete(lock.key)
                except DataManagerError:
                    # Credentials that may not delete release it by overwriting, so that other hosts, which
                    # cannot tell the process is gone, stop counting it too.
                    try:
                        with self.storage.open_write(lock.key) as w:
                            w.write(RELEASED)
                    except DataManagerError as exc:
                        log.warning("%s: cannot remove %s (%s); ignoring it: its process is gone", self.data_id,
                                    lock.key, exc)
        locks = [lock for lock in locks if lock.job_id == self.job_id or not lock.process_gone()]
        if not any(lock.job_id == self.job_id for lock in locks):
            raise StorageError(f"{self.key}: the lock object just written is not listed by the storage")
        return locks

    def _decide(self, t0: float) -> LockInfo | None:
        """Whether we hold the lock once ours is written: None, or the lock we yield to.

        With a consistent listing, a contender alone in it holds the lock at once: whoever writes after
        that listing began will see ours. Seeing others, the oldest waits the settle time for the younger
        ones (which saw it) to withdraw, and holds only if it is then alone; one still there may be a holder
        that listed before our write was visible, so we withdraw. Without a consistent listing every
        contender waits the settle time and the oldest wins (clocks must agree to well within it).
        ``t0``: when our write began (the settle time is at least 5x our write+list time)."""
        locks = self._contenders()
        consistent = self.storage.consistent_listing
        if consistent and len(locks) == 1:
            return None
        if locks[0].job_id != self.job_id:
            return locks[0]
        time.sleep(max(self.settings.settle, 5 * (time.monotonic() - t0)))
        locks = self._contenders()
        others = [lock for lock in locks if lock.job_id != self.job_id]
        if consistent:
            return others[0] if others else None
        return None if locks[0].job_id == self.job_id else locks[0]

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, or raise :class:`RefusedError` naming its holder (after ``wait`` seconds of retries)."""
        deadline = time.monotonic() + wait
        while True:
            t0 = time.monotonic()
            self._created = time.time()
            try:
                self._write()
                blocker = self._decide(t0)
                if blocker is None:
                    break
                self._delete()
            except BaseException:
                try:
                    self._delete()
                except DataManagerError as exc:  # never hide why the lock could not be taken
                    log.error("%s: cannot remove the lock %s: %s", self.data_id, self.key, exc)
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise RefusedError(self._refusal(blocker, wait))
            log.info("%s is locked by %s; waiting (%.0fs left)", self.data_id, blocker.owner(), left)
            # jittered, so two contenders that withdrew together do not meet again
            time.sleep(min(_POLL * random.uniform(0.5, 1.0), left))
        self._heartbeat = threading.Thread(target=self._beat, name="dm-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    def _refusal(self, blocker: LockInfo, wait: float) -> str:
        text = f"{self.data_id} is locked by {blocker.describe()}"
        if blocker.expired():
            return text + f"; if that job is gone, break the lock: data-manager lock break {self.data_id}"
        return text + (f"; still locked after waiting {wait:.0f}s" if wait else "; try later or pass --wait SECONDS")

    def _beat(self) -> None:
        interval = self.settings.ttl / 3
        while not self._stop.wait(interval):
            try:
                if not self.storage.exists(self.key):
                    self.lost = True
                    log.error("%s: our lock (job %s) was broken by someone else", self.data_id, self.job_id)
                    return
                self._write()
            except Exception as exc:  # a heartbeat that fails once is retried; the lock expires only after ttl
                log.warning("%s: cannot refresh the lock: %s", self.data_id, exc)

    def verify(self) -> bool:
        """Read our lock object in the storage now: True if it is still there and still ours.

        The heartbeat notices a broken lock only every ``ttl / 3``; a job calls this between sources, so a
        ``lock break --force`` stops it before it writes more while another job may already hold the
        dataset. A lock found gone (or rewritten by someone else) is marked :attr:`lost`. A storage error
        propagates: if we cannot tell, we must not go on.
        """
        if self.lost:
            return False
        try:
            with self.storage.open_read(self.key) as f:
                doc = json.loads(f.read())
            ours = isinstance(doc, dict) and doc.get("job_id") == self.job_id and doc.get("created") == self._created
        except NotFoundError:
            ours = False
        except ValueError:  # not JSON any more: not the object we wrote
            ours = False
        if not ours:
            self.lost = True
        return ours

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        if not self.lost:
            try:
                self._delete()
            except StorageError as exc:
                log.error("%s: cannot remove the lock %s: %s (break it with: data-manager lock break %s)",
                          self.data_id, self.key, exc, self.data_id)
