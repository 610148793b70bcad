"""The threading helpers: the stop-aware hand-over, the background call, the switch interval."""

from __future__ import annotations

import queue
import sys
import threading
import time
from pathlib import Path

import pytest

from data_manager.threads import Background, put_unless_stopped


def test_put_waits_for_room() -> None:
    q: queue.Queue[int] = queue.Queue(1)
    stop = threading.Event()
    assert put_unless_stopped(q, 1, stop)
    threading.Timer(0.1, q.get).start()
    started = time.monotonic()
    assert put_unless_stopped(q, 2, stop, poll=0.02)
    assert time.monotonic() - started >= 0.09 and q.get_nowait() == 2


def test_put_gives_up_once_stopped() -> None:
    q: queue.Queue[int] = queue.Queue(1)
    q.put(1)
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    assert not put_unless_stopped(q, 2, stop, poll=0.02)  # full and no consumer: returns instead of hanging
    assert q.get_nowait() == 1 and q.empty()
    assert not put_unless_stopped(queue.Queue(), 3, stop)  # stopped: nothing is queued, even with room


def test_background_returns_the_value_or_raises_the_error_in_the_caller() -> None:
    started = threading.Event()

    def slow() -> int:
        started.set()
        time.sleep(0.05)
        return 7

    job = Background(slow, "t")
    assert started.wait(1)  # running before result() is asked for
    assert job.result() == 7

    def broken() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        Background(broken, "t").result()


def test_a_command_sets_the_switch_interval_and_the_python_api_does_not(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from data_manager.cli import main
    from data_manager.threads import SWITCH_INTERVAL

    before = sys.getswitchinterval()
    config = tmp_path / "c.toml"
    config.write_text(f'[storages.local]\ntype = "filesystem"\nroot = "{tmp_path / "b"}"\n'
                      f'[state]\npath = "{tmp_path / "s.db"}"\n')
    try:
        import data_manager.api  # noqa: F401  (importing the API changes nothing)

        assert sys.getswitchinterval() == before
        result = CliRunner().invoke(main, ["--config", str(config), "list", "backup"])
        assert result.exit_code == 0, result.output
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
    finally:
        sys.setswitchinterval(before)
