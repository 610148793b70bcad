"""Sizes and durations as people write them: the one parser of each, for config keys and command options.

    parse_size("16MiB") == 16 << 20        parse_duration("30m") == 1800.0
"""

from __future__ import annotations

import re
from typing import Any

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")

SIZE_HINT = "a size like 128MiB or a number of bytes"
DURATION_HINT = "a duration like 90s, 30m, 6h or 2d"


def parse_size(value: Any) -> int | None:
    """``"16MiB"``, ``"64 MB"``, ``"1GiB"``, ``"512k"`` (units are powers of 1024) or an int -> bytes;
    None for anything else (the caller says where the value came from)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = _SIZE.match(value.lower())
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    return None


def parse_duration(value: Any) -> float | None:
    """``"30m"``, ``"6h"``, ``"2d"``, ``"1.5s"``, ``"250ms"`` or a number of seconds -> seconds (> 0); None
    for anything else."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if value > 0 else None
    if isinstance(value, str):
        m = _DURATION.match(value.lower())
        if m and float(m.group(1)) > 0:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    return None


def parse_percent(value: Any) -> float | None:
    """``"5%"`` -> 0.05, ``"0.5%"`` -> 0.005; None if ``value`` is not a percentage from 0% to 100%."""
    m = _PERCENT.match(value) if isinstance(value, str) else None
    if m is None or float(m.group(1)) > 100:
        return None
    return float(m.group(1)) / 100


def human_size(n: int | None) -> str:
    """Bytes for people: ``1.5 GiB``; ``-`` when unknown."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
