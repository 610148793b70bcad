"""The restore operation: the sources of one backup put back where the config (or ``--set``) says, as one job.

A source missing from the config is restored from its recorded settings, but never to a recorded target:
where data is written comes from the user, not from the storage's content.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import make_settings
from ..errors import PluginError, UsageError
from ..parallel import SourceRunner
from ..progress import begin
from ..engines.base import RepositoryEngine
from ..engines.records import BackupInfo, SourceRecord
from ..timestamps import parse_timestamp
from ..runner import JobContext, ProgressFactory, one_line
from ..scrub import scrub
from ..types import Dataset, Source, SourceSpec

if TYPE_CHECKING:
    from ..api import DataManager

log = logging.getLogger(__name__)


@dataclass
class RestoreResult:
    data_id: str
    timestamp: str
    sources: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False
    job_id: str | None = None
    release_error: str | None = None  # the restore is complete, but marking the dataset available failed

    def to_json(self) -> dict[str, Any]:
        return {"data_id": self.data_id, "timestamp": self.timestamp, "sources": self.sources, "dry_run": self.dry_run,
                "job_id": self.job_id, "release_error": self.release_error}



def restore_plan(
    dm: DataManager, data_id: str, which: str, overrides: Mapping[str, Mapping[str, Any]], only: list[str] | None
) -> tuple[Dataset, RepositoryEngine, BackupInfo, list[tuple[SourceRecord, Source]]]:
    dataset = dm.stored_dataset(data_id)
    if which != "latest":
        parse_timestamp(which)
    repo, info = dm.find_backup(data_id, which)
    records = list(repo.source_records(info))
    names = [r.name for r in records]
    for name in list(overrides) + list(only or []):
        if name not in names:
            raise UsageError(f"backup {data_id}/{info.timestamp} has no source {name!r} (sources: {', '.join(names)})")
    configured = {s.name: s for s in dataset.sources}
    plan = []
    for rec in records:
        if only and rec.name not in only:
            continue
        spec = configured.get(rec.name)
        if spec is None or spec.type != rec.type:
            spec = recorded_spec(dm, data_id, info.timestamp, rec, overrides.get(rec.name, {}))
        settings = spec.settings.overridden(overrides.get(rec.name, {}))
        plan.append((rec, dm.source(spec, settings)))
    return dataset, repo, info, plan

def recorded_spec(dm: DataManager, data_id: str, timestamp: str, rec: SourceRecord, given: Mapping[str, Any]) -> SourceSpec:
    """A source the config does not have (any more): its recorded settings, ``${VAR}`` read now, but
    never its recorded target: where it is restored must come from the user (``--set``)."""
    where = f"backup {data_id}/{timestamp}, source {rec.name!r}"
    stype, _ = source_type_for_restore(dm, rec.type, where)
    missing = [k for k in stype.target_keys if k not in given] if stype.target_keys else ([] if given else [""])
    if missing:
        if missing == [""]:
            hint = f"--set {rec.name}.KEY=VALUE for the settings that say where it goes"
        else:
            hint = " ".join(f"--set {rec.name}.{k}=..." for k in missing)
            recorded = ", ".join(f"{k}={rec.settings.get(k)!r}" for k in missing if k in rec.settings)
            hint += f" (recorded: {recorded})" if recorded else ""
        raise UsageError(f"{where} is not in the config: say where to restore it with {hint}, or --only the others")
    return SourceSpec(rec.name, rec.type, make_settings(dict(rec.settings), where, stype.secret_keys, dm.config.secrets))

def source_type_for_restore(dm: DataManager, type_name: str, where: str) -> Any:
    if type_name not in dm.registry.source_types:
        raise PluginError(f"{where}: needs source type {type_name!r}, which no installed plugin provides")
    return dm.registry.source_types[type_name]



def restore(
    dm: DataManager,
    data_id: str,
    which: str = "latest",
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    only: list[str] | None = None,
    dry_run: bool = False,
    progress: ProgressFactory | None = None,
    wait: float = 0.0,
    parallel: int | None = None,
) -> RestoreResult:
    """Put every source (or ``only`` some) back as it was at the backup ``which``.

    ``overrides`` maps a source name to settings replacing the configured ones, to restore elsewhere.
    ``parallel``: sources restored at once (default: the dataset's ``parallel``, else 1).
    """
    dataset, repo, info, plan = restore_plan(dm, data_id, which, overrides or {}, only)
    runner: SourceRunner[tuple[SourceRecord, Source]] = dm.source_runner(dataset, parallel)
    result = RestoreResult(data_id, info.timestamp, dry_run=dry_run)
    for rec, source in plan:
        result.sources.append({"name": rec.name, "type": rec.type, "target": scrub(source.describe()), "size": rec.size})
    if dry_run:
        return result

    def body(ctx: JobContext) -> None:
        ctx.rec.set_backup(info.timestamp)
        begin(progress, f"restore {data_id}/{info.timestamp}", sum(r.size for r, _ in plan),
              sum(len(r.artifacts) for r, _ in plan))

        def one(rec: SourceRecord, source: Source) -> None:
            ctx.rec.task_started(rec.name)
            try:
                artifacts = repo.artifacts(info, rec.name, runner.guard(ctx.progress(progress, rec.name)))
                log.info("restoring %s/%s source %s into %s", data_id, info.timestamp, rec.name, source.describe())
                source.restore(artifacts)
            except BaseException as exc:
                ctx.rec.task_failed(rec.name, one_line(exc))
                raise
            ctx.rec.task_done(rec.name, rec.size)

        runner.run(plan, lambda item: one(*item), between=ctx.check, tick=ctx.watchdog.check)

    _, job, result.release_error = dm.runner.run(
        dataset, "restore", [(rec.name, rec.type) for rec, _ in plan], body, wait=wait
    )
    result.job_id = job.job.id
    return result
