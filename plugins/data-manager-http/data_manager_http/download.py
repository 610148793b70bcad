"""Downloading one export into an artifact: ranged and resumed when the server allows it, checked always.

The first request is ``GET`` with ``Range: bytes=0-(chunk_size-1)``; its answer decides the mode:

* ``206`` with a known total: **ranged**. The export is read in ``chunk_size`` ranges, one request each.
  Each range has its own retries (backoff; ``Retry-After`` of a 429/503 honoured); a connection that
  breaks mid-range is resumed from the last byte received, so nothing is read twice and nothing skipped.
  Every later request carries ``If-Match`` (a strong ETag) or ``If-Unmodified-Since`` (Last-Modified), and
  every answer's ETag, Last-Modified and total are compared with the first's: an export that changes between
  ranges is never spliced; the download starts again once, and fails if it changes again.
* ``200``: the server ignores ranges: **streamed** in one GET; a failure discards what was written and
  starts again from the beginning (with backoff), as many times as ``retries`` allows.

The total (``Content-Range`` or ``Content-Length``) is checked against the bytes received, and a whole-export
checksum the server gave (:mod:`.checksums`) against the bytes written; ``Content-MD5`` per answer.

A ranged download is written as parts (:class:`.parts.Output`). Resuming a backup whose interrupted run
committed some, the first request asks for the first byte they do not hold; when its answer is of the same
export (:func:`.parts.version_name` of its ETag, Last-Modified and total), the parts are read back, checked
and kept, and the download continues there; otherwise one warning says why, and it starts over.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from data_manager import retry
from data_manager.errors import DataManagerError, SourceError
from data_manager.retry import Backoff

from . import checksums
from .client import BLOCK, Client, ShortBody, describe, is_transient, retry_hooks, status_error
from .parts import Output, version_name

log = logging.getLogger(__name__)
T = TypeVar("T")

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)\s*/\s*(\d+|\*)\s*$", re.I)
_FILENAME = re.compile(r"""filename\s*=\s*"?([^";]+)"?""", re.I)
CHANGES_TOLERATED = 1  # an export that changed while read is downloaded again this many times, then it fails


@dataclass
class _Cursor:
    """Where a ranged download is: the next export byte, and the answer being read (its last byte)."""

    pos: int = 0
    resp: Any = None
    last: int = -1


class ExportChanged(Exception):
    """The export changed between two requests (another ETag, Last-Modified or size)."""


class Restart(Exception):
    """A streamed (not ranged) download broke: what was written must be discarded."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(describe(cause))
        self.cause = cause


@dataclass
class Result:
    """What a finished download learnt; recorded in the backup's info."""

    size: int = 0
    ranged: bool = False
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None
    filename: str | None = None
    checksum: checksums.Expected | None = None
    ranges: int = 0
    resumed: int = 0  # ranges continued after a broken connection
    resumed_bytes: int = 0  # bytes an interrupted run of this backup had committed, kept (--resume)
    restarts: int = 0  # downloads begun again (a streamed one that broke, an export that changed)
    notes: list[str] = field(default_factory=list)


def _content_range(value: str | None) -> tuple[int | None, int | None, int | None] | None:
    """``bytes 0-99/1000`` -> (0, 99, 1000); ``bytes */1000`` -> (None, None, 1000); ``*`` total -> None."""
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None
    first, last, total = m.groups()
    return (int(first) if first else None, int(last) if last else None, int(total) if total != "*" else None)


def _discard(resp: Any) -> None:
    """Give up an answer not read to its end: its connection is closed, never reused mid-body."""
    if resp is not None:
        resp.close()
        resp.release_conn()


def _headers(resp: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in resp.headers.items()}


class _Hashing:
    """A hash computed on a thread of its own from the blocks :meth:`update` queues (by reference: blocks
    are ``bytes``, never changed afterwards). hashlib releases the GIL on large buffers, so checking a
    server's sha-256 (1.8 GB/s on one core here) overlaps with reading the socket and with the engine's own
    hashing and writing, instead of adding to the reading thread's time. The queue is bounded (memory stays
    at a few blocks)."""

    DEPTH = 8

    def __init__(self, hasher: Any) -> None:
        self._hasher = hasher
        self._queue: queue.Queue[bytes | None] = queue.Queue(self.DEPTH)
        self._thread = threading.Thread(target=self._run, name="dm-http-hash", daemon=True)
        self._thread.start()
        self._open = True

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            self._hasher.update(block)

    def update(self, data: bytes) -> None:
        self._queue.put(data)

    def close(self) -> None:
        """Stop the thread (the hash is complete once this returns). Idempotent."""
        if self._open:
            self._open = False
            self._queue.put(None)
            self._thread.join()

    def digest(self) -> bytes:
        """The digest of every block given: waits for the thread to hash what is queued."""
        self.close()
        return self._hasher.digest()


