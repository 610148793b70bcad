"""The service's config: the ``[service]`` table and each dataset's ``[datasets.X.schedule]``.

```toml
[service]
host = "127.0.0.1"          # default; a non-loopback host needs at least one token
port = 8080
max_jobs = 2                # jobs running at once (each a child process)
job_nice = 10               # jobs run at this nice level (0-19): the API stays responsive while they use the CPU
retries = 2                 # a job that failed (exit 1) is retried this often, with --resume
retry_backoff = "30s"       # doubled at each retry
refused_retry = "5m"        # a refused job (exit 3: guard or lock) is tried again this much later ...
refused_retries = 12        # ... this often
keep_done = "90d"           # job history: finished jobs are forgotten this long after they ended
keep_failed = "365d"

[service.tokens.ci]
token = "${DM_CI_TOKEN}"    # a bearer token, from the environment
scope = "operate"           # read | operate | admin (each includes the ones before)

[datasets.exp42.schedule]
cron = "30 2 * * *"         # five fields (or @daily, @hourly, ...), in `timezone`
timezone = "Europe/Berlin"  # IANA name; default UTC
jitter = "10m"              # each due time starts up to this much later (deterministic, per dataset and time)
ttl = "60d"                 # scheduled backups expire: forget --ttl 60d runs after each scheduled backup
paused = false
window = "22:00-06:00"      # backups run only inside it; stopped at its end, resumed in the next (see windows.py)
```

Validated when the config is loaded (:func:`data_manager.config.parse_config`), with one-line errors
naming the file, the dataset and the key. Token values are *not* expanded here: ``${VAR}`` is only read
by ``data-manager serve`` (:func:`expand_tokens`), so other commands run without the service's secrets in
their environment. Nothing here needs the ``serve`` extra; cron expressions are checked with cronsim when
it is installed, and by their shape otherwise (``serve`` checks them again with cronsim).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import ConfigError
from .. import units
from .windows import Windows, parse_windows

SCOPES = ("read", "operate", "admin")
SERVICE_KEYS = ("host", "port", "max_jobs", "job_nice", "retries", "retry_backoff", "refused_retry", "refused_retries",
                "keep_done", "keep_failed", "tokens")
SCHEDULE_KEYS = ("cron", "timezone", "jitter", "ttl", "paused", "window")
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_CRON_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
                "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}


def cron_fields(expr: str) -> str:
    """The five fields of a cron expression (``@daily`` and the other macros spelled out)."""
    expr = " ".join(expr.split())
    return _CRON_MACROS.get(expr.lower(), expr)


@dataclass
class TokenSpec:
    name: str
    raw: str  # as written: ``${VAR}`` unexpanded
    scope: str


@dataclass
class ServiceSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_jobs: int = 2
    job_nice: int = 10
    retries: int = 2
    retry_backoff: float = 30.0
    refused_retry: float = 300.0
    refused_retries: int = 12
    keep_done: float = 90 * 86400.0
    keep_failed: float = 365 * 86400.0
    tokens: list[TokenSpec] = field(default_factory=list)


@dataclass
class Schedule:
    data_id: str
    cron: str
    timezone: str = "UTC"
    jitter: float = 0.0
    ttl: float | None = None
    paused: bool = False
    window: Windows | None = None

    @property
    def fields(self) -> str:
        return cron_fields(self.cron)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def _duration(value: Any, where: str, key: str) -> float:
    seconds = units.parse_duration(value)
    if seconds is None:
        raise ConfigError(f"{where}: key {key!r}: must be {units.DURATION_HINT}, not {value!r}", key=key)
    return seconds


def _count(value: Any, where: str, key: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: key {key!r}: must be a whole number >= {minimum}, not {value!r}", key=key)
    return value


def _known(table: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{where}: key {unknown[0]!r}: unknown (known: {', '.join(sorted(known))})", key=unknown[0])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def service_settings(data: Mapping[str, Any], file: str = "<config>") -> ServiceSettings:
    """The ``[service]`` table, validated (tokens not expanded)."""
    table = data.get("service", {})
    where = f"{file}: [service]"
    if not isinstance(table, dict):
        raise ConfigError(f"{file}: key 'service': must be a table", key="service")
    _known(table, SERVICE_KEYS, where)
    out = ServiceSettings()
    if "host" in table:
        if not isinstance(table["host"], str) or not table["host"].strip():
            raise ConfigError(f"{where}: key 'host': must be a host name or address", key="host")
        out.host = table["host"]
    if "port" in table:
        port = table["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"{where}: key 'port': must be a port number (1-65535), not {port!r}", key="port")
        out.port = port
    if "max_jobs" in table:
        out.max_jobs = _count(table["max_jobs"], where, "max_jobs", 1)
    if "job_nice" in table:
        out.job_nice = _count(table["job_nice"], where, "job_nice")
        if out.job_nice > 19:
            raise ConfigError(f"{where}: key 'job_nice': must be 0 to 19, not {out.job_nice}", key="job_nice")
    for key in ("retries", "refused_retries"):
        if key in table:
            setattr(out, key, _count(table[key], where, key))
    for key in ("retry_backoff", "refused_retry", "keep_done", "keep_failed"):
        if key in table:
            setattr(out, key, _duration(table[key], where, key))
    tokens = table.get("tokens", {})
    if not isinstance(tokens, dict):
        raise ConfigError(f"{where}: key 'tokens': must be tables [service.tokens.NAME]", key="tokens")
    for name, spec in tokens.items():
        twhere = f"{file}: [service.tokens.{name}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{twhere}: must be a table with token and scope", key=f"tokens.{name}")
        _known(spec, ("token", "scope"), twhere)
        raw = spec.get("token")
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"{twhere}: key 'token': missing or empty (e.g. token = \"${{DM_TOKEN}}\")", key="token")
        if not _VAR_RE.search(raw) and len(raw) < 16:
            raise ConfigError(f"{twhere}: key 'token': too short (at least 16 characters)", key="token")
        scope = spec.get("scope", "read")
        if scope not in SCOPES:
            raise ConfigError(f"{twhere}: key 'scope': must be one of {', '.join(SCOPES)}, not {scope!r}", key="scope")
        out.tokens.append(TokenSpec(name, raw, scope))
    return out


def expand_tokens(settings: ServiceSettings, file: str = "<config>") -> dict[str, tuple[str, str]]:
    """``{name: (token, scope)}`` with ``${VAR}`` read from the environment now (``serve`` only); every
    token is registered with :mod:`data_manager.scrub`, so it never reaches a log line."""
    from ..scrub import add_secrets

    out = {}
    for spec in settings.tokens:
        def sub(m: re.Match[str], spec: TokenSpec = spec) -> str:
            got = os.environ.get(m.group(1))
            if got is None:
                if m.group(2) is None:
                    raise ConfigError(f"{file}: [service.tokens.{spec.name}]: key 'token': environment variable "
                                      f"{m.group(1)} is not set", key="token")
                got = m.group(2)
            return got

        value = _VAR_RE.sub(sub, spec.raw)
        if len(value) < 16:
            raise ConfigError(f"{file}: [service.tokens.{spec.name}]: key 'token': too short (at least 16 characters)",
                              key="token")
        out[spec.name] = (value, spec.scope)
    add_secrets(v for v, _ in out.values())
    return out


def check_cron(expr: str) -> str | None:
    """Why ``expr`` is not a cron expression, or None."""
    fields = cron_fields(expr)
    if len(fields.split()) != 5:
        return "expected five fields (minute hour day month weekday) or @daily, @hourly, @weekly, @monthly, @yearly"
    try:
        from cronsim import CronSim, CronSimError
    except ImportError:  # core without the serve extra: the shape only (serve checks again)
        return None
    from datetime import datetime, timezone

    try:
        CronSim(fields, datetime(2026, 1, 1, tzinfo=timezone.utc))
    except CronSimError as exc:
        return str(exc) or "not a cron expression"
    return None


def schedule_from_table(table: Any, file: str, data_id: str) -> Schedule:
    """``[datasets.DATA_ID.schedule]``, validated."""
    where = f"{file}: dataset {data_id!r}: [schedule]"
    if not isinstance(table, dict):
        raise ConfigError(f"{file}: dataset {data_id!r}: key 'schedule': must be a table", key="schedule")
    _known(table, SCHEDULE_KEYS, where)
    cron = table.get("cron")
    if not isinstance(cron, str) or not cron.strip():
        raise ConfigError(f"{where}: key 'cron': missing (e.g. cron = \"30 2 * * *\")", key="cron")
    why = check_cron(cron)
    if why:
        raise ConfigError(f"{where}: key 'cron': {cron!r}: {why}", key="cron")
    out = Schedule(data_id, cron.strip())
    if "timezone" in table:
        tz = table["timezone"]
        try:
            if not isinstance(tz, str) or not tz:
                raise ValueError
            ZoneInfo(tz)
        except (ValueError, ZoneInfoNotFoundError):
            raise ConfigError(f"{where}: key 'timezone': unknown time zone {tz!r} (an IANA name like Europe/Berlin)",
                              key="timezone") from None
        out.timezone = tz
    if "jitter" in table:
        out.jitter = 0.0 if table["jitter"] in (0, "0", "0s") else _duration(table["jitter"], where, "jitter")
    if "ttl" in table:
        out.ttl = _duration(table["ttl"], where, "ttl")
    if "paused" in table:
        if not isinstance(table["paused"], bool):
            raise ConfigError(f"{where}: key 'paused': must be true or false, not {table['paused']!r}", key="paused")
        out.paused = table["paused"]
    if "window" in table:
        out.window, why = parse_windows(table["window"], out.timezone)
        if why:
            raise ConfigError(f"{where}: key 'window': {why}", key="window")
    return out


def schedules(datasets: Mapping[str, Any], file: str = "<config>") -> dict[str, Schedule]:
    """Every configured dataset's schedule (``datasets``: data_id -> :class:`~data_manager.types.Dataset`)."""
    out = {}
    for data_id, ds in datasets.items():
        if "schedule" in ds.options:
            out[data_id] = schedule_from_table(ds.options["schedule"], file, data_id)
    return out
