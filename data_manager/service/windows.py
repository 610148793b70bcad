"""Backup windows: when the service may run a dataset's backups (``window`` in ``[datasets.X.schedule]``).

```toml
[datasets.exp42.schedule]
cron = "30 22 * * *"
timezone = "Europe/Berlin"
window = "22:00-06:00"                          # every night, wall-clock times in `timezone`
# window = { cron = "0 20 * * 5", length = "60h" } # or: opens at each cron time, stays open `length`
# window = ["22:00-06:00", "12:00-13:00"]          # or several: open while any of them is
```

A backup job of the dataset (scheduled, retried or posted through the API) starts only while a window is
open; outside, it waits, pending, for the next one. When the window closes, a running backup is stopped the
way Ctrl-C stops it (its lock and availability mark released, the backup left incomplete) and queued again
with ``--resume`` for the next window. A resumed backup redoes only the sources the stopped one had not
finished; on an engine that keeps a source's stored data (``dedup``), an unfinished source is read again
but only what is not stored yet is uploaded, so a source larger than one window still finishes.

``"HH:MM-HH:MM"`` (seconds allowed: ``"HH:MM:SS"``) ends at the end time's next occurrence on the wall clock,
so a DST change makes that night's window an hour longer or shorter, as a person reading the config expects;
``length`` is elapsed time. Restores and forgets are never held back by a window.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from .. import units
from ..jobs import format_duration

_CLOCK = r"([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?"
_RANGE_RE = re.compile(rf"^\s*{_CLOCK}\s*-\s*{_CLOCK}\s*$")
HINT = 'a range of wall-clock times like "22:00-06:00", or a table {cron = "0 22 * * *", length = "8h"}'


@dataclass(frozen=True)
class Clock:
    """A wall-clock time of day."""

    hour: int
    minute: int
    second: int = 0

    def __str__(self) -> str:
        return f"{self.hour:02d}:{self.minute:02d}" + (f":{self.second:02d}" if self.second else "")


@dataclass(frozen=True)
class Window:
    """Opens at each ``start`` (a daily wall-clock time, or a cron expression's times) in ``tz``; closes at
    the next ``end`` wall-clock time after it opened, or ``length`` seconds after."""

    tz: ZoneInfo
    start: Clock | str
    end: Clock | None = None
    length: float | None = None

    def describe(self) -> str:
        if isinstance(self.start, Clock):
            return f"{self.start}-{self.end} ({self.tz.key})"
        return f"cron {self.start!r} for {format_duration(self.length or 0)} ({self.tz.key})"

    # ------------------------------------------------------------------ times

    def _starts(self, after: datetime) -> Iterator[datetime]:
        """The times the window opens, strictly after ``after``, ascending, in UTC."""
        local = after.astimezone(self.tz)
        if isinstance(self.start, Clock):
            day = local.date() - timedelta(days=1)
            while True:
                t = _on(day, self.start, self.tz)
                if t > after:
                    yield t
                day += timedelta(days=1)
        from cronsim import CronSim

        for t in CronSim(self.start, local.replace(microsecond=0)):
            t = t.astimezone(timezone.utc)
            if t > after:
                yield t

    def _close(self, opened: datetime) -> datetime:
        if self.end is None:
            return opened + timedelta(seconds=self.length or 0)
        day = opened.astimezone(self.tz).date()
        while True:
            t = _on(day, self.end, self.tz)
            if t > opened:
                return t
            day += timedelta(days=1)

    def _latest_start(self, now: datetime) -> datetime | None:
        """The latest opening at or before ``now`` that could still be open (within the longest span)."""
        span = timedelta(days=1, hours=2) if self.end is not None else timedelta(seconds=self.length or 0)
        latest = None
        for t in self._starts(now - span - timedelta(seconds=1)):
            if t > now:
                break
            latest = t
        return latest

    def closes_at(self, now: datetime) -> datetime | None:
        """When the window open at ``now`` closes, or None when none is open."""
        opened = self._latest_start(now)
        if opened is None:
            return None
        close = self._close(opened)
        return close if close > now else None

    def next_open(self, now: datetime) -> datetime:
        """``now`` when a window is open, else when the next one opens."""
        if self.closes_at(now) is not None:
            return now
        return next(self._starts(now))


def _on(day: Any, clock: Clock, tz: ZoneInfo) -> datetime:
    """``clock`` on ``day`` in ``tz``, in UTC. A time in a DST gap is the moment the gap ends; a repeated
    time is its first occurrence."""
    naive = datetime(day.year, day.month, day.day, clock.hour, clock.minute, clock.second)
    first = naive.replace(tzinfo=tz, fold=0).astimezone(timezone.utc)
    if first.astimezone(tz).replace(tzinfo=None) == naive:
        return first
    return _gap_end(naive, tz)


def _gap_end(naive: datetime, tz: ZoneInfo) -> datetime:
    """The instant the DST gap that ``naive`` falls in ends (where the local clock jumps past it)."""
    a = naive.replace(tzinfo=tz, fold=0).astimezone(timezone.utc)
    b = naive.replace(tzinfo=tz, fold=1).astimezone(timezone.utc)
    lo, hi = min(a, b), max(a, b)
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).replace(tzinfo=None) >= naive:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0) + (timedelta(seconds=1) if hi.microsecond else timedelta(0))


@dataclass(frozen=True)
class Windows:
    """One or more windows (``window = ["22:00-06:00", "12:00-13:00"]``): open while any of them is."""

    items: tuple[Window, ...]

    def describe(self) -> str:
        return ", ".join(w.describe() for w in self.items)

    def closes_at(self, now: datetime) -> datetime | None:
        closes = [c for c in (w.closes_at(now) for w in self.items) if c is not None]
        if not closes:
            return None
        end = max(closes)
        for _ in range(len(self.items)):  # a window opening before another closes extends it
            later = [c for c in (w.closes_at(end) for w in self.items) if c is not None and c > end]
            if not later:
                break
            end = max(later)
        return end

    def next_open(self, now: datetime) -> datetime:
        """``now`` when a window is open, else when the next one opens."""
        return min(w.next_open(now) for w in self.items)

    def state(self, now: datetime) -> dict[str, Any]:
        """``{"window", "open", "closes_at" | "opens_at"}`` for status output."""
        closes = self.closes_at(now)
        out: dict[str, Any] = {"window": self.describe(), "open": closes is not None}
        key, when = ("closes_at", closes) if closes is not None else ("opens_at", self.next_open(now))
        out[key] = when.isoformat().replace("+00:00", "Z")
        return out


def parse_windows(value: Any, tz: str) -> tuple[Windows | None, str | None]:
    """``(windows, None)`` from one window or a list of them, or ``(None, why)``."""
    values = value if isinstance(value, list) else [value]
    if not values:
        return None, f"an empty list: leave `window` out to run at any time, or give {HINT}"
    items = []
    for v in values:
        window, why = parse_window(v, tz)
        if window is None:
            return None, why
        items.append(window)
    return Windows(tuple(items)), None


def parse_window(value: Any, tz: str) -> tuple[Window | None, str | None]:
    """``(window, None)``, or ``(None, why)`` for a value that is not a window."""
    zone = ZoneInfo(tz)
    if isinstance(value, str):
        m = _RANGE_RE.match(value)
        if not m:
            return None, f"{value!r} is not {HINT}"
        h1, m1, s1, h2, m2, s2 = m.groups()
        start, end = Clock(int(h1), int(m1), int(s1 or 0)), Clock(int(h2), int(m2), int(s2 or 0))
        if start == end:
            return None, f"{value!r}: the window opens and closes at the same time (leave `window` out for always)"
        return Window(zone, start, end=end), None
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"cron", "length"})
        if unknown:
            return None, f"unknown key {unknown[0]!r} (known: cron, length)"
        from .settings import check_cron, cron_fields

        cron = value.get("cron")
        if not isinstance(cron, str) or not cron.strip():
            return None, 'missing cron (e.g. {cron = "0 22 * * *", length = "8h"})'
        why = check_cron(cron)
        if why:
            return None, f"cron {cron!r}: {why}"
        length = units.parse_duration(value.get("length"))
        if not length:
            return None, f"length must be {units.DURATION_HINT}, not {value.get('length')!r}"
        return Window(zone, cron_fields(cron), length=length), None
    return None, f"must be {HINT}, not {value!r}"


def window_report(windows: Windows, restarting: list[str], now: datetime) -> dict[str, Any]:
    """What ``status`` and the service say of a dataset's window: open or not, until or from when, and which
    sources start over when a window closes on them (``DataManager.sources_restarting``: each of those
    must fit in one window)."""
    return {**windows.state(now), "sources_restarting": list(restarting)}
