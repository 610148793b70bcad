"""A small JSON-over-HTTP client (stdlib urllib): timeouts, retries with backoff, one-line errors.

Retried: connection failures, timeouts, HTTP 5xx and 429, up to ``retries`` more attempts with a doubling
pause (about 0.5 s, 1 s, 2 s... at most 5 s, jittered: the core's :mod:`data_manager.retry`). Not retried: other 4xx answers (a wrong token stays wrong). Every
failure is a :class:`GuardError` naming the service and its base URL, never the token.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from data_manager import retry
from data_manager.errors import DataManagerError
from data_manager.retry import Backoff
from data_manager.types import redact_urls

log = logging.getLogger(__name__)

MAX_PAUSE = 5.0


class GuardError(DataManagerError):
    """A guard service could not be asked, or answered something unusable."""


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(parts.scheme)


class _SameOriginAuth(urllib.request.HTTPRedirectHandler):
    """Follows redirects like urllib, but the token goes only to the origin it was configured for: urllib
    copies ``Authorization`` to wherever a redirect points (another host, plain http)."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


_opener = urllib.request.build_opener(_SameOriginAuth)


class _Transient(Exception):
    """A failure worth another attempt; its text is the problem's one line."""


class ServiceClient:
    def __init__(self, name: str, base_url: str, *, token: str | None, timeout: float, retries: int,
                 backoff: float = 0.5) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    def where(self) -> str:
        return f"{self.name} at {redact_urls(self.base_url)}"

    def request(self, method: str, path: str, *, query: dict[str, str] | None = None,
                body: Any = None) -> tuple[int, Any]:
        """``(status, parsed JSON or None)`` for a 2xx or 404 answer; :class:`GuardError` otherwise."""
        url = self.base_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"Accept": "application/json", "User-Agent": "data-manager-experiments/0.1"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        tried = 0

        def attempt() -> tuple[int, Any]:
            nonlocal tried
            tried += 1
            req = urllib.request.Request(url, data=data, method=method, headers=headers)
            try:
                with _opener.open(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                    return resp.status, self._json(raw, method, path)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return 404, None
                detail = _detail(exc)
                if exc.code in (401, 403):
                    raise GuardError(f"{self.where()}: {method} {path}: HTTP {exc.code} (check the token){detail}") from None
                if exc.code < 500 and exc.code != 429:
                    raise GuardError(f"{self.where()}: {method} {path}: HTTP {exc.code}{detail}") from None
                raise _Transient(f"HTTP {exc.code}{detail}") from None
            except (TimeoutError, socket.timeout):
                raise _Transient(f"no answer within {self.timeout:g}s") from None
            except urllib.error.URLError as exc:
                reason = exc.reason
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    raise _Transient(f"no answer within {self.timeout:g}s") from None
                raise _Transient(f"unreachable ({getattr(reason, 'strerror', None) or reason})") from None
            except (ConnectionError, OSError) as exc:
                raise _Transient(f"unreachable ({exc.strerror or exc})") from None

        def note(exc: BaseException, retry: int, pause: float) -> None:
            log.info("%s: %s %s: %s; retrying in %.1fs", self.where(), method, path, exc, pause)

        policy = Backoff(retries=self.retries, base=self.backoff, cap=MAX_PAUSE)
        try:
            return retry.call(attempt, policy, transient=lambda exc: isinstance(exc, _Transient), on_retry=note)
        except _Transient as exc:
            tries = f" (after {tried} attempts)" if tried > 1 else ""
            raise GuardError(f"{self.where()}: {method} {path}: {exc}{tries}") from None

    def _json(self, raw: bytes, method: str, path: str) -> Any:
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise GuardError(f"{self.where()}: {method} {path}: the answer is not JSON") from None


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        doc = json.loads(exc.read() or b"null")
    except (ValueError, OSError):
        return ""
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return ": " + doc["error"].splitlines()[0][:200]
    return ""
