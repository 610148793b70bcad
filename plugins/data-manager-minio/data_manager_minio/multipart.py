"""Writing one object to S3 as a stream: a multipart upload, checked part by part, completed at the end.

minio 7.2 has no public call for a *pushed* stream that we complete or abort ourselves: ``put_object`` pulls
from a reader, decides on its own when the object is complete, and checks nothing the server answers. The
S3 requests themselves exist in the SDK as private methods (``_put_object``, ``_create_multipart_upload``,
``_upload_part``, ``_complete_multipart_upload``, ``_abort_multipart_upload``). This module is the only
place that calls them, so a change in the SDK is fixed here and nowhere else.

:class:`ObjectUpload`:

* holds at most two parts in memory: the one being filled and the one on its way to the server (uploaded
  by a helper thread, so the producer keeps working meanwhile);
* over https, sends each part with its ``Content-MD5`` (the server refuses a damaged body) and checks the
  ETag the server returns against the same MD5; over plain http with credentials the SDK already signs
  every body's sha256 (``x-amz-content-sha256``), which the server checks, so no MD5 is computed there (it
  was the costliest hash of a restore: 534 MB/s against sha256's 1260 MB/s); a failed part is retried
  with backoff;
* an object smaller than one part is written with one ``PUT``; a bigger one becomes visible only when the
  multipart upload is completed in :meth:`commit`; :meth:`abort` (and any failure) aborts the upload, so
  nothing is left half-written;
* part sizes grow (x2 every 2000 parts) so the 10 000-part limit of S3 allows objects up to ~1 TiB with
  the default 16 MiB parts (the parts then grow to 256 MiB, and so does the memory they take).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from data_manager.types import ObjectWriter

from .connection import Connection, is_s3_code

log = logging.getLogger(__name__)

MIN_PART = 5 << 20  # S3's smallest part (except the last)
DEFAULT_PART = 16 << 20
_GROW_EVERY = 2000


def _md5(data: bytes | bytearray) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def payload_signed(conn: Connection) -> bool:
    """Does the SDK sign each body's sha256 (plain http with credentials), so the server checks it?

    Over https the SDK sends ``UNSIGNED-PAYLOAD``; without credentials nothing is signed.
    """
    return not conn.cs.secure and conn.cs.access_key is not None


def _clean_etag(etag: str | None) -> str:
    return (etag or "").strip('"').lower()


class ObjectUpload(ObjectWriter):
    """A streamed write of ``bucket/key`` (see the module docstring)."""

    def __init__(
        self,
        conn: Connection,
        bucket: str,
        key: str,
        *,
        part_size: int = DEFAULT_PART,
        headers: dict[str, str] | None = None,
        check_etag: bool = True,
        label: str | None = None,
        overlap: bool = True,
        size: int | None = None,
    ) -> None:
        self._conn = conn
        self._bucket = bucket
        self._key = key
        self._label = label or key
        self._base_part = max(part_size, MIN_PART)
        self._headers = dict(headers or {})
        # MD5 (Content-MD5 and the ETag check) only where the body is not already checked by its signature.
        self._use_md5 = not payload_signed(conn)
        self._check_etag = check_etag and self._use_md5
        self._expected = size  # the object's size if known: buffers are then allocated once, at their final size
        self._buf = bytearray()
        self._fill = 0  # bytes of _buf in use
        self._upload_id: str | None = None
        self._parts: list[tuple[int, str, bytes]] = []  # (number, etag, md5) of uploaded parts
        self._number = 0
        self._overlap = overlap  # False: each part is sent before the next is filled (half the memory)
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: Future[None] | None = None
        self._state = "open"  # open -> committed | aborted
        self.size = 0
        self.etag: str | None = None

    # ------------------------------------------------------------------ the producer's side

    def _part_limit(self) -> int:
        return self._base_part << min(self._number // _GROW_EVERY, 6)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != "open":
            raise ValueError(f"write to {self._label} after commit/abort")
        view = memoryview(data).cast("B")
        while view:
            room = self._part_limit() - self._fill  # parts are cut exactly at the limit
            piece, view = view[:room], view[room:]
            end = self._fill + len(piece)
            if self._fill == 0 and self._expected is not None:  # one allocation of the part's final size
                self._buf = bytearray(min(self._part_limit(), max(self._expected - self.size, end)))
            self._buf[self._fill : end] = piece  # grows the buffer if it is too short
            self._fill = end
            self.size += len(piece)
            if self._fill >= self._part_limit():
                self._send_part()

    def _take(self) -> bytearray:
        """The bytes filled so far (the buffer itself when full: no copy); a new, empty buffer."""
        data = self._buf
        if self._fill < len(data):
            del data[self._fill :]
        self._buf, self._fill = bytearray(), 0
        return data

    def _send_part(self) -> None:
        data = self._take()
        if self._upload_id is None:
            self._upload_id = self._conn.call(
                f"starting the upload of {self._label}",
                self._conn.client._create_multipart_upload,
                self._bucket,
                self._key,
                dict(self._headers),
            )
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="dm-s3-part")
        self._wait_inflight()  # at most one part on its way, one being filled
        self._number += 1
        assert self._pool is not None
        self._inflight = self._pool.submit(self._upload_part, self._number, data)
        if not self._overlap:
            self._wait_inflight()

    def _wait_inflight(self) -> None:
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            inflight.result()

    # ------------------------------------------------------------------ the helper thread

    def _upload_part(self, number: int, data: bytearray) -> None:
        md5 = _md5(data) if self._use_md5 else b""
        what = f"uploading part {number} of {self._label}"
        headers = {"Content-MD5": base64.b64encode(md5).decode()} if md5 else {}

        def once() -> str:
            return self._conn.client._upload_part(
                self._bucket, self._key, data, dict(headers), self._upload_id, number
            )

        etag = self._conn.call(what, once)
        self._verify_etag(what, etag, md5.hex())
        self._parts.append((number, _clean_etag(etag), md5))

    def _verify_etag(self, what: str, etag: str | None, expected: str) -> None:
        if self._check_etag and _clean_etag(etag) != expected:
            raise self._conn.error(
                what,
                f"the server answered ETag {_clean_etag(etag)!r}, not the MD5 {expected} of the data sent "
                "(damaged in transit? for servers that encrypt, set check_etag = false)",
            )

    # ------------------------------------------------------------------ ending

    def commit(self) -> None:
        if self._state != "open":
            raise ValueError(f"commit of {self._label} after commit/abort")
        try:
            if self._upload_id is None:
                self._put_whole()
            else:
                if self._fill:
                    self._send_part()
                self._wait_inflight()
                self._complete()
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        self._shutdown()

    def _put_whole(self) -> None:
        data = self._take()
        md5 = _md5(data) if self._use_md5 else b""
        what = f"writing {self._label}"
        headers = {**self._headers, **({"Content-MD5": base64.b64encode(md5).decode()} if md5 else {})}
        result = self._conn.call(  # the bytearray itself: urllib3 sends any bytes-like body, no copy
            what, self._conn.client._put_object, self._bucket, self._key, data, dict(headers)
        )
        self._verify_etag(what, result.etag, md5.hex())
        self.etag = _clean_etag(result.etag)

    def _complete(self) -> None:
        from minio.datatypes import Part

        parts = sorted(self._parts)
        # S3's ETag of a multipart object: MD5 of the parts' binary MD5s, "-", the number of parts.
        expected = hashlib.md5(b"".join(m for _, _, m in parts), usedforsecurity=False).hexdigest() + f"-{len(parts)}"
        what = f"completing the upload of {self._label}"
        client = self._conn.client

        def once() -> str | None:
            try:
                result = client._complete_multipart_upload(
                    self._bucket, self._key, self._upload_id, [Part(n, e) for n, e, _ in parts]
                )
                return result.etag
            except Exception as exc:
                # A retried complete whose first attempt did succeed: the upload is gone, the object is there.
                if is_s3_code(exc, "NoSuchUpload"):
                    stat = client.stat_object(self._bucket, self._key)
                    ours = _clean_etag(stat.etag) == expected if self._use_md5 else (
                        stat.size == self.size and _clean_etag(stat.etag).endswith(f"-{len(parts)}"))
                    if ours:
                        return stat.etag
                raise

        etag = self._conn.call(what, once)
        self._upload_id = None  # completed: nothing left to abort
        self._verify_etag(what, etag, expected)
        self.etag = _clean_etag(etag)

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        self._buf, self._fill = bytearray(), 0
        try:
            self._wait_inflight()
        except BaseException:
            pass
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            try:
                self._conn.call(
                    f"aborting the upload of {self._label}",
                    self._conn.client._abort_multipart_upload,
                    self._bucket,
                    self._key,
                    upload_id,
                )
            except Exception as exc:
                if not is_s3_code(exc, "NoSuchUpload"):
                    log.warning(
                        "%s (an unfinished upload stays invisible; a bucket lifecycle rule "
                        "AbortIncompleteMultipartUpload removes it)",
                        exc,
                    )
        self._shutdown()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self) -> None:  # a writer dropped without commit/abort must not leak its thread
        pool: Any = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)
