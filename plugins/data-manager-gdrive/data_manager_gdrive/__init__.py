"""data-manager plugin: storage type ``gdrive``, backups kept in a Google Drive folder.

Registration only: the Google client libraries are imported when the storage first talks to Drive, so
``data-manager --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable

from data_manager import hookimpl
from data_manager.types import StorageType

from .storage import GDriveStorage

__all__ = ["GDriveStorage", "register_storage_types"]


@hookimpl
def register_storage_types(register: Callable[[StorageType], None]) -> None:
    register(
        StorageType(
            "gdrive",
            GDriveStorage,
            "a folder in Google Drive (My Drive or a shared drive), resumable chunked uploads",
            secret_keys=("credentials_file", "client_secrets_file", "token_file"),
        )
    )
