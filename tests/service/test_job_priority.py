"""Jobs run nicer than the service, in their own session: their nice value and, where the kernel groups
sessions for scheduling (autogroups), their session's group too (else the nice value changes nothing
against the service's requests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from data_manager.service.jobs import deprioritize


def test_a_job_in_its_own_session_is_nicer_than_the_service_and_so_is_its_autogroup() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        base = os.getpriority(os.PRIO_PROCESS, 0)
        ours = Path(f"/proc/{os.getpid()}/autogroup")
        before = ours.read_text() if ours.exists() else None
        deprioritize(proc.pid, 7)
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == min(19, base + 7)
        autogroup = Path(f"/proc/{proc.pid}/autogroup")
        if autogroup.exists():  # CONFIG_SCHED_AUTOGROUP: "/autogroup-123 nice 7"
            assert autogroup.read_text().split()[-1] == str(min(19, base + 7))
            assert ours.read_text() == before  # the service's own group is left as it was
    finally:
        proc.kill()
        proc.wait()


def test_never_past_19() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        deprioritize(proc.pid, 40)
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == 19
    finally:
        proc.kill()
        proc.wait()


def test_a_process_already_gone_is_an_oserror() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait()
    try:
        deprioritize(proc.pid, 5)
    except OSError:
        pass
    else:
        raise AssertionError("no error for a reaped process")
