"""Running a job: what every operation on a dataset goes through, whatever it does inside.

A job is recorded in the state database (one task per source), asks the guard plugins whether the dataset
may be touched now, takes the dataset's lock in its storage, marks it unavailable, runs its body under a
time limit, and always releases what it took: marked available again, unlocked, recorded done or failed.
See docs/control-flow.md. Operations (backup, restore, copy) give :meth:`JobRunner.run` a body; the body
sees a :class:`JobContext`, never the runner. The service and scale-out workers run jobs through this too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

from .errors import DataManagerError, RefusedError, first_line
from .jobs import JobTimeoutError, Recorder, StateDB, Watchdog
from .locks import DatasetLock, LockSettings
from .plugins import Registry
from .progress import checked
from .threads import Background
from .types import Dataset, Operation, Storage

log = logging.getLogger(__name__)

ProgressFactory = Callable[[str], Callable[[int], None] | None]


def one_line(exc: BaseException) -> str:
    """An error as the one line a job records and a user reads."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, DataManagerError):
        return first_line(exc)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _disarm(watchdog: Watchdog) -> None:
    """Stop the watchdog; swallow its own interruption if it fired just before (the job then failed anyway)."""
    try:
        watchdog.disarm()
    except KeyboardInterrupt:
        if not watchdog.fired:
            raise
        watchdog.disarm()


class JobContext:
    """What the body of a job sees: the recorder, the watchdog and the lock."""

    def __init__(self, rec: Recorder, watchdog: Watchdog, lock: DatasetLock) -> None:
        self.rec = rec
        self.watchdog = watchdog
        self.lock = lock

    @property
    def job_id(self) -> str:
        return self.rec.job.id

    def check(self) -> None:
        """Between steps: stop if the time limit passed or the lock was broken.

        The lock is read back from the storage each time (not only by the heartbeat, every ttl/3), so a
        forced ``lock break`` stops the job at the next source boundary, before another job overlaps it.
        """
        self.watchdog.check()
        if not self.lock.verify():
            raise DataManagerError(
                f"job {self.job_id}: the lock on {self.lock.data_id} was broken while the job ran "
                f"(data-manager lock break --force?); stopping, another job may hold the dataset now"
            )

    def progress(self, factory: ProgressFactory | None, label: str) -> Callable[[int], None]:
        return checked(factory(label) if factory else None, self.watchdog.check)


