"""Bucket listings over libcurl: ListObjectsV2 pages, parsed by ElementTree's C parser.

The minio SDK turns each listed object into Python in Python (ElementPath lookups, ``strptime``): about
0.1 ms an object, on the thread that feeds every fetch, holding the GIL. Here a page costs a few ms of
C and a dict per object. Only whole ``200`` pages are taken; at anything else the listing stops (and
says why), and the SDK lists the rest after the last key taken here, with its retries and error reports.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote_plus

import pycurl
from minio.time import from_iso8601utc

from .connection import ConnectionSettings
from .fetch import easy_handle

log = logging.getLogger(__name__)

PAGE = 1000  # the most S3 returns per page


@dataclass(frozen=True, slots=True)
class Listed:
    """One listed object: the attributes of the SDK's ``Object`` that a backup reads."""

    object_name: str
    size: int
    etag: str | None
    last_modified: datetime | None
    storage_class: str | None


def _modified(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)  # "2026-11-23T07:29:00.123Z": aware, UTC, as the SDK's
    except ValueError:
        return from_iso8601utc(text)


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


def bucket_region(cs: ConnectionSettings, bucket: str) -> str | None:
    """The bucket's region by S3's GetBucketLocation (signed for us-east-1, which AWS accepts for it from any
    region), over libcurl; None if it cannot be told (no SigV4 in this libcurl, an error answer)."""
    body = bytearray()
    try:
        h = easy_handle(cs, "us-east-1")
    except (pycurl.error, AttributeError):
        return None
    try:
        h.setopt(pycurl.URL, f"{cs.url(bucket)}?location=")
        h.setopt(pycurl.WRITEFUNCTION, body.extend)
        h.perform()
        if h.getinfo(pycurl.RESPONSE_CODE) != 200:
            return None
        root = ET.fromstring(bytes(body))
    except (pycurl.error, ET.ParseError) as exc:
        log.info("%s: asking the bucket's region failed (%s)", cs.url(bucket), exc)
        return None
    finally:
        h.close()
    if root.tag.rpartition("}")[2] != "LocationConstraint":
        return None
    region = (root.text or "").strip()
    return {"": "us-east-1", "EU": "eu-west-1"}.get(region, region)  # S3's two legacy spellings


class Lister:
    """Lists one bucket over libcurl; :attr:`complete` says whether the last :meth:`objects` got to the end."""

    def __init__(self, cs: ConnectionSettings, bucket: str, region: str) -> None:
        self._url = cs.url(bucket)
        self._cs = cs
        self._region = region
        self.complete = False

    def _query(self, prefix: str, token: str | None, start_after: str | None = None) -> str:
        # Empty delimiter and prefix are sent, as the SDK sends them: bucket policies may test them.
        params = {"delimiter": "", "encoding-type": "url", "list-type": "2", "max-keys": str(PAGE), "prefix": prefix}
        if token is not None:
            params["continuation-token"] = token
        elif start_after is not None:
            params["start-after"] = start_after
        # Sorted and strictly encoded: the form SigV4 signs, so no libcurl version re-encodes it differently.
        return "&".join(f"{k}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()))

    def objects(self, prefix: str, start_after: str | None = None) -> Iterator[Listed]:
        """Every object below ``prefix`` (after the key ``start_after``), in key order, until the end or the
        first page that is not whole."""
        self.complete = False
        try:
            h = easy_handle(self._cs, self._region)
        except (pycurl.error, AttributeError) as exc:  # a pycurl built on a libcurl without SigV4 (< 7.75)
            log.info("%s: libcurl cannot sign S3 requests here (%s); the SDK lists the bucket", self._url, exc)
            return
        token: str | None = None
        try:
            while True:
                body = bytearray()
                h.setopt(pycurl.URL, f"{self._url}?{self._query(prefix, token, start_after)}")
                h.setopt(pycurl.WRITEFUNCTION, body.extend)
                try:
                    h.perform()
                    status = h.getinfo(pycurl.RESPONSE_CODE)
                    if status != 200:
                        raise ValueError(f"HTTP {status}")
                    objects, token = parse_page(bytes(body))
                except (pycurl.error, ValueError, KeyError, ET.ParseError) as exc:
                    why = exc.args[1] if isinstance(exc, pycurl.error) and len(exc.args) > 1 else exc
                    log.info("%s: listing over libcurl stopped (%s); the SDK lists the rest", self._url, why)
                    return
                yield from objects
                if token is None:
                    self.complete = True
                    return
        finally:
            h.close()


__all__ = ["Listed", "Lister", "bucket_region", "parse_page"]
