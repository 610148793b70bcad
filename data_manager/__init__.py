"""data-manager: back up and restore datasets spread over several stores.

What a plugin imports from here: :data:`hookimpl`, the types of :mod:`data_manager.types` and the errors of
:mod:`data_manager.errors`. What a caller (e.g. the experiments-manager) imports: :class:`DataManager`.
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


def __getattr__(name: str) -> Any:
    # The API pulls in the repository layer (zstandard); plugins importing hookimpl should not pay for it.
    if name == "DataManager":
        from .api import DataManager

        return DataManager
    raise AttributeError(name)


__all__ = [
    "ArtifactSet",
    "ArtifactSink",
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
