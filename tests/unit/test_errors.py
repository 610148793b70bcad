"""How errors become the one line a log, a job or a user reads."""

from __future__ import annotations

from data_manager.errors import CorruptBackupError, first_line
from data_manager.runner import one_line


def test_first_line_is_the_messages_first_line_or_the_type() -> None:
    assert first_line(ValueError("bad thing\nstack detail")) == "bad thing"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(CorruptBackupError("")) == "CorruptBackupError"


def test_one_line_names_foreign_errors_and_interrupts() -> None:
    assert one_line(CorruptBackupError("x: mismatch\nmore")) == "x: mismatch"
    assert one_line(OSError("disk\nfull")) == "OSError: disk"
    assert one_line(TimeoutError()) == "TimeoutError"
    assert one_line(KeyboardInterrupt()) == "interrupted"
