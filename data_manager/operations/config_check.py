"""``data-manager config check``: the whole config validated without touching anything, and shown resolved.

Loading the config (:class:`~data_manager.api.DataManager`) validates its tables ([jobs], [locks], [state],
[guards.NAME] through their plugins, [monitoring]); here every storage and every source object is also
constructed, which runs each plugin's checks of its settings (constructors validate, they do no I/O). The
resolved config (``${VAR}`` expanded) is returned with every secret masked as ``***``: values of secret keys,
values the config knows as secrets (:attr:`~data_manager.config.Config.secrets`, through
:func:`~data_manager.scrub.scrub`), and passwords inside URLs.
"""

from __future__ import annotations

from typing import Any

from ..monitoring import SECRET_KEYS
from ..scrub import scrub
from ..types import Settings

_PUBLIC = Settings({})  # only for is_secret: the secret words every table shares


def _masked(settings: Settings) -> dict[str, Any]:
    return {k: "***" if settings.is_secret(k) else scrub(settings.get(k)) for k in settings.keys()}


def _masked_raw(value: Any, key: str = "") -> Any:
    """A table the core reads as written (no ``${VAR}``): secret keys masked, known secrets scrubbed."""
    if isinstance(value, dict):
        return {k: _masked_raw(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked_raw(v, key) for v in value]
    return "***" if key and _PUBLIC.is_secret(key) and value != "" else scrub(value)


def check_config(dm: Any) -> dict[str, Any]:
    """Construct every storage and source of ``dm``'s config (a :class:`~data_manager.api.DataManager`);
    raise the first error (a ConfigError naming the file, dataset and key); return the resolved, masked config."""
    from ..config import make_settings

    config = dm.config
    file = str(config.path) if config.path else "<config>"
    storages = {}
    for name, cfg in config.storages.items():
        dm.repository(name)
        storages[name] = {"type": cfg.type, "engine": cfg.engine, **_masked(cfg.settings), **_masked(cfg.engine_settings)}
    datasets = {}
    for data_id, ds in config.datasets.items():
        sources = []
        for spec in ds.sources:
            dm.source(spec)
            sources.append({"name": spec.name, "type": spec.type, **_masked(spec.settings)})
        datasets[data_id] = {**_masked_raw(dict(ds.options)), "storage": ds.storage, "sources": sources}
    doc: dict[str, Any] = {"storages": storages, "datasets": datasets}
    for table, value in config.data.items():
        if table in doc:
            continue
        if table == "guards":  # read as Settings: ${VAR} expanded
            doc[table] = {k: _masked(make_settings(v, f"{file}: [guards.{k}]", (), config.secrets)) for k, v in value.items()}
        elif table == "monitoring":
            doc[table] = _masked(make_settings(value, f"{file}: [monitoring]", SECRET_KEYS, config.secrets))
        else:
            doc[table] = _masked_raw(value)
    return {"config": str(config.path) if config.path else None, "state": str(dm.state.path), "valid": True,
            "resolved": doc}


def to_toml(doc: dict[str, Any], prefix: str = "") -> list[str]:
    """Lines of TOML for a resolved config (values as JSON, which TOML reads for strings, numbers, lists)."""
    import json

    lines: list[str] = []
    scalars = {k: v for k, v in doc.items() if not isinstance(v, dict) and not _is_tables(v)}
    if prefix and (scalars or not doc):
        lines.append(f"[{prefix}]")
    lines += [f"{_key(k)} = {json.dumps(v)}" for k, v in scalars.items()]
    for k, v in doc.items():
        name = f"{prefix}.{_key(k)}" if prefix else _key(k)
        if isinstance(v, dict):
            lines += ([""] if lines else []) + to_toml(v, name)
        elif _is_tables(v):
            for item in v:
                lines += ["", f"[[{name}]]"] + [f"{_key(a)} = {json.dumps(b)}" for a, b in item.items()]
    return lines


def _is_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _key(key: str) -> str:
    import re

    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else '"' + key.replace('"', '\\"') + '"'
