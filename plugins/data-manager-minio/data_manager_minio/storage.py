"""Storage ``s3``: backups kept in a bucket of MinIO or any S3 server, below an optional prefix.

Writes are multipart uploads (see :mod:`.multipart`): checked part by part, invisible until completed,
aborted on failure. Reads stream, from any offset (:mod:`.download`). ``list`` is a delimiter listing
(``/``), paginated (:mod:`.listing`); unfinished uploads are never listed. Every request is boto3's
(:mod:`.connection`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

from data_manager.errors import DataManagerError, StorageError
from data_manager.types import Entry, ObjectWriter, Settings, Storage

from .connection import CONNECTION_KEYS, Connection, ConnectionSettings, is_s3_code
from .download import ObjectGone, ObjectReader
from .listing import pages
from .multipart import DEFAULT_PART, MIN_PART, ObjectUpload

STORAGE_CLASSES = {"STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
                   "GLACIER", "GLACIER_IR", "DEEP_ARCHIVE", "OUTPOSTS", "EXPRESS_ONEZONE"}


def normalize_prefix(prefix: str) -> str:
    """``"a/b"`` / ``"/a/b/"`` -> ``"a/b/"``; ``""`` stays ``""``."""
    prefix = prefix.strip("/")
    return prefix + "/" if prefix else ""


class S3Storage(Storage):
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
        self.conn = Connection(self.cs, f"s3 storage {name!r} ({self.location()})", StorageError, bucket=self.bucket)

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
        check_bucket(self.conn, self.bucket, self.root, StorageError)

    def open_write(self, key: str, *, storage_class: str | None = None) -> ObjectWriter:
        """Start writing ``key``; ``storage_class`` (e.g. ``"GLACIER"``) overrides the setting for this object."""
        headers = {"Content-Type": "application/octet-stream"}
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
            for page in pages(self.conn, self.bucket, base, delimiter="/"):
                for obj in page:
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
            for page in pages(self.conn, self.bucket, base):
                for obj in page:
                    key = obj.object_name[len(self.root):]
                    if key and not key.endswith("/"):
                        out.append((key, Entry(key.rsplit("/", 1)[-1], False, obj.size, obj.last_modified)))
            return out

        yield from self.conn.call(f"listing {base or '/'}", listing)

    def exists(self, key: str) -> bool:
        def stat() -> bool:
            try:
                self.conn.s3.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except Exception as exc:
                if is_s3_code(exc, "404", "NoSuchKey", "NotFound"):
                    return False
                raise

        return self.conn.call(f"checking {key}", stat)

    def storage_class_of(self, key: str) -> str:
        """The object's storage class (``STANDARD`` when the server does not say)."""
        stat = self.conn.call(f"checking {key}", lambda: self.conn.s3.head_object(Bucket=self.bucket, Key=self._key(key)))
        return stat.get("StorageClass") or "STANDARD"

    def delete(self, key: str) -> None:
        self.conn.call(f"deleting {key}", lambda: self.conn.s3.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def delete_tree(self, prefix: str) -> None:
        """Every object below ``prefix``, deleted 1000 per request."""
        delete_keys(self.conn, self.bucket, [self.root + k for k, _ in self.walk(prefix)], f"deleting below {prefix}")

    def close(self) -> None:
        self.conn.close()


def check_bucket(conn: Connection, bucket: str, prefix: str, error_class: type[DataManagerError]) -> None:
    """The bucket exists and these credentials may list it (one ListObjectsV2 of one key: unlike a HEAD, its
    error answer tells a wrong secret from a denied access)."""

    def probe() -> bool:
        try:
            conn.s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
            return True
        except Exception as exc:
            if is_s3_code(exc, "NoSuchBucket"):
                return False
            raise

    if not conn.call("checking the bucket", probe):
        raise error_class(f"{conn.label}: bucket {bucket!r} does not exist")


def bucket_exists(conn: Connection, bucket: str) -> bool:
    """Does ``bucket`` exist (HEAD: 404 is no)?"""

    def head() -> bool:
        try:
            conn.s3.head_bucket(Bucket=bucket)
            return True
        except Exception as exc:
            if is_s3_code(exc, "404", "NoSuchBucket", "NotFound"):
                return False
            raise

    return conn.call("checking the bucket", head)


def delete_keys(conn: Connection, bucket: str, keys: list[str], what: str) -> None:
    """Delete ``keys`` of ``bucket``, 1000 per DeleteObjects request; the first key refused is an error."""
    for i in range(0, len(keys), 1000):
        batch = {"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}

        def remove(batch: dict[str, Any] = batch) -> None:
            errors = conn.s3.delete_objects(Bucket=bucket, Delete=batch).get("Errors") or []
            if errors:
                raise conn.error(what, f"cannot delete {errors[0].get('Key')}: {errors[0].get('Code')}")

        conn.call(what, remove)