class _Asked:
    """One GET asked for ahead on a thread: its answer (headers read, body not) or the error it raised."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.resp: Any = None
        self.error: BaseException | None = None
        self.dropped = False


class _Ahead:
    """The next range asked for while the current one is read, on a second connection of the pool: the
    request's round trip and the server's time to first byte (2-3 ms a range on loopback, 64 of them a GiB
    at 16 MiB) overlap with reading the body before it. At most one range is ahead; its answer, or the
    error its request raised, goes to that range as if asked then (retried and checked the same way);
    one never taken is closed once it arrives. After one such error nothing more is asked ahead: a server
    that allows one connection at a time (a 429 for the second) is then asked one range at a time."""

    def __init__(self, request: Callable[[int, int], Any]) -> None:
        self._request = request
        self._asked: _Asked | None = None
        self.enabled = True

    def ask(self, start: int, end: int) -> None:
        if self._asked is not None or not self.enabled:
            return
        asked = self._asked = _Asked(start, end)

        def run() -> None:
            try:
                resp = self._request(start, end)
            except BaseException as exc:  # handed to the range that takes it
                resp, asked.error = None, exc
            with asked.lock:
                asked.resp = resp
                asked.done.set()
                dropped = asked.dropped
            if dropped:
                _discard(resp)

        threading.Thread(target=run, name="dm-http-ahead", daemon=True).start()

    def take(self, start: int, end: int) -> Any:
        """The answer asked ahead for exactly bytes ``start``-``end`` (waiting for it; raising what its request
        raised), or None when none was asked for that span (the rest of a range the server sent only part
        of: the range asked ahead stays for later)."""
        asked = self._asked
        if asked is None or (asked.start, asked.end) != (start, end):
            return None
        self._asked = None
        asked.done.wait()
        if asked.error is not None:
            self.enabled = False
            raise asked.error
        if asked.resp.status not in (200, 206):  # a 429 or 503 for the second connection, or a 412
            self.enabled = False
        return asked.resp

    def drop(self) -> None:
        """Give up the range asked ahead, if any: its answer is closed, now or once it arrives."""
        asked, self._asked = self._asked, None
        if asked is None:
            return
        with asked.lock:
            asked.dropped = not asked.done.is_set()
        if not asked.dropped:
            _discard(asked.resp)


class Download:
    """One export from ``url`` into artifacts that ``open_writer()`` starts (again after a restart)."""

    def __init__(self, client: Client, url: str, where: str, *, chunk_size: int, policy: Backoff,
                 checksum_mode: str, max_retry_after: float) -> None:
        self.client = client
        self.url = url
        self.where = where  # "source 'db' (site.example/export)": the start of every message
        self.chunk_size = chunk_size
        self.policy = policy
        self.mode = checksum_mode
        self.max_retry_after = max_retry_after
        self._progress = 0  # the export byte the body being read has reached (see _pump)

    # ------------------------------------------------------------------ errors and waiting

    def fail(self, what: str, exc: BaseException | str) -> SourceError:
        detail = exc if isinstance(exc, str) else describe(exc)
        return SourceError(f"{self.where}: {what}: {detail}")

    def _retried(self, fn: Callable[[], T], what: Callable[[], str], give_up: Callable[[], str],
                 allowed: Callable[[BaseException], bool] = is_transient,
                 retried: Callable[[], None] | None = None) -> T:
        """``fn()`` through the core's :func:`data_manager.retry.call` (``Retry-After`` honoured, see
        :func:`.client.retry_hooks`); a warning names ``what()`` before each retry, and the last failure
        becomes one line naming ``give_up()``. Our own errors and :class:`ExportChanged` pass unchanged."""

        def note(reason: str, retry: int, seconds: float) -> None:
            log.warning("%s: %s: %s; retry %d of %d in %.1fs", self.where, what(), reason, retry,
                        self.policy.retries, seconds)
            if retried is not None:
                retried()

        transient, on_retry = retry_hooks(self.policy, self.max_retry_after, note, allowed)
        try:
            return retry.call(fn, self.policy, transient=transient, on_retry=on_retry)
        except (DataManagerError, ExportChanged):
            raise
        except Exception as exc:
            raise self._give_up(give_up(), getattr(exc, "cause", exc)) from None

    def _give_up(self, what: str, exc: BaseException) -> SourceError:
        asked = getattr(exc, "retry_after", None)
        if asked is not None and asked > self.max_retry_after:
            return self.fail(what, f"{describe(exc)}, and the server asks to wait {asked:.0f}s "
                                   f"(more than {self.max_retry_after:.0f}s)")
        if is_transient(exc):
            return self.fail(what, f"{describe(exc)} (gave up after {self.policy.retries} retries)")
        return self.fail(what, exc)

    # ------------------------------------------------------------------ the whole download

    def run(self, output: Output) -> Result:
        """Download into ``output``, committed once every byte is checked. Returns what was learnt; raises
        :class:`SourceError` (what is open aborted; committed parts stay for ``--resume``).

        A streamed download that broke (:class:`Restart`) is started again per the retry policy; an export
        that changed is started again :data:`CHANGES_TOLERATED` times."""
        changes = restarts = 0

        def counted() -> None:
            nonlocal restarts
            restarts += 1

        while True:
            try:
                result = self._retried(
                    lambda: self._once(output), lambda: "download broke, starting again", lambda: "download",
                    allowed=lambda exc: isinstance(exc, Restart) and is_transient(exc.cause), retried=counted)
            except ExportChanged as exc:
                output.discard()  # never two versions spliced: its parts go too
                changes += 1
                if changes > CHANGES_TOLERATED:
                    raise self.fail("the export changed while it was downloaded, again", str(exc)) from None
                log.warning("%s: the export changed during the download (%s): starting again", self.where, exc)
                restarts += 1
                continue
            result.restarts = restarts
            return result

    def _once(self, output: Output) -> Result:
        """One download (from the first byte, or where the interrupted run's parts end), committed, or
        what is open aborted on any failure."""
        try:
            result = self._attempt(output)
        except BaseException:
            output.abort()
            raise
        output.commit()
        return result

    def _get(self, headers: dict[str, str], expected: tuple[int, ...], what: str) -> Any:
        """The answer to a GET (status in ``expected``), retried per the policy; one line when it gives up."""
        def once() -> Any:
            resp = self.client.request("GET", self.url, headers)
            if resp.status not in expected:
                raise status_error(resp)
            return resp

        return self._retried(once, lambda: what, lambda: "GET")

    def _first(self, start: int = 0) -> Any:
        """The answer to the first request: a GET of the first range (200 when the server ignores it)."""
        return self._get({"Range": f"bytes={start}-{start + self.chunk_size - 1}"}, (200, 206, 416), "first request")

    def _plain(self) -> Any:
        """The answer to a GET of the whole export."""
        return self._get({}, (200,), "GET")

    def _resumable(self, resp: Any, output: Output, start: int) -> tuple[Any, int]:
        """The answer to a resumed first request (asked at ``start``, where the kept parts end): it and
        ``start`` when it is a range of the same export; else one warning, and the answer to begin with
        from byte 0 (a ``200`` already is)."""
        headers = _headers(resp)
        why = f"the server answered HTTP {resp.status}"
        if resp.status == 206:
            cr = _content_range(headers.get("content-range"))
            if cr is None or cr[0] != start or cr[2] is None:
                why = f"unexpected Content-Range {headers.get('content-range')!r}"
            else:
                version = version_name(headers.get("etag"), headers.get("last-modified"), cr[2])
                if version is None:
                    why = "the server sends no ETag or Last-Modified (a change could not be told)"
                elif version != output.resume_version:
                    why = "the export changed since (another ETag, Last-Modified or size)"
                else:
                    return resp, start
        elif resp.status == 200:
            why = "the server no longer answers byte ranges"
        log.warning("%s: not continuing the interrupted run's %d bytes: %s; starting over", self.where, start, why)
        output.forget()
        if resp.status == 200:
            return resp, 0
        _discard(resp)
        return self._first(), 0

    def _attempt(self, output: Output) -> Result:
        start = output.resume_at
        resp = self._first(start)
        if start:
            resp, start = self._resumable(resp, output, start)
        headers = _headers(resp)
        result = Result(etag=headers.get("etag"), last_modified=headers.get("last-modified"),
                        content_type=headers.get("content-type"))
        if (m := _FILENAME.search(headers.get("content-disposition", ""))) is not None:
            result.filename = m[1].strip()
        result.checksum = checksums.whole(headers, self.mode)
        if result.checksum is None and self.mode in ("repr-digest", "digest", "etag"):  # required, and missing
            _discard(resp)
            raise self.fail("checksum_header", f"the server sent no usable {self.mode} header")
        checksum = result.checksum
        hasher = _Hashing(checksum.hasher()) if checksum is not None else None
        try:
            if start:
                total = _content_range(headers.get("content-range"))[2]  # type: ignore[index]  # checked
                if hasher is not None:
                    hasher.close()
                # the kept parts read back (checked) and hashed for the server's checksum, in order
                kept, hasher = output.adopt(lambda: _Hashing(checksum.hasher()) if checksum is not None else None)
                result.ranged, result.resumed_bytes = True, kept
                log.info("%s: kept the interrupted run's %d bytes (%d parts); continuing at byte %d",
                         self.where, kept, len(output.parts), kept)
                if kept < start:  # a damaged part: its bytes are asked for again
                    _discard(resp)
                    resp = None
                return self._ranged(resp, total, result, output, hasher, kept)
            return self._body(resp, headers, result, output, hasher)
        finally:
            if hasher is not None:
                hasher.close()

    def _body(self, resp: Any, headers: dict[str, str], result: Result, writer: Output,
              hasher: _Hashing | None) -> Result:
        """The rest of :meth:`_attempt`, once the first answer is in: ranged, or streamed."""
        if resp.status == 416:
            cr = _content_range(headers.get("content-range"))
            _discard(resp)
            if cr is not None and cr[2] == 0:  # an empty export has no byte 0
                self._check_total(result, hasher, 0)
                return result
            resp = self._plain()  # a server that refuses even the first range: read it whole
            return self._streamed(resp, _headers(resp), result, writer, hasher)
        if resp.status == 206:
            cr = _content_range(headers.get("content-range"))
            if cr is None or cr[0] != 0 or cr[1] is None:
                _discard(resp)
                raise self.fail("GET", f"unexpected Content-Range {headers.get('content-range')!r}")
            if cr[2] is not None:
                result.ranged = True
                # parts a resumed backup can keep; a server without validators: parts never resumed
                writer.use_parts(version_name(result.etag, result.last_modified, cr[2]) or f"{cr[2]}-{'0' * 16}")
                return self._ranged(resp, cr[2], result, writer, hasher)
            _discard(resp)  # a total of "*": ranges cannot be planned, read it whole
            resp = self._plain()
            headers = _headers(resp)
        return self._streamed(resp, headers, result, writer, hasher)

    # ------------------------------------------------------------------ ranged

    def _validators(self, result: Result) -> dict[str, str]:
        if result.etag and not result.etag.startswith("W/"):
            return {"If-Match": result.etag}
        if result.last_modified:
            return {"If-Unmodified-Since": result.last_modified}
        return {}

    def _range_end(self, resp: Any, result: Result, total: int, start: int, end: int) -> int:
        """Check a range's answer: 206, of the same export (validators, total), starting at ``start`` and
        ending at most at ``end`` (a server may send less than asked). Returns the last byte it holds."""
        headers = _headers(resp)
        if resp.status == 412:
            raise ExportChanged("the server says its precondition failed (HTTP 412)")
        if resp.status == 200:
            raise ExportChanged("the server answered a range request with the whole export")
        etag, modified = headers.get("etag"), headers.get("last-modified")
        if result.etag and etag and etag != result.etag:
            raise ExportChanged(f"ETag {result.etag} became {etag}")
        if result.last_modified and modified and modified != result.last_modified:
            raise ExportChanged(f"Last-Modified {result.last_modified} became {modified}")
        cr = _content_range(headers.get("content-range"))
        if cr is None or cr[0] is None or cr[1] is None or cr[2] is None:
            raise self.fail(f"bytes {start}-{end}", f"unexpected Content-Range {headers.get('content-range')!r}")
        if cr[2] != total:
            raise ExportChanged(f"its size {total} became {cr[2]}")
        if cr[0] != start or not start <= cr[1] <= end:
            raise self.fail(f"bytes {start}-{end}", f"the server sent bytes {cr[0]}-{cr[1]} instead")
        length = headers.get("content-length")
        if length is not None and length.strip() != str(cr[1] - cr[0] + 1):
            raise self.fail(f"bytes {start}-{end}", f"Content-Length {length.strip()} does not match "
                                                    f"Content-Range {headers['content-range'].strip()}")
        return cr[1]

    def _ranged(self, first: Any, total: int, result: Result, writer: Output,
                hasher: _Hashing | None, pos: int = 0) -> Result:
        """Bytes ``pos`` to the end in ranges; ``first``: the answer for the range at ``pos``, if asked."""
        conditions = self._validators(result)
        last = -1
        if first is not None:
            try:
                last = self._range_end(first, result, total, pos, min(pos + self.chunk_size, total) - 1)
            except BaseException:
                _discard(first)
                raise
        cursor = _Cursor(pos=pos, resp=first, last=last)
        ahead = _Ahead(lambda start, end: self.client.request(
            "GET", self.url, {"Range": f"bytes={start}-{end}", **conditions}))
        try:
            while cursor.pos < total:
                start = cursor.pos
                end = min(start + self.chunk_size, total) - 1
                result.ranges += 1

                def rest(start: int = start, end: int = end) -> None:
                    """The range's bytes from ``cursor.pos``: resumed there after a failure, never read twice."""
                    try:
                        if cursor.resp is None:
                            if cursor.pos > start:
                                result.resumed += 1
                            resp = ahead.take(cursor.pos, end)
                            if resp is None:
                                resp = self.client.request(
                                    "GET", self.url, {"Range": f"bytes={cursor.pos}-{end}", **conditions})
                            cursor.resp = resp
                            if cursor.resp.status not in (200, 206, 412):
                                raise status_error(cursor.resp)
                            cursor.last = self._range_end(cursor.resp, result, total, cursor.pos, end)
                        if end + 1 < total:
                            ahead.ask(end + 1, min(end + 1 + self.chunk_size, total) - 1)
                        self._progress = cursor.pos
                        try:
                            self._pump(cursor.resp, writer, hasher, cursor.pos, cursor.last + 1)
                        finally:
                            cursor.pos = max(cursor.pos, self._progress)
                    except BaseException:
                        _discard(cursor.resp)
                        cursor.resp = None
                        raise
                    cursor.resp.release_conn()
                    cursor.resp = None

                while cursor.pos <= end:  # a server may send less than a range asked: ask for the rest
                    self._retried(
                        rest,
                        lambda start=start, end=end: f"bytes {start}-{end}"  # type: ignore[misc]
                        + (f", resuming at byte {cursor.pos}" if cursor.pos > start else ""),
                        lambda start=start, end=end: f"bytes {start}-{end} at byte {cursor.pos}",  # type: ignore[misc]
                    )
        finally:
            ahead.drop()
        self._check_total(result, hasher, cursor.pos)
        result.size = cursor.pos
        return result

    def _pump(self, resp: Any, writer: Output, hasher: _Hashing | None, pos: int, stop: int | None) -> int:
        """Copy the body of ``resp`` to ``writer`` (and the hashers) from export byte ``pos`` up to ``stop``
        (None: to the body's end); returns the position reached, which ``self._progress`` follows byte by
        byte so that a caller resumes at the right place after an exception. Raises :class:`ShortBody` when
        the body ends early."""
        md5_expected = checksums.content_md5(_headers(resp), self.mode)
        if md5_expected is None and self.mode == "content-md5":
            raise self.fail("checksum_header", "the server sent no usable content-md5 header")
        md5 = _Hashing(hashlib.md5()) if md5_expected else None
        expected = None if stop is None else stop - pos
        if expected is None and resp.length_remaining is not None:
            expected = resp.length_remaining
        got = 0
        self._progress = pos
        try:
            while expected is None or got < expected:
                data = resp.read(BLOCK if expected is None else min(BLOCK, expected - got), decode_content=False)
                if not data:
                    if expected is None:
                        break
                    raise ShortBody(got, expected)
                writer.write(data)
                if hasher is not None:
                    hasher.update(data)
                if md5 is not None:
                    md5.update(data)
                got += len(data)
                self._progress = pos + got
        finally:
            if md5 is not None:
                md5.close()
        if md5 is not None and md5.digest() != md5_expected:
            raise self.fail(f"bytes {pos}-{pos + got - 1}", "the body does not match the server's Content-MD5")
        return pos + got

    # ------------------------------------------------------------------ streamed

    def _streamed(self, resp: Any, headers: dict[str, str], result: Result, writer: Output,
                  hasher: _Hashing | None) -> Result:
        length = headers.get("content-length")
        total = int(length) if length and length.isdigit() else None
        try:
            pos = self._pump(resp, writer, hasher, 0, total)
        except DataManagerError:
            _discard(resp)
            raise
        except Exception as exc:
            _discard(resp)
            raise Restart(exc) from None
        resp.release_conn()
        if total is None:
            result.notes.append("no Content-Length: the size could not be checked")
        self._check_total(result, hasher, pos)
        result.size = pos
        return result

    def _check_total(self, result: Result, hasher: _Hashing | None, size: int) -> None:
        if result.checksum is not None and hasher is not None and hasher.digest() != result.checksum.digest:
            raise self.fail("checksum", f"the {size} bytes received do not match the server's "
                                        f"{result.checksum.header} ({result.checksum.algorithm})")


__all__ = ["Download", "ExportChanged", "Result"]
