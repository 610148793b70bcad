"""Writing one object to S3 as a stream: a multipart upload, checked part by part, completed at the end.

Public APIs only. The minio SDK's public ``put_object`` pulls from a reader, decides on its own when the
object is complete, cannot be told "complete only now", retries no part and checks no part's answer; the
storage needs the opposite (bytes pushed by the repository layer, completion on ``commit``). boto3's public
multipart calls (``create_multipart_upload``, ``upload_part``, ``complete_multipart_upload``,
``abort_multipart_upload``) are exactly the S3 requests, so multipart uploads go through them. An object
of one part is one ``PUT`` by the minio SDK's public ``put_object`` (a whole, known-length body: nothing to
pull), which costs half boto3's CPU per request (1.3 ms against 2.9 ms measured), and a restore PUTs
thousands of small objects. boto3 is imported on the first multipart upload only.

:class:`ObjectUpload`:

* holds at most two parts in memory: the one being filled and the one on its way to the server (uploaded
  by a helper thread, so the producer keeps working meanwhile);
* every body is checked by the server: over plain http with credentials both clients sign each body's
  sha256 (``x-amz-content-sha256``), which the server recomputes; otherwise (https: ``UNSIGNED-PAYLOAD``)
  each body is sent with its CRC32 (``x-amz-checksum-crc32``, 1.2 GB/s against MD5's 0.5), which the
  server recomputes, refuses on mismatch and answers back, and the answer is compared (``check_etag``); a
  failed part is retried with backoff;
* an object smaller than one part is written with one ``PUT``; a bigger one becomes visible only when the
  multipart upload is completed in :meth:`commit`; :meth:`abort` (and any failure) aborts the upload, so
  nothing is left half-written;
* part sizes grow (x2 every 2000 parts) so the 10 000-part limit of S3 allows objects up to ~1 TiB with
  the default 16 MiB parts (the parts then grow to 256 MiB, and so does the memory they take).
"""

from __future__ import annotations

import base64
import io
import logging
import zlib
from email.utils import parsedate_to_datetime
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from data_manager.types import ObjectWriter

from .connection import Connection, is_s3_code

log = logging.getLogger(__name__)

MIN_PART = 5 << 20  # S3's smallest part (except the last)
DEFAULT_PART = 16 << 20
_GROW_EVERY = 2000


def _crc32(data: bytes | bytearray) -> bytes:
    return zlib.crc32(data).to_bytes(4, "big")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def payload_signed(conn: Connection) -> bool:
    """Do the clients sign each body's sha256 (plain http with credentials), so the server checks it?

    Over https both send ``UNSIGNED-PAYLOAD``; without credentials nothing is signed.
    """
    return not conn.cs.secure and conn.cs.access_key is not None


def _clean_etag(etag: str | None) -> str:
    return (etag or "").strip('"').lower()


# Object headers a write may carry (source.py's allow-list, the storage's own) -> boto3's parameters.
_PARAMS = {"content-type": "ContentType", "cache-control": "CacheControl", "content-disposition": "ContentDisposition",
           "content-encoding": "ContentEncoding", "content-language": "ContentLanguage",
           "x-amz-storage-class": "StorageClass"}
_META = "x-amz-meta-"


def boto_params(headers: dict[str, str]) -> dict[str, Any]:
    """``headers`` as boto3's parameters of PutObject / CreateMultipartUpload."""
    params: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    for name, value in headers.items():
        low = name.lower()
        if low in _PARAMS:
            params[_PARAMS[low]] = value
        elif low.startswith(_META):
            metadata[low[len(_META):]] = value
        elif low == "expires":
            try:  # boto3 takes a date and writes it back as an HTTP date
                params["Expires"] = parsedate_to_datetime(value)
            except (TypeError, ValueError):
                log.warning("Expires %r is not an HTTP date: not set", value)
        else:
            raise ValueError(f"header {name!r} has no boto3 parameter here")
    if metadata:
        params["Metadata"] = metadata
    return params


