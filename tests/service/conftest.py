"""Helpers for the service's tests: a config with a filesystem storage and directory datasets, a real
``data-manager serve`` process on a free loopback port, and a server-sent events reader.

Every dependency of the service is imported here, so a missing one fails the tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cronsim  # noqa: F401  (the serve extra: fail, never skip, when it is missing)
import fastapi  # noqa: F401
import httpx
import jinja2  # noqa: F401
import prometheus_client  # noqa: F401
import pytest
import sse_starlette  # noqa: F401
import uvicorn  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
TOKENS = {"reader": "r" * 24, "operator": "o" * 24, "admin": "a" * 24}


def write_config(tmp: Path, *, extra: str = "", slow_mib: int | None = None, tokens: bool = False,
                 datasets: tuple[str, ...] = ("d1",)) -> Path:
    """A config: storage ``local`` (throttled to ``slow_mib`` MiB/s if given), datasets of two directory
    sources each (``a`` small, ``b`` 3 MiB of random bytes when slow)."""
    store = tmp / "store"
    store.mkdir(exist_ok=True)
    lines = ["[storages.local]", 'type = "filesystem"', f'root = "{store}"']
    if slow_mib:
        lines.append(f'limit_upload = "{slow_mib}MiB"')
    lines += ["", "[state]", f'path = "{tmp / "state.db"}"', "", "[locks]", 'settle = "0.05s"', ""]
    for data_id in datasets:
        for source, size in (("a", 2000), ("b", 3 << 20 if slow_mib else 5000)):
            d = tmp / "data" / data_id / source
            d.mkdir(parents=True, exist_ok=True)
            (d / "file.bin").write_bytes(os.urandom(size))
        lines += [f"[datasets.{data_id}]"]
        for source in ("a", "b"):
            lines += [f"[[datasets.{data_id}.sources]]", f'name = "{source}"', 'type = "directory"',
                      f'path = "{tmp / "data" / data_id / source}"']
        lines.append("")
    if tokens:
        lines += ["[service.tokens.reader]", 'token = "${DM_TEST_READ}"', 'scope = "read"',
                  "[service.tokens.operator]", 'token = "${DM_TEST_OPERATE}"', 'scope = "operate"',
                  "[service.tokens.admin]", 'token = "${DM_TEST_ADMIN}"', 'scope = "admin"', ""]
    lines.append(extra)
    path = tmp / "dm.toml"
    path.write_text("\n".join(lines))
    return path


def token_env() -> dict[str, str]:
    return {"DM_TEST_READ": TOKENS["reader"], "DM_TEST_OPERATE": TOKENS["operator"], "DM_TEST_ADMIN": TOKENS["admin"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """A ``data-manager serve`` process."""

    def __init__(self, config: Path, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.port = port or free_port()
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATA_MANAGER_STATE", "DATA_MANAGER_CONFIG")}
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = config.parent / f"serve-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Serve:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "data_manager", "--config", str(self.config), "serve",
                                          "--port", str(self.port)], stdout=out, stderr=out, env=self.env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"serve not ready after {timeout}s: {self.log.read_text()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture
def serve_factory() -> Iterator[Any]:
    started: list[Serve] = []

    def make(config: Path, **kwargs: Any) -> Serve:
        s = Serve(config, **kwargs)
        started.append(s)
        return s

    yield make
    for s in started:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(10)


def wait_job(client: httpx.Client, job_id: str, states: tuple[str, ...] = ("done", "failed", "cancelled"),
             timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not in {states} after {timeout}s: {job}")


def read_sse(client: httpx.Client, path: str, *, until: Any, headers: dict[str, str] | None = None,
             timeout: float = 30.0, stop_after: int | None = None) -> list[dict[str, Any]]:
    """Events of an SSE stream (``{"id", "event", "data"}``) until ``until(events)`` is true, or
    ``stop_after`` events were read (then the connection is dropped)."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    current: dict[str, Any] = {}
    with client.stream("GET", path, headers=headers or {}, timeout=httpx.Timeout(timeout)) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if time.monotonic() > deadline:
                raise AssertionError(f"SSE: timed out with {events}")
            if not line:
                if "data" in current:
                    current["data"] = json.loads(current["data"])
                    events.append(current)
                    if (stop_after is not None and len(events) >= stop_after) or until(events):
                        return events
                current = {}
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            current[field] = value[1:] if value.startswith(" ") else value
    return events
