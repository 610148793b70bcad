"""Monitoring without the service: every CLI backup pings Healthchecks and/or ntfy.

```toml
[monitoring]
healthchecks_url = "${HC_URL}"        # https://hc-ping.com/UUID: pinged URL/start, URL (success), URL/fail
ntfy_url = "https://ntfy.example.org" # ntfy: success and failure posted to ntfy_url/ntfy_topic
ntfy_topic = "backups"
timeout = "10s"                       # of each ping
```

Success and failure carry the tail of the run's log (its last 10 lines, at most 10 kB) as their body. A
ping that fails (unreachable, timeout, HTTP error) is logged as a warning and never fails the backup. Ping
URLs and the topic are secrets (whoever has them can ping or read): never logged, masked by ``config check``.
Only urllib: no dependency.
"""

from __future__ import annotations

import collections
import http.client
import logging
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from . import __version__
from .errors import ConfigError, DataManagerError
from .scrub import scrub

log = logging.getLogger(__name__)

KEYS = ("healthchecks_url", "ntfy_url", "ntfy_topic", "timeout")
SECRET_KEYS = ("healthchecks_url", "ntfy_url", "ntfy_topic")
TAIL_LINES = 10
TAIL_BYTES = 10_000
DEFAULT_TIMEOUT = 10.0
_HC_SUFFIX = {"start": "/start", "success": "", "fail": "/fail"}


@dataclass
class Monitoring:
    """Where a backup reports its start and end; nothing when neither URL is configured."""

    healthchecks_url: str | None = None
    ntfy_url: str | None = None  # the topic's URL
    timeout: float = DEFAULT_TIMEOUT

    @property
    def enabled(self) -> bool:
        return bool(self.healthchecks_url or self.ntfy_url)

    @classmethod
    def from_config(cls, data: Mapping[str, Any], file: str, secrets: set[str]) -> Monitoring:
        """The ``[monitoring]`` table (``${VAR}`` expanded, its URLs registered as secrets); ConfigError
        naming the file and the key for anything wrong."""
        from .config import make_settings
        from .jobs import parse_duration

        table = data.get("monitoring", {})
        where = f"{file}: [monitoring]"
        if not isinstance(table, dict):
            raise ConfigError(f"{file}: key 'monitoring': must be a table", key="monitoring")
        settings = make_settings(table, where, SECRET_KEYS, secrets)
        settings.check_known(KEYS)
        urls = {}
        for key in ("healthchecks_url", "ntfy_url"):
            url = settings.get_str(key, None)
            if url is not None and not url.startswith(("https://", "http://")):
                raise settings.error(key, "must be an http:// or https:// URL")  # the value is a secret: not quoted
            urls[key] = url.rstrip("/") if url else None
        topic = settings.get_str("ntfy_topic", None)
        if topic is not None and ("/" in topic or not topic.strip()):
            raise settings.error("ntfy_topic", "must be one topic name, without '/'")
        if (topic is None) != (urls["ntfy_url"] is None):
            raise settings.error("ntfy_topic" if topic is None else "ntfy_url", "missing: ntfy needs both ntfy_url and ntfy_topic")
        timeout = parse_duration(table["timeout"], where, "timeout") if "timeout" in table else DEFAULT_TIMEOUT
        return cls(urls["healthchecks_url"], f"{urls['ntfy_url']}/{topic}" if topic else None, timeout)

    def ping(self, event: str, what: str, body: str = "") -> None:
        """Report ``event`` (start, success, fail) of ``what`` (``"backup of exp42"``). Never raises."""
        if self.healthchecks_url:
            self._post("healthchecks", event, self.healthchecks_url + _HC_SUFFIX[event], body, {})
        if self.ntfy_url and event != "start":
            failed = event == "fail"
            title = f"data-manager: {what} {'FAILED' if failed else 'done'}"
            self._post("ntfy", event, self.ntfy_url, body or title, {
                "Title": title, "Priority": "high" if failed else "default",
                "Tags": "warning" if failed else "white_check_mark"})

    def _post(self, service: str, event: str, url: str, body: str, headers: dict[str, str]) -> None:
        data = body.encode()[-TAIL_BYTES:]
        request = urllib.request.Request(url, data=data, method="POST", headers={
            "Content-Type": "text/plain; charset=utf-8", "User-Agent": f"data-manager/{__version__}", **headers})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # The URL is a secret: only the reason is logged (scrubbed too, should a library quote it).
            reason = getattr(exc, "reason", None) or exc
            log.warning("monitoring: %s ping (%s) failed: %s; the backup goes on", service, event, scrub(str(reason)))

    @contextmanager
    def watch(self, what: str) -> Iterator[None]:
        """Ping start, then success, or fail with the log's tail and the error, around a CLI command."""
        if not self.enabled:
            yield
            return
        tail = _Tail()
        ours = logging.getLogger("data_manager")
        level = ours.level
        root = logging.getLogger()
        root.addHandler(tail)
        if ours.getEffectiveLevel() > logging.INFO:
            ours.setLevel(logging.INFO)  # the tail has what -v would show; stderr's handler keeps its own level
        self.ping("start", what)
        try:
            yield
        except SystemExit as exc:
            self._end(exc.code in (0, None), what, tail, f"exit code {exc.code}")
            raise
        except BaseException as exc:
            message = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc).splitlines()[0] if str(exc) else ""
            code = exc.exit_code if isinstance(exc, DataManagerError) else 1
            self._end(False, what, tail, f"error: {scrub(message)} (exit code {code})")
            raise
        else:
            self._end(True, what, tail, "")
        finally:
            root.removeHandler(tail)
            ours.setLevel(level)

    def _end(self, ok: bool, what: str, tail: _Tail, last: str) -> None:
        lines = tail.lines() + ([last] if last else [])
        self.ping("success" if ok else "fail", what, "\n".join([f"{what}: {'done' if ok else 'FAILED'}", *lines]) + "\n")


class _Tail(logging.Handler):
    """The last log lines of a run (scrubbed), for the ping's body."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self._lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(f"{record.levelname.lower()}: {scrub(record.getMessage())}")
        except Exception:  # a log record that cannot be formatted must not break the backup
            pass

    def lines(self) -> list[str]:
        return list(self._lines)
