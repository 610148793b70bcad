"""The PostgreSQL client programs (pg_dump, pg_restore, psql): finding them, their versions, running them
with their stderr kept for one clear line when they fail.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import threading
from collections import deque
from pathlib import Path

from data_manager.errors import SourceError

from .connection import one_line

PIPE_SIZE = 1 << 20  # Linux pipes default to 64 KiB; 1 MiB means fewer wake-ups per MiB moved


def find_tool(name: str, bin_dir: Path | None, what: str) -> str:
    """The path of ``name`` in ``bin_dir`` (the config's ``bin_dir``) or on PATH."""
    if bin_dir is not None:
        path = bin_dir / name
        if not os.access(path, os.X_OK):
            raise SourceError(f"{what}: {name} not found in bin_dir {bin_dir}")
        return str(path)
    found = shutil.which(name)
    if found:
        return found
    # Debian/Ubuntu keep every installed major version here; PATH holds only the wrappers.
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=_dir_major, reverse=True)
    if candidates:
        return str(candidates[0])
    raise SourceError(f"{what}: {name} not found on PATH: install the PostgreSQL client programs "
                      f"(e.g. apt-get install postgresql-client) or set bin_dir")


def _dir_major(p: Path) -> int:
    try:
        return int(p.parent.parent.name)
    except ValueError:
        return 0


_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def tool_version(path: str, what: str) -> tuple[int, str]:
    """(major, full version text) of a client program, e.g. ``(15, "15.18")``."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise SourceError(f"{what}: cannot run {path}: {exc}") from None
    m = _VERSION.search(out)
    if not m:
        raise SourceError(f"{what}: cannot tell the version of {path} (said {out.strip()!r})")
    return int(m[1]), out.split("(PostgreSQL)")[1].split()[0]


def server_major(version_num: int) -> int:
    return version_num // 10000


def enlarge_pipe(fd: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, AttributeError):  # not Linux, or above /proc/sys/fs/pipe-max-size: keep the default
        pass


class StderrTail:
    """Read a child's stderr on a thread (so it never blocks on a full pipe), keeping the last lines."""

    def __init__(self, stream: object, keep: int = 200) -> None:
        self.lines: deque[str] = deque(maxlen=keep)
        self.first_error: str | None = None
        self._stream = stream
        self._thread = threading.Thread(target=self._run, name="dm-pg-stderr", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for raw in iter(self._stream.readline, b""):  # type: ignore[attr-defined]
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            self.lines.append(line)
            if self.first_error is None and re.search(r"\b(ERROR|FATAL|error):", line):
                self.first_error = line

    def join(self) -> None:
        self._thread.join(timeout=30)

    def message(self) -> str:
        """The line that says what went wrong: the first error, else the last line."""
        self.join()
        line = self.first_error or (self.lines[-1] if self.lines else "no message")
        # "psql:<stdin>:1234: ERROR:  x" / "pg_dump: error: query failed: ERROR:  x" -> "x"
        line = re.sub(r"^(psql|pg_dump|pg_restore)(:<stdin>:\d+)?:\s*", "", line)
        line = re.sub(r"^(error|ERROR|FATAL):\s*", "", line)
        line = re.sub(r"^(query failed|connection to server at .*? failed):\s*(ERROR:|FATAL:)?\s*", "", line)
        return one_line(line)
