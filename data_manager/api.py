"""The Python API: what the CLI calls, and what other systems (the experiments-manager) import.

    from data_manager import DataManager

    dm = DataManager.from_file("data-manager.toml")
    result = dm.backup("exp42")
    dm.restore("exp42", "latest", overrides={"raw": {"path": "/tmp/raw-restored"}})
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .config import Config, load_config, parse_config
from .errors import DataManagerError, PluginError, RefusedError, UsageError
from .plugins import Registry, get_registry
from .repository import BackupInfo, Repository, SourceRecord, now_utc, parse_timestamp
from .types import Dataset, Operation, Settings, Source, SourceSpec, Storage

log = logging.getLogger(__name__)

ProgressFactory = Callable[[str], Callable[[int], None] | None]


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

    def to_json(self) -> dict[str, Any]:
        return {
            "data_id": self.data_id,
            "timestamp": self.timestamp,
            "location": self.location,
            "size": self.size,
            "stored_size": self.stored_size,
            "seconds": self.seconds,
            "dry_run": self.dry_run,
            "sources": [vars(s) for s in self.sources],
        }


@dataclass
class RestoreResult:
    data_id: str
    timestamp: str
    sources: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"data_id": self.data_id, "timestamp": self.timestamp, "sources": self.sources, "dry_run": self.dry_run}


class DataManager:
    """Back up, list, restore and verify the datasets of one config."""

    def __init__(self, config: Config, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry or get_registry()
        self._storages: dict[str, Storage] = {}

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
            self._storages[name] = stype.factory(name, cfg.settings)
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

    def _source(self, spec: SourceSpec, settings: Settings | None = None) -> Source:
        stype, _ = self.registry.source_type(spec.type, spec.settings.where)
        return stype.factory(spec.name, settings or spec.settings)

    def close(self) -> None:
        for storage in self._storages.values():
            storage.close()
        self._storages.clear()

    @contextmanager
    def _guarded(self, dataset: Dataset, operation: Operation) -> Iterator[None]:
        """Ask every guard, mark the dataset busy, and always mark it free again."""
        hook = self.registry.hook
        reasons = [r for r in hook.check_dataset(dataset=dataset, operation=operation) if r]
        if reasons:
            raise RefusedError(f"{operation} of {dataset.data_id!r} refused: {'; '.join(reasons)}")
        entered: list[Any] = []
        try:
            for impl in reversed(hook.before_operation.get_hookimpls()):
                impl.function(dataset=dataset, operation=operation)
                entered.append(impl)
            yield
        except BaseException as exc:
            self._release(entered, dataset, operation, exc)
            raise
        else:
            self._release(entered, dataset, operation, None)

    def _release(self, entered: list[Any], dataset: Dataset, operation: Operation, error: BaseException | None) -> None:
        hook = self.registry.hook
        # A guard whose before_operation failed or never ran has nothing to undo; plugins with only an
        # after_operation (notifiers, metrics) are always told.
        skipped = {i.plugin_name for i in hook.before_operation.get_hookimpls()} - {i.plugin_name for i in entered}
        failures = []
        for impl in hook.after_operation.get_hookimpls():
            if impl.plugin_name in skipped:
                continue
            try:
                impl.function(dataset=dataset, operation=operation, error=error)
            except Exception as exc:
                failures.append(f"{impl.plugin_name}: {exc}")
                log.error("after %s of %s, plugin %s failed: %s", operation, dataset.data_id, impl.plugin_name, exc)
        if failures and error is None:
            raise DataManagerError(f"{operation} of {dataset.data_id!r} done, but releasing it failed: {'; '.join(failures)}")

    # ------------------------------------------------------------------ operations

    def backup(self, data_id: str, *, dry_run: bool = False, progress: ProgressFactory | None = None) -> BackupResult:
        """Back up every source of ``data_id``. The backup counts only once its metadata is written."""
        dataset = self.dataset(data_id)
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
        with self._guarded(dataset, "backup"):
            writer = repo.start_backup(data_id, {"storage": {"name": dataset.storage, "type": self.config.storages[dataset.storage].type}})
            log.info("backup %s/%s to %s started", data_id, writer.timestamp, repo.storage.location())
            for spec, source in sources:
                _, plugin = self.registry.source_type(spec.type, spec.settings.where)
                record = SourceRecord(
                    name=spec.name,
                    type=spec.type,
                    plugin={"name": plugin.name, "package": plugin.package, "version": plugin.version},
                    settings=spec.settings.public(),
                    describe=source.describe(),
                )
                sink = writer.source(record, progress(spec.name) if progress else None)
                source.backup(sink)
                writer.add_done(sink.finish())
                log.info("source %s: %d bytes in %.1fs", spec.name, record.size, record.duration_seconds)
            manifest = writer.commit()
        log.info("backup %s/%s complete", data_id, writer.timestamp)
        return BackupResult(
            data_id,
            writer.timestamp,
            f"{repo.storage.location()}/{data_id}/{writer.timestamp}",
            [SourceResult(s.name, s.type, s.size, s.stored_size, s.duration_seconds) for s in writer.sources],
            manifest["size"],
            manifest["stored_size"],
            manifest["duration_seconds"],
        )

    def list_backups(self, data_id: str | None = None) -> list[BackupInfo]:
        """Backups of one dataset, or of every dataset found in the configured storages; oldest first."""
        if data_id is not None:
            dataset = self.dataset(data_id)
            return self.repository(dataset.storage).backups(data_id)
        out: list[BackupInfo] = []
        for name in self.config.storages:
            repo = self.repository(name)
            for found in repo.data_ids():
                out.extend(repo.backups(found))
        return out

    def find_backup(self, data_id: str, which: str = "latest") -> tuple[Repository, BackupInfo]:
        dataset = self.dataset(data_id)
        repo = self.repository(dataset.storage)
        return repo, repo.resolve(data_id, which)

    def _restore_plan(
        self, data_id: str, which: str, overrides: Mapping[str, Mapping[str, Any]], only: list[str] | None
    ) -> tuple[Dataset, Repository, BackupInfo, list[tuple[SourceRecord, Source]]]:
        dataset = self.dataset(data_id)
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
                # Not in the config (any more): restore from the recorded settings, ${VAR} read now.
                from .config import _settings

                where = f"backup {data_id}/{info.timestamp}, source {rec.name!r}"
                stype, _ = self._source_type_for_restore(rec.type, where)
                spec = SourceSpec(rec.name, rec.type, _settings(dict(rec.settings), where, stype.secret_keys, self.config.secrets))
            settings = spec.settings.overridden(overrides.get(rec.name, {}))
            plan.append((rec, self._source(spec, settings)))
        return dataset, repo, info, plan

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
    ) -> RestoreResult:
        """Put every source (or ``only`` some) back as it was at the backup ``which``.

        ``overrides`` maps a source name to settings replacing the configured ones, to restore elsewhere.
        """
        dataset, repo, info, plan = self._restore_plan(data_id, which, overrides or {}, only)
        result = RestoreResult(data_id, info.timestamp, dry_run=dry_run)
        for rec, source in plan:
            result.sources.append({"name": rec.name, "type": rec.type, "target": source.describe(), "size": rec.size})
        if dry_run:
            return result
        with self._guarded(dataset, "restore"):
            for rec, source in plan:
                artifacts = repo.artifacts(info, rec.name, progress(rec.name) if progress else None)
                log.info("restoring %s/%s source %s into %s", data_id, info.timestamp, rec.name, source.describe())
                source.restore(artifacts)
        return result

    def verify(self, data_id: str, which: str = "latest", *, progress: ProgressFactory | None = None) -> BackupInfo:
        """Read every artifact of a backup back and check sizes and checksums."""
        repo, info = self.find_backup(data_id, which)
        for rec in repo.source_records(info):
            repo.artifacts(info, rec.name, progress(rec.name) if progress else None).verify()
        return info

    def status(self) -> dict[str, Any]:
        """The config in use, plugins, storages (reachable or not), each dataset's latest backup and its age."""
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
                     "latest": None, "age_seconds": None, "incomplete": 0}
            if reachable.get(ds.storage):
                try:
                    backups = self.repository(ds.storage).backups(data_id)
                    complete = [b for b in backups if b.complete]
                    entry["incomplete"] = len(backups) - len(complete)
                    if complete:
                        entry["latest"] = complete[-1].timestamp
                        entry["age_seconds"] = int((now - complete[-1].when).total_seconds())
                except DataManagerError as exc:
                    entry["error"] = str(exc)
            datasets.append(entry)
        return {
            "config": str(self.config.path) if self.config.path else None,
            "plugins": [
                {"name": p.name, "package": p.package, "version": p.version, "source_types": p.source_types,
                 "storage_types": p.storage_types, **({"error": p.error} if p.error else {})}
                for p in self.registry.plugins
            ],
            "storages": storages,
            "datasets": datasets,
        }


def age_text(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"

