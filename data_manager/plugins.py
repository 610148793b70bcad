"""Finding plugins, loading them one by one, and the registry of source and storage types they provide.

The built-in plugins are listed in :data:`BUILTIN_PLUGINS` and registered exactly like a third party's.
Each entry point loads inside its own ``try``: a broken plugin is reported by name and version, and the
others still load. ``DATA_MANAGER_NO_PLUGINS=1`` loads the built-ins only (for when a plugin breaks things).
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from . import hookspecs
from .errors import ConfigError, PluginError
from .types import SourceType, StorageType

log = logging.getLogger(__name__)

BUILTIN_PLUGINS = (
    "data_manager.builtin.filesystem",
    "data_manager.builtin.directory",
    "data_manager.builtin.sqlite",
)


@dataclass
class PluginInfo:
    """What ``data-manager plugins`` shows for one plugin."""

    name: str
    package: str
    version: str
    source_types: list[str] = field(default_factory=list)
    storage_types: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Registry:
    """The loaded plugins and the types they registered."""

    pm: pluggy.PluginManager
    plugins: list[PluginInfo]
    source_types: dict[str, tuple[SourceType, PluginInfo]]
    storage_types: dict[str, tuple[StorageType, PluginInfo]]

    @property
    def hook(self) -> Any:
        return self.pm.hook

    @property
    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]

    def source_type(self, name: str, where: str) -> tuple[SourceType, PluginInfo]:
        if name not in self.source_types:
            raise ConfigError(f"{where}: key 'type': {self._unknown('source', name, self.source_types)}", key="type")
        return self.source_types[name]

    def storage_type(self, name: str, where: str) -> tuple[StorageType, PluginInfo]:
        if name not in self.storage_types:
            raise ConfigError(f"{where}: key 'type': {self._unknown('storage', name, self.storage_types)}", key="type")
        return self.storage_types[name]

    def _unknown(self, kind: str, name: str, known: dict[str, Any]) -> str:
        hint = f"unknown {kind} type {name!r} (installed: {', '.join(sorted(known)) or 'none'})"
        broken = [p.name for p in self.broken]
        if broken:
            hint += f"; plugins that failed to load: {', '.join(broken)}"
        else:
            hint += f"; is its plugin installed? (pip install data-manager-{name})"
        return hint


def _dist_version(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ep.value.split(".")[0], "?"
    return dist.metadata["Name"], dist.version


def _register(pm: pluggy.PluginManager, plugin: object, info: PluginInfo) -> None:
    pm.register(plugin, name=info.name)
    # A hookimpl without a spec (a typo, or a hook from a newer core) is an error, not silence.
    pm.check_pending()


def _own_version() -> str:
    from . import __version__

    return __version__


def load_registry(*, load_entry_points: bool | None = None) -> Registry:
    """Build the plugin manager: hookspecs, built-ins, then every installed entry point."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    plugins: list[PluginInfo] = []
    for module_name in BUILTIN_PLUGINS:
        info = PluginInfo(name=module_name.rsplit(".", 1)[1], package="data-manager (built-in)", version=_own_version())
        _register(pm, importlib.import_module(module_name), info)
        plugins.append(info)

    if load_entry_points is None:
        load_entry_points = os.environ.get("DATA_MANAGER_NO_PLUGINS", "") in ("", "0")
    if load_entry_points:
        for ep in sorted(entry_points(group=hookspecs.PROJECT), key=lambda e: e.name):
            package, version = _dist_version(ep)
            info = PluginInfo(name=ep.name, package=package, version=version)
            plugins.append(info)
            try:
                _register(pm, ep.load(), info)
            except Exception as exc:  # a broken plugin must not take the others down
                if pm.has_plugin(info.name):
                    pm.unregister(name=info.name)
                info.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                log.warning("plugin %s (%s %s) failed to load: %s", ep.name, package, version, info.error)

    by_name = {p.name: p for p in plugins}
    source_types: dict[str, tuple[SourceType, PluginInfo]] = {}
    storage_types: dict[str, tuple[StorageType, PluginInfo]] = {}
    for name, plugin in pm.list_name_plugin():
        info = by_name[name]
        collected: dict[str, list[Any]] = {"source": [], "storage": []}
        hook_impls = {
            "source": pm.hook.register_source_types,
            "storage": pm.hook.register_storage_types,
        }
        for kind, hook in hook_impls.items():
            for impl in hook.get_hookimpls():
                if impl.plugin is plugin:
                    try:
                        impl.function(register=collected[kind].append)
                    except Exception as exc:
                        info.error = f"{type(exc).__name__} in register_{kind}_types: {exc}"
                        log.warning("plugin %s failed to register its types: %s", name, exc)
        for kind, table in (("source", source_types), ("storage", storage_types)):
            for t in collected[kind]:
                if not isinstance(t, SourceType if kind == "source" else StorageType):
                    raise PluginError(f"plugin {name} registered {t!r}, not a {kind.title()}Type")
                if t.name in table:
                    other = table[t.name][1]
                    raise PluginError(
                        f"{kind} type {t.name!r} is provided twice: by {other.package} {other.version} "
                        f"({other.name}) and by {info.package} {info.version} ({info.name}); uninstall one"
                    )
                table[t.name] = (t, info)  # type: ignore[assignment]
                (info.source_types if kind == "source" else info.storage_types).append(t.name)
    return Registry(pm, plugins, source_types, storage_types)


_cached: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _cached
    if _cached is None:
        _cached = load_registry()
    return _cached


def reset_registry() -> None:
    """Forget the loaded plugins (tests register fake plugins and reload)."""
    global _cached
    _cached = None
