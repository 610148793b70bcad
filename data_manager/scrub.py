"""Keeping secrets out of everything data-manager writes or prints.

Every secret value this process learns from a config (values expanded from the environment, values of
secret keys; see :func:`data_manager.config.make_settings`) is registered here, and :func:`scrub` is the
one function that removes them, along with passwords inside URLs (:func:`~data_manager.types.redact_urls`).
It is applied to log lines and error messages (the CLI), to job, task and release errors before they are
stored in the state database, and to source descriptions before they are written to a backup's metadata.

The registry is process-wide on purpose: the state database and the log handlers outlive any one config,
and scrubbing a value of an earlier config too is harmless.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TypeVar

from .types import redact_urls

T = TypeVar("T")

_lock = threading.Lock()
_known: set[str] = set()
_ordered: tuple[str, ...] = ()  # longest first, so a secret containing another is replaced whole


def add_secrets(values: Iterable[str]) -> None:
    """Scrub these values (non-empty strings) from everything written or printed from now on."""
    global _ordered
    new = {v for v in values if isinstance(v, str) and v} - _known
    if new:
        with _lock:
            _known.update(new)
            _ordered = tuple(sorted(_known, key=len, reverse=True))


def scrub(value: T) -> T:
    """``value`` with every registered secret replaced by ``***`` and passwords in URLs removed.

    Strings, and lists and dicts of them (recursively); anything else is returned as it is.
    """
    if isinstance(value, str):
        for secret in _ordered:  # one immutable snapshot: safe while another thread adds secrets
            value = value.replace(secret, "***")  # type: ignore[assignment]
        return redact_urls(value)  # type: ignore[no-any-return]
    if isinstance(value, list):
        return [scrub(v) for v in value]  # type: ignore[return-value]
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}  # type: ignore[return-value]
    return value
