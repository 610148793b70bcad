"""Prometheus metrics (``GET /metrics``), named like Velero's (``velero_backup_attempt_total`` ...) with a
``dataset`` label in place of Velero's ``schedule``:

| metric | type | labels |
|---|---|---|
| ``data_manager_backup_attempt_total`` | counter | dataset |
| ``data_manager_backup_success_total`` | counter | dataset |
| ``data_manager_backup_failure_total`` | counter | dataset, reason (the CLI's error code: source, storage, refused, ...) |
| ``data_manager_backup_duration_seconds`` | histogram, 10 s to 12 h | dataset |
| ``data_manager_backup_last_successful_timestamp`` | gauge (from the state database) | dataset |
| ``data_manager_backup_last_size_bytes`` | gauge (from the state database) | dataset |
| ``data_manager_restore_attempt_total``, ``_success_total``, ``_failure_total`` | counter | dataset (, reason) |
| ``data_manager_jobs`` | gauge (from the state database) | state |
| ``data_manager_schedule_lag_seconds`` | gauge: how late the last due time started | dataset |
| ``data_manager_schedule_runs_total`` | counter | dataset, outcome (job, skipped, paused) |

Counters start at 0 with each service process (as Prometheus expects); the gauges marked "from the state
database" are read at each scrape, so they survive restarts. Each service has its own registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .store import STATES, Store

BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 21600, 43200)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _FromState(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("data_manager_jobs", "Jobs the service knows, by state.", labels=["state"])
        counts = self.store.counts()
        for state in STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        last = GaugeMetricFamily("data_manager_backup_last_successful_timestamp",
                                 "When the newest successful backup of the dataset ended (Unix time).", labels=["dataset"])
        size = GaugeMetricFamily("data_manager_backup_last_size_bytes", "Size of the newest successful backup.",
                                 labels=["dataset"])
        for data_id, (_, ended, nbytes) in sorted(self.store.last_good_backups().items()):
            if ended:
                last.add_metric([data_id], datetime.fromisoformat(ended.replace("Z", "+00:00")).timestamp())
                size.add_metric([data_id], nbytes or 0)
        yield last
        yield size


class Metrics:
    def __init__(self, store: Store) -> None:
        disable_created_metrics()  # no *_created series: the service owns its process
        self.registry = CollectorRegistry()
        r = self.registry
        self.attempts = {k: Counter(f"data_manager_{k}_attempt_total", f"{k.title()} attempts started.", ["dataset"], registry=r)
                         for k in ("backup", "restore")}
        self.successes = {k: Counter(f"data_manager_{k}_success_total", f"{k.title()}s that succeeded.", ["dataset"], registry=r)
                          for k in ("backup", "restore")}
        self.failures = {k: Counter(f"data_manager_{k}_failure_total", f"{k.title()} attempts that failed, by reason.",
                                    ["dataset", "reason"], registry=r) for k in ("backup", "restore")}
        self.duration = Histogram("data_manager_backup_duration_seconds", "Duration of backup attempts.", ["dataset"],
                                  buckets=BUCKETS, registry=r)
        self.lag = Gauge("data_manager_schedule_lag_seconds", "How late the last due time of the schedule started.",
                         ["dataset"], registry=r)
        self.runs = Counter("data_manager_schedule_runs_total", "Due times of schedules, by outcome.",
                            ["dataset", "outcome"], registry=r)
        r.register(_FromState(store))

    def attempt(self, kind: str, data_id: str) -> None:
        if kind in self.attempts:
            self.attempts[kind].labels(data_id).inc()

    def finished(self, kind: str, data_id: str, ok: bool, reason: str | None, seconds: float) -> None:
        if kind not in self.attempts:
            return
        if ok:
            self.successes[kind].labels(data_id).inc()
        else:
            self.failures[kind].labels(data_id, reason or "failed").inc()
        if kind == "backup":
            self.duration.labels(data_id).observe(seconds)

    def scheduled(self, decided: dict[str, Any]) -> None:
        self.runs.labels(decided["data_id"], decided["outcome"]).inc()
        if decided["outcome"] == "job":
            self.lag.labels(decided["data_id"]).set(max(0.0, decided["lag"]))

    def render(self) -> bytes:
        return generate_latest(self.registry)
