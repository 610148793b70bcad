"""Talking HTTP through urllib3: one pool per source, which failures are worth another try, one-line errors.

urllib3 retries nothing itself here (``connect=0, read=0, status=0``): the source retries through the core's
:func:`data_manager.retry.call` (with :func:`retry_hooks` for ``Retry-After``), each try of a range resuming
from the last byte received rather than asking again from the start. urllib3 only follows redirects (at most 5); on a redirect to another host
every configured header is dropped (a token must not follow a link to somewhere else).
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from data_manager.retry import Backoff

log = logging.getLogger(__name__)

#: Statuses that say "not now": asked again after a pause (Retry-After honoured for 429 and 503).
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
BLOCK = 1 << 20  # socket reads and upload writes: large enough that per-call overhead vanishes

_REASONS = {
    401: "not authorised (check the Authorization header)",
    403: "forbidden (check the headers and the token's rights)",
    404: "not found",
    405: "method not allowed",
    410: "gone",
}


class HttpStatus(Exception):
    """The server answered with a status the caller did not expect."""

    def __init__(self, status: int, retry_after: float | None = None, detail: str = "") -> None:
        super().__init__(status)
        self.status = status
        self.retry_after = retry_after
        self.detail = detail

    def __str__(self) -> str:
        text = f"HTTP {self.status}"
        if self.status in _REASONS:
            text += f" {_REASONS[self.status]}"
        return text + (f": {self.detail}" if self.detail else "")


class ShortBody(Exception):
    """The answer ended before the bytes it announced."""

    def __init__(self, got: int, expected: int) -> None:
        super().__init__(f"the answer ended after {got} of {expected} bytes")


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now_dt = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc)
    return max(0.0, (when - now_dt).total_seconds())


def status_error(resp: Any) -> HttpStatus:
    """An :class:`HttpStatus` for ``resp``, with the first line of a short error body (already read)."""
    detail = ""
    try:
        body = resp.read(2048, decode_content=True) or b""
        first = body.decode("utf-8", "replace").strip().splitlines()
        detail = first[0][:160] if first else ""
    except Exception:  # noqa: BLE001 - the status says enough
        pass
    finally:
        resp.close()  # the rest of the body is never read: the connection is not reused
        resp.release_conn()
    return HttpStatus(resp.status, retry_after(resp.headers.get("Retry-After")), detail)


def is_transient(exc: BaseException) -> bool:
    """Would the same request, a little later, probably succeed? (A timeout, a broken connection, 429/5xx.)"""
    import urllib3.exceptions as e

    if isinstance(exc, HttpStatus):
        return exc.status in TRANSIENT_STATUS
    if isinstance(exc, ShortBody):
        return True
    if isinstance(exc, e.MaxRetryError):
        return exc.reason is not None and is_transient(exc.reason)
    if isinstance(exc, (e.SSLError, e.NameResolutionError, e.LocationParseError, e.ResponseError)):
        return False
    if isinstance(exc, (e.ProtocolError, e.TimeoutError, e.NewConnectionError, e.DecodeError)):
        return True
    return isinstance(exc, (ConnectionError, TimeoutError, e.HTTPError))


def describe(exc: BaseException) -> str:
    """One line about ``exc`` without secrets: never urllib3's own text, which holds the URL."""
    import urllib3.exceptions as e

    if isinstance(exc, (HttpStatus, ShortBody)):
        return str(exc)
    if isinstance(exc, e.MaxRetryError):
        if isinstance(exc.reason, e.ResponseError):
            return "too many redirects"
        return describe(exc.reason) if exc.reason is not None else "request failed"
    if isinstance(exc, e.SSLError):
        return "TLS handshake failed (certificate not trusted, or not an https server)"
    if isinstance(exc, e.NameResolutionError):
        return "cannot resolve the host name"
    if isinstance(exc, e.NewConnectionError):  # a subclass of ConnectTimeoutError: asked first
        return "cannot connect (connection refused or host unreachable)"
    if isinstance(exc, e.ConnectTimeoutError):
        return "connection timed out"
    if isinstance(exc, e.ReadTimeoutError):
        return "the server stopped sending (read timed out)"
    if isinstance(exc, e.ProtocolError):
        if any(isinstance(a, http.client.IncompleteRead) for a in exc.args):
            return "the answer ended before its Content-Length (connection closed)"
        return "the connection broke"
    if isinstance(exc, e.HTTPError):
        return f"HTTP failure ({type(exc).__name__})"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


