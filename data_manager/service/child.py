"""The entry point of a job process: ``python -m data_manager.service.child PARENT_PID ARGS...``.

Asks the kernel to send SIGTERM when the thread that started it ends (``PR_SET_PDEATHSIG``: the service
died, even by ``kill -9``), exits at once if the service is already gone, then runs the ``data-manager``
command with ARGS. The command turns SIGTERM into Ctrl-C, so the job releases the dataset and its lock
and exits 130; the next service marks the job interrupted and runs it again with ``--resume``.
Done here, after exec, rather than in a ``preexec_fn`` (unsafe in a process with threads).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main() -> None:
    parent = int(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        sys.exit(f"data-manager: error: prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}")
    if os.getppid() != parent:  # the service died before the signal was armed
        sys.exit(130)
    from data_manager.cli import main as cli

    cli(args=sys.argv[2:], prog_name="data-manager")


if __name__ == "__main__":
    main()
