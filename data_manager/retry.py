"""The one retry helper: exponential backoff with jitter, for every plugin that talks to a server.

A plugin keeps only what is its own: which errors are transient (a timeout, HTTP 429/503, a dropped
connection) and the one line a user sees when it gives up. The waiting is here, the same everywhere:

    from data_manager.retry import Backoff, call

    policy = Backoff(retries=settings.get_int("retries", 5))
    try:
        return call(lambda: client.get(key), policy, transient=is_transient,
                    on_retry=lambda exc, n, delay: log.warning("get %s: %s; retry %d in %.1fs", key, exc, n, delay))
    except Exception as exc:
        raise to_one_line_error(exc) from None
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Up to ``retries`` more attempts after the first; the wait before retry ``n`` (1, 2, ...) is drawn from
    ``[d/2, d]`` with ``d = min(cap, base * 2**(n-1))``: doubling, capped, jittered so that many clients
    do not retry in step."""

    retries: int = 5
    base: float = 0.5
    cap: float = 8.0
    sleep: Callable[[float], None] | None = field(default=None, repr=False, compare=False)  # time.sleep

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        d = min(self.cap, self.base * 2 ** (retry - 1))
        return random.uniform(d / 2, d)

    def pause(self, retry: int) -> float | None:
        """For loops that retry themselves (e.g. resuming a read where it broke): wait before retry number
        ``retry`` and return the seconds waited, or None when the retries are used up (do not wait)."""
        if retry > self.retries:
            return None
        seconds = self.delay(retry)
        self.wait(seconds)
        return seconds

    def wait(self, seconds: float) -> None:
        (self.sleep or time.sleep)(seconds)


def call(
    fn: Callable[[], T],
    policy: Backoff,
    *,
    transient: Callable[[BaseException], bool],
    on_retry: Callable[[BaseException, int, float], None] | None = None,
) -> T:
    """``fn()``; an exception for which ``transient`` is true is retried per ``policy`` (``on_retry(exc,
    retry, delay)`` is told first, e.g. to log), anything else and the last failure propagate unchanged.

    ``transient`` must be cheap and must never raise; it sees ``Exception``s only (Ctrl-C is never retried).
    """
    retry = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            retry += 1
            if retry > policy.retries or not transient(exc):
                raise
            delay = policy.delay(retry)
            if on_retry is not None:
                on_retry(exc, retry, delay)
            policy.wait(delay)
