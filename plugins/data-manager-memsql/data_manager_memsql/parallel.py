"""Several connections reading one table's key ranges at once, frames written in key order.

The server formats every value (see :mod:`.rowformat`), which makes the server's one core per connection
the limit of a backup. With ``parallel = N`` the backup opens N reader connections that all see the
backup's snapshot (:func:`open_shared_snapshot`), and a table with a one-column integer key is read as
consecutive key ranges handed out to them in order. The main thread writes the frames in key order, so
the artifact is byte for byte what one connection would write; at most ``2 * N`` ranges (each about one
frame) are in flight, so memory stays flat.
"""

from __future__ import annotations

import logging
import queue
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

LOCK_WAIT_SECONDS = 5  # longest wait for the commit block; then the backup reads with one connection


def open_shared_snapshot(lock_conn: Any, conns: list[Any], mariadb: bool) -> None:
    """``START TRANSACTION WITH CONSISTENT SNAPSHOT`` on every connection of ``conns`` while commits are
    blocked, so that all of them see the same committed transactions.

    MariaDB: ``BACKUP STAGE START`` + ``BACKUP STAGE BLOCK_COMMIT`` (commits wait; reads, writes and DDL
    in progress go on), MySQL: ``FLUSH TABLES WITH READ LOCK``; released right after the snapshots are
    open (``BACKUP STAGE END`` / ``UNLOCK TABLES``). Both need the RELOAD privilege; a MySQLError here is
    the caller's to handle (it falls back to one connection).
    """
    cur = lock_conn.cursor()
    cur.execute(f"SET SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}")  # never stall the writers for long
    if mariadb:
        cur.execute("BACKUP STAGE START")
        try:
            cur.execute("BACKUP STAGE BLOCK_COMMIT")
            _start_snapshots(conns)
        finally:
            cur.execute("BACKUP STAGE END")
    else:
        cur.execute("FLUSH TABLES WITH READ LOCK")
        try:
            _start_snapshots(conns)
        finally:
            cur.execute("UNLOCK TABLES")


def _start_snapshots(conns: list[Any]) -> None:
    for conn in conns:
        with conn.cursor() as cur:
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")


class ReaderPool:
    """N reader connections, one per worker thread; :meth:`submit` runs ``fn(conn, *args)`` on a free one."""

    def __init__(self, conns: list[Any], owned: bool = True) -> None:
        self.conns, self.owned = conns, owned
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for c in conns:
            self._idle.put(c)
        self._pool = ThreadPoolExecutor(max_workers=len(conns), thread_name_prefix="dm-memsql-reader")

    def __len__(self) -> int:
        return len(self.conns)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        def task() -> Any:
            conn = self._idle.get()
            try:
                return fn(conn, *args)
            finally:
                self._idle.put(conn)

        return self._pool.submit(task)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for c in self.conns if self.owned else ():
            try:
                c.close()
            except Exception:  # a broken connection: nothing left to do with it
                pass


class OrderedRanges:
    """Hands out consecutive key ranges ``[lo, hi]`` and yields their results in key order.

    ``fetch(conn, lo, hi)`` returns ``(frames, nbytes, next_key)``: the range's frames as ``(body, rows)``,
    their size, and for an empty range the first key above ``hi`` (None when there is none), so a gap in
    the keys is skipped. The step adapts so that a range is about ``target`` bytes.
    """

    def __init__(self, pool: ReaderPool, fetch: Callable[..., tuple[list[tuple[bytes, int]], int, int | None]],
                 lo: int, top: int, target: int, step: int = 256) -> None:
        self.pool, self.fetch = pool, fetch
        self.lo, self.top, self.target, self.step = lo, top, target, step
        self.window = 2 * len(pool)

    def __iter__(self) -> Any:
        pending: deque[tuple[int, int, Future[Any]]] = deque()
        try:
            while True:
                while len(pending) < self.window and self.lo <= self.top:
                    hi = min(self.lo + self.step - 1, self.top)
                    pending.append((self.lo, hi, self.pool.submit(self.fetch, self.lo, hi)))
                    self.lo = hi + 1
                if not pending:
                    return
                lo, hi, fut = pending.popleft()
                frames, nbytes, next_key = fut.result()
                yield from frames
                width = hi - lo + 1
                if not frames:
                    if next_key is None:
                        self.lo = self.top + 1  # nothing above: the ranges in flight come back empty
                    elif next_key > self.lo:
                        self.lo = next_key
                    self.step = min(self.step * 2, 1 << 40)
                else:
                    self.step = max(1, int(width * min(4.0, max(0.25, self.target / max(nbytes, 1)))))
        finally:
            for _, _, fut in pending:
                fut.cancel()
            for _, _, fut in pending:
                if not fut.cancelled():
                    try:
                        fut.result()
                    except Exception:  # the first error is already on its way up
                        pass
