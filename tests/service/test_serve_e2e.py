"""``data-manager serve`` as a real process on a free loopback port: a backup through the API, server-sent
events in order and a reconnect with Last-Event-ID that loses none, kill -9 of the service while a job runs
(its child stops and releases the lock; the restarted service marks the job interrupted and resumes it),
cancel of a running job, and one service per state database."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from .conftest import read_sse, wait_job, write_config


def cli(config: Path, *args: str) -> Any:
    out = subprocess.run([sys.executable, "-m", "data_manager", "--config", str(config), *args, "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_backup_through_the_api_and_events(tmp_path: Path, serve_factory: Any) -> None:
    config = write_config(tmp_path, datasets=("d1", "d2"))
    server = serve_factory(config).start()
    with httpx.Client(base_url=server.url, timeout=10) as c:
        r = c.post("/v1/backups", json={"data_id": "d1"})
        assert r.status_code == 202 and r.json()["state"] == "pending"
        first = r.json()["id"]
        second = c.post("/v1/backups", json={"data_id": "d2"}).json()["id"]

        def finished(events: list[dict[str, Any]]) -> bool:
            done = {e["data"]["job_id"] for e in events if e["event"] in ("job.done", "job.failed")}
            return {first, second} <= done

        # a first connection reads 3 events and drops; the reconnect with Last-Event-ID gets the rest
        head = read_sse(c, "/v1/events?since=0", until=finished, stop_after=3)
        tail = read_sse(c, "/v1/events", headers={"Last-Event-ID": head[-1]["id"]}, until=lambda ev: finished(head + ev))
        whole = read_sse(c, "/v1/events?since=0", until=finished)
        ids = [int(e["id"]) for e in head + tail]
        assert ids == [int(e["id"]) for e in whole] == list(range(1, len(ids) + 1))
        assert [e["data"] for e in head + tail] == [e["data"] for e in whole]
        for job_id in (first, second):
            kinds = [e["event"] for e in whole if e["data"]["job_id"] == job_id]
            assert kinds[:2] == ["job.created", "job.started"] and kinds[-1] == "job.done", kinds
        # one job's stream, from its first event
        own = read_sse(c, f"/v1/jobs/{first}/events", until=lambda ev: ev[-1]["event"] == "job.done")
        assert {e["data"]["job_id"] for e in own} == {first} and own[0]["event"] == "job.created"

        job = wait_job(c, first)
        assert job["state"] == "done" and job["backup"]
        listed = cli(config, "list", "backup", "d1")
        assert [b["timestamp"] for b in listed if b["complete"]] == [job["backup"]]
        assert c.get("/v1/datasets/d1").json()["backups"][0]["timestamp"] == job["backup"]
    assert server.stop() == 0


def test_one_service_per_state_database(tmp_path: Path, serve_factory: Any) -> None:
    config = write_config(tmp_path)
    serve_factory(config).start()
    second = serve_factory(config).start(wait=False)
    assert second.proc.wait(30) == 2
    assert "one service per state database" in second.log.read_text()


def test_kill_9_with_a_running_job_then_restart_resumes_it(tmp_path: Path, serve_factory: Any) -> None:
    config = write_config(tmp_path, slow_mib=1)  # source b: 3 MiB at 1 MiB/s
    server = serve_factory(config).start()
    with httpx.Client(base_url=server.url, timeout=10) as c:
        job_id = c.post("/v1/backups", json={"data_id": "d1"}).json()["id"]
        deadline = time.monotonic() + 30
        while True:  # until source a is done and b is moving
            job = c.get(f"/v1/jobs/{job_id}").json()
            tasks = {t["source"]: t["state"] for t in job["tasks"]}
            if tasks.get("a") == "done" and tasks.get("b") == "running" and (job["progress"] or {}).get("bytes", 0) > 0:
                break
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        child = job["attempts"][0]["pid"]
    server.kill9()
    # the child got SIGTERM from the kernel (PR_SET_PDEATHSIG): it stops and releases its lock
    deadline = time.monotonic() + 20
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists()
    assert cli(config, "lock", "list", "d1") == []

    restarted = serve_factory(config).start()
    with httpx.Client(base_url=restarted.url, timeout=10) as c:
        job = wait_job(c, job_id, timeout=40)
        assert job["state"] == "done", job
        outcomes = [(a["outcome"], a["resume"]) for a in job["attempts"]]
        assert outcomes == [("interrupted", False), ("done", True)], outcomes
        events = read_sse(c, f"/v1/jobs/{job_id}/events", until=lambda ev: ev[-1]["event"] == "job.done")
        assert "job.interrupted" in [e["event"] for e in events]
    backups = cli(config, "list", "backup", "d1")
    assert [b["complete"] for b in backups] == [True]  # the interrupted backup was resumed, not redone beside it
    assert cli(config, "lock", "list", "d1") == []
    status = cli(config, "status")
    assert status["unavailable"] == []
    assert restarted.stop() == 0


def test_cancel_a_running_job(tmp_path: Path, serve_factory: Any) -> None:
    config = write_config(tmp_path, slow_mib=1)
    server = serve_factory(config).start()
    with httpx.Client(base_url=server.url, timeout=10) as c:
        job_id = c.post("/v1/backups", json={"data_id": "d1"}).json()["id"]
        wait_job(c, job_id, states=("running",))
        time.sleep(0.5)
        assert c.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        job = wait_job(c, job_id)
        assert job["state"] == "cancelled" and job["attempts"][-1]["outcome"] == "cancelled"
    assert cli(config, "lock", "list", "d1") == []
    assert server.stop() == 0
