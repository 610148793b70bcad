"""Finding plugins, loading them one by one, and the registry of source and storage types they provide.

The built-in plugins are listed in :data:`BUILTIN_PLUGINS` and registered exactly like a third party's,
first; then every entry point of the ``data_manager`` group, sorted by name. A plugin is *isolated*: if it
fails to import, implements a hook that does not exist, raises in a register hook, registers something
that is not a valid :class:`SourceType`/:class:`StorageType`, or claims a type name (or alias) already
taken, it is reported broken (by name, package and version, with what was wrong) and skipped entirely:
nothing it registered stays, none of its hooks is called, and every other plugin and command works. On
a name clash the plugin loaded first wins: a built-in over any entry point, else the entry point whose
name sorts first; the other is the broken one, and its error names both.

``DATA_MANAGER_NO_PLUGINS=1`` loads the built-ins only; ``DATA_MANAGER_BLOCK_PLUGINS=minio,gdrive`` skips the
named plugins without importing them (pluggy's ``set_blocked``). With debug logging (``-vv``) every hook
call is logged on the ``data_manager.hooks`` logger: the plugins called, their arguments in brief, the
result or the exception, and the time taken.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from . import hookspecs
from .errors import ConfigError
from .types import Dataset, SourceType, StorageType

log = logging.getLogger(__name__)
hook_log = logging.getLogger("data_manager.hooks")

BUILTIN_PLUGINS = (
    "data_manager.builtin.filesystem",
    "data_manager.builtin.directory",
    "data_manager.builtin.sqlite",
)

NO_PLUGINS_ENV = "DATA_MANAGER_NO_PLUGINS"
BLOCK_PLUGINS_ENV = "DATA_MANAGER_BLOCK_PLUGINS"


@dataclass
class PluginInfo:
    """What ``data-manager plugins`` shows for one plugin."""

    name: str
    package: str
    version: str
    source_types: list[str] = field(default_factory=list)
    storage_types: list[str] = field(default_factory=list)
    #: Other names of its types, alias -> type name (``{"memsql": "mysql"}``).
    source_aliases: dict[str, str] = field(default_factory=dict)
    storage_aliases: dict[str, str] = field(default_factory=dict)
    #: Why it was skipped (one line naming what was wrong), or None if it loaded.
    error: str | None = None
    #: Named in ``DATA_MANAGER_BLOCK_PLUGINS``: not imported, not an error.
    blocked: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "package": self.package, "version": self.version,
            "source_types": self.source_types, "storage_types": self.storage_types,
            "source_aliases": self.source_aliases, "storage_aliases": self.storage_aliases,
            "blocked": self.blocked, "error": self.error,
        }


@dataclass
class Registry:
    """The loaded plugins and the types they registered (an alias maps to its type's entry too)."""

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

    @property
    def blocked(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.blocked]

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
        blocked = [p.name for p in self.blocked]
        if broken:
            hint += f"; plugins that failed to load: {', '.join(broken)}"
        if blocked:
            hint += f"; plugins blocked by {BLOCK_PLUGINS_ENV}: {', '.join(blocked)}"
        if not broken and not blocked:
            hint += f"; is its plugin installed? (pip install data-manager-{name})"
        return hint

    def implementers(self, hook_name: str) -> list[str]:
        """The names of the plugins implementing ``hook_name``, in pluggy's order (it calls them last to first).

        Wrappers are left out: they wrap each call made by :meth:`call_plugin`.
        """
        names: list[str] = []
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            if not (impl.hookwrapper or impl.wrapper) and impl.plugin_name not in names:
                names.append(impl.plugin_name)
        return names

    def call_plugin(self, hook_name: str, plugin_name: str, **kwargs: Any) -> list[Any]:
        """Call one plugin's implementation of ``hook_name`` through pluggy and return its result list.

        For the hooks whose plugins the core must tell apart (which guard entered, which must be undone):
        going through pluggy, not ``HookImpl.function``, keeps argument selection, wrappers and ``-vv``
        tracing the same as for any other hook call.
        """
        implementers = self.implementers(hook_name)
        if plugin_name not in implementers:
            return []
        others = [self.pm.get_plugin(n) for n in implementers if n != plugin_name]
        return self.pm.subset_hook_caller(hook_name, others)(**kwargs)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- loading


def _dist_version(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ep.value.split(".")[0], "?"
    return dist.metadata["Name"], dist.version


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _own_version() -> str:
    from . import __version__

    return __version__


def _names_from_env(value: str) -> list[str]:
    return [n.strip() for n in value.split(",") if n.strip()]


class _Collected:
    """What one plugin's register hooks handed over, validated before any of it is installed."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.cls: type = SourceType if kind == "source" else StorageType
        self.types: list[tuple[Any, tuple[str, ...]]] = []
        self.problems: list[str] = []

    def register(self, t: Any, aliases: Sequence[str] = ()) -> None:
        # Never raises into the plugin (which might catch it and go on): problems are collected instead.
        label = f"register_{self.kind}_types"
        if not isinstance(t, self.cls):
            self.problems.append(f"{label} registered {t!r:.80}, not a {self.cls.__name__}")
        elif not isinstance(t.name, str) or not t.name.strip() or t.name != t.name.strip():
            self.problems.append(f"{label} registered a {self.cls.__name__} whose name {t.name!r:.80} is not a non-empty str")
        elif not callable(t.factory):
            self.problems.append(f"{label}: {self.kind} type {t.name!r} has a factory that is not callable ({t.factory!r:.80})")
        elif isinstance(aliases, str) or not all(isinstance(a, str) and a.strip() == a and a for a in aliases):
            self.problems.append(f"{label}: {self.kind} type {t.name!r} has aliases {aliases!r:.80}, not a list of non-empty str")
        else:
            self.types.append((t, tuple(aliases)))


def _load_plugin(pm: pluggy.PluginManager, info: PluginInfo, load: Callable[[], object]) -> object | None:
    """Import and register one plugin; on any failure set ``info.error`` and leave ``pm`` as it was."""
    plugin: object | None = None
    try:
        plugin = load()
        pm.register(plugin, name=info.name)
        # A hookimpl without a spec (a typo, or a hook from a newer core) is an error, not silence.
        pm.check_pending()
        return plugin
    except (Exception, SystemExit) as exc:  # a broken plugin must not take the others down (even by exiting)
        if plugin is not None and pm.get_plugin(info.name) is plugin:
            pm.unregister(plugin, name=info.name)  # never another plugin that already holds this name
        _mark_broken(info, _one_line(exc), "failed to load")
        return None


def _mark_broken(info: PluginInfo, error: str, what: str) -> None:
    info.error = error
    info.source_types, info.storage_types, info.source_aliases, info.storage_aliases = [], [], {}, {}
    log.warning("plugin %s (%s %s) %s, skipped: %s", info.name, info.package, info.version, what, error)


def _register_types(
    registry: Registry, plugin_name: str, info: PluginInfo, tables: dict[str, dict[str, tuple[Any, PluginInfo]]]
) -> str | None:
    """Call the plugin's register hooks and install its types, all or nothing; returns the problem, if any."""
    collected = {kind: _Collected(kind) for kind in tables}
    for kind, c in collected.items():
        try:
            registry.call_plugin(f"register_{kind}_types", plugin_name, register=c.register)
        except Exception as exc:
            return f"register_{kind}_types raised {_one_line(exc)}"
        if c.problems:
            return "; ".join(c.problems)
    for kind, c in collected.items():
        table = tables[kind]
        mine: set[str] = set()
        for t, aliases in c.types:
            for name in (t.name, *aliases):
                if name in mine:
                    return f"{kind} type name {name!r} registered twice by this plugin"
                if name in table:
                    other = table[name][1]
                    return (f"{kind} type {name!r} is provided twice: by {other.package} {other.version} "
                            f"(plugin {other.name}), loaded first, which keeps it, and by {info.package} "
                            f"{info.version} (plugin {info.name}), skipped; uninstall one or block one with "
                            f"{BLOCK_PLUGINS_ENV}")
                mine.add(name)
    for kind, c in collected.items():
        for t, aliases in c.types:
            entry = (t, info)
            for name in (t.name, *aliases):
                tables[kind][name] = entry  # an alias maps to the very same entry as its type
            (info.source_types if kind == "source" else info.storage_types).append(t.name)
            (info.source_aliases if kind == "source" else info.storage_aliases).update({a: t.name for a in aliases})
    return None


def load_registry(*, load_entry_points: bool | None = None) -> Registry:
    """Build the plugin manager: hookspecs, built-ins, then every installed entry point, each isolated."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.add_hookcall_monitoring(_trace_before, _trace_after)
    for name in _names_from_env(os.environ.get(BLOCK_PLUGINS_ENV, "")):
        pm.set_blocked(name)

    loaded: list[PluginInfo] = []
    plugins: list[PluginInfo] = []

    def add(info: PluginInfo, load: Callable[[], object]) -> None:
        plugins.append(info)
        if pm.is_blocked(info.name):
            info.blocked = True  # not even imported: blocking is for a plugin whose import breaks things
            log.info("plugin %s (%s %s) blocked by %s", info.name, info.package, info.version, BLOCK_PLUGINS_ENV)
        elif _load_plugin(pm, info, load) is not None:
            loaded.append(info)

    for module_name in BUILTIN_PLUGINS:
        info = PluginInfo(name=module_name.rsplit(".", 1)[-1], package="data-manager (built-in)", version=_own_version())
        add(info, lambda m=module_name: importlib.import_module(m))  # type: ignore[misc]

    if load_entry_points is None:
        load_entry_points = os.environ.get(NO_PLUGINS_ENV, "") in ("", "0")
    if load_entry_points:
        for ep in sorted(entry_points(group=hookspecs.PROJECT), key=lambda e: e.name):
            package, version = _dist_version(ep)
            add(PluginInfo(name=ep.name, package=package, version=version), ep.load)

    registry = Registry(pm, plugins, {}, {})
    tables: dict[str, dict[str, tuple[Any, PluginInfo]]] = {
        "source": registry.source_types, "storage": registry.storage_types,  # type: ignore[dict-item]
    }
    # In load order, so on a clash the plugin loaded first (a built-in, else the first by name) keeps the name.
    for info in loaded:
        problem = _register_types(registry, info.name, info, tables)
        if problem is not None:
            pm.unregister(name=info.name)  # skipped entirely: none of its hooks (guards included) will run
            _mark_broken(info, problem, "failed to register its types")
    return registry


# --------------------------------------------------------------------------- -vv: tracing hook calls


_trace_state = threading.local()


def _brief(value: Any, depth: int = 0) -> str:
    """A short, secret-free rendering of a hook argument or result (configs and settings are never shown)."""
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, Dataset):
        return f"Dataset({value.data_id!r})"
    if isinstance(value, BaseException):
        return type(value).__name__
    if isinstance(value, (SourceType, StorageType)):
        return f"{type(value).__name__}({value.name!r})"
    if isinstance(value, Mapping):
        return f"<{len(value)} keys>" if depth else "{" + ", ".join(repr(str(k))[:40] for k in list(value)[:8]) + "}"
    if isinstance(value, (list, tuple)) and depth == 0:
        items = [_brief(v, 1) for v in value[:8]]
        return "[" + ", ".join(items) + (", ..." if len(value) > 8 else "") + "]"
    if callable(value):
        return f"<{getattr(value, '__qualname__', type(value).__name__)}>"
    return f"<{type(value).__name__}>"


def _trace_before(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, object]) -> None:
    stack = getattr(_trace_state, "stack", None)
    if stack is None:
        stack = _trace_state.stack = []
    stack.append(time.monotonic())
    if hook_log.isEnabledFor(logging.DEBUG):
        args = ", ".join(f"{k}={_brief(v)}" for k, v in kwargs.items())
        hook_log.debug("hook %s(%s) -> plugins %s", hook_name, args,
                       ", ".join(i.plugin_name for i in reversed(impls)) or "none")


def _trace_after(outcome: pluggy.Result[Any], hook_name: str, impls: Sequence[pluggy.HookImpl],
                 kwargs: Mapping[str, object]) -> None:
    stack = getattr(_trace_state, "stack", None)
    started = stack.pop() if stack else time.monotonic()
    if hook_log.isEnabledFor(logging.DEBUG):
        ms = (time.monotonic() - started) * 1000
        if outcome.exception is not None:
            hook_log.debug("hook %s raised %s (%.1f ms)", hook_name, _one_line(outcome.exception), ms)
        else:
            hook_log.debug("hook %s returned %s (%.1f ms)", hook_name, _brief(outcome.get_result()), ms)


# --------------------------------------------------------------------------- the process-wide registry


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
