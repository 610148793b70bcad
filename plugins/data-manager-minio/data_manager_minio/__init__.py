"""data-manager plugin for S3 servers (MinIO, AWS, Ceph...): the ``minio`` source and the ``s3`` storage.

Registration only: the minio SDK is imported when a source or storage first talks to a server.
"""

from __future__ import annotations

from collections.abc import Callable

from data_manager import hookimpl
from data_manager.types import SourceType, StorageType


@hookimpl
def register_source_types(register: Callable[[SourceType], None]) -> None:
    from .source import MinioSource

    register(SourceType("minio", MinioSource, "objects of a MinIO / S3 bucket (or a prefix in it), with metadata",
                        secret_keys=("secret_key",), resumes=True))


@hookimpl
def register_storage_types(register: Callable[[StorageType], None]) -> None:
    from .storage import S3Storage

    register(StorageType("s3", S3Storage, "backups in a bucket of MinIO or any S3 server", secret_keys=("secret_key",)))
