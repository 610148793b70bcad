"""Small objects, many at once: whole-object GETs over libcurl's multi interface, from one thread.

Through the minio SDK a GET costs about 1 ms of Python (URL building, signing, urllib3, http.client's
header parser), so a bucket of many small objects was bound by that, not by its bytes. libcurl signs
(SigV4) and parses in C: about 0.25 ms of our CPU per object, with every transfer in flight at once.

Only plain ``200`` answers are taken from here. Anything else (a missing object, throttling, a
credentials or signature problem, a broken connection) hands the object back to the SDK path, which
retries, classifies and reports exactly as for large objects. After ``GIVE_UP`` such hand-backs in a
row the fast path stops trying and hands everything back.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pycurl

from .connection import ConnectionSettings

log = logging.getLogger(__name__)

GIVE_UP = 8
_BUFFER = 256 << 10  # libcurl's receive buffer: fewer write callbacks than its 16 KiB default


def parse_headers(lines: list[bytes]) -> dict[str, str] | None:
    """The last response's headers (names lower-cased), or None unless its status is 200.

    Header bytes are decoded as ISO-8859-1, as http.client (and so the SDK path) decodes them.
    """
    headers: dict[str, str] | None = None
    for raw in lines:
        line = raw.decode("iso-8859-1").rstrip("\r\n")
        if line.startswith("HTTP/"):
            parts = line.split(None, 2)
            headers = {} if len(parts) > 1 and parts[1] == "200" else None
        elif headers is not None and ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return headers


def easy_handle(cs: ConnectionSettings, region: str) -> Any:
    """A libcurl handle that signs its requests (SigV4) for ``region`` with ``cs``'s keys and trusts what the
    SDK's connection trusts; no proxy from the environment, as the SDK's pool; ``cs.timeout`` without a byte
    fails the transfer."""
    h = pycurl.Curl()
    if cs.access_key is not None and cs.secret_key is not None:
        h.setopt(pycurl.AWS_SIGV4, f"aws:amz:{region}:s3")
        h.setopt(pycurl.USERNAME, cs.access_key)
        h.setopt(pycurl.PASSWORD, cs.secret_key)
    if cs.secure:
        h.setopt(pycurl.CAINFO, cs.ca_file())
    h.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
    h.setopt(pycurl.PROXY, "")
    h.setopt(pycurl.NOSIGNAL, 1)
    h.setopt(pycurl.CONNECTTIMEOUT, cs.connect_timeout)
    h.setopt(pycurl.LOW_SPEED_LIMIT, 1)
    h.setopt(pycurl.LOW_SPEED_TIME, cs.timeout)
    return h


class SmallObjects:
    """Fetches whole objects of one bucket, ``concurrency`` at a time, for :meth:`run`."""

    def __init__(self, cs: ConnectionSettings, bucket: str, region: str, concurrency: int, max_size: int) -> None:
        self._base = cs.url(bucket) + "/"
        self._cs = cs
        self._region = region
        self._concurrency = concurrency
        self._max_size = max_size
        self.fetched = 0
        self.handed_back = 0

    def _handle(self) -> Any:
        h = easy_handle(self._cs, self._region)
        # An object that grew past the limit since the listing is refused here (and handed back to be
        # streamed), never buffered whole.
        h.setopt(pycurl.MAXFILESIZE_LARGE, self._max_size)
        h.setopt(pycurl.BUFFERSIZE, _BUFFER)
        return h

    def run(
        self,
        todo: queue.Queue[tuple[int, Any] | None],
        done: Callable[[tuple[int, Any], dict[str, str], bytearray], None],
        hand_back: Callable[[tuple[int, Any]], bool],
        stop: threading.Event,
    ) -> None:
        """Fetch the ``(number, listed object)`` items of ``todo`` until its ``None``.

        ``done(item, headers, body)`` gets each object that arrived whole with ``200``; ``hand_back(item)``
        every other one (it returns False once the backup has stopped). Both run on this thread.
        """
        multi = pycurl.CurlMulti()
        busy: dict[Any, tuple[tuple[int, Any], bytearray, list[bytes]]] = {}
        failures = 0
        try:
            free = [self._handle() for _ in range(self._concurrency)]
        except (pycurl.error, AttributeError) as exc:  # a pycurl built on a libcurl without SigV4 (< 7.75)
            log.info("libcurl cannot sign S3 requests here (%s); every object goes through the SDK", exc)
            free, failures = [], GIVE_UP
        ended = False
        try:
            while not stop.is_set():
                while (free or failures >= GIVE_UP) and not ended:
                    try:
                        item = todo.get_nowait() if busy else todo.get(timeout=0.2)
                    except queue.Empty:
                        break
                    if item is None:
                        ended = True
                    elif failures >= GIVE_UP:
                        self.handed_back += 1
                        if not hand_back(item):
                            return
                    else:
                        h, body, lines = free.pop(), bytearray(), []
                        h.setopt(pycurl.URL, self._base + quote(item[1].object_name, safe="/~"))
                        h.setopt(pycurl.WRITEFUNCTION, body.extend)
                        h.setopt(pycurl.HEADERFUNCTION, lines.append)
                        multi.add_handle(h)
                        busy[h] = (item, body, lines)
                if not busy:
                    if ended:
                        return
                    continue
                while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                    pass
                while True:
                    queued, ok, failed = multi.info_read()
                    reasons = {h: message for h, _, message in failed}
                    for h in ok + [f[0] for f in failed]:
                        multi.remove_handle(h)
                        free.append(h)
                        item, body, lines = busy.pop(h)
                        headers = parse_headers(lines) if h in ok else None
                        length = headers.get("content-length", "") if headers is not None else ""
                        if headers is not None and length.isdigit() and int(length) == len(body):
                            failures = 0
                            self.fetched += 1
                            done(item, headers, body)
                            continue
                        failures += 1
                        if failures == GIVE_UP:
                            why = f"HTTP {h.getinfo(pycurl.RESPONSE_CODE)}" if h in ok else f"transfer failed: {reasons[h]}"
                            log.info("%s: %d small-object GETs in a row failed (%s); the rest go through the SDK",
                                     self._base, GIVE_UP, why)
                        self.handed_back += 1
                        if not hand_back(item):
                            return
                    if not queued:
                        break
                if busy and multi.select(0.2) <= 0:
                    # 0 also comes back at once when libcurl has no socket to offer yet (e.g. while
                    # resolving a name): a short sleep keeps this loop from spinning.
                    time.sleep(0.001)
        finally:
            for h in list(busy):
                multi.remove_handle(h)
            for h in free + list(busy):
                h.close()
            multi.close()


__all__ = ["GIVE_UP", "SmallObjects", "easy_handle", "parse_headers"]
