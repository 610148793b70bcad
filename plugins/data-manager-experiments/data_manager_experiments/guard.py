"""The guard itself: may a dataset be backed up or restored now, and its availability marks.

Contract (docs/experiments-api.yaml in data-manager):

* experiments-manager ``GET  {experiments_url}/datasets/{data_id}/allowed?operation=backup|restore``
  -> ``{"allowed": bool, "reason": str}``; 404: the dataset is unknown there (refused);
* experiments-manager ``PUT  {experiments_url}/datasets/{data_id}/availability``
  ``{"available": bool, "reason": str, "job_id": str, "operation": str, "outcome": str}`` -> 204/200;
* spark-tasks-sender  ``GET  {spark_url}/datasets/{data_id}/tasks?state=running``
  -> ``{"tasks": [{"id": str, ...}]}``; 404: no task ever ran on it (none running).
"""

from __future__ import annotations
import logging
import socket
import urllib.parse
from typing import Any

from data_manager.tls import is_loopback
from data_manager.types import Dataset, Settings

from .client import GuardError, ServiceClient

log = logging.getLogger(__name__)

KEYS = {"experiments_url", "spark_url", "token", "timeout", "retries"}
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 3


def _url(settings: Settings, key: str, default: Any = ...) -> str | None:
    value = settings.get_str(key) if default is ... else settings.get_str(key, default)
    if value is None:
        return None
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise settings.error(key, f"must be an http:// or https:// URL, not {value!r}")
    return value


def _check_token_transport(settings: Settings, key: str, url: str) -> None:
    """The bearer token goes in clear over plain http: allowed only to this machine (a local fake or tunnel)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "http" and not is_loopback(parsed.hostname):
        raise settings.error(
            key, f"would send the token in clear over http:// to {parsed.hostname}; use https:// (plain http:// "
                 "is allowed only to a loopback address: 127.0.0.0/8, ::1, localhost)")


def _timeout(settings: Settings) -> float:
    return settings.get_duration("timeout", DEFAULT_TIMEOUT)


class ExperimentsGuard:
    """Asks the experiments-manager (and the spark-tasks-sender, if configured) over HTTP."""

    def __init__(self, settings: Settings) -> None:
        settings.check_known(KEYS)
        timeout = _timeout(settings)
        retries = settings.get_int("retries", DEFAULT_RETRIES, minimum=0)
        token = settings.get("token") or None
        if token is not None and not isinstance(token, str):
            raise settings.error("token", "must be a string")
        experiments_url = _url(settings, "experiments_url")
        assert experiments_url is not None
        spark_url = _url(settings, "spark_url", None)
        if token is not None:
            for key, url in (("experiments_url", experiments_url), ("spark_url", spark_url)):
                if url is not None:
                    _check_token_transport(settings, key, url)
        self.experiments = ServiceClient("experiments-manager", experiments_url, token=token, timeout=timeout,
                                         retries=retries)
        self.spark = (ServiceClient("spark-tasks-sender", spark_url, token=token, timeout=timeout, retries=retries)
                      if spark_url else None)

    @staticmethod
    def _path(data_id: str, tail: str) -> str:
        return f"/datasets/{urllib.parse.quote(data_id, safe='')}/{tail}"

    def check(self, dataset: Dataset, operation: str) -> str | None:
        reasons = []
        data_id = dataset.data_id
        status, doc = self.experiments.request("GET", self._path(data_id, "allowed"), query={"operation": operation})
        if status == 404:
            reasons.append(f"the experiments-manager does not know dataset {data_id}")
        else:
            if not isinstance(doc, dict) or not isinstance(doc.get("allowed"), bool):
                raise GuardError(f"{self.experiments.where()}: unexpected answer about {data_id} (no boolean 'allowed')")
            if not doc["allowed"]:
                reasons.append(f"experiments-manager: {str(doc.get('reason') or 'not allowed now').splitlines()[0]}")
        if self.spark is not None:
            status, doc = self.spark.request("GET", self._path(data_id, "tasks"), query={"state": "running"})
            if status != 404:
                tasks = doc.get("tasks") if isinstance(doc, dict) else None
                if not isinstance(tasks, list):
                    raise GuardError(f"{self.spark.where()}: unexpected answer about {data_id} (no list 'tasks')")
                if tasks:
                    ids = ", ".join(str(t.get("id", "?")) if isinstance(t, dict) else str(t) for t in tasks[:5])
                    more = f" and {len(tasks) - 5} more" if len(tasks) > 5 else ""
                    reasons.append(f"spark-tasks-sender: {len(tasks)} Spark task(s) running on {data_id} ({ids}{more})")
        return "; ".join(reasons) or None

    def mark(self, dataset: Dataset, operation: str, job_id: str, available: bool, outcome: str = "") -> None:
        host = socket.gethostname()
        body = {
            "available": available,
            "reason": (f"{operation} {outcome} (data-manager job {job_id} on {host})" if available
                       else f"{operation} running (data-manager job {job_id} on {host})"),
            "job_id": job_id,
            "operation": operation,
            "outcome": outcome or "running",
        }
        self.experiments.request("PUT", self._path(dataset.data_id, "availability"), body=body)
        log.info("experiments-manager: %s marked %s", dataset.data_id, "available" if available else "unavailable")