class _MaskQuery(logging.Filter):
    """Masks secret-looking query values in urllib3's own debug lines ("GET /export?token=... HTTP/1.1"),
    which hold the request path the scrubber cannot recognise (it knows the whole URL, not its path)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from .urls import mask_query_values

        message = record.getMessage()
        if "?" in message:
            record.msg, record.args = mask_query_values(message), None
        return True


_MASK_FILTER = _MaskQuery()


def _mask_urllib3_logs() -> None:
    for name in ("urllib3.connectionpool", "urllib3.poolmanager", "urllib3.util.retry"):
        logger = logging.getLogger(name)
        if _MASK_FILTER not in logger.filters:
            logger.addFilter(_MASK_FILTER)


class Client:
    """A urllib3 pool with the source's headers and timeouts; requests stream (nothing preloaded)."""

    def __init__(self, headers: Mapping[str, str], timeout: float) -> None:
        self.headers = dict(headers)
        self.timeout = timeout
        self._pool: Any = None

    @property
    def pool(self) -> Any:
        if self._pool is None:
            import urllib3

            _mask_urllib3_logs()
            retries = urllib3.Retry(
                total=None, connect=0, read=0, status=0, other=0, redirect=5, raise_on_redirect=True,
                raise_on_status=False,
                remove_headers_on_redirect=set(urllib3.Retry.DEFAULT_REMOVE_HEADERS_ON_REDIRECT)
                | {k.lower() for k in self.headers},
            )
            self._pool = urllib3.PoolManager(
                num_pools=4, maxsize=2, retries=retries, blocksize=BLOCK,
                timeout=urllib3.Timeout(connect=min(self.timeout, 15.0), read=self.timeout),
            )
        return self._pool

    def request(self, method: str, url: str, headers: Mapping[str, str] | None = None, body: Any = None) -> Any:
        """The answer to ``method url`` (the body unread), with the source's headers plus ``headers``."""
        all_headers = {**self.headers, "Accept-Encoding": "identity", **(headers or {})}
        return self.pool.request(method, url, headers=all_headers, body=body, preload_content=False,
                                 decode_content=False, redirect=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.clear()
            self._pool = None


def retry_hooks(
    policy: Backoff,
    max_wait: float,
    note: Callable[[str, int, float], None],
    allowed: Callable[[BaseException], bool] = is_transient,
) -> tuple[Callable[[BaseException], bool], Callable[[BaseException, int, float], None]]:
    """``transient`` and ``on_retry`` for :func:`data_manager.retry.call` that honour ``Retry-After``.

    ``transient``: ``allowed(exc)``, unless the server asks to wait longer than ``max_wait`` (then giving up
    at once, with the server's answer, beats sleeping through a backup window). ``on_retry`` tells
    ``note(reason, retry, seconds)`` and tops the helper's backoff up to what ``Retry-After`` asked. An
    exception with a ``cause`` (a download to start again) is judged by its cause.
    """

    def transient(exc: BaseException) -> bool:
        cause = getattr(exc, "cause", exc)
        asked = getattr(cause, "retry_after", None)
        return allowed(exc) and (asked is None or asked <= max_wait)

    def on_retry(exc: BaseException, retry: int, delay: float) -> None:
        cause = getattr(exc, "cause", exc)
        asked = getattr(cause, "retry_after", None) or 0.0
        note(describe(cause), retry, max(delay, asked))
        if asked > delay:
            policy.wait(asked - delay)

    return transient, on_retry


__all__ = ["BLOCK", "Client", "HttpStatus", "ShortBody", "describe", "is_transient", "retry_after", "retry_hooks",
           "status_error"]
