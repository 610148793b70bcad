"""Storage ``s3``: backups kept in a bucket of MinIO or any S3 server, below an optional prefix.

Writes are multipart uploads (see :mod:`.multipart`): checked part by part, invisible until completed,
aborted on failure. Reads stream, from any offset (:mod:`.download`). ``list`` is a delimiter listing
(``/``), paginated by the SDK; unfinished uploads are never listed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from data_manager.errors import StorageError
from data_manager.types import Entry, FileAttributes, ObjectWriter, Settings, Storage

from .connection import CONNECTION_KEYS, Connection, ConnectionSettings, is_s3_code
from .download import ObjectGone, ObjectReader
from .multipart import DEFAULT_PART, MIN_PART, ObjectUpload

STORAGE_CLASSES = {"STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
                   "GLACIER", "GLACIER_IR", "DEEP_ARCHIVE", "OUTPOSTS", "EXPRESS_ONEZONE"}


def mirror_metadata(attrs: FileAttributes) -> dict[str, str]:
    """A mirrored file's attributes as user metadata (``x-amz-meta-*``) in rclone's format: ``mtime`` in
    seconds with nanoseconds, ``mode`` in octal with the file type, so ``rclone lsl`` and ``rclone copy``
    see the file's own mtime; ``blake3`` when known."""
    sec, ns = divmod(attrs.mtime_ns, 10**9)
    meta = {"x-amz-meta-mtime": f"{sec}.{ns:09d}", "x-amz-meta-mode": f"{0o100000 | (attrs.mode & 0o7777):o}"}
    if attrs.blake3:
        meta["x-amz-meta-blake3"] = attrs.blake3
    return meta


def normalize_prefix(prefix: str) -> str:
    """``"a/b"`` / ``"/a/b/"`` -> ``"a/b/"``; ``""`` stays ``""``."""
    prefix = prefix.strip("/")
    return prefix + "/" if prefix else ""


