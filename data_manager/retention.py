"""Retention: which complete backups of a dataset a policy keeps, and why (``data-manager forget``).

A :class:`Policy` comes from ``[datasets.X.retention]`` (:func:`policy_from_table`), overridden by command
options (:meth:`Policy.replace`). :func:`plan` is a pure function of the complete backups' TIMESTAMPs, the
holds and *now*: it decides keep or remove for each, with the reasons, and touches nothing. Engines do the
removing (:meth:`~data_manager.engines.base.RepositoryEngine.forget`), the operation
(:mod:`data_manager.operations.forget`) runs it as a job. The rules are restic's (≥ 0.16) ``forget``:

* ``keep_last N``: the N newest backups;
* ``keep_hourly|daily|weekly|monthly|yearly N``: for the N newest periods (UTC hours, days, ISO weeks,
  months, years) *that hold a backup*, the newest backup of each; while a rule still has count left when
  it reaches the oldest backup, that one is kept too (``"daily 5 of 7 (oldest)"``), so a young history
  keeps its beginning;
* ``keep_within D``: every backup taken less than D before the newest one (not before now);
* the rules are independent and ORed: a backup kept by one rule still counts in the others.

Then what restic does not have:

* ``ttl D``: a backup no rule keeps is removed only once it *expired*, D after it was taken (without
  ``ttl`` it is removed at once);
* ``min_keep N``: the N newest backups are never removed, expired or not;
* the newest backup and held ones are never removed, whatever the policy; a backup dated in the future
  (a wrong clock, or a forged date) is kept and not counted, so it can never push a real one out. "The
  future" starts :data:`FUTURE_SLACK` after now: backups taken in quick succession are named the next
  free second, a few seconds ahead of the clock, and clocks of two machines differ a little.

A policy with no keep rule and no ``ttl`` is *empty*: :func:`plan` refuses it rather than remove every
backup but the newest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from .errors import ConfigError, CorruptBackupError, UsageError
from .timestamps import iso, is_timestamp, now_utc, parse_timestamp
from .types import Settings

FUTURE_SLACK = timedelta(minutes=5)  # how far ahead of now a TIMESTAMP still counts as taken (see above)

COUNT_KEYS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")
DURATION_KEYS = ("keep_within", "ttl")
KEYS = (*COUNT_KEYS, "keep_within", "ttl", "min_keep")
MAX_DURATION = 100_000 * 86400.0  # ~270 years: beyond it a datetime overflows
_REASON_LIMIT = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class Policy:
    """Counts (0: the rule is off) and durations in seconds (0: off)."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: float = 0.0
    ttl: float = 0.0
    min_keep: int = 0

    def empty(self) -> bool:
        """No keep rule and no ``ttl``: forget refuses it (``min_keep`` alone would remove all but N)."""
        return not any(getattr(self, k) for k in (*COUNT_KEYS, *DURATION_KEYS))

    def replace(self, **overrides: Any) -> Policy:
        """This policy with ``overrides`` (a key -> value; None: not given, keep this policy's)."""
        unknown = sorted(set(overrides) - set(KEYS))
        if unknown:
            raise UsageError(f"unknown retention key {unknown[0]!r} (known: {', '.join(KEYS)})")
        given = {k: v for k, v in overrides.items() if v is not None}
        for k, v in given.items():
            _check_value(k, v, lambda problem, k=k: UsageError(f"{k.replace('_', '-')}: {problem}"))
        return replace(self, **given)

    def describe(self) -> str:
        """The policy in one line, for people."""
        parts = [f"{getattr(self, k)} {k[len('keep_'):]}" for k in COUNT_KEYS if getattr(self, k)]
        text = "keep " + ", ".join(parts) if parts else ""
        if self.keep_within:
            text += ("; " if text else "") + f"keep all within {duration_text(self.keep_within)} of the newest"
        if self.ttl:
            text += ("; " if text else "") + f"the others expire {duration_text(self.ttl)} after they were taken"
        if self.min_keep:
            text += ("; " if text else "") + f"never fewer than the {self.min_keep} newest"
        return text or "no policy"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {k: v for k, v in asdict(self).items() if v}
        for k in DURATION_KEYS:
            if k in doc:
                doc[k] = duration_text(doc[k])
        return doc


