"""Retrying Drive calls and turning Google's errors into one-line :class:`StorageError` messages.

Transient failures are retried with exponential backoff and jitter: HTTP 408, 429 and 5xx, 403 with reason
``rateLimitExceeded`` / ``userRateLimitExceeded``, and dropped or refused connections. Anything else
(quota exhausted, permission denied, not found, bad request) fails at once with one clear line.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from data_manager import retry as core_retry
from data_manager.errors import DataManagerError, NotFoundError, StorageError
from data_manager.retry import Backoff

T = TypeVar("T")

RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
QUOTA_REASONS = frozenset({"storageQuotaExceeded", "quotaExceeded", "teamDriveFileLimitExceeded"})
_MAX_MESSAGE = 200


@dataclass(frozen=True)
class Failure:
    """What went wrong in one attempt, classified."""

    transient: bool
    status: int | None
    reason: str
    message: str


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def error_details(content: bytes | str | None) -> tuple[str, str]:
    """``(reason, message)`` from a Google JSON error body (``{"error": {"errors": [{"reason": ...}]}}``)."""
    try:
        doc = json.loads(content or b"{}")
        err = doc.get("error", {})
        if isinstance(err, str):  # OAuth endpoints: {"error": "invalid_grant", "error_description": ...}
            return err, str(doc.get("error_description", ""))
        items = err.get("errors") or [{}]
        reason = items[0].get("reason") or err.get("status") or ""
        return str(reason), str(err.get("message") or items[0].get("message") or "")
    except (ValueError, AttributeError, TypeError):
        return "", ""


def classify(exc: BaseException) -> Failure | None:
    """A :class:`Failure` for errors of the Drive client and the network; ``None`` for anything else."""
    import google.auth.exceptions
    import httplib2
    from googleapiclient.errors import HttpError

    if isinstance(exc, HttpError):
        status = int(exc.resp.status)
        reason, message = error_details(exc.content)
        transient = status in (408, 429) or status >= 500 or (status == 403 and reason in RATE_LIMIT_REASONS)
        return Failure(transient, status, reason, message or str(getattr(exc.resp, "reason", "")))
    if isinstance(exc, google.auth.exceptions.RefreshError):
        return Failure(False, None, "authentication", f"Google credentials could not be refreshed ({_auth_reason(exc)})")
    if isinstance(exc, google.auth.exceptions.TransportError):
        return Failure(True, None, "connection", f"cannot reach Google's token endpoint ({type(exc).__name__})")
    if isinstance(exc, google.auth.exceptions.GoogleAuthError):
        return Failure(False, None, "authentication", str(exc))
    if isinstance(exc, httplib2.ServerNotFoundError):
        return Failure(True, None, "connection", "server not found (DNS)")
    if isinstance(exc, (OSError, http.client.HTTPException, httplib2.HttpLib2Error)):
        return Failure(True, None, "connection", f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    return None


def _auth_reason(exc: BaseException) -> str:
    # RefreshError args are (message, response_body); the body names the OAuth error, never the token.
    if len(exc.args) > 1:
        reason, message = error_details(exc.args[1] if isinstance(exc.args[1], (bytes, str)) else json.dumps(exc.args[1]))
        if reason:
            return f"{reason}: {message}" if message else reason
    return str(exc.args[0]) if exc.args else type(exc).__name__


def to_storage_error(what: str, failure: Failure, *, tries: int = 1) -> StorageError:
    """The one line a user sees for ``failure`` while doing ``what`` (e.g. ``"upload exp/ts/db/x"``)."""
    detail = _one_line(failure.message)
    reason = failure.reason
    if failure.status == 404:
        return NotFoundError(f"Google Drive: {what}: not found")
    if failure.status == 403 and reason in QUOTA_REASONS:
        return StorageError(f"Google Drive: {what}: storage quota exhausted ({reason}: {detail})")
    if failure.status in (401, 403) or reason == "authentication":
        label = f"{reason}: {detail}" if reason and reason != "authentication" else detail
        return StorageError(f"Google Drive: {what}: permission denied ({label})")
    if failure.transient:
        return StorageError(f"Google Drive: {what}: gave up after {tries} tries ({_status_text(failure)})")
    return StorageError(f"Google Drive: {what}: {_status_text(failure)}")


def _status_text(failure: Failure) -> str:
    parts = []
    if failure.status is not None:
        parts.append(f"HTTP {failure.status}")
    if failure.reason and failure.reason != "connection":
        parts.append(failure.reason)
    text = " ".join(parts)
    detail = _one_line(failure.message)
    return f"{text}: {detail}" if text and detail else (text or detail or "unknown error")


def call(
    fn: Callable[[], T],
    what: str,
    policy: Backoff,
    *,
    on_retry: Callable[[Failure], None] | None = None,
) -> T:
    """Run ``fn`` until it succeeds, retrying transient failures per ``policy`` (the core's backoff); raise a
    one-line StorageError."""
    tried = 0

    def attempt() -> T:
        nonlocal tried
        tried += 1
        return fn()

    def transient(exc: BaseException) -> bool:
        failure = None if isinstance(exc, DataManagerError) else classify(exc)
        return failure is not None and failure.transient

    def note(exc: BaseException, retry: int, delay: float) -> None:
        failure = classify(exc)
        if on_retry is not None and failure is not None:
            on_retry(failure)

    try:
        return core_retry.call(attempt, policy, transient=transient, on_retry=note)
    except DataManagerError:
        raise
    except Exception as exc:
        failure = classify(exc)
        if failure is None:
            raise
        raise to_storage_error(what, failure, tries=tried) from None
