"""The service's parts put together: config, state database, launcher, scheduler, events, metrics, tokens.

:class:`Service` is what the web application (:mod:`.app`) and ``data-manager serve``
(:mod:`data_manager.cli_service`) hold. :meth:`Service.acquire` takes the state database for this service
alone (an exclusive ``flock`` on ``STATE.service.lock``, released by the kernel when the process dies,
``kill -9`` included); a second service on the same database exits 2.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .auth import Tokens
from .events import EventBus
from .jobs import Launcher
from .metrics import Metrics
from .scheduler import Scheduler
from .settings import Schedule, ServiceSettings, expand_tokens, schedules, service_settings
from .store import Store

log = logging.getLogger(__name__)

HISTORY_EVERY = 600.0  # seconds between two passes of job history retention


class ServiceBusyError(UsageError):
    """Another service uses the state database."""


class Service:
    def __init__(self, dm: Any, *, tokens: dict[str, tuple[str, str]] | None = None) -> None:
        self.dm = dm
        config = dm.config
        if config.path is None:
            raise UsageError("the service needs a config file (--config PATH)")
        self.config_path = Path(config.path).resolve()
        file = str(config.path)
        self.settings: ServiceSettings = service_settings(config.data, file)
        self.schedules: dict[str, Schedule] = schedules(config.datasets, file)
        self.tokens = Tokens(expand_tokens(self.settings, file) if tokens is None else tokens)
        self.state = dm.state
        self.store = Store(dm.state.path)
        self.bus = EventBus(self.store)
        self.metrics = Metrics(self.store)
        self.launcher = Launcher(self.store, self.bus, self.metrics, self.settings, self.config_path, self.schedules,
                                 self.state)
        self.scheduler = Scheduler(self.store, self.schedules, self._submit_scheduled, on_lag=None)
        self.dm_lock = threading.Lock()  # the DataManager's storages are used by one request at a time
        self._owner: int | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ready = False

    # ------------------------------------------------------------------ one service per state database

    @property
    def lock_path(self) -> Path:
        return self.store.path.with_name(self.store.path.name + ".service.lock")

    def acquire(self) -> None:
        if self._owner is not None:
            return
        self.lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ServiceBusyError(f"another data-manager serve (pid {holder}) uses the state database "
                                   f"{self.store.path}; one service per state database") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._owner = fd

    def release(self) -> None:
        if self._owner is not None:
            os.close(self._owner)  # closes the flock too
            self._owner = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.acquire()
        self.launcher.expire_history()
        self.launcher.start()  # recovers what a killed service left running
        self._stop.clear()
        for target, name in ((self._schedule_loop, "dm-scheduler"), (self._history_loop, "dm-history")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self.ready = True
        log.info("service: %d datasets, %d schedules, state database %s", len(self.dm.config.datasets),
                 len(self.schedules), self.store.path)

    def stop(self) -> None:
        self.ready = False
        self._stop.set()
        self.launcher.stop()
        for t in self._threads:
            t.join(5)
        self._threads.clear()
        self.release()

    @property
    def healthy(self) -> bool:
        return self.ready and self.launcher.alive and all(t.is_alive() for t in self._threads)

    def _schedule_loop(self) -> None:
        while not self._stop.wait(1.0 - (time.time() % 1.0) + 0.01):  # just after each second
            try:
                with self.bus.deferred():  # the tick's events: stored in one transaction, after the tick's
                    for decided in self.scheduler.tick():
                        self.metrics.scheduled(decided)
                        if decided["outcome"] in ("skipped", "paused"):
                            self.bus.publish(f"schedule.{decided['outcome']}", data_id=decided["data_id"],
                                             due_at=decided["due_at"], coalesced=decided["coalesced"])
            except Exception as exc:  # the next second tries again
                log.error("schedules: %s", exc)

    def _history_loop(self) -> None:
        while not self._stop.wait(HISTORY_EVERY):
            try:
                self.launcher.expire_history()
            except Exception as exc:
                log.warning("job history retention: %s", exc)

    def _submit_scheduled(self, schedule: Schedule, due_at: str, coalesced: int) -> dict[str, Any] | None:
        job, created = self.launcher.submit("backup", schedule.data_id, {}, "schedule", due=(due_at, coalesced))
        return job if created else None
