"""The hooks a data-manager plugin can implement: the plugin author's manual.

A plugin is a module (or object) with functions marked ``@data_manager.hookimpl``, registered through the
``data_manager`` entry point group::

    # pyproject.toml / setup.cfg of data-manager-postgres
    [options.entry_points]
    data_manager =
        postgres = data_manager_postgres

The built-in ``filesystem`` storage and ``directory``/``sqlite`` sources register through these same hooks.

Rules for every hook:

* call nothing slow at import time and import heavy client libraries lazily (``data-manager --help`` must
  stay fast with every plugin installed);
* pluggy passes arguments by name: keep the parameter names given here (you may omit ones you don't use);
* never log or return a secret (passwords, tokens, keys).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pluggy

from .types import Dataset, Operation, Settings, SourceType, StorageType

PROJECT = "data_manager"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_source_types(register: Callable[..., None]) -> None:
    """Register the kinds of data source this plugin provides.

    Call ``register(SourceType(name=..., factory=MySource, description=..., secret_keys=(...)))`` once per
    type. ``name`` is what users write as ``type = "..."`` in a source table; it must be unique across all
    installed plugins. ``secret_keys`` are settings never written to metadata or logs (keys containing
    password, secret, token or credential are secret anyway). ``register(t, aliases=("oldname",))`` also
    makes ``t`` answer to other names (a renamed type keeps its old name for existing configs and backups);
    a config naming an alias is recorded under ``t.name``.

    The core checks everything handed over: something that is not a ``SourceType``, a name that is not a
    non-empty str, a factory that is not callable, or a name or alias another plugin loaded earlier already
    has (built-ins first, then plugins by entry point name) makes this whole plugin *broken*: reported by
    ``data-manager plugins`` with what was wrong (a clash names both plugins) and skipped entirely, its
    other types and hooks included. ``register`` never raises; raising here also breaks the plugin.

    Must not connect to anything or import the type's client library.
    """


@hookspec
def register_storage_types(register: Callable[..., None]) -> None:
    """Register the kinds of backup storage this plugin provides.

    Call ``register(StorageType(name=..., factory=MyStorage, ...))`` once per type (``aliases=(...)`` as for
    :func:`register_source_types`). ``name`` is what users write as ``type = "..."`` in a
    ``[storages.NAME]`` table; unique across installed plugins, checked as for source types: anything wrong
    skips the whole plugin, reported by ``data-manager plugins``.

    Must not connect to anything or import the storage's client library.
    """


@hookspec(firstresult=True)
def resolve_dataset(data_id: str, config: Mapping[str, Any]) -> Dataset | None:
    """Say what ``data_id`` is made of, when it is not described in the config file.

    Called only for a DATA_ID with no ``[datasets.DATA_ID]`` table. Return a :class:`Dataset` (for example
    built from a service's answer), or ``None`` if this plugin does not know the id: the first non-None
    answer wins. ``config`` is the whole parsed config, for the plugin's own settings.

    Must raise :class:`~data_manager.errors.SourceError` (one line) if the service that knows is
    unreachable; must not return a dataset it only guessed.
    """


@hookspec
def configure(config: Mapping[str, Any], guards: Mapping[str, Settings]) -> list[str] | None:
    """Take this plugin's settings; called once when a ``DataManager`` is created from a config.

    ``guards`` holds every ``[guards.NAME]`` table of the config as :class:`~data_manager.types.Settings`
    (``${VAR}`` already expanded, secret values kept out of logs), for example::

        [guards.experiments]
        experiments_url = "http://experiments:8080/api/v1"
        token = "${EXPERIMENTS_TOKEN}"

    Read and validate your table here (``settings.check_known(...)``, ``settings.get_str(...)``: errors name
    the file and key), keep what you need for the other hooks, and return the list of table names you
    used (``["experiments"]``). A ``[guards.NAME]`` table that no plugin claims is a config error, so a typo
    never silently disables a guard. If your table is absent, reset to "not configured" (another config
    may be loaded in the same process) and return ``None``. ``config`` is the whole parsed config.

    Must not connect to anything.
    """


@hookspec
def config_tables() -> list[str] | None:
    """Name the top-level tables of the config this plugin reads itself, if any (``["registry"]`` for a
    ``[registry]`` table it takes from the ``config`` argument of :func:`configure` or :func:`resolve_dataset`).

    The core knows its own (``storages``, ``datasets``, ``guards``, ``jobs``, ``locks``, ``state``); a
    top-level table that neither the core nor an installed plugin names is a config error (exit 2), so a
    typo such as ``[lock]`` is never silently ignored. A guard's settings belong in its ``[guards.NAME]``
    table, claimed through :func:`configure`, not here. Called when a config is parsed; must be constant.
    """


@hookspec
def check_dataset(dataset: Dataset, operation: Operation) -> str | None:
    """May ``operation`` (``"backup"`` or ``"restore"``) run on ``dataset`` now?

    Return ``None`` to allow, or a short reason to refuse (``"experiment 17 is writing exp42"``): the
    operation then does not start, and the command exits with code 3 (refused). Every guard is asked.
    Raise :class:`~data_manager.errors.DataManagerError` if the answer cannot be had (service unreachable):
    that also stops the operation before anything is written.

    Must not change anything; use :func:`before_operation` for that.
    """


@hookspec
def before_operation(dataset: Dataset, operation: Operation, job_id: str) -> None:
    """The operation is about to start: for example mark ``dataset`` unavailable to other systems.

    ``job_id`` names the job (as ``data-manager status`` shows it); tell the other system, so a person
    seeing the mark knows which job set it. The dataset's lock is already held.

    Guards are called one plugin at a time, the last registered first (pluggy's order). Raising stops the
    operation before any data moves: the guards after this one are not called, and ``after_operation`` is
    still called for those whose ``before_operation`` already succeeded, so their marks are undone.
    """


@hookspec
def after_operation(dataset: Dataset, operation: Operation, error: BaseException | None, job_id: str) -> None:
    """The operation has ended, successfully (``error is None``) or not (also on Ctrl-C).

    Always called after a successful :func:`before_operation`, one plugin at a time in registration order
    (the reverse of ``before_operation``): mark the dataset available again. Not called for a plugin whose
    ``before_operation`` failed or never ran; a plugin with only this hook (a notifier) is always called,
    also when the operation was refused or failed before it started. Must not
    raise for the operation's own error. If this hook itself fails, raise: the core reports it loudly and
    records it in the state database (``data-manager status`` shows the dataset as not released), but never
    hides the operation's result. Retry transient failures yourself first.
    """