class JobRunner:
    """Runs job bodies on the datasets of one config: guards, lock, availability, time limit, records."""

    def __init__(self, registry: Registry, state: StateDB, lock_settings: LockSettings,
                 storage: Callable[[str], Storage], timeout: Callable[[Dataset], float]) -> None:
        self.registry = registry
        self.state = state
        self.lock_settings = lock_settings
        self._storage = storage  # a storage by its name in the config
        self._timeout = timeout  # the time limit of a job on a dataset

    def _check_guards(self, dataset: Dataset, operation: Operation) -> None:
        reasons = [r for r in self.registry.hook.check_dataset(dataset=dataset, operation=operation) if r]
        if reasons:
            raise RefusedError(f"{operation} of {dataset.data_id!r} refused: {'; '.join(reasons)}")

    def _call(self, hook_name: str, plugin_name: str, **kwargs: Any) -> Any:
        # One plugin at a time (which guards entered decides which are undone), yet through pluggy, so
        # arguments, wrappers and -vv tracing are those of every other hook call.
        return self.registry.call_plugin(hook_name, plugin_name, **kwargs)

    def _mark_busy(self, dataset: Dataset, operation: Operation, rec: Recorder, entered: list[str]) -> None:
        """``before_operation`` of every guard, last registered first (pluggy's order), appending each that
        succeeds to ``entered`` as it goes: if one fails, the caller undoes exactly those that got in."""
        try:
            for name in reversed(self.registry.implementers("before_operation")):
                self._call("before_operation", name, dataset=dataset, operation=operation, job_id=rec.job.id)
                entered.append(name)
        finally:
            if entered:
                rec.unavailable()

    def _release(self, entered: list[str], dataset: Dataset, operation: Operation, error: BaseException | None,
                 rec: Recorder) -> str | None:
        """``after_operation`` of every guard that entered and of plugins with only an after hook, in
        registration order.

        Never raises: a failure is logged loudly, recorded for ``status`` and returned.
        """
        # A guard whose before_operation failed or never ran has nothing to undo; plugins with only an
        # after_operation (notifiers, metrics) are always told.
        guards = set(self.registry.implementers("before_operation"))
        failures = []
        for name in self.registry.implementers("after_operation"):
            if name in guards and name not in entered:
                continue
            try:
                self._call("after_operation", name, dataset=dataset, operation=operation, error=error,
                           job_id=rec.job.id)
            except Exception as exc:
                failures.append(f"{name}: {one_line(exc)}")
        if failures:
            text = (f"{dataset.data_id} may still be marked unavailable: releasing it after {operation} job "
                    f"{rec.job.id} failed: {'; '.join(failures)}")
            log.error("%s", text)
            rec.release_failed(text)
            return text
        if entered:
            rec.available()
        return None

    def run(
        self,
        dataset: Dataset,
        operation: str,
        tasks: list[tuple[str, str]],
        body: Callable[[JobContext], Any],
        *,
        wait: float = 0.0,
        prepare: Callable[[], Any] | None = None,
        guarded: bool = True,
        lock_in: tuple[str, Storage] | None = None,
        backup: str | None = None,
    ) -> tuple[Any, Recorder, str | None]:
        """Run ``body`` as a job: record, ask guards, lock, mark busy, run with a time limit, release, unlock.

        ``prepare`` (read-only checks) runs on a thread while guards are asked and the lock settles; its
        error fails the job before the dataset is marked busy. ``guarded=False``: a job that never touches
        the dataset's data (a copy between storages) asks no guards and marks nothing unavailable.
        ``lock_in=(name, storage)``: take the dataset's lock there (checked first) instead of in the
        dataset's own storage. ``backup``: the backup the job is about, if known at the start.

        Returns ``(body's result, recorder, release error)``; raises the job's error (a timeout as
        :class:`~data_manager.jobs.JobTimeoutError`), after the dataset was released and unlocked.
        """
        try:
            self.state.reap()
        except DataManagerError as exc:
            log.warning("%s", exc)
        rec = Recorder(self.state, self.state.create_job(operation, dataset.data_id, tasks))
        where = f" to {lock_in[0]}" if lock_in else ""
        what = f"{operation} of {dataset.data_id}{where} (job {rec.job.id})"
        lock: DatasetLock | None = None
        watchdog: Watchdog | None = None
        entered: list[str] = []
        prepared = Background(prepare, "dm-prepare") if prepare is not None else None
        op = cast(Operation, operation)
        try:
            try:
                if guarded:
                    self._check_guards(dataset, op)
                if lock_in is not None:
                    lock_in[1].check()  # an unusable storage in its own words, not as a failed lock write
                storage = lock_in[1] if lock_in is not None else self._storage(dataset.storage)
                lock = DatasetLock(storage, dataset.data_id, rec.job.id, operation, self.lock_settings)
                lock.acquire(wait)
                if prepared is not None:
                    prepared.result()
                rec.start(backup)
                log.info("%s started", what)
                watchdog = Watchdog(self._timeout(dataset), what)
                if guarded:
                    self._mark_busy(dataset, op, rec, entered)
                result = body(JobContext(rec, watchdog, lock))
                _disarm(watchdog)
            except BaseException as exc:
                error: BaseException = exc
                if watchdog is not None:
                    _disarm(watchdog)
                    if watchdog.fired and not isinstance(exc, JobTimeoutError):
                        error = watchdog.error()
                        error.__cause__ = exc
                if guarded:
                    self._release(entered, dataset, op, error, rec)
                rec.finish(f"{where.strip()}: {one_line(error)}" if where else one_line(error))
                log.info("%s failed: %s", what, one_line(error))
                if error is exc:
                    raise
                raise error from exc
            release_error = self._release(entered, dataset, op, None, rec) if guarded else None
            rec.finish(None)
            log.info("%s done", what)
            return result, rec, release_error
        finally:
            if lock is not None:
                lock.release()
