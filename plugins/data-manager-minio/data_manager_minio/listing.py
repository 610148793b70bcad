"""Bucket listings: ListObjectsV2 pages through boto3's public paginator, as light records.

Shared by the source (a recursive listing of every object) and the storage (a listing by ``/``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .connection import Connection

PAGE = 1000  # the most S3 returns per page


@dataclass(frozen=True, slots=True)
class Listed:
    """One listed object, or (``is_dir``) a common prefix of a listing by ``/``."""

    object_name: str
    size: int = 0
    etag: str | None = None
    last_modified: datetime | None = None
    storage_class: str | None = None
    is_dir: bool = False


def pages(conn: Connection, bucket: str, prefix: str, *, delimiter: str = "",
          start_after: str | None = None) -> Iterator[list[Listed]]:
    """The objects (and, with a ``delimiter``, the common prefixes) below ``prefix``, a page at a time, in key
    order, starting after ``start_after``. Errors propagate as boto3 raised them (the caller retries)."""
    params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "PaginationConfig": {"PageSize": PAGE}}
    if delimiter:
        params["Delimiter"] = delimiter
    if start_after:
        params["StartAfter"] = start_after
    for page in conn.s3.get_paginator("list_objects_v2").paginate(**params):
        out = [Listed(p["Prefix"], is_dir=True) for p in page.get("CommonPrefixes") or ()]
        out += [
            Listed(
                object_name=o["Key"],
                size=int(o.get("Size") or 0),
                etag=(o.get("ETag") or "").replace('"', "") or None,
                last_modified=o.get("LastModified"),
                storage_class=o.get("StorageClass"),
            )
            for o in page.get("Contents") or ()
        ]
        yield out


__all__ = ["Listed", "PAGE", "pages"]