def _check_value(key: str, value: Any, error: Callable[[str], Exception]) -> None:
    if key in DURATION_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise error(f"must be a duration, not {value!r}")
        if value > MAX_DURATION:
            raise error(f"at most {MAX_DURATION / 86400:.0f}d, not {duration_text(value)}")
    elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise error(f"must be a whole number of at least 0, not {value!r}")


def policy_from_settings(settings: Settings) -> Policy:
    """The policy of a ``[datasets.X.retention]`` table already read as :class:`Settings` (``${VAR}``
    expanded); every error one line naming file, dataset and key (``settings.where``)."""
    settings.check_known(KEYS)
    values: dict[str, Any] = {}
    for key in COUNT_KEYS + ("min_keep",):
        values[key] = settings.get_int(key, 0, minimum=0)
    for key in DURATION_KEYS:
        values[key] = settings.get_duration(key, 0.0)
        _check_value(key, values[key], lambda problem, key=key: settings.error(key, problem))
    return Policy(**values)


def policy_from_table(table: Any, file: str, data_id: str, secrets: set[str] | None = None) -> Policy:
    """The policy of dataset ``data_id``'s ``retention`` table as written in the config ``file``."""
    from .config import make_settings  # config imports this module

    if not isinstance(table, dict):
        raise ConfigError(f"{file}: dataset {data_id!r}: key 'retention': must be a table "
                          f"([datasets.{data_id}.retention]), not {table!r}", key="retention")
    where = f"{file}: dataset {data_id!r}, retention"
    return policy_from_settings(make_settings(table, where, (), secrets if secrets is not None else set()))


# --------------------------------------------------------------------------- the plan


@dataclass
class Decision:
    """One complete backup: kept or removed, and every reason (the rules that keep it, or why not)."""

    timestamp: str
    keep: bool
    reasons: list[str] = field(default_factory=list)
    action: str = ""  # what the operation did or would do: keep, remove, would remove, removed...

    def to_json(self) -> dict[str, Any]:
        return {"timestamp": self.timestamp, "keep": self.keep, "action": self.action or ("keep" if self.keep else "remove"),
                "reasons": list(self.reasons)}


@dataclass
class Plan:
    """What a policy does to one dataset's complete backups at ``now``; ``decisions`` oldest first."""

    policy: Policy
    now: datetime
    decisions: list[Decision]

    @property
    def keep(self) -> list[str]:
        return [d.timestamp for d in self.decisions if d.keep]

    @property
    def remove(self) -> list[str]:
        return [d.timestamp for d in self.decisions if not d.keep]

    def decision(self, timestamp: str) -> Decision:
        return next(d for d in self.decisions if d.timestamp == timestamp)

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy.to_json(), "now": iso(self.now), "backups": [d.to_json() for d in self.decisions]}


def _hour(t: datetime, nr: int) -> tuple[int, ...]:
    return (t.year, t.month, t.day, t.hour)


def _day(t: datetime, nr: int) -> tuple[int, ...]:
    return (t.year, t.month, t.day)


def _week(t: datetime, nr: int) -> tuple[int, ...]:
    year, week, _ = t.isocalendar()  # ISO weeks: Monday to Sunday; the first has the year's first Thursday
    return (year, week)


def _month(t: datetime, nr: int) -> tuple[int, ...]:
    return (t.year, t.month)


def _year(t: datetime, nr: int) -> tuple[int, ...]:
    return (t.year,)


def _always(t: datetime, nr: int) -> tuple[int, ...]:
    return (nr,)  # every backup a period of its own


RULES: tuple[tuple[str, str, Callable[[datetime, int], tuple[int, ...]]], ...] = (
    ("keep_last", "last", _always),
    ("keep_hourly", "hourly", _hour),
    ("keep_daily", "daily", _day),
    ("keep_weekly", "weekly", _week),
    ("keep_monthly", "monthly", _month),
    ("keep_yearly", "yearly", _year),
)


