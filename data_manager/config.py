"""Reading the TOML config: where it is found, ``${VAR}`` expansion, and validation with one-line errors.

Search order: ``--config PATH``, then ``$DATA_MANAGER_CONFIG``, then ``./data-manager.toml``, then
``$XDG_CONFIG_HOME/data-manager/config.toml`` (``~/.config/...``).
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import engines, retention
from .errors import ConfigError, UsageError
from .plugins import Registry
from .scrub import add_secrets
from .service.settings import schedule_from_table, service_settings
from .throttle import LIMIT_KEYS, limits_from_settings
from .types import Dataset, Settings, SourceSpec

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DATASET_KEYS = {"storage", "sources", "description", "timeout", "copies", "parallel", "retention", "schedule"}
# The top-level tables the core reads: here, in data_manager.api ([jobs], [guards.NAME]), data_manager.jobs
# ([state]), data_manager.locks ([locks]), data_manager.monitoring ([monitoring]) and data_manager.service.settings
# ([service]). Plugins name theirs through the ``config_tables`` hook.
CORE_TABLES = ("datasets", "guards", "jobs", "locks", "monitoring", "service", "state", "storages")
_SOURCE_RESERVED = {"name", "type"}


def user_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "data-manager" / "config.toml"


def find_config(explicit: str | os.PathLike[str] | None) -> Path:
    """The config file to use, by the documented search order."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found (from --config)")
        return path
    env = os.environ.get("DATA_MANAGER_CONFIG")
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found (from DATA_MANAGER_CONFIG)")
        return path
    for path in (Path("data-manager.toml"), user_config_path()):
        if path.is_file():
            return path
    raise ConfigError(
        f"no config file: pass --config PATH, set DATA_MANAGER_CONFIG, or create ./data-manager.toml "
        f"or {user_config_path()}"
    )


