"""Reading one object from S3 as a stream: in ranges, resuming after a broken connection.

Every request after the first carries ``If-Match`` with the ETag of the first answer, so all bytes read
belong to one version of the object; if the object is replaced meanwhile, :class:`ObjectChanged` is raised
instead of a mix of two versions.
"""

from __future__ import annotations

import io
import re
from typing import Any

from data_manager.errors import NotFoundError, StorageError

from .connection import Connection, is_s3_code

CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class ObjectGone(NotFoundError):
    """The object does not exist (any more)."""


class ObjectChanged(StorageError):
    """The object was replaced while it was being read."""


class ObjectReader(io.RawIOBase):
    """The bytes of ``bucket/key`` from ``offset``, ``length`` of them or to the end.

    ``range_size`` splits the read into requests of at most that many bytes (``None``: one request).
    The first request is made here, so a missing object raises :class:`ObjectGone` at once.
    ``headers`` are the first answer's headers (content type, user metadata, ETag, Last-Modified).
    """

    def __init__(
        self,
        conn: Connection,
        bucket: str,
        key: str,
        offset: int = 0,
        length: int | None = None,
        *,
        range_size: int | None = None,
        label: str | None = None,
    ) -> None:
        super().__init__()
        self._conn = conn
        self._bucket = bucket
        self._key = key
        self._label = label or key
        self._pos = offset
        self._end = None if length is None else offset + length
        self._range_size = range_size
        self._resp: Any = None
        self._resp_end = 0
        self.etag: str | None = None
        self.headers: dict[str, str] = {}
        self.size: int | None = None  # the whole object's size
        self._open()

    # ------------------------------------------------------------------ requests

    def _done(self) -> bool:
        end = self._end if self._end is not None else self.size
        return end is not None and self._pos >= end

    def _request(self) -> None:
        start = self._pos
        stop = self._end
        if self._range_size is not None:
            stop = start + self._range_size if stop is None else min(stop, start + self._range_size)
        length = 0 if stop is None else stop - start
        headers = {"If-Match": f'"{self.etag}"'} if self.etag else None
        while True:
            try:
                resp = self._conn.client.get_object(
                    self._bucket, self._key, offset=start, length=length, request_headers=headers
                )
                break
            except Exception as exc:
                if is_s3_code(exc, "NoSuchKey"):
                    raise ObjectGone(f"{self._conn.label}: {self._label}: not found") from None
                if is_s3_code(exc, "PreconditionFailed"):
                    raise ObjectChanged(f"{self._conn.label}: {self._label}: changed while being read") from None
                if is_s3_code(exc, "InvalidRange") and self.size is None and start == 0 and length:
                    # An empty object has no byte range: its plain GET gives the headers (ETag, type, user
                    # metadata) the index records, which the range's error answer does not.
                    length = 0
                    continue
                raise
        first = self.etag is None
        try:
            got = self._resp_length(resp, start)
        except BaseException:
            resp.close()
            resp.release_conn()
            raise
        self._resp, self._resp_end = resp, start + got
        if first:
            self.headers = {k.lower(): v for k, v in resp.headers.items()}
            self.etag = (resp.headers.get("ETag") or "").strip('"') or None

    def _resp_length(self, resp: Any, start: int) -> int:
        content_range = resp.headers.get("Content-Range")
        if content_range:
            m = _CONTENT_RANGE.match(content_range)
            if not m or int(m[1]) != start:
                raise self._conn.error(f"reading {self._label}", f"unexpected Content-Range {content_range!r}")
            if m[3] != "*":
                self.size = int(m[3])
            return int(m[2]) - int(m[1]) + 1
        length = int(resp.headers.get("Content-Length", "0"))
        if start == 0 and self.size is None:
            self.size = length
        return length

    def _open(self) -> None:
        self._conn.call(f"reading {self._label}", self._request)

    def _release(self) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()
            resp.release_conn()

    # ------------------------------------------------------------------ file interface

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        if n is None or n < 0:
            chunks = []
            while data := self.read(CHUNK):
                chunks.append(data)
            return b"".join(chunks)
        attempt = 0
        while True:
            if self._resp is None:
                if self._done() or n == 0:
                    return b""
                self._open()
            try:
                data = self._resp.read(n, decode_content=False)  # stored bytes, even if Content-Encoding: gzip
            except Exception as exc:
                self._release()
                if not self._conn.backoff(attempt, f"reading {self._label} at byte {self._pos}", exc):
                    if self._conn.known(exc):
                        raise self._conn.error(f"reading {self._label}", exc) from None
                    raise
                attempt += 1
                continue
            if data:
                self._pos += len(data)
                return data
            if self._pos < self._resp_end:  # the answer ended early: resume from here
                self._release()
                if not self._conn.backoff(attempt, f"reading {self._label}", ConnectionError("short read")):
                    raise self._conn.error(f"reading {self._label}", "the server's answer ended early")
                attempt += 1
                continue
            self._release()
            if self._done() or self._range_size is None:
                return b""

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._release()
            super().close()


__all__ = ["ObjectChanged", "ObjectGone", "ObjectReader"]