def check_timestamp(text: str) -> str:
    """``text`` if it is a TIMESTAMP, else the usage error every command gives (exit 2)."""
    if not is_timestamp(text):
        raise UsageError(f"bad timestamp {text!r}: expected YYYYMMDDTHHMMSSZ (UTC), e.g. 20261123T072900Z")
    return text


def clean_text(text: Any, limit: int = _REASON_LIMIT) -> str:
    """Text read from a storage (a hold's reason), safe to print on one line: control characters replaced,
    at most ``limit`` characters."""
    text = _CONTROL.sub("?", str(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plan(policy: Policy, backups: Collection[str], holds: Mapping[str, str] | None = None,
         now: datetime | None = None, *, times: Mapping[str, datetime] | None = None) -> Plan:
    """Keep or remove each of the complete ``backups`` (TIMESTAMPs, any order) under ``policy`` at ``now``.

    ``holds``: TIMESTAMP -> why, for held backups (never removed; one that is not in ``backups`` changes
    nothing). ``times``: when each backup was taken if not its TIMESTAMP (an engine that knows better, e.g.
    from the storage's own clock); every time is bucketed in UTC. Pure: no I/O, the same plan for the same
    arguments. Raises :class:`UsageError` for an empty policy, :class:`CorruptBackupError` for a name that is
    no TIMESTAMP.
    """
    if policy.empty():
        raise UsageError("no retention policy: nothing would be kept but the newest backup; "
                         "give keep_* rules, keep_within or ttl")
    now = now if now is not None else now_utc()
    holds = holds or {}
    when: dict[str, datetime] = {}
    for ts in backups:
        if not is_timestamp(ts):
            raise CorruptBackupError(f"backup name {clean_text(ts, 80)!r} is no TIMESTAMP (YYYYMMDDTHHMMSSZ)")
        when[ts] = (times or {}).get(ts) or parse_timestamp(ts)
    newest_first = sorted(when, key=lambda ts: (when[ts], ts), reverse=True)
    future = {ts for ts in newest_first if when[ts] > now + FUTURE_SLACK}
    counted = [ts for ts in newest_first if ts not in future]
    keeps: dict[str, list[str]] = {ts: [] for ts in newest_first}

    for ts in newest_first:
        if ts in holds:
            why = clean_text(holds[ts])
            keeps[ts].append(f"held: {why}" if why else "held")
        if ts in future:
            keeps[ts].append("dated in the future: kept, not counted")
    if counted:
        keeps[counted[0]].append("newest")
    for i, ts in enumerate(counted[: policy.min_keep]):
        keeps[ts].append(f"min_keep {i + 1} of {policy.min_keep}")

    for key, name, period in RULES:
        count = getattr(policy, key)
        used = 0
        last: tuple[int, ...] | None = None
        for nr, ts in enumerate(counted):
            if used >= count:
                break
            value = period(when[ts], nr)
            oldest = nr == len(counted) - 1
            if value != last or oldest:
                used += 1
                keeps[ts].append(f"{name} {used} of {count}" + (" (oldest)" if value == last else ""))
                last = value

    if policy.keep_within and counted:
        cutoff = when[counted[0]] - timedelta(seconds=policy.keep_within)
        for ts in counted:
            if when[ts] > cutoff:
                keeps[ts].append(f"within {duration_text(policy.keep_within)}")

    decisions = []
    for ts in reversed(newest_first):
        reasons = keeps[ts]
        keep = bool(reasons)
        if not keep and policy.ttl:
            expires = when[ts] + timedelta(seconds=policy.ttl)
            keep = expires > now
            reasons = [f"expires in {age_text((expires - now).total_seconds())}" if keep
                       else f"expired {age_text((now - expires).total_seconds())} ago"]
        elif not keep:
            reasons = ["no rule keeps it"]
        decisions.append(Decision(ts, keep, reasons))
    return Plan(policy, now, decisions)


# --------------------------------------------------------------------------- durations for people


def duration_text(seconds: float) -> str:
    """Exactly, in the largest unit that divides it: ``30d``, ``36h``, ``90m``, ``45s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def age_text(seconds: float) -> str:
    """Roughly, in the largest unit that fits: ``2d``, ``5h``, ``12m``, ``30s``."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
