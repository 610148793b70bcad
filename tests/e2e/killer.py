"""Runs the ``data-manager`` command and SIGKILLs itself just before its Nth durable step: a storage
object's write or commit, a storage's persist (deferred writes made durable), a restore's file write, its
sync, its swap. ``DM_KILL_AT=0`` never kills; the number of steps taken is written to ``DM_KILL_COUNT``
at exit, so a test can sweep every step. With ``DM_KILL_DELETES=1`` a filesystem storage's deletes are the
steps instead (a dedup backup removes its heartbeat after its pointer is committed, then the dataset lock
is released): their number does not depend on how the writes went."""

from __future__ import annotations

import atexit
import os
import signal
import sys
from pathlib import Path
from typing import Any

from data_manager.builtin import directory, filesystem
from data_manager.cli import main

_AT = int(os.environ.get("DM_KILL_AT", "0"))
_count = 0


def _step() -> None:
    global _count
    _count += 1
    if _count == _AT:
        os.kill(os.getpid(), signal.SIGKILL)


def _wrap(owner: Any, name: str) -> None:
    real = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        _step()
        return real(*args, **kwargs)

    setattr(owner, name, wrapped)


if os.environ.get("DM_KILL_DELETES") != "1":
    for owner, name in ((filesystem._FileWriter, "write"), (filesystem._FileWriter, "commit"),
                        (filesystem.FilesystemStorage, "persist"),
                        (directory, "write_all"), (directory, "sync_filesystem"), (directory, "exchange"),
                        (directory, "fsync_dir")):
        _wrap(owner, name)
else:
    _wrap(filesystem.FilesystemStorage, "delete")

if os.environ.get("DM_KILL_COUNT"):
    atexit.register(lambda: Path(os.environ["DM_KILL_COUNT"]).write_text(str(_count)))

main(sys.argv[1:], prog_name="data-manager")
