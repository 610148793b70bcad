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
from typing import Any

from .config import Config, load_config, make_settings, parse_config
from .errors import ConfigError, CorruptBackupError, DataManagerError, UsageError
from .jobs import DEFAULT_TIMEOUT, Job, StateDB, parse_duration, state_path
from .locks import LockInfo, LockSettings, break_locks, list_locks
from .parallel import SourceRunner
from .monitoring import Monitoring
from .plugins import Registry, get_registry
from . import operations
from .operations.backup import BackupResult, SourceResult
from .operations.cleanup import CleanupItem
from .operations.restore import RestoreResult
from .operations.status import Status, age_text
from .runner import JobRunner, ProgressFactory
from .engines import engine_class
from .engines.base import RepositoryEngine
from .engines.records import BackupInfo
from .throttle import throttled
from .types import Dataset, Settings, Source, SourceSpec, Storage
from .operations.verify import VerifyResult, failed, verify_backup

log = logging.getLogger(__name__)

__all__ = ["BackupResult", "CleanupItem", "DataManager", "RestoreResult", "SourceResult", "Status", "age_text"]



class DataManager:
    """Back up, list, restore and verify the datasets of one config."""

    def __init__(self, config: Config, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry or get_registry()
        self._storages: dict[str, Storage] = {}
        self._engines: dict[str, RepositoryEngine] = {}
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

    def source_runner(self, dataset: Dataset, parallel: int | None) -> SourceRunner[Any]:
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

    def repository(self, storage_name: str) -> RepositoryEngine:
        """The backups in storage ``storage_name``, through its engine (one per storage and DataManager:
        an engine may have unlocked a key)."""
        if storage_name not in self._engines:
            cfg = self.config.storages[storage_name]
            cls = engine_class(cfg.engine, cfg.settings.where)
            self._engines[storage_name] = cls(self.storage(storage_name), cfg.engine_settings)
        return self._engines[storage_name]

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

    def source(self, spec: SourceSpec, settings: Settings | None = None) -> Source:
        """The source object of ``spec`` (its plugin's class), with ``settings`` in place of the configured ones."""
        stype, _ = self.registry.source_type(spec.type, spec.settings.where)
        return stype.factory(spec.name, settings or spec.settings)

    def sources_restarting(self, data_id: str) -> list[str]:
        """The sources of ``data_id`` that a stopped backup (a closing window, Ctrl-C) runs again from the
        start: none where the storage's engine keeps what they stored, else those that cannot continue from
        what the stopped run committed (``SourceType.resumes``)."""
        ds = self.dataset(data_id)
        engine = engine_class(self.config.storages[ds.storage].engine)
        if engine.keeps_partial_sources:
            return []
        return [s.name for s in ds.sources
                if not (engine.resumes_sources and self.registry.source_type(s.type, s.settings.where)[0].resumes)]

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
        for storage in self._storages.values():
            storage.close()
        self._storages.clear()

    # ------------------------------------------------------------------ operations (data_manager/operations/)

    def backup(self, data_id: str, *, dry_run: bool = False, progress: ProgressFactory | None = None,
               resume: bool = False, wait: float = 0.0, parallel: int | None = None) -> BackupResult:
        """Back up every source of ``data_id``, as a job. The backup counts only once its metadata is written.

        ``resume``: continue the newest incomplete backup instead, redoing only the sources it had not
        finished. ``wait``: seconds to wait for another job's lock on the dataset before giving up (exit 3).
        ``parallel``: sources backed up at once (default: the dataset's ``parallel``, else 1).
        """
        return operations.backup.backup(self, data_id, dry_run=dry_run, progress=progress, resume=resume,
                                        wait=wait, parallel=parallel)

    def restore(self, data_id: str, which: str = "latest", *, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                only: list[str] | None = None, dry_run: bool = False, progress: ProgressFactory | None = None,
                wait: float = 0.0, parallel: int | None = None) -> RestoreResult:
        """Put every source (or ``only`` some) back as it was at the backup ``which``.

        ``overrides`` maps a source name to settings replacing the configured ones, to restore elsewhere.
        ``parallel``: sources restored at once (default: the dataset's ``parallel``, else 1).
        """
        return operations.restore.restore(self, data_id, which, overrides=overrides, only=only, dry_run=dry_run,
                                          progress=progress, wait=wait, parallel=parallel)

    def status(self) -> Status:
        """The config in use, plugins, storages (reachable or not), each dataset's latest backup, its age and
        locks; running and recent jobs; datasets marked unavailable (or whose release failed)."""
        return operations.status.status(self)

    def cleanup(self, data_id: str | None = None, *, older_than: float = 86400.0,
                dry_run: bool = False) -> list[CleanupItem]:
        """Remove incomplete backups started more than ``older_than`` seconds ago, and what interrupted
        restores left beside the configured sources' targets, each under the dataset's lock (a dataset
        another job holds keeps its newest incomplete backup)."""
        return operations.cleanup.cleanup(self, data_id, older_than=older_than, dry_run=dry_run)

    def copy(self, data_id: str, which: str = "latest", *, to: str, dry_run: bool = False,
             progress: ProgressFactory | None = None, wait: float = 0.0) -> Any:
        """Copy complete backups of ``data_id`` (``which``: ``latest``, a TIMESTAMP or ``all``) as stored to
        the storage ``to``, verified, resumable, as a job locking the dataset in ``to``
        (:mod:`data_manager.operations.copy`); returns a :class:`~data_manager.operations.copy.CopyResult`."""
        from .operations.copy import copy_backups

        return copy_backups(self, data_id, which, to, dry_run=dry_run, progress=progress, wait=wait)

    def forget(self, data_id: str, *, dry_run: bool = False, overrides: Mapping[str, Any] | None = None,
               wait: float = 0.0) -> Any:
        """Remove the complete backups of ``data_id`` its retention policy (``[datasets.X.retention]``,
        ``overrides`` of its keys applied) does not keep; held ones never. A job locking the dataset unless
        ``dry_run`` (:mod:`data_manager.operations.forget`); returns a
        :class:`~data_manager.operations.forget.ForgetResult`, every backup with keep/remove and why."""
        from .operations.forget import forget

        return forget(self, data_id, dry_run=dry_run, overrides=overrides, wait=wait)

    def hold(self, data_id: str, timestamp: str, reason: str | None = None, *, wait: float = 0.0) -> None:
        """Exempt the complete backup ``data_id/timestamp`` from ``forget`` until :meth:`unhold`."""
        from .operations.forget import hold

        hold(self, data_id, timestamp, reason, wait=wait)

    def unhold(self, data_id: str, timestamp: str, *, wait: float = 0.0) -> None:
        """Release the hold on ``data_id/timestamp``."""
        from .operations.forget import unhold

        unhold(self, data_id, timestamp, wait=wait)

    def holds(self, data_id: str) -> dict[str, str]:
        """The held backups of ``data_id``: TIMESTAMP -> why (reason, who, when)."""
        from .operations.forget import holds

        return holds(self, data_id)

    def prune(self, targets: list[str] | tuple[str, ...] | None = None, *, dry_run: bool = False,
              delete_delay: float = 86400.0, max_unused: float | None = None) -> list[dict[str, Any]]:
        """Reclaim the space forgotten backups left in the storages ``targets`` (storage names, or datasets
        for their storage; none: every storage): a sweep of what an earlier run marked, once
        ``delete_delay`` seconds passed, then a new mark (:mod:`data_manager.operations.prune`). One report
        per storage (phases with packs and bytes freed or rewritten); admin keys only, unless ``dry_run``.
        ``max_unused``: the share of the repository that may stay unused (None: the engine's default)."""
        from .operations.prune import prune

        return prune(self, targets, dry_run=dry_run, delete_delay=delete_delay, max_unused=max_unused)

    def list_backups(self, data_id: str | None = None) -> list[BackupInfo]:
        """Backups of one dataset, or of every dataset, found in the configured storages; oldest first, each
        once with the storages holding it (``BackupInfo.storages``: copies too)."""
        from .operations.copy import where_stored

        return where_stored(self, data_id, lambda repo, found: self.with_verified(repo, found, repo.backups(found)))

    def find_backup(self, data_id: str, which: str = "latest") -> tuple[RepositoryEngine, BackupInfo]:
        dataset = self.stored_dataset(data_id)
        repo = self.repository(dataset.storage)
        return repo, repo.resolve(data_id, which)

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

    def _verified(self, repo: RepositoryEngine, result: VerifyResult) -> VerifyResult:
        try:
            self.state.record_verify(repo.location(), result.data_id, result.timestamp, result.sample)
        except DataManagerError as exc:  # bookkeeping never fails the verify itself
            log.warning("cannot record the verify of %s/%s: %s", result.data_id, result.timestamp, exc)
        return result

    def with_verified(self, repo: RepositoryEngine, data_id: str, backups: list[BackupInfo]) -> list[BackupInfo]:
        """``backups`` with when each last passed a verify (from the state database)."""
        try:
            verified = self.state.verifies(repo.location(), data_id)
        except DataManagerError as exc:
            log.warning("%s", exc)
            verified = {}
        for b in backups:
            b.verified, b.verified_sample = verified.get(b.timestamp, (None, None))
        return backups

    def jobs(self, data_id: str | None = None, *, running: bool | None = None, limit: int | None = 10) -> list[Job]:
        """Jobs from the state database, newest first (``running``: only unfinished, or only finished ones)."""
        return self.state.jobs(data_id=data_id, running=running, limit=limit)

    def job(self, job_id: str) -> Job:
        found = self.state.job(job_id)
        if found is None:
            raise UsageError(f"no job {job_id!r} in {self.state.path}")
        return found

    # ------------------------------------------------------------------ locks and cleanup

    def dataset_storages(self, data_id: str | None) -> list[tuple[RepositoryEngine, str]]:
        """``(repository, DATA_ID)`` of one dataset, or of every dataset found in the configured storages."""
        if data_id is not None:
            return [(self.repository(self.dataset(data_id).storage), data_id)]
        out = []
        for name in self.config.storages:
            repo = self.repository(name)
            out.extend((repo, found) for found in repo.data_ids())
        return out

    def locks(self, data_id: str | None = None) -> list[LockInfo]:
        """Lock objects of one dataset, or of every dataset in the configured storages."""
        return [lock for repo, found in self.dataset_storages(data_id) for lock in list_locks(repo.storage, found)]

    def break_lock(self, data_id: str, *, job_id: str | None = None, force: bool = False) -> list[LockInfo]:
        """Remove stale locks of ``data_id`` (live ones too with ``force``); returns what was removed."""
        return break_locks(self.storage(self.dataset(data_id).storage), data_id, job_id=job_id, force=force)

