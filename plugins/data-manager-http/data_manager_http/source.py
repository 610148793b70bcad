"""Source ``http``: back up what a service exports over HTTP, restore it by upload or as a file.

Backup streams the export into artifacts: parts of ``part_size`` when the server answers ranges (a
``backup --resume`` keeps those an interrupted run committed, see :mod:`.parts`), else one artifact,
``export`` (see :mod:`.download` for ranges, resumes, restarts and checks). Restore sends the export (the
parts in order) to ``restore_url`` (``POST`` or ``PUT``), or writes it to the file ``path``
(``--set NAME.path=FILE``): staged beside the target, flushed, then renamed over it, so the file is either
the old one or the whole export.

Secrets: ``url``, ``restore_url`` and ``headers`` are secret keys, recorded as ``***``; the info records
:func:`~data_manager_http.urls.public_url` of the URL instead, and messages name it by its
:func:`~data_manager_http.urls.label`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import urlsplit

from data_manager import retry
from data_manager.durable import fsync_dir, os_reason
from data_manager.errors import DataManagerError, SourceError
from data_manager.retry import Backoff
from data_manager.tls import is_loopback
from data_manager.types import ArtifactSet, ArtifactSink, Settings, Source

from . import checksums
from .client import BLOCK, Client, describe, is_transient, retry_hooks, status_error
from .download import Download
from .parts import ARTIFACT, Joined, Output, export_names
from .urls import MASK, check_url, label, public_url

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_CHUNK = 16 << 20
DEFAULT_PART = 64 << 20  # what a killed backup loses at most, and one object (and commit) per this many bytes
MAX_RETRY_AFTER = 300.0  # a server asking for a longer pause than this is given up on, with its answer
_STAGING = ".dm-restore-"
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)
KEYS = {"url", "headers", "chunk_size", "checksum_header", "restore_url", "restore_method", "path", "retries",
        "retry_delay", "timeout", "verify_first", "part_size"}


class HttpSource(Source):
    """An export at ``url``; see the module docstring and the plugin's README for every key."""

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        settings.check_known(KEYS)
        self.url = self._url("url", required=True)
        self.restore_url = self._url("restore_url", required=False)
        self.headers, self.headers_known = self._headers()
        self.chunk_size = settings.get_size("chunk_size", DEFAULT_CHUNK)
        if self.chunk_size <= 0:
            raise settings.error("chunk_size", "must be at least 1 byte")
        default_part = -(-DEFAULT_PART // self.chunk_size) * self.chunk_size  # a multiple of chunk_size
        self.part_size = settings.get_size("part_size", default_part)
        if self.part_size <= 0 or self.part_size % self.chunk_size:
            raise settings.error("part_size", f"must be a multiple of chunk_size ({self.chunk_size} bytes)")
        mode = settings.get_str("checksum_header", "auto").lower()
        if mode not in ("auto", "none", *checksums.HEADERS):
            raise settings.error("checksum_header", "must be auto, none, Repr-Digest, Digest, ETag or Content-MD5")
        self.checksum_mode = mode
        self.restore_method = settings.get_str("restore_method", "POST").upper()
        if self.restore_method not in ("POST", "PUT"):
            raise settings.error("restore_method", f"must be POST or PUT, not {self.restore_method!r}")
        path = settings.get("path")
        if path is not None and not isinstance(path, str):
            raise settings.error("path", f"must be a file path, not {path!r}")
        self.path = Path(path).expanduser() if path else None  # "" (--set NAME.path=) means none
        if self.path is not None and self.restore_url is not None:
            raise settings.error("path", "and restore_url are both set: to write the file, add "
                                         f"--set {name}.restore_url= ; to upload, drop path")
        self.retries = settings.get_int("retries", 5, minimum=0)
        self.retry_delay = settings.get_duration("retry_delay", 0.5)
        self.timeout = settings.get_duration("timeout", 60.0)
        self.verify_first = settings.get_bool("verify_first", True)
        self._client: Client | None = None

    # ------------------------------------------------------------------ settings

    def _url(self, key: str, *, required: bool) -> str | None:
        """A URL setting; None when absent, empty (``--set NAME.KEY=``) or recorded as a secret (``***``)."""
        value = self.settings.get(key)
        if value in (None, "") and required:
            self.settings.get_str(key)  # raises: missing (required), or must not be empty
        if value in (None, "", MASK):
            return None
        if not isinstance(value, str):
            raise self.settings.error(key, "must be a string (an http:// or https:// URL)")
        problem = check_url(value)
        if problem:
            raise self.settings.error(key, problem)  # never the value: it may hold a token
        return value

    def _headers(self) -> tuple[dict[str, str], bool]:
        value = self.settings.get("headers", {})
        if value == MASK:  # a backup's recorded settings: the values are not known here
            return {}, False
        if not isinstance(value, dict):
            raise self.settings.error("headers", 'must be a table, e.g. { Authorization = "Bearer ${TOKEN}" }')
        out = {}
        for key, val in value.items():
            if not _TOKEN.match(key):
                raise self.settings.error("headers", f"{key!r} is not a valid header name")
            if key.lower() in ("range", "if-match", "if-unmodified-since", "content-length", "host"):
                raise self.settings.error("headers", f"{key!r} is set by the source itself")
            if not isinstance(val, str) or "\r" in val or "\n" in val:
                raise self.settings.error("headers", f"the value of {key!r} must be a one-line string")
            out[key] = val
        return out, True

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.headers, self.timeout)
        return self._client

    @property
    def policy(self) -> Backoff:
        return Backoff(retries=self.retries, base=self.retry_delay, cap=max(8.0, self.retry_delay))

    def _where(self, url: str) -> str:
        return f"source {self.name!r} ({label(url)})"

    def describe(self) -> str:
        if self.path is not None:
            return str(self.path)
        if self.url is not None:
            text = label(self.url)
            return text + (f" (restore: {self.restore_method} {label(self.restore_url)})" if self.restore_url else "")
        if self.restore_url is not None:
            return f"{self.restore_method} {label(self.restore_url)}"
        return "http export"

    def _need_url(self) -> str:
        if self.url is None:
            raise self.settings.error("url", "is not known (recorded as a secret): give it in the config")
        return self.url

    def _warn_clear_text(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme == "http" and self.headers and not is_loopback(parts.hostname):
            log.warning("%s: headers are sent in clear text over http:// to %s (use https://)",
                        self._where(url), parts.hostname)

    # ------------------------------------------------------------------ backup

    def _call(self, fn: Callable[[], T], where: str, what: str,
              allowed: Callable[[BaseException], bool] = is_transient) -> T:
        """``fn()`` through the core's :func:`data_manager.retry.call` (``Retry-After`` honoured); the last
        failure becomes one :class:`SourceError` line ``WHERE: WHAT: reason``; our own errors pass unchanged."""

        def note(reason: str, retry_no: int, seconds: float) -> None:
            log.warning("%s: %s: %s; retry %d of %d in %.1fs", where, what, reason, retry_no, self.retries, seconds)

        transient, on_retry = retry_hooks(self.policy, MAX_RETRY_AFTER, note, allowed)
        try:
            return retry.call(fn, self.policy, transient=transient, on_retry=on_retry)
        except DataManagerError:
            raise
        except Exception as exc:
            raise SourceError(f"{where}: {what}: {describe(exc)}") from None

    def check(self) -> None:
        """A HEAD request: the server answers and lets us in (405/501: it does not do HEAD, which is fine)."""
        url = self._need_url()

        def head() -> None:
            resp = self.client.request("HEAD", url)
            if resp.status >= 400 and resp.status not in (405, 501):
                raise status_error(resp)
            resp.release_conn()

        self._call(head, self._where(url), "HEAD")

    def backup(self, sink: ArtifactSink) -> None:
        url = self._need_url()
        self._warn_clear_text(url)
        download = Download(self.client, url, self._where(url), chunk_size=self.chunk_size, policy=self.policy,
                            checksum_mode=self.checksum_mode, max_retry_after=MAX_RETRY_AFTER)
        output = Output(sink, self.part_size, self._where(url))
        try:
            result = download.run(output)
        finally:
            self.client.close()
        for note in result.notes:
            log.warning("%s: %s", self._where(url), note)
        sink.set_info(
            url=public_url(url), size=result.size,
            digest=f"blake3:{output.digest}" if output.single else None,  # parts: each has its own, in the manifest
            parts=len(output.parts), part_size=self.part_size if output.parts else None,
            resumed_bytes=result.resumed_bytes,
            server_checksum=f"{result.checksum.header}: {result.checksum.text()}" if result.checksum else None,
            etag=result.etag, last_modified=result.last_modified, content_type=result.content_type,
            filename=result.filename, ranged=result.ranged, ranges=result.ranges, resumed=result.resumed,
            restarts=result.restarts,
        )

    # ------------------------------------------------------------------ restore

    def restore(self, artifacts: ArtifactSet) -> None:
        export_names(artifacts, f"source {self.name!r}")  # fails before anything is touched
        if self.path is not None:
            self._restore_file(artifacts)
        elif self.restore_url is not None:
            self._upload(artifacts, self.restore_url)
        else:
            raise self.settings.error("path", f"nothing says where to restore: set restore_url, or give "
                                              f"--set {self.name}.path=FILE")

    def restore_leftovers(self, remove: bool) -> list[str]:
        """Staging files an interrupted restore to ``path`` left beside it."""
        if self.path is None:
            return []
        try:
            found = sorted(p for p in self.path.parent.iterdir() if p.name.startswith(f".{self.path.name}{_STAGING}"))
        except OSError:
            return []
        if remove:
            for p in found:
                with contextlib.suppress(OSError):
                    p.unlink()
        return [str(p) for p in found]

    def _restore_file(self, artifacts: ArtifactSet) -> None:
        target = self.path
        assert target is not None
        if target.is_dir():
            raise SourceError(f"source {self.name!r}: {target} is a directory; path must name a file")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            mode = target.stat().st_mode & 0o777 if target.exists() else 0o600  # an export may be private
        except OSError as exc:
            raise SourceError(f"source {self.name!r}: cannot create {target.parent}: {os_reason(exc)}") from None
        self.restore_leftovers(remove=True)
        staging = target.parent / f".{target.name}{_STAGING}{secrets.token_hex(4)}"
        try:
            fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with open(fd, "wb", buffering=0) as out, self._export(artifacts) as src:
                while block := src.read(BLOCK):
                    out.write(block)
                os.fsync(out.fileno())
            os.replace(staging, target)
            fsync_dir(target.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                staging.unlink()
            raise SourceError(f"source {self.name!r}: cannot write {target}: {os_reason(exc)}") from None
        except BaseException:
            with contextlib.suppress(OSError):
                staging.unlink()
            raise

    def _upload(self, artifacts: ArtifactSet, url: str) -> None:
        """``restore_method`` the artifact to ``url``, retried while that cannot import it twice: a PUT on
        any transient failure, a POST only on 429/503 or when it could not connect."""
        import urllib3.exceptions as e

        where = self._where(url)
        if not self.headers_known:
            log.warning("%s: the recorded headers are secret: uploading without them (--set %s.headers={...})",
                        where, self.name)
        self._warn_clear_text(url)
        names = export_names(artifacts, f"source {self.name!r}")
        if self.verify_first:
            artifacts.verify(names)  # a POST cannot be taken back: never send a damaged backup
        info = artifacts.info
        headers = {"Content-Length": str(sum(artifacts.size(n) for n in names)),
                   "Content-Type": str(info.get("content_type") or "application/octet-stream")}
        checksum = str(info.get("server_checksum") or "")
        if checksum.startswith(("Repr-Digest: sha-256", "Repr-Digest: sha-512", "Digest: sha-256")):
            headers["Repr-Digest"] = checksum.split(": ", 1)[1]

        def safe_to_repeat(exc: BaseException) -> bool:
            if self.restore_method == "PUT":
                return is_transient(exc)
            if getattr(exc, "status", None) in (429, 503):
                return True
            reason = exc.reason if isinstance(exc, e.MaxRetryError) else exc
            return isinstance(reason, (e.NewConnectionError, e.ConnectTimeoutError))

        try:
            self._send(artifacts, url, headers, where, safe_to_repeat)
        finally:
            self.client.close()

    def _export(self, artifacts: ArtifactSet) -> BinaryIO:
        """The export's bytes: ``export``, or its parts one after the other (each checked at its end)."""
        names = export_names(artifacts, f"source {self.name!r}")
        if names == [ARTIFACT]:
            return artifacts.open(ARTIFACT)
        return io.BufferedReader(Joined(artifacts, names), BLOCK)  # type: ignore[return-value]

    def _send(self, artifacts: ArtifactSet, url: str, headers: dict[str, str], where: str,
              safe_to_repeat: Callable[[BaseException], bool]) -> None:
        def send() -> None:
            with self._export(artifacts) as body:  # read from its start again on every try
                resp = self.client.request(self.restore_method, url, headers, body=body)
            if resp.status >= 300:
                raise status_error(resp)
            resp.release_conn()
            log.info("%s: %s answered HTTP %d", where, self.restore_method, resp.status)

        self._call(send, where, self.restore_method, safe_to_repeat)


__all__ = ["ARTIFACT", "HttpSource"]
