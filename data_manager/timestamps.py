"""Time as backups name and record it: ``TIMESTAMP`` names (``20261123T072900Z``, UTC, one-second
resolution) and ISO 8601 instants for metadata, logs and the state database."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from .errors import UsageError

TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_SHAPE = re.compile(r"\d{8}T\d{6}Z")  # strptime alone accepts 2026111T123456Z (one-digit fields)


def format_timestamp(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> datetime:
    """``20261123T072900Z`` -> aware datetime; a clear error for anything else."""
    try:
        if not _SHAPE.fullmatch(text):
            raise ValueError(text)
        return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=timezone.utc)
    except (ValueError, TypeError):
        raise UsageError(
            f"bad timestamp {text!r}: expected 'latest' or YYYYMMDDTHHMMSSZ (UTC), e.g. 20261123T072900Z"
        ) from None


def is_timestamp(text: str) -> bool:
    try:
        parse_timestamp(text)
        return True
    except UsageError:
        return False


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