def _expand(value: Any, where: str, key: str, secrets: set[str], secret: bool) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` from the environment; remember expanded secrets."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            var, default = m.group(1), m.group(2)
            got = os.environ.get(var)
            if got is None:
                if default is None:
                    raise ConfigError(f"{where}: key {key!r}: environment variable {var} is not set", key=key)
                got = default
            if len(got) >= 4:
                secrets.add(got)  # any value from the environment may be a secret: keep it out of logs
            return got

        out = _VAR_RE.sub(sub, value)
        if secret and out:
            secrets.add(out)
        return out
    if isinstance(value, list):
        return [_expand(v, where, key, secrets, secret) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, where, f"{key}.{k}", secrets, secret) for k, v in value.items()}
    return value


@dataclass
class StorageConfig:
    name: str
    type: str
    settings: Settings  # without limit_upload/limit_download: the core applies those (data_manager.throttle)
    limit_upload: int | None = None  # bytes per second
    limit_download: int | None = None
    engine: str = "worm"  # the repository engine (data_manager.engines)
    engine_settings: Settings = field(default_factory=lambda: Settings({}))  # its keys of the table


@dataclass
class Config:
    """The parsed, validated config."""

    path: Path | None
    data: dict[str, Any]
    storages: dict[str, StorageConfig]
    datasets: dict[str, Dataset]
    secrets: set[str] = field(default_factory=set)

    def dataset(self, data_id: str) -> Dataset:
        if data_id in self.datasets:
            return self.datasets[data_id]
        known = ", ".join(sorted(self.datasets)) or "none"
        raise UsageError(f"unknown dataset {data_id!r} (in {self.path}: {known})")

    def storage_for(self, data_id: str) -> StorageConfig:
        return self.storages[self.datasets[data_id].storage]


def _table(value: Any, where: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: key {key!r}: must be a table", key=key)
    return value


def make_settings(
    table: dict[str, Any], where: str, secret_keys: tuple[str, ...], secrets: set[str]
) -> Settings:
    """The :class:`Settings` of one config table: ``${VAR}`` expanded (the raw text kept for metadata),
    secret keys marked; values taken from the environment and values of secret keys are added to ``secrets``
    and registered with :mod:`data_manager.scrub` (kept out of logs, the state database and metadata)."""
    probe = Settings({}, secret_keys=secret_keys)
    values = {
        k: _expand(v, where, k, secrets, probe.is_secret(k)) for k, v in table.items() if k not in _SOURCE_RESERVED
    }
    raw = {k: v for k, v in table.items() if k not in _SOURCE_RESERVED}
    add_secrets(secrets)
    return Settings(values, where=where, raw=raw, secret_keys=secret_keys)


def _check_tables(data: Mapping[str, Any], registry: Registry, file: str) -> None:
    """Every top-level entry must be a table the core or an installed plugin reads: a typo is an error."""
    known = set(CORE_TABLES)
    for names in registry.hook.config_tables():
        known.update(names or ())
    unknown = sorted(set(data) - known)
    if not unknown:
        return
    name = unknown[0]
    what = f"table [{name}]" if isinstance(data[name], dict) else f"key {name!r}"
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f"; did you mean [{close[0]}]?" if close else ""
    broken = [p.name for p in registry.broken]
    if broken:
        hint += f"; plugins that failed to load: {', '.join(broken)}"
    raise ConfigError(f"{file}: unknown top-level {what} (known: {', '.join(sorted(known))}){hint}", key=name)


def parse_config(data: Mapping[str, Any], registry: Registry, path: Path | None = None) -> Config:
    """Validate a parsed config mapping. Every error names the file, the dataset and the key."""
    file = str(path) if path else "<config>"
    secrets: set[str] = set()
    data = dict(data)
    _check_tables(data, registry, file)
    service_settings(data, file)  # [service]: validated now, read by data-manager serve

    storages: dict[str, StorageConfig] = {}
    for name, table in _table(data.get("storages", {}), file, "storages").items():
        where = f"{file}: storage {name!r}"
        table = _table(table, file, f"storages.{name}")
        if not NAME_RE.match(name):
            raise ConfigError(f"{where}: bad storage name (letters, digits, . _ -)", key=f"storages.{name}")
        if "type" not in table:
            raise ConfigError(f"{where}: key 'type': missing (required)", key="type")
        stype, _ = registry.storage_type(str(table["type"]), where)
        limits = {k: v for k, v in table.items() if k in LIMIT_KEYS}
        engine_name = table.get("engine", engines.DEFAULT)
        if not isinstance(engine_name, str):
            raise ConfigError(f"{where}: key 'engine': must be a string, not {engine_name!r}", key="engine")
        engine = engines.engine_class(engine_name, where)
        own = {k: v for k, v in table.items() if k in engine.settings_keys}
        rest = {k: v for k, v in table.items() if k not in limits and k not in own and k != "engine"}
        settings = make_settings(rest, where, stype.secret_keys, secrets)
        upload, download = limits_from_settings(make_settings(limits, where, (), secrets))
        engine_settings = make_settings(own, where, engine.secret_keys, secrets)
        engine.check_settings(engine_settings)
        storages[name] = StorageConfig(name, stype.name, settings, upload, download, engine_name, engine_settings)

    datasets: dict[str, Dataset] = {}
    for data_id, table in _table(data.get("datasets", {}), file, "datasets").items():
        where = f"{file}: dataset {data_id!r}"
        table = _table(table, file, f"datasets.{data_id}")
        if not NAME_RE.match(data_id):
            raise ConfigError(f"{where}: bad dataset id (letters, digits, . _ -; max 128)", key="datasets")
        unknown = sorted(set(table) - _DATASET_KEYS)
        if unknown:
            raise ConfigError(f"{where}: key {unknown[0]!r}: unknown (known: {', '.join(sorted(_DATASET_KEYS))})")
        storage = table.get("storage")
        if storage is None:
            if len(storages) != 1:
                reason = "no storage is configured" if not storages else "there are several storages"
                raise ConfigError(f"{where}: key 'storage': missing, and {reason}", key="storage")
            storage = next(iter(storages))
        if storage not in storages:
            known = ", ".join(sorted(storages)) or "none"
            raise ConfigError(f"{where}: key 'storage': unknown storage {storage!r} (configured: {known})", key="storage")
        _check_copies(table.get("copies", []), storage, storages, where)
        if "retention" in table:  # [datasets.X.retention]: validated now, read by forget (data_manager.retention)
            retention.policy_from_table(table["retention"], file, data_id, secrets)
        if "schedule" in table:  # [datasets.X.schedule]: validated now, read by data-manager serve
            schedule_from_table(table["schedule"], file, data_id)
        raw_sources = table.get("sources")
        if not isinstance(raw_sources, list) or not raw_sources:
            raise ConfigError(f"{where}: key 'sources': missing or empty ([[datasets.{data_id}.sources]])", key="sources")
        sources: list[SourceSpec] = []
        for i, src in enumerate(raw_sources):
            src = _table(src, where, f"sources[{i}]")
            name = src.get("name")
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise ConfigError(
                    f"{where}, source #{i + 1}: key 'name': {'missing' if name is None else 'bad name ' + repr(name)}"
                    " (letters, digits, . _ -)",
                    key="name",
                )
            swhere = f"{where}, source {name!r}"
            if any(s.name == name for s in sources):
                raise ConfigError(f"{swhere}: key 'name': duplicate source name {name!r}", key="name")
            if "type" not in src:
                raise ConfigError(f"{swhere}: key 'type': missing (required)", key="type")
            stype, _ = registry.source_type(str(src["type"]), swhere)
            sources.append(SourceSpec(name, stype.name, make_settings(src, swhere, stype.secret_keys, secrets)))
        options = {k: v for k, v in table.items() if k not in ("storage", "sources")}
        datasets[data_id] = Dataset(data_id, storage, tuple(sources), options)

    return Config(path, data, storages, datasets, secrets)


def _check_copies(copies: Any, storage: str, storages: Mapping[str, Any], where: str) -> None:
    """``copies``: other configured storages each backup is copied to once complete (data_manager.operations.copy)."""
    if not isinstance(copies, list) or not all(isinstance(c, str) for c in copies):
        raise ConfigError(f"{where}: key 'copies': must be a list of storage names, not {copies!r}", key="copies")
    for name in copies:
        if name not in storages:
            known = ", ".join(sorted(storages))  # never empty: the dataset's own storage is one
            raise ConfigError(f"{where}: key 'copies': unknown storage {name!r} (configured: {known})", key="copies")
        if name == storage:
            raise ConfigError(f"{where}: key 'copies': {name!r} is the dataset's own storage", key="copies")
    if len(set(copies)) != len(copies):
        raise ConfigError(f"{where}: key 'copies': a storage is named twice", key="copies")


def load_config(explicit: str | os.PathLike[str] | None, registry: Registry) -> Config:
    path = find_config(explicit)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); TOML files are UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(data, registry, path)


def parse_assignments(values: tuple[str, ...] | list[str]) -> dict[str, dict[str, Any]]:
    """``["raw.path=/tmp/x", "pg.dsn=postgresql://..."]`` -> ``{"raw": {"path": "/tmp/x"}, ...}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in values:
        lhs, eq, value = item.partition("=")
        source, dot, key = lhs.partition(".")
        if not eq or not dot or not source or not key:
            raise UsageError(f"--set {item!r}: expected SOURCE.KEY=VALUE, e.g. raw.path=/tmp/restored")
        parsed: Any = value
        try:  # numbers, booleans and lists in TOML syntax; anything else is a string
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            pass
        out.setdefault(source, {})[key] = parsed
    return out
