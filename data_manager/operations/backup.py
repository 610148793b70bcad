"""The backup operation: every source of a dataset into a new backup of the repository, as one job.

A source's work is recorded as a task; a failed or interrupted backup stays incomplete (``--resume``
continues it source by source); the backup counts only once ``backup.json`` is written, last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..parallel import SourceRunner
from ..progress import begin, previous_size
from ..engines.records import SourceRecord
from ..runner import JobContext, ProgressFactory, one_line
from ..scrub import scrub
from ..types import Source, SourceSpec
from .copy import copy_after_backup

if TYPE_CHECKING:
    from ..api import DataManager

log = logging.getLogger(__name__)


@dataclass
class SourceResult:
    name: str
    type: str
    size: int
    stored_size: int
    seconds: float


@dataclass
class BackupResult:
    data_id: str
    timestamp: str
    location: str
    sources: list[SourceResult]
    size: int
    stored_size: int
    seconds: float
    dry_run: bool = False
    job_id: str | None = None
    resumed: list[str] = field(default_factory=list)  # sources an earlier, interrupted run had done
    release_error: str | None = None  # the backup is complete, but marking the dataset available failed
    copies: list[str] = field(default_factory=list)  # the storages of the dataset's ``copies`` it was copied to
    copy_error: str | None = None  # the backup is complete, but copying it to one of its ``copies`` failed

    def to_json(self) -> dict[str, Any]:
        return {
            "data_id": self.data_id,
            "timestamp": self.timestamp,
            "location": self.location,
            "size": self.size,
            "stored_size": self.stored_size,
            "seconds": self.seconds,
            "dry_run": self.dry_run,
            "job_id": self.job_id,
            "resumed": self.resumed,
            "release_error": self.release_error,
            "copies": self.copies,
            "copy_error": self.copy_error,
            "sources": [vars(s) for s in self.sources],
        }



def backup(
    dm: DataManager,
    data_id: str,
    *,
    dry_run: bool = False,
    progress: ProgressFactory | None = None,
    resume: bool = False,
    wait: float = 0.0,
    parallel: int | None = None,
) -> BackupResult:
    """Back up every source of ``data_id``, as a job. The backup counts only once its metadata is written.

    ``resume``: continue the newest incomplete backup instead, redoing only the sources it had not
    finished. ``wait``: seconds to wait for another job's lock on the dataset before giving up (exit 3).
    ``parallel``: sources backed up at once (default: the dataset's ``parallel``, else 1).
    """
    dataset = dm.dataset(data_id)
    runner: SourceRunner[tuple[SourceSpec, Source]] = dm.source_runner(dataset, parallel)
    repo = dm.repository(dataset.storage)
    sources = [(spec, dm.source(spec)) for spec in dataset.sources]
    if dry_run:
        repo.check()
        for _, source in sources:
            source.check()
        ts = repo.new_timestamp(data_id)
        return BackupResult(data_id, ts, f"{repo.location()}/{data_id}/{ts}",
                            [SourceResult(s.name, spec.type, 0, 0, 0.0) for spec, s in sources], 0, 0, 0.0, True)
    repo.check()
    if resume:
        repo.resumable(data_id)  # fail now, before guards and locks, if there is nothing to resume
    resumed: list[str] = []

    def body(ctx: JobContext) -> Any:
        timestamp = repo.resumable(data_id) if resume else None
        writer = repo.start_backup(
            data_id, {"storage": {"name": dataset.storage, "type": dm.config.storages[dataset.storage].type}},
            timestamp,
        )
        ctx.rec.set_backup(writer.timestamp)
        begin(progress, f"backup {data_id}", previous_size(repo, data_id) if progress else None)
        log.info("backup %s/%s to %s %s", data_id, writer.timestamp, repo.location(),
                 "resumed" if resume else "started")
        if resume:
            for gone in writer.discard_other_sources({spec.name for spec, _ in sources}):
                log.warning("%s/%s: removed %s, not a source of %s any more", data_id, writer.timestamp, gone, data_id)
        def one(spec: SourceSpec, source: Source) -> None:
            if resume:
                done = writer.finished_source(spec.name)
                if done is not None:
                    writer.add_done(done)
                    resumed.append(spec.name)
                    ctx.rec.task_done(spec.name, done.size, "done by an earlier, interrupted run")
                    log.info("source %s: done by the interrupted run, kept", spec.name)
                    return
                writer.resume_source(spec.name)  # what the interrupted run committed: kept or deleted
            ctx.rec.task_started(spec.name)
            try:
                _, plugin = dm.registry.source_type(spec.type, spec.settings.where)
                record = SourceRecord(
                    name=spec.name,
                    type=spec.type,
                    plugin={"name": plugin.name, "package": plugin.package, "version": plugin.version},
                    settings=spec.settings.public(),
                    describe=scrub(source.describe()),  # may hold expanded ${VAR}s (a DSN's password)
                )
                sink = writer.source(record, runner.guard(ctx.progress(progress, spec.name)))
                source.backup(sink)
                writer.add_done(sink.finish())
            except BaseException as exc:
                ctx.rec.task_failed(spec.name, one_line(exc))
                raise
            ctx.rec.task_done(spec.name, record.size)
            log.info("source %s: %d bytes in %.1fs", spec.name, record.size, record.duration_seconds)

        try:
            runner.run(sources, lambda item: one(*item), between=ctx.check, tick=ctx.watchdog.check)
            order = [spec.name for spec, _ in sources]  # parallel sources finish in any order: keep the config's
            writer.sources.sort(key=lambda r: order.index(r.name))
            resumed.sort(key=order.index)
            ctx.check()
            return writer, writer.commit()
        finally:
            writer.abort()  # after a commit: nothing to release

    def check_sources() -> None:
        # An unreachable or misconfigured source fails the backup before anything is marked or written;
        # checking while the lock settles also hides the time plugins take to import their client libraries.
        for _, source in sources:
            source.check()

    (writer, manifest), rec, release_error = dm.runner.run(
        dataset, "backup", [(spec.name, spec.type) for spec, _ in sources], body, wait=wait,
        prepare=None if resume else check_sources,  # a resumed backup may not need every source again
    )
    log.info("backup %s/%s complete", data_id, writer.timestamp)
    result = BackupResult(
        data_id,
        writer.timestamp,
        f"{repo.location()}/{data_id}/{writer.timestamp}",
        [SourceResult(s.name, s.type, s.size, s.stored_size, s.duration_seconds) for s in writer.sources],
        manifest["size"],
        manifest["stored_size"],
        manifest["duration_seconds"],
        job_id=rec.job.id,
        resumed=resumed,
        release_error=release_error,
    )
    copy_after_backup(dm, dataset, result, progress)  # the dataset's `copies`; a failure: result.copy_error
    return result
