"""data-manager: back up and restore datasets spread over several stores.

What a plugin imports from here: :data:`hookimpl`, the types of :mod:`data_manager.types` and the errors of
:mod:`data_manager.errors`; sources that read on threads or pack many items also use the helpers of
:mod:`data_manager.threads` and :mod:`data_manager.volumes`. What a caller (e.g. the experiments-manager)
imports: :class:`DataManager`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigError,
    CorruptBackupError,
    DataManagerError,
    ExitCode,
    NotFoundError,
    PluginError,
    RefusedError,
    SourceError,
    StorageError,
    UsageError,
)
from .hookspecs import hookimpl
from .types import (
    ArtifactSet,
    ArtifactSink,
    Dataset,
    Entry,
    ObjectWriter,
    Settings,
    Source,
    SourceSpec,
    SourceType,
    Storage,
    StorageType,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import DataManager


_API_NAMES = ("DataManager", "BackupResult", "RestoreResult", "Status", "CleanupItem")
_JOB_NAMES = ("Job", "Task", "JobTimeoutError")


def __getattr__(name: str) -> Any:
    # The API pulls in the repository engines (zstandard); plugins importing hookimpl should not pay for it.
    if name in _API_NAMES:
        from . import api

        return getattr(api, name)
    if name in _JOB_NAMES:
        from . import jobs

        return getattr(jobs, name)
    raise AttributeError(name)


__all__ = [
    "ArtifactSet",
    "ArtifactSink",
    "BackupResult",
    "CleanupItem",
    "Job",
    "JobTimeoutError",
    "RestoreResult",
    "Status",
    "Task",
    "ConfigError",
    "CorruptBackupError",
    "DataManager",
    "DataManagerError",
    "Dataset",
    "Entry",
    "ExitCode",
    "NotFoundError",
    "ObjectWriter",
    "PluginError",
    "RefusedError",
    "Settings",
    "Source",
    "SourceError",
    "SourceSpec",
    "SourceType",
    "Storage",
    "StorageError",
    "StorageType",
    "UsageError",
    "hookimpl",
]