class _Once(io.RawIOBase):
    """A reader of one buffer for ``put_object``, which reads ``length`` bytes: no copy but one ``bytes``."""

    def __init__(self, data: bytearray) -> None:
        super().__init__()
        self._data: bytearray | None = data

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        data, self._data = self._data, None
        return bytes(data) if data else b""


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
        # A CRC32 (sent, checked by the server, its answer compared) only where the body is not already
        # checked by its signature.
        self._use_crc = not payload_signed(conn)
        self._check_etag = check_etag and self._use_crc
        self._expected = size  # the object's size if known: buffers are then allocated once, at their final size
        self._buf = bytearray()
        self._fill = 0  # bytes of _buf in use
        self._upload_id: str | None = None
        self._parts: list[tuple[int, str, bytes]] = []  # (number, etag, crc32) of uploaded parts
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
            extra = {"ChecksumAlgorithm": "CRC32"} if self._use_crc else {}
            self._upload_id = self._conn.call(
                f"starting the upload of {self._label}",
                lambda: self._conn.s3.create_multipart_upload(
                    Bucket=self._bucket, Key=self._key, **boto_params(self._headers), **extra)["UploadId"],
            )
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="dm-s3-part")
        self._wait_inflight()  # at most one part on its way, one being filled
        self._number += 1
        assert self._pool is not None
        self._inflight = self._pool.submit(self._send, self._number, data)
        if not self._overlap:
            self._wait_inflight()

    def _wait_inflight(self) -> None:
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            inflight.result()

    # ------------------------------------------------------------------ the helper thread

    def _send(self, number: int, data: bytearray) -> None:
        """Upload part ``number`` (on the helper thread): retried, its checksum answer compared."""
        crc = _crc32(data) if self._use_crc else b""
        what = f"uploading part {number} of {self._label}"
        extra = {"ChecksumCRC32": _b64(crc)} if crc else {}

        def once() -> dict[str, Any]:
            return self._conn.s3.upload_part(  # type: ignore[no-any-return]
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=data, **extra)

        answer = self._conn.call(what, once)
        self._verify(what, answer.get("ChecksumCRC32"), _b64(crc))
        self._parts.append((number, _clean_etag(answer.get("ETag")), crc))

    def _verify(self, what: str, answered: str | None, expected: str) -> None:
        if self._check_etag and answered != expected:
            raise self._conn.error(
                what,
                f"the server answered checksum {answered!r}, not the CRC32 {expected} of the data sent "
                "(damaged in transit? for servers that answer no checksum, set check_etag = false)",
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
        crc = _b64(_crc32(data)) if self._use_crc else ""
        what = f"writing {self._label}"
        if any(h.lower() == "expires" for h in self._headers):  # the minio SDK sends it as user metadata
            extra = {"ChecksumCRC32": crc} if crc else {}
            answer = self._conn.call(what, lambda: self._conn.s3.put_object(
                Bucket=self._bucket, Key=self._key, Body=data, **boto_params(self._headers), **extra))
            self._verify(what, answer.get("ChecksumCRC32"), crc)
            self.etag = _clean_etag(answer.get("ETag"))
            return
        headers = {k: v for k, v in self._headers.items() if k.lower() != "content-type"}
        if crc:
            headers["x-amz-checksum-crc32"] = crc
        content_type = next((v for k, v in self._headers.items() if k.lower() == "content-type"), None)
        result = self._conn.call(what, lambda: self._conn.client.put_object(
            self._bucket, self._key, _Once(data), len(data), content_type=content_type or "application/octet-stream",
            metadata=headers, part_size=max(len(data), MIN_PART)))  # one part: one PUT
        self._verify(what, result.http_headers.get("x-amz-checksum-crc32"), crc)
        self.etag = _clean_etag(result.etag)

    def _complete(self) -> None:
        parts = sorted(self._parts)
        # The checksum S3 answers for a multipart object: CRC32 of the parts' binary CRC32s, "-", their number.
        expected = f"{_b64(_crc32(b''.join(c for _, _, c in parts)))}-{len(parts)}" if self._use_crc else ""
        what = f"completing the upload of {self._label}"
        listed = [{"PartNumber": n, "ETag": e, **({"ChecksumCRC32": _b64(c)} if c else {})} for n, e, c in parts]

        def once() -> str | None:
            try:
                answer = self._conn.s3.complete_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": listed})
                self._verify(what, answer.get("ChecksumCRC32"), expected)
                return answer.get("ETag")  # type: ignore[no-any-return]
            except Exception as exc:
                # A retried complete whose first attempt did succeed: the upload is gone, the object is there.
                if is_s3_code(exc, "NoSuchUpload"):
                    stat = self._conn.client.stat_object(self._bucket, self._key)
                    if stat.size == self.size and _clean_etag(stat.etag).endswith(f"-{len(parts)}"):
                        return stat.etag  # type: ignore[no-any-return]
                raise

        etag = self._conn.call(what, once)
        self._upload_id = None  # completed: nothing left to abort
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
                    lambda: self._conn.s3.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=upload_id),
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
