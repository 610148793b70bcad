"""Events: what the service tells its clients as server-sent events (``GET /v1/events``,
``GET /v1/jobs/{id}/events``).

Every event is stored in the state database (``service_events``) before anyone sees it; its row id is the
SSE ``id``, monotonic across restarts. The newest :data:`RING` events are also kept in memory, so a client
reconnecting with ``Last-Event-ID`` is answered from memory, or from the database when it fell further
behind (up to :data:`KEEP` events are kept there). So a reconnect loses no event that is still kept.

Types: ``job.created``, ``job.started`` (an attempt began: ``attempt``, ``resume``), ``job.progress``
(the CLI's ``--json`` progress, at most one a second per job), ``job.retrying``, ``job.interrupted``,
``job.done``, ``job.failed``, ``job.cancelled``, ``schedule.skipped``, ``schedule.paused``,
``schedule.resumed``. ``data`` is JSON: ``{"type", "job_id", "data_id", "at", ...}``.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..scrub import scrub
from ..timestamps import iso, now_utc
from .store import Store

RING = 2000
KEEP = 20_000


class EventBus:
    def __init__(self, store: Store, ring: int = RING, keep: int = KEEP) -> None:
        self.store = store
        self.keep = keep
        self._ring: deque[dict[str, Any]] = deque(maxlen=ring)
        self._lock = threading.Lock()
        self._published = 0
        self._local = threading.local()
        self.last_id = store.last_event_id()

    def publish(self, type_: str, *, job_id: str | None = None, data_id: str | None = None, **data: Any) -> dict[str, Any]:
        """Store and publish one event; returns it (with its ``id``; inside :meth:`deferred`, without: it
        is stored and published when the block ends)."""
        at = iso(now_utc())
        body = scrub({"type": type_, "job_id": job_id, "data_id": data_id, "at": at, **data})
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            pending.append((type_, job_id, data_id, body, at))
            return body
        return self._publish([(type_, job_id, data_id, body, at)])[0]

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Events this thread publishes inside the block are stored in one transaction and published when
        it ends without an error; on an error they are dropped (what they told of was rolled back)."""
        if getattr(self._local, "pending", None) is not None:
            yield
            return
        pending: list[tuple[str, str | None, str | None, dict[str, Any], str]] = []
        self._local.pending = pending
        try:
            yield
        finally:
            self._local.pending = None
        if pending:
            self._publish(pending)

    def _publish(self, rows: list[tuple[str, str | None, str | None, dict[str, Any], str]]) -> list[dict[str, Any]]:
        with self._lock:
            ids = self.store.add_events(rows)
            events = [{"id": event_id, **row[3]} for event_id, row in zip(ids, rows)]
            self._ring.extend(events)
            self.last_id = ids[-1]
            before, self._published = self._published, self._published + len(events)
            if before // 1000 != self._published // 1000:
                self.store.prune_events(self.keep)
        return events

    def after(self, last_id: int, job_id: str | None = None, limit: int = 500,
              memory_only: bool = False) -> list[dict[str, Any]] | None:
        """Events with an id above ``last_id`` (of one job, if given), oldest first. ``memory_only``: None
        instead of reading the database (the caller, on an event loop, then reads it on a thread)."""
        with self._lock:
            if last_id >= self.last_id:
                return []
            ring = list(self._ring) if self._ring and self._ring[0]["id"] <= last_id + 1 else None
        if ring is None:  # fell behind the ring (or a fresh start): from the database
            if memory_only:
                return None
            rows = self.store.events_after(last_id, job_id=job_id, limit=limit)
            return [{"id": r["id"], **json.loads(r["data"])} for r in rows]
        out = [e for e in ring if e["id"] > last_id and (job_id is None or e["job_id"] == job_id)]
        return out[:limit]
