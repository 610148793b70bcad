"""The one retry helper every plugin uses: what is retried, how often, how long it waits."""

from __future__ import annotations

import pytest

from data_manager.retry import Backoff, call


class Flaky:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def test_transient_failures_are_retried_with_growing_capped_jittered_waits() -> None:
    waits: list[float] = []
    told: list[tuple[str, int]] = []
    policy = Backoff(retries=5, base=1.0, cap=4.0, sleep=waits.append)
    fn = Flaky([TimeoutError("t1"), TimeoutError("t2"), TimeoutError("t3"), TimeoutError("t4")])
    assert call(fn, policy, transient=lambda e: isinstance(e, TimeoutError),
                on_retry=lambda e, n, d: told.append((str(e), n))) == "ok"
    assert fn.calls == 5
    assert told == [("t1", 1), ("t2", 2), ("t3", 3), ("t4", 4)]
    for wait, cap in zip(waits, [1.0, 2.0, 4.0, 4.0]):
        assert cap / 2 <= wait <= cap


def test_a_permanent_failure_is_not_retried() -> None:
    fn = Flaky([PermissionError("no"), TimeoutError()])
    with pytest.raises(PermissionError):
        call(fn, Backoff(retries=3, sleep=lambda s: None), transient=lambda e: isinstance(e, TimeoutError))
    assert fn.calls == 1


def test_the_last_failure_propagates_once_the_retries_are_used_up() -> None:
    fn = Flaky([TimeoutError(str(i)) for i in range(10)])
    with pytest.raises(TimeoutError, match="^3$"):
        call(fn, Backoff(retries=3, sleep=lambda s: None), transient=lambda e: True)
    assert fn.calls == 4


def test_no_retries_means_one_attempt() -> None:
    fn = Flaky([TimeoutError()])
    with pytest.raises(TimeoutError):
        call(fn, Backoff(retries=0, sleep=lambda s: None), transient=lambda e: True)
    assert fn.calls == 1


def test_ctrl_c_is_never_retried() -> None:
    fn = Flaky([KeyboardInterrupt()])  # type: ignore[list-item]
    with pytest.raises(KeyboardInterrupt):
        call(fn, Backoff(retries=3, sleep=lambda s: None), transient=lambda e: True)
    assert fn.calls == 1


def test_pause_for_loops_that_retry_themselves() -> None:
    waits: list[float] = []
    policy = Backoff(retries=2, base=0.5, cap=8.0, sleep=waits.append)
    assert policy.pause(1) is not None and policy.pause(2) is not None
    assert policy.pause(3) is None
    assert len(waits) == 2 and 0.25 <= waits[0] <= 0.5 and 0.5 <= waits[1] <= 1.0
