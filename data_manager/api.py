"""The Python API: what the CLI calls, and what other systems (the experiments-manager) import.

    from data_manager import DataManager

    dm = DataManager.from_file("data-manager.toml")
    result = dm.backup("exp42")
    dm.restore("exp42", "latest", overrides={"raw": {"path": "/tmp/raw-restored"}})

Every backup and restore runs as a *job* (see docs/control-flow.md): guards asked, the dataset's lock
taken in the storage, the dataset marked unavailable, the work done source by source (one task each,
recorded in the local state database), and the dataset marked available again, always.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import Config, load_config, make_settings, parse_config
from .errors import ConfigError, CorruptBackupError, DataManagerError, PluginError, RefusedError, UsageError
from .jobs import DEFAULT_TIMEOUT, Availability, Job, StateDB, parse_duration, state_path
from .locks import DatasetLock, LockInfo, LockSettings, break_locks, list_locks
from .parallel import SourceRunner
from .monitoring import Monitoring
from .plugins import Registry, get_registry
from .progress import begin, previous_size
from .runner import JobContext, JobRunner, ProgressFactory, one_line
from .repository import BackupInfo, Repository, SourceRecord, now_utc, parse_timestamp
from .scrub import scrub
from .throttle import throttled
from .types import Dataset, Settings, Source, SourceSpec, Storage
from .verifying import VerifyResult, failed, verify_backup

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


@dataclass
class Status:
    """What ``data-manager status`` shows."""

    config: str | None
    state: str
    plugins: list[dict[str, Any]]
    storages: list[dict[str, Any]]
    datasets: list[dict[str, Any]]
    running: list[Job]
    recent: list[Job]
    unavailable: list[Availability]

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "state": self.state,
            "plugins": self.plugins,
            "storages": self.storages,
            "datasets": self.datasets,
            "running": [j.to_json() for j in self.running],
            "recent": [j.to_json() for j in self.recent],
            "unavailable": [a.to_json() for a in self.unavailable],
        }


@dataclass
class CleanupItem:
    """One incomplete backup ``cleanup`` looked at."""

    data_id: str
    timestamp: str
    age_seconds: int
    stored_size: int
    action: str  # removed | would remove | kept

    reason: str = ""
    path: str = ""  # a restore's leftover beside a source's target (then timestamp is "")

    def to_json(self) -> dict[str, Any]:
        return vars(self).copy()


class DataManager:
    """Back up, list, restore and verify the datasets of one config."""

    def __init__(self, config: Config, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry or get_registry()
        self._storages: dict[str, Storage] = {}
        file = str(config.path) if config.path else "<config>"
        self.state = StateDB(state_path(config.data, file))
        self.lock_settings = LockSettings.from_config(config.data, file)
        self.default_timeout = self._jobs_table(file)
        self.monitoring = Monitoring.from_config(config.data, file, config.secrets)
        for data_id, ds in config.datasets.items():
            self.timeout(ds)  # a bad per-dataset timeout is a config error now, not at backup time
            self.parallel(ds)
        # Bytes per second for every storage, overriding their limit_upload/limit_download (set_limits).
        self.limit_upload: int | None = None
        self.limit_download: int | None = None
        self._configure_plugins(file)
        self.runner = JobRunner(self.registry, self.state, self.lock_settings, self.storage, self.timeout)

    def _jobs_table(self, file: str) -> float:
        table = self.config.data.get("jobs", {})
        if not isinstance(table, dict):
            raise ConfigError(f"{file}: key 'jobs': must be a table", key="jobs")
        unknown = sorted(set(table) - {"timeout"})
        if unknown:
            raise ConfigError(f"{file}: [jobs]: key {unknown[0]!r}: unknown (known: timeout)", key=unknown[0])
        return parse_duration(table["timeout"], f"{file}: [jobs]", "timeout") if "timeout" in table else DEFAULT_TIMEOUT

    def timeout(self, dataset: Dataset) -> float:
        """The time limit of a job on ``dataset``: its ``timeout``, else ``[jobs] timeout``, else 6 h."""
        if "timeout" in dataset.options:
            where = f"{self.config.path or '<config>'}: dataset {dataset.data_id!r}"
            return parse_duration(dataset.options["timeout"], where, "timeout")
        return self.default_timeout

    def parallel(self, dataset: Dataset) -> int:
        """How many sources of ``dataset`` a backup or restore runs at once: its ``parallel``, else 1."""
        value = dataset.options.get("parallel", 1)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)  # "${PARALLEL}" expands to a string
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            where = f"{self.config.path or '<config>'}: dataset {dataset.data_id!r}"
            raise ConfigError(f"{where}: key 'parallel': must be a positive integer (sources at once), not {value!r}",
                              key="parallel")
        return value

    def set_limits(self, upload: int | None = None, download: int | None = None) -> None:
        """Bytes per second for every storage's uploads and downloads (0: unlimited), overriding the
        storages' ``limit_upload``/``limit_download``; None keeps those. Storages already built are rebuilt."""
        self.limit_upload, self.limit_download = upload, download
        self.close()

    def _runner(self, dataset: Dataset, parallel: int | None) -> SourceRunner[Any]:
        """Runs the sources of a job on ``dataset``: ``parallel`` at once, else the dataset's ``parallel``."""
        parallel = self.parallel(dataset) if parallel is None else parallel
        if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
            raise UsageError(f"parallel: expected a positive number of sources at once, not {parallel!r}")
        return SourceRunner(parallel)

    def _configure_plugins(self, file: str) -> None:
        """Give every plugin its ``[guards.NAME]`` table (hook ``configure``); unclaimed tables are errors."""
        raw = self.config.data.get("guards", {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: key 'guards': must be a table of [guards.NAME] tables", key="guards")
        guards = {}
        for name, table in raw.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{file}: key 'guards.{name}': must be a table", key=f"guards.{name}")
            guards[name] = make_settings(table, f"{file}: [guards.{name}]", (), self.config.secrets)
        claimed: set[str] = set()
        for names in self.registry.hook.configure(config=self.config.data, guards=guards):
            claimed.update(names or ())
        unclaimed = sorted(set(guards) - claimed)
        if unclaimed:
            broken = [p.name for p in self.registry.broken]
            hint = f"; plugins that failed to load: {', '.join(broken)}" if broken else ""
            raise ConfigError(
                f"{file}: [guards.{unclaimed[0]}]: no installed plugin uses this table "
                f"(is data-manager-{unclaimed[0]} installed?){hint}",
                key=f"guards.{unclaimed[0]}",
            )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str] | None = None) -> DataManager:
        """Load the config from ``path``, or by the documented search order when ``None``."""
        registry = get_registry()
        return cls(load_config(path, registry), registry)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataManager:
        registry = get_registry()
        return cls(parse_config(data, registry), registry)

    # ------------------------------------------------------------------ plumbing

    def storage(self, name: str) -> Storage:
        if name not in self._storages:
            cfg = self.config.storages[name]
            stype, _ = self.registry.storage_type(cfg.type, cfg.settings.where)
            upload = cfg.limit_upload if self.limit_upload is None else self.limit_upload
            download = cfg.limit_download if self.limit_download is None else self.limit_download
            self._storages[name] = throttled(stype.factory(name, cfg.settings), upload, download)
        return self._storages[name]

    def repository(self, storage_name: str) -> Repository:
        return Repository(self.storage(storage_name))

    def dataset(self, data_id: str) -> Dataset:
        if data_id in self.config.datasets:
            return self.config.datasets[data_id]
        found = self.registry.hook.resolve_dataset(data_id=data_id, config=self.config.data)
        if found is not None:
            return found
        return self.config.dataset(data_id)  # raises the "unknown dataset" error

    def stored_dataset(self, data_id: str) -> Dataset:
        """The dataset to read backups of: the configured one, else one that left the config but whose
        backups are in exactly one configured storage (restored from what they recorded)."""
        try:
            return self.dataset(data_id)
        except UsageError:
            found = [name for name in self.config.storages if self.repository(name).timestamps(data_id)]
            if len(found) != 1:
                if found:
                    raise UsageError(f"dataset {data_id!r} is not in the config and has backups in several storages "
                                     f"({', '.join(found)}): add it to the config with its storage") from None
                raise
            return Dataset(data_id, found[0], ())

    def _source(self, spec: SourceSpec, settings: Settings | None = None) -> Source:
        stype, _ = self.registry.source_type(spec.type, spec.settings.where)
        return stype.factory(spec.name, settings or spec.settings)

    def close(self) -> None:
        for storage in self._storages.values():
            storage.close()
        self._storages.clear()

    # ------------------------------------------------------------------ operations

    def backup(
        self,
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
        dataset = self.dataset(data_id)
        runner: SourceRunner[tuple[SourceSpec, Source]] = self._runner(dataset, parallel)
        repo = self.repository(dataset.storage)
        sources = [(spec, self._source(spec)) for spec in dataset.sources]
        if dry_run:
            repo.storage.check()
            for _, source in sources:
                source.check()
            ts = repo.new_timestamp(data_id)
            return BackupResult(data_id, ts, f"{repo.storage.location()}/{data_id}/{ts}",
                                [SourceResult(s.name, spec.type, 0, 0, 0.0) for spec, s in sources], 0, 0, 0.0, True)
        repo.storage.check()
        if resume:
            self._resumable(repo, data_id)  # fail now, before guards and locks, if there is nothing to resume
        resumed: list[str] = []

        def body(ctx: JobContext) -> Any:
            timestamp = self._resumable(repo, data_id) if resume else None
            writer = repo.start_backup(
                data_id, {"storage": {"name": dataset.storage, "type": self.config.storages[dataset.storage].type}},
                timestamp,
            )
            ctx.rec.set_backup(writer.timestamp)
            begin(progress, f"backup {data_id}", previous_size(repo, data_id) if progress else None)
            log.info("backup %s/%s to %s %s", data_id, writer.timestamp, repo.storage.location(),
                     "resumed" if resume else "started")
            if resume:
                configured = {spec.name for spec, _ in sources}
                for entry in list(repo.storage.list(writer.prefix)):
                    if entry.is_dir and entry.name not in configured:
                        log.warning("%s/%s: removing %s, not a source of %s any more", data_id, writer.timestamp,
                                    entry.name, data_id)
                        repo.storage.delete_tree(f"{writer.prefix}/{entry.name}")
            def one(spec: SourceSpec, source: Source) -> None:
                if resume:
                    done = repo.source_done(data_id, writer.timestamp, spec.name)
                    if done is not None:
                        writer.add_done(done)
                        resumed.append(spec.name)
                        ctx.rec.task_done(spec.name, done.size, "done by an earlier, interrupted run")
                        log.info("source %s: done by the interrupted run, kept", spec.name)
                        return
                    repo.storage.delete_tree(f"{writer.prefix}/{spec.name}")  # its partial artifacts
                ctx.rec.task_started(spec.name)
                try:
                    _, plugin = self.registry.source_type(spec.type, spec.settings.where)
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

            runner.run(sources, lambda item: one(*item), between=ctx.check, tick=ctx.watchdog.check)
            order = [spec.name for spec, _ in sources]  # parallel sources finish in any order: keep the config's
            writer.sources.sort(key=lambda r: order.index(r.name))
            resumed.sort(key=order.index)
            ctx.check()
            return writer, writer.commit()

        def check_sources() -> None:
            # An unreachable or misconfigured source fails the backup before anything is marked or written;
            # checking while the lock settles also hides the time plugins take to import their client libraries.
            for _, source in sources:
                source.check()

        (writer, manifest), rec, release_error = self.runner.run(
            dataset, "backup", [(spec.name, spec.type) for spec, _ in sources], body, wait=wait,
            prepare=None if resume else check_sources,  # a resumed backup may not need every source again
        )
        log.info("backup %s/%s complete", data_id, writer.timestamp)
        result = BackupResult(
            data_id,
            writer.timestamp,
            f"{repo.storage.location()}/{data_id}/{writer.timestamp}",
            [SourceResult(s.name, s.type, s.size, s.stored_size, s.duration_seconds) for s in writer.sources],
            manifest["size"],
            manifest["stored_size"],
            manifest["duration_seconds"],
            job_id=rec.job.id,
            resumed=resumed,
            release_error=release_error,
        )
        from .copying import copy_after_backup

        copy_after_backup(self, dataset, result, progress)  # the dataset's `copies`; a failure: result.copy_error
        return result

    def copy(self, data_id: str, which: str = "latest", *, to: str, dry_run: bool = False,
             progress: ProgressFactory | None = None, wait: float = 0.0) -> Any:
        """Copy complete backups of ``data_id`` (``which``: ``latest``, a TIMESTAMP or ``all``) as stored to
        the storage ``to``, verified, resumable, as a job locking the dataset in ``to``
        (:mod:`data_manager.copying`); returns a :class:`~data_manager.copying.CopyResult`."""
        from .copying import copy_backups

        return copy_backups(self, data_id, which, to, dry_run=dry_run, progress=progress, wait=wait)

    def _resumable(self, repo: Repository, data_id: str) -> str:
        """The backup ``--resume`` continues: the newest incomplete one, if no complete backup is newer."""
        stamps = repo.timestamps(data_id)
        incomplete = set(repo.incomplete(data_id))
        if not incomplete:
            raise UsageError(f"nothing to resume: {data_id} has no incomplete backup in {repo.storage.location()}")
        newest = max(incomplete)
        if stamps[-1] != newest:
            raise UsageError(
                f"nothing to resume: the newest backup of {data_id} ({stamps[-1]}) is complete; "
                f"older incomplete ones are removed by: data-manager cleanup {data_id}"
            )
        return newest

    def list_backups(self, data_id: str | None = None) -> list[BackupInfo]:
        """Backups of one dataset, or of every dataset, found in the configured storages; oldest first, each
        once with the storages holding it (``BackupInfo.storages``: copies too)."""
        from .copying import where_stored

        return where_stored(self, data_id, lambda repo, found: self._with_verified(repo, found, repo.backups(found)))

    def find_backup(self, data_id: str, which: str = "latest") -> tuple[Repository, BackupInfo]:
        dataset = self.stored_dataset(data_id)
        repo = self.repository(dataset.storage)
        return repo, repo.resolve(data_id, which)

    def _restore_plan(
        self, data_id: str, which: str, overrides: Mapping[str, Mapping[str, Any]], only: list[str] | None
    ) -> tuple[Dataset, Repository, BackupInfo, list[tuple[SourceRecord, Source]]]:
        dataset = self.stored_dataset(data_id)
        if which != "latest":
            parse_timestamp(which)
        repo, info = self.find_backup(data_id, which)
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
                spec = self._recorded_spec(data_id, info.timestamp, rec, overrides.get(rec.name, {}))
            settings = spec.settings.overridden(overrides.get(rec.name, {}))
            plan.append((rec, self._source(spec, settings)))
        return dataset, repo, info, plan

    def _recorded_spec(self, data_id: str, timestamp: str, rec: SourceRecord, given: Mapping[str, Any]) -> SourceSpec:
        """A source the config does not have (any more): its recorded settings, ``${VAR}`` read now, but
        never its recorded target: where it is restored must come from the user (``--set``)."""
        where = f"backup {data_id}/{timestamp}, source {rec.name!r}"
        stype, _ = self._source_type_for_restore(rec.type, where)
        missing = [k for k in stype.target_keys if k not in given] if stype.target_keys else ([] if given else [""])
        if missing:
            if missing == [""]:
                hint = f"--set {rec.name}.KEY=VALUE for the settings that say where it goes"
            else:
                hint = " ".join(f"--set {rec.name}.{k}=..." for k in missing)
                recorded = ", ".join(f"{k}={rec.settings.get(k)!r}" for k in missing if k in rec.settings)
                hint += f" (recorded: {recorded})" if recorded else ""
            raise UsageError(f"{where} is not in the config: say where to restore it with {hint}, or --only the others")
        return SourceSpec(rec.name, rec.type, make_settings(dict(rec.settings), where, stype.secret_keys, self.config.secrets))

    def _source_type_for_restore(self, type_name: str, where: str) -> Any:
        if type_name not in self.registry.source_types:
            raise PluginError(f"{where}: needs source type {type_name!r}, which no installed plugin provides")
        return self.registry.source_types[type_name]

    def restore(
        self,
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
        dataset, repo, info, plan = self._restore_plan(data_id, which, overrides or {}, only)
        runner: SourceRunner[tuple[SourceRecord, Source]] = self._runner(dataset, parallel)
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

        _, job, result.release_error = self.runner.run(
            dataset, "restore", [(rec.name, rec.type) for rec, _ in plan], body, wait=wait
        )
        result.job_id = job.job.id
        return result

    def verify(self, data_id: str, which: str = "latest", *, sample: float | None = None,
               progress: ProgressFactory | None = None) -> VerifyResult:
        """Read every artifact of a backup (or a random ``sample`` fraction of its bytes) back and check sizes
        and checksums; raises the first failure. A success is recorded in the state database."""
        repo, info = self.find_backup(data_id, which)
        return self._verified(repo, verify_backup(repo, info, sample=sample, progress=progress))

    def verify_all(self, data_id: str | None = None, *, sample: float | None = None,
                   progress: ProgressFactory | None = None) -> list[VerifyResult]:
        """Verify every complete backup of ``data_id`` (or of every dataset in the configured storages). A
        failing or damaged backup is a result with ``ok`` false; the others are still verified."""
        if data_id is not None:
            repos = [(self.repository(self.stored_dataset(data_id).storage), data_id)]
        else:
            repos = [(repo, found) for repo in map(self.repository, self.config.storages) for found in repo.data_ids()]
        out = []
        for repo, found in repos:
            for info in repo.backups(found):
                if info.damaged:
                    out.append(failed(info, CorruptBackupError(info.damaged), sample))
                elif info.complete:
                    try:
                        out.append(self._verified(repo, verify_backup(repo, info, sample=sample, progress=progress)))
                    except DataManagerError as exc:
                        log.info("verify %s/%s: %s", found, info.timestamp, exc)
                        out.append(failed(info, exc, sample))
        return out

    def _verified(self, repo: Repository, result: VerifyResult) -> VerifyResult:
        try:
            self.state.record_verify(repo.storage.location(), result.data_id, result.timestamp, result.sample)
        except DataManagerError as exc:  # bookkeeping never fails the verify itself
            log.warning("cannot record the verify of %s/%s: %s", result.data_id, result.timestamp, exc)
        return result

    def _with_verified(self, repo: Repository, data_id: str, backups: list[BackupInfo]) -> list[BackupInfo]:
        """``backups`` with when each last passed a verify (from the state database)."""
        try:
            verified = self.state.verifies(repo.storage.location(), data_id)
        except DataManagerError as exc:
            log.warning("%s", exc)
            verified = {}
        for b in backups:
            b.verified, b.verified_sample = verified.get(b.timestamp, (None, None))
        return backups

    def status(self) -> Status:
        """The config in use, plugins, storages (reachable or not), each dataset's latest backup, its age and
        locks; running and recent jobs; datasets marked unavailable (or whose release failed)."""
        storages = []
        reachable: dict[str, bool] = {}
        for name, cfg in self.config.storages.items():
            entry: dict[str, Any] = {"name": name, "type": cfg.type}
            try:
                storage = self.storage(name)
                entry["location"] = storage.location()
                storage.check()
                entry["reachable"] = True
            except DataManagerError as exc:
                entry["reachable"] = False
                entry["error"] = str(exc)
            reachable[name] = entry["reachable"]
            storages.append(entry)
        datasets = []
        now = now_utc()
        for data_id, ds in sorted(self.config.datasets.items()):
            entry = {"data_id": data_id, "storage": ds.storage, "sources": [s.name for s in ds.sources],
                     "latest": None, "age_seconds": None, "verified": None, "verified_sample": None, "incomplete": 0, "damaged": 0, "locks": []}
            if reachable.get(ds.storage):
                try:
                    repo = self.repository(ds.storage)
                    backups = self._with_verified(repo, data_id, repo.backups(data_id))
                    complete = [b for b in backups if b.complete]
                    entry["damaged"] = sum(1 for b in backups if b.damaged)
                    entry["incomplete"] = len(backups) - len(complete) - entry["damaged"]
                    if complete:
                        entry["latest"] = complete[-1].timestamp
                        entry["age_seconds"] = int((now - complete[-1].when).total_seconds())
                        entry["verified"] = complete[-1].verified
                        entry["verified_sample"] = complete[-1].verified_sample
                    entry["locks"] = [lock.to_json() for lock in self.locks(data_id)]
                except DataManagerError as exc:
                    entry["error"] = str(exc)
            datasets.append(entry)
        try:
            self.state.reap()
        except DataManagerError as exc:
            log.warning("%s", exc)
        return Status(
            config=str(self.config.path) if self.config.path else None,
            state=str(self.state.path),
            plugins=[
                {"name": p.name, "package": p.package, "version": p.version, "source_types": p.source_types,
                 "storage_types": p.storage_types, **({"error": p.error} if p.error else {})}
                for p in self.registry.plugins
            ],
            storages=storages,
            datasets=datasets,
            running=self.jobs(running=True, limit=None),
            recent=self.jobs(running=False),
            unavailable=self.state.unavailable(),
        )

    def jobs(self, data_id: str | None = None, *, running: bool | None = None, limit: int | None = 10) -> list[Job]:
        """Jobs from the state database, newest first (``running``: only unfinished, or only finished ones)."""
        return self.state.jobs(data_id=data_id, running=running, limit=limit)

    def job(self, job_id: str) -> Job:
        found = self.state.job(job_id)
        if found is None:
            raise UsageError(f"no job {job_id!r} in {self.state.path}")
        return found

    # ------------------------------------------------------------------ locks and cleanup

    def _lock_storages(self, data_id: str | None) -> list[tuple[Storage, str]]:
        if data_id is not None:
            return [(self.storage(self.dataset(data_id).storage), data_id)]
        out = []
        for name in self.config.storages:
            repo = self.repository(name)
            out.extend((repo.storage, found) for found in repo.data_ids())
        return out

    def locks(self, data_id: str | None = None) -> list[LockInfo]:
        """Lock objects of one dataset, or of every dataset in the configured storages."""
        return [lock for storage, found in self._lock_storages(data_id) for lock in list_locks(storage, found)]

    def break_lock(self, data_id: str, *, job_id: str | None = None, force: bool = False) -> list[LockInfo]:
        """Remove stale locks of ``data_id`` (live ones too with ``force``); returns what was removed."""
        return break_locks(self.storage(self.dataset(data_id).storage), data_id, job_id=job_id, force=force)

    def cleanup(self, data_id: str | None = None, *, older_than: float = 86400.0, dry_run: bool = False) -> list[CleanupItem]:
        """Remove incomplete backups started more than ``older_than`` seconds ago.

        Takes each dataset's lock while it works; if another job holds it, the newest incomplete backup
        (the one that job may be writing or resuming) is kept and only older ones are removed.
        """
        out: list[CleanupItem] = []
        now = now_utc()
        for storage, found in self._lock_storages(data_id):
            repo = Repository(storage)
            stamps = repo.incomplete(found)
            old = [ts for ts in stamps if (now - parse_timestamp(ts)).total_seconds() > older_than]
            if not old:
                continue
            lock = None
            busy = ""
            holders = [lk for lk in list_locks(storage, found)]
            if dry_run:
                busy = holders[0].owner() if holders else ""
            else:
                lock = DatasetLock(storage, found, "cleanup-" + os.urandom(4).hex(), "cleanup", self.lock_settings)
                try:
                    lock.acquire()
                except RefusedError:
                    lock = None
                    busy = holders[0].owner() if holders else "another job"
            try:
                for ts in old:
                    size = sum(e.size or 0 for _, e in storage.walk(f"{found}/{ts}"))
                    item = CleanupItem(found, ts, int((now - parse_timestamp(ts)).total_seconds()), size, "removed")
                    if busy and ts == stamps[-1]:
                        item.action, item.reason = "kept", f"newest incomplete backup; {found} is locked by {busy}"
                    elif dry_run:
                        item.action = "would remove"
                    else:
                        repo.delete_backup(found, ts)
                        log.info("removed incomplete backup %s/%s", found, ts)
                    out.append(item)
            finally:
                if lock is not None:
                    lock.release()
        out.extend(self._restore_leftovers(data_id, dry_run))
        return out

    def _restore_leftovers(self, data_id: str | None, dry_run: bool) -> list[CleanupItem]:
        """What interrupted restores left beside the targets of configured sources; removed under the lock."""
        out: list[CleanupItem] = []
        datasets = [self.dataset(data_id)] if data_id is not None else list(self.config.datasets.values())
        for dataset in datasets:
            sources = [self._source(spec) for spec in dataset.sources]
            found = [(s, path) for s in sources for path in s.restore_leftovers(remove=False)]
            if not found:
                continue
            if dry_run:
                out.extend(CleanupItem(dataset.data_id, "", 0, 0, "would remove", path=p) for _, p in found)
                continue
            lock = DatasetLock(self.storage(dataset.storage), dataset.data_id, "cleanup-" + os.urandom(4).hex(),
                               "cleanup", self.lock_settings)
            try:
                lock.acquire()
            except RefusedError:
                reason = f"{dataset.data_id} is locked: a restore may be using it"
                out.extend(CleanupItem(dataset.data_id, "", 0, 0, "kept", reason, p) for _, p in found)
                continue
            try:
                for source in {id(s): s for s, _ in found}.values():
                    for path in source.restore_leftovers(remove=True):
                        log.info("removed %s, left by an interrupted restore", path)
                        out.append(CleanupItem(dataset.data_id, "", 0, 0, "removed", path=path))
            finally:
                lock.release()
        return out


def age_text(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"

