"""The errors data-manager reports, each with the exit code scripts can rely on.

Every error a user can cause or meet (bad input, unreachable server, corrupt backup) is a
:class:`DataManagerError`: the CLI prints its message as one line and exits with its code,
never with a traceback. Anything else escaping is a bug.
"""

from __future__ import annotations


class ExitCode:
    """Exit codes of the ``data-manager`` command (documented in README.md)."""

    OK = 0
    FAILED = 1  # the operation ran and failed (a source or storage error)
    USAGE = 2  # bad command line, config, dataset, timestamp or missing plugin; nothing was done
    REFUSED = 3  # a guard or a lock said not now; nothing was done
    CORRUPT = 4  # a backup failed verification; nothing was restored
    INTERRUPTED = 130  # Ctrl-C


def first_line(exc: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none: what a log line quotes."""
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


class DataManagerError(Exception):
    """Base class: a failure to report in one line, with an exit code."""

    exit_code: int = ExitCode.FAILED


class ConfigError(DataManagerError):
    """The configuration is wrong. The message names the file, the dataset and the key."""

    exit_code = ExitCode.USAGE

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class UsageError(DataManagerError):
    """A bad argument: unknown dataset, malformed timestamp, no such backup."""

    exit_code = ExitCode.USAGE


class PluginError(DataManagerError):
    """A plugin is missing, broken, or two plugins claim the same type name."""

    exit_code = ExitCode.USAGE


class SourceError(DataManagerError):
    """A data source failed: unreachable server, wrong credentials, missing database."""


class StorageError(DataManagerError):
    """A backup storage failed: unreachable, permission denied, quota exhausted."""


class NotFoundError(StorageError):
    """An object that should be in the storage is not."""


class CorruptBackupError(DataManagerError):
    """An artifact does not match its recorded checksum or size, or cannot be decoded."""

    exit_code = ExitCode.CORRUPT


class RefusedError(DataManagerError):
    """A guard refused the operation, or the dataset is locked by another job."""

    exit_code = ExitCode.REFUSED


def error_code(exc: BaseException) -> str:
    """The stable, machine-readable name of an error (``--json``): the class name in snake case without
    ``Error`` (``CorruptBackupError`` -> ``corrupt_backup``); ``failed`` for the base class."""
    import re

    name = type(exc).__name__
    if isinstance(exc, DataManagerError) and type(exc) is DataManagerError:
        return "failed"
    name = name[: -len("Error")] if name.endswith("Error") and len(name) > 5 else name
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
