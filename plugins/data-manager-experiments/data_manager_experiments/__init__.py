"""data-manager guard plugin ``experiments``: the experiments-manager and the spark-tasks-sender.

Configured by a ``[guards.experiments]`` table (see README.md). Before a backup or restore it asks both
services whether the dataset may be used now, then marks it unavailable in the experiments-manager, and
available again afterwards (the core calls that always, also after a failure, Ctrl-C or a timeout).
Without a ``[guards.experiments]`` table the plugin does nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from data_manager import hookimpl
from data_manager.types import Dataset, Settings

TABLE = "experiments"

# The guard of the config last loaded in this process (the ``configure`` hook is called per DataManager).
_guard: Any = None


@hookimpl
def configure(config: Mapping[str, Any], guards: Mapping[str, Settings]) -> list[str] | None:
    global _guard
    settings = guards.get(TABLE)
    if settings is None:
        _guard = None
        return None
    from .guard import ExperimentsGuard

    _guard = ExperimentsGuard(settings)
    return [TABLE]


@hookimpl
def check_dataset(dataset: Dataset, operation: str) -> str | None:
    if _guard is None:
        return None
    return _guard.check(dataset, operation)


@hookimpl
def before_operation(dataset: Dataset, operation: str, job_id: str) -> None:
    if _guard is not None:
        _guard.mark(dataset, operation, job_id, available=False)


@hookimpl
def after_operation(dataset: Dataset, operation: str, error: BaseException | None, job_id: str) -> None:
    if _guard is not None:
        _guard.mark(dataset, operation, job_id, available=True, outcome="done" if error is None else "failed")