class S3Storage(Storage):
    consistent_listing = True  # AWS S3 (since December 2020) and MinIO list every committed object at once

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        settings.check_known(CONNECTION_KEYS | {"bucket", "prefix", "part_size", "storage_class", "check_etag"})
        self.cs = ConnectionSettings.read(settings)
        self.bucket = settings.get_str("bucket")
        self.root = normalize_prefix(settings.get_str("prefix", ""))
        self.part_size = settings.get_size("part_size", DEFAULT_PART, minimum=MIN_PART)
        storage_class = settings.get_str("storage_class", None)
        if storage_class is not None and storage_class.upper() not in STORAGE_CLASSES:
            raise settings.error("storage_class", f"unknown storage class (known: {', '.join(sorted(STORAGE_CLASSES))})")
        self.storage_class = storage_class.upper() if storage_class else None
        self.check_etag = settings.get_bool("check_etag", True)
        self.conn = Connection(self.cs, f"s3 storage {name!r} ({self.location()})", StorageError)

    def location(self) -> str:
        return self.cs.url(self.bucket, self.root)

    # ------------------------------------------------------------------ keys

    def _key(self, key: str) -> str:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            raise StorageError(f"{self.conn.label}: bad key {key!r}")
        return self.root + key

    def _dir(self, prefix: str) -> str:
        prefix = prefix.strip("/")
        return self._key(prefix) + "/" if prefix else self.root

    # ------------------------------------------------------------------ operations

    def check(self) -> None:
        exists = self.conn.call("checking the bucket", self.conn.client.bucket_exists, self.bucket)
        if not exists:
            raise StorageError(f"{self.conn.label}: bucket {self.bucket!r} does not exist")
        # Listing proves the credentials may read, not only that the bucket exists.
        self.conn.call("listing the bucket", lambda: next(iter(
            self.conn.client.list_objects(self.bucket, prefix=self.root or None)), None))

    def open_write(self, key: str, *, storage_class: str | None = None,
                   metadata: dict[str, str] | None = None) -> ObjectWriter:
        """Start writing ``key``; ``storage_class`` (e.g. ``"GLACIER"``) overrides the setting for this object;
        ``metadata``: ``x-amz-meta-*`` headers sent with it."""
        headers = {"Content-Type": "application/octet-stream", **(metadata or {})}
        cls = (storage_class or self.storage_class or "").upper()
        if cls:
            headers["x-amz-storage-class"] = cls
        return ObjectUpload(
            self.conn,
            self.bucket,
            self._key(key),
            part_size=self.part_size,
            headers=headers,
            check_etag=self.check_etag,
            label=f"s3://{self.bucket}/{self._key(key)}",
        )

    def open_write_deferred(self, key: str, attrs: FileAttributes | None = None) -> ObjectWriter:
        """Durable at commit, as every write here; ``attrs`` go with the object as user metadata in rclone's
        format (``x-amz-meta-mtime``, ``-mode``) and its BLAKE3 when known (``x-amz-meta-blake3``)."""
        return self.open_write(key, metadata=mirror_metadata(attrs) if attrs is not None else None)

    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        full = self._key(key)
        if length == 0:
            if not self.exists(key):
                raise ObjectGone(f"{self.conn.label}: {key}: not found")
            import io

            return io.BytesIO(b"")
        return ObjectReader(self.conn, self.bucket, full, offset, length, label=f"s3://{self.bucket}/{full}")  # type: ignore[return-value]

    def list(self, prefix: str) -> Iterator[Entry]:
        base = self._dir(prefix)

        def listing() -> list[Entry]:  # one page at a time would be lazier; a retry must restart anyway
            out = []
            for obj in self.conn.client.list_objects(self.bucket, prefix=base or None, recursive=False):
                name = obj.object_name[len(base):]
                if obj.is_dir:
                    name = name.rstrip("/")
                    if name:
                        out.append(Entry(name, True))
                elif name:
                    out.append(Entry(name, False, obj.size, obj.last_modified))
            return out

        yield from self.conn.call(f"listing {base or '/'}", listing)

    def walk(self, prefix: str) -> Iterator[tuple[str, Entry]]:
        """Every object below ``prefix``: one recursive listing instead of one per "directory"."""
        base = self._dir(prefix)

        def listing() -> list[tuple[str, Entry]]:
            out = []
            for obj in self.conn.client.list_objects(self.bucket, prefix=base or None, recursive=True):
                key = obj.object_name[len(self.root):]
                if key and not key.endswith("/"):
                    out.append((key, Entry(key.rsplit("/", 1)[-1], False, obj.size, obj.last_modified)))
            return out

        yield from self.conn.call(f"listing {base or '/'}", listing)

    def exists(self, key: str) -> bool:
        def stat() -> bool:
            try:
                self.conn.client.stat_object(self.bucket, self._key(key))
                return True
            except Exception as exc:
                if is_s3_code(exc, "NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                    return False
                raise

        return self.conn.call(f"checking {key}", stat)

    def storage_class_of(self, key: str) -> str:
        """The object's storage class (``STANDARD`` when the server does not say)."""
        stat = self.conn.call(f"checking {key}", self.conn.client.stat_object, self.bucket, self._key(key))
        return (stat.metadata or {}).get("x-amz-storage-class") or stat.storage_class or "STANDARD"

    def delete(self, key: str) -> None:
        self.conn.call(f"deleting {key}", self.conn.client.remove_object, self.bucket, self._key(key))

    def delete_tree(self, prefix: str) -> None:
        """Every object below ``prefix``, deleted 1000 per request."""
        from minio.deleteobjects import DeleteObject

        keys = [self.root + k for k, _ in self.walk(prefix)]
        for i in range(0, len(keys), 1000):
            batch = [DeleteObject(k) for k in keys[i : i + 1000]]

            def remove(batch: list[DeleteObject] = batch) -> None:
                errors = list(self.conn.client.remove_objects(self.bucket, batch))
                if errors:
                    raise StorageError(f"{self.conn.label}: cannot delete {errors[0].name}: {errors[0].code}")

            self.conn.call(f"deleting below {prefix}", remove)

    def close(self) -> None:
        self.conn.close()
