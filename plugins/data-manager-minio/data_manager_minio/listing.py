"""Bucket listings: ListObjectsV2 pages, as light records.

:func:`pages` lists through boto3's public paginator (the storage's listings by ``/``, and the source's
wherever libcurl cannot: see below). The ``minio`` source lists over libcurl first (:class:`Lister`, pages
parsed by ElementTree's C parser): boto3 turns each listed object into Python in Python (its XML parser,
dateutil for every date), about 0.1 ms an object on the thread that feeds every fetch, holding the GIL;
here a page costs a few ms of C and a dict per object. Only whole ``200`` pages are taken; at anything
else the libcurl listing stops (and says why), and boto3 lists the rest after the last key taken, with its
retries and error reports.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote_plus

from .connection import Connection, ConnectionSettings

log = logging.getLogger(__name__)

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



def _modified(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)  # "2026-11-23T07:29:00.123Z": aware, UTC, as boto3's
    except ValueError:
        return None


def parse_page(body: bytes) -> tuple[list[Listed], str | None]:
    """A ListObjectsV2 page: its objects, and the continuation token of the next page (None after the last).

    Raises ValueError for a page that is not a listing, or that says it is truncated without a token.
    """
    root = ET.fromstring(body)
    if root.tag.rpartition("}")[2] != "ListBucketResult":
        raise ValueError(f"not a listing: <{root.tag}>")
    contents: list[dict[str, Any]] = []
    truncated, token, url_encoded = False, None, False
    for element in root:
        tag = element.tag.rpartition("}")[2]
        if tag == "Contents":
            contents.append({child.tag.rpartition("}")[2]: child.text for child in element})
        elif tag == "IsTruncated":
            truncated = element.text == "true"
        elif tag == "NextContinuationToken":
            token = element.text
        elif tag == "EncodingType":
            url_encoded = element.text == "url"
    if truncated and not token:
        raise ValueError("a truncated page without a continuation token")
    objects = [
        Listed(
            object_name=unquote_plus(c["Key"]) if url_encoded else c["Key"],
            size=int(c.get("Size") or 0),
            etag=(c.get("ETag") or "").replace('"', "") or None,
            last_modified=_modified(c.get("LastModified")),
            storage_class=c.get("StorageClass"),
        )
        for c in contents
    ]
    return objects, token if truncated else None


class Lister:
    """Lists one bucket over libcurl; :attr:`complete` says whether the last :meth:`objects` got to the end."""

    def __init__(self, cs: ConnectionSettings, bucket: str, region: str) -> None:
        self._url = cs.url(bucket)
        self._cs = cs
        self._region = region
        self.complete = False

    def _query(self, prefix: str, token: str | None) -> str:
        # Empty delimiter and prefix are sent, as S3 SDKs send them: bucket policies may test them.
        params = {"delimiter": "", "encoding-type": "url", "list-type": "2", "max-keys": str(PAGE), "prefix": prefix}
        if token is not None:
            params["continuation-token"] = token
        # Sorted and strictly encoded: the form SigV4 signs, so no libcurl version re-encodes it differently.
        return "&".join(f"{k}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()))

    def objects(self, prefix: str) -> Iterator[Listed]:
        """Every object below ``prefix``, in key order, until the end or the first page that is not whole."""
        import pycurl  # here, not at import: the storage imports this module for pages()

        from .fetch import easy_handle

        self.complete = False
        try:
            h = easy_handle(self._cs, self._region)
        except (pycurl.error, AttributeError) as exc:  # a pycurl built on a libcurl without SigV4 (< 7.75)
            log.info("%s: libcurl cannot sign S3 requests here (%s); boto3 lists the bucket", self._url, exc)
            return
        token: str | None = None
        try:
            while True:
                body = bytearray()
                h.setopt(pycurl.URL, f"{self._url}?{self._query(prefix, token)}")
                h.setopt(pycurl.WRITEFUNCTION, body.extend)
                try:
                    h.perform()
                    status = h.getinfo(pycurl.RESPONSE_CODE)
                    if status != 200:
                        raise ValueError(f"HTTP {status}")
                    objects, token = parse_page(bytes(body))
                except (pycurl.error, ValueError, KeyError, ET.ParseError) as exc:
                    why = exc.args[1] if isinstance(exc, pycurl.error) and len(exc.args) > 1 else exc
                    log.info("%s: listing over libcurl stopped (%s); boto3 lists the rest", self._url, why)
                    return
                yield from objects
                if token is None:
                    self.complete = True
                    return
        finally:
            h.close()


__all__ = ["Listed", "Lister", "PAGE", "pages", "parse_page"]
