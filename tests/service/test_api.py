"""The API in-process (FastAPI's TestClient, the service's lifespan started: jobs run as real child
processes): auth and scopes, problem+json for every bad input, idempotency, the seed's aliases, cancel,
schedules, metrics, the OpenAPI document checked in, and no secret in responses, events or the state DB."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from data_manager.api import DataManager
from data_manager.service.app import create_app
from data_manager.service.runtime import Service

from .conftest import ROOT, TOKENS, token_env, wait_job, write_config

PROBLEM = "application/problem+json"
H = {name: {"Authorization": f"Bearer {value}"} for name, value in TOKENS.items()}

SCHEDULE = """
[datasets.d1.schedule]
cron = "0 3 * * *"
timezone = "Europe/Berlin"
jitter = "10m"

[service]
max_jobs = 1
retries = 0
"""


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    for k, v in token_env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("DATA_MANAGER_STATE", raising=False)
    config = write_config(tmp_path, tokens=True, datasets=("d1", "d2"), extra=SCHEDULE)
    service = Service(DataManager.from_file(config))
    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        yield c


def problem(r: Any, status: int, exit_code: int | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body = r.json()
    assert body["status"] == status and body["title"] and "Traceback" not in r.text
    if exit_code is not None:
        assert body["exit_code"] == exit_code
    return body


def test_auth_and_scopes(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    r = client.get("/v1/jobs")
    assert problem(r, 401)["detail"] == "a bearer token is required" and r.headers["www-authenticate"] == "Bearer"
    problem(client.get("/v1/jobs", headers={"Authorization": "Bearer " + "x" * 24}), 401)
    problem(client.get("/v1/jobs", headers={"Authorization": "Basic abc"}), 401)
    assert client.get("/v1/jobs", headers=H["reader"]).status_code == 200
    problem(client.post("/v1/backups", json={"data_id": "d1"}, headers=H["reader"]), 403)
    problem(client.post("/v1/restores", json={"data_id": "d1"}, headers=H["operator"]), 403)
    problem(client.get("/metrics"), 401)
    assert client.get("/metrics", headers=H["reader"]).status_code == 200
    # the page: a cookie from /login, accepted for GET only
    assert client.get("/", follow_redirects=False).status_code == 303
    assert client.post("/login", content="token=nope", headers={"content-type": "application/x-www-form-urlencoded"},
                       follow_redirects=False).status_code == 401
    r = client.post("/login", content=f"token={TOKENS['reader']}",
                    headers={"content-type": "application/x-www-form-urlencoded"}, follow_redirects=False)
    assert r.status_code == 303 and "httponly" in r.headers["set-cookie"].lower()
    page = client.get("/")
    assert page.status_code == 200 and "EventSource" in page.text and "d1" in page.text
    problem(client.post("/v1/backups", json={"data_id": "d1"}), 401)  # the cookie never authorises a change
    client.cookies.clear()


def test_backup_job_idempotency_and_aliases(client: TestClient) -> None:
    r = client.post("/v1/backups", json={"data_id": "d1"}, headers={**H["operator"], "Idempotency-Key": "k1"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "pending" and r.headers["location"] == f"/v1/jobs/{job['id']}"
    again = client.post("/v1/backups", json={"data_id": "d1"}, headers={**H["operator"], "Idempotency-Key": "k1"})
    assert again.status_code == 202 and again.json()["id"] == job["id"] and again.headers["idempotent-replayed"] == "true"
    problem(client.post("/v1/backups", json={"data_id": "d2"}, headers={**H["operator"], "Idempotency-Key": "k1"}), 422, 2)
    done = wait_job(client_with(client, "reader"), job["id"])
    assert done["state"] == "done", done
    assert done["backup"] and done["bytes"] > 0 and [t["source"] for t in done["tasks"]] == ["a", "b"]
    assert all(t["state"] == "done" for t in done["tasks"])
    assert [(a["n"], a["outcome"], a["exit_code"], a["resume"]) for a in done["attempts"]] == [(1, "done", 0, False)]
    assert client.get(f"/backup/{job['id']}", headers=H["reader"]).json()["state"] == "done"
    seed = client.post("/backup", json={"data_id": "d2"}, headers=H["operator"])
    assert seed.status_code == 202
    listed = client.get("/v1/jobs", params={"data_id": "d1", "state": "done"}, headers=H["reader"]).json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    ds = client.get("/v1/datasets/d1", headers=H["reader"]).json()
    assert ds["latest"]["timestamp"] == done["backup"] and [b["timestamp"] for b in ds["backups"]] == [done["backup"]]
    assert ds["locks"] == [] and ds["schedule"]["cron"] == "0 3 * * *" and ds["schedule"]["next_run"]
    wait_job(client_with(client, "reader"), seed.json()["id"])
    metrics = client.get("/metrics", headers=H["reader"]).text
    for name in ('data_manager_backup_attempt_total{dataset="d1"} 1.0', 'data_manager_backup_success_total{dataset="d1"} 1.0',
                 "data_manager_backup_duration_seconds_bucket", 'data_manager_jobs{state="done"} 2.0',
                 'data_manager_backup_last_successful_timestamp{dataset="d1"}'):
        assert name in metrics, name


def client_with(client: TestClient, who: str) -> Any:
    client.headers.update(H[who])
    return client


@pytest.mark.parametrize("method, path, body, status", [
    ("post", "/v1/backups", {"data_id": "nope"}, 404),
    ("post", "/v1/backups", {"data_id": "../etc"}, 422),
    ("post", "/v1/backups", {"data_id": "d1", "extra": 1}, 422),
    ("post", "/v1/backups", {}, 422),
    ("post", "/v1/backups", [1, 2], 422),
    ("post", "/v1/restores", {"data_id": "d1", "which": "yesterday"}, 422),
    ("post", "/v1/restores", {"data_id": "d1", "only": ["zz"]}, 422),
    ("post", "/v1/restores", {"data_id": "d1", "set": {"a.password": "x"}}, 422),
    ("post", "/v1/restores", {"data_id": "d1", "set": {"zz.path": "/tmp"}}, 422),
    ("post", "/v1/restores", {"data_id": "nope"}, 404),
    ("get", "/v1/jobs/zzz", None, 422),
    ("get", "/v1/jobs/000000000000", None, 404),
    ("post", "/v1/jobs/000000000000/cancel", None, 404),
    ("get", "/v1/jobs?state=sleeping", None, 422),
    ("get", "/v1/jobs?limit=0", None, 422),
    ("get", "/v1/datasets/nope", None, 404),
    ("post", "/v1/datasets/d2/schedule/pause", None, 409),
    ("post", "/v1/datasets/nope/schedule/run", None, 404),
    ("get", "/v1/nothing", None, 404),
    ("delete", "/v1/jobs", None, 405),
])
def test_bad_input_is_a_problem_never_a_500(client: TestClient, method: str, path: str, body: Any, status: int) -> None:
    headers = H["admin"]
    r = client.request(method.upper(), path, json=body, headers=headers) if body is not None else \
        client.request(method.upper(), path, headers=headers)
    problem(r, status)


def test_malformed_json_and_bad_headers(client: TestClient) -> None:
    h = {**H["operator"], "content-type": "application/json"}
    problem(client.post("/v1/backups", content=b"{not json", headers=h), 422, 2)
    problem(client.post("/v1/backups", content=b"\xff\xfe", headers=h), 422, 2)
    problem(client.post("/v1/backups", json={"data_id": "d1"}, headers={**H["operator"], "Idempotency-Key": "x" * 300}), 400, 2)
    problem(client.get("/v1/events", headers={**H["reader"], "Last-Event-ID": "abc"}), 400, 2)


def test_cancel_pending_and_running_and_schedules(client: TestClient) -> None:
    reader = client_with(client, "reader")
    op = {**H["operator"]}
    first = client.post("/v1/backups", json={"data_id": "d1"}, headers=op).json()
    second = client.post("/v1/backups", json={"data_id": "d2"}, headers=op).json()  # max_jobs = 1: waits
    r = client.post(f"/v1/jobs/{second['id']}/cancel", headers=op)
    assert r.status_code == 202 and r.json()["state"] in ("cancelled", "running")
    ended = wait_job(reader, second["id"])
    assert ended["state"] == "cancelled" and ended["error"]["code"] == "cancelled"
    problem(client.post(f"/v1/jobs/{second['id']}/cancel", headers=op), 409, 3)
    wait_job(reader, first["id"])
    # schedules: pause, resume, run now (409 while the dataset has a job)
    paused = client.post("/v1/datasets/d1/schedule/pause", headers=op).json()
    assert paused["schedule"]["paused"] is True and paused["schedule"]["next_run"] is None
    resumed = client.post("/v1/datasets/d1/schedule/resume", headers=op).json()
    assert resumed["schedule"]["paused"] is False and resumed["schedule"]["next_run"]
    run = client.post("/v1/datasets/d1/schedule/run", headers=op)
    assert run.status_code == 202 and run.json()["trigger"] == "run-now"
    problem(client.post("/v1/datasets/d1/schedule/run", headers=op), 409, 3)
    assert wait_job(reader, run.json()["id"])["state"] == "done"


def test_openapi_document_is_checked_in(client: TestClient) -> None:
    served = client.get("/openapi.json").json()
    assert served["openapi"].startswith("3.1")
    checked_in = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert served == checked_in, "regenerate: python -m data_manager.service.openapi > docs/openapi.json"
    paths = set(served["paths"])
    assert {"/v1/backups", "/v1/restores", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel",
            "/v1/jobs/{job_id}/events", "/v1/events", "/v1/datasets", "/v1/datasets/{data_id}",
            "/v1/datasets/{data_id}/schedule/pause", "/v1/datasets/{data_id}/schedule/resume",
            "/v1/datasets/{data_id}/schedule/run", "/healthz", "/readyz", "/metrics", "/backup",
            "/backup/{job_id}"} <= paths


def test_no_secret_in_responses_events_or_state_db(client: TestClient, tmp_path: Path) -> None:
    job = client.post("/v1/backups", json={"data_id": "d1"}, headers=H["operator"]).json()
    wait_job(client_with(client, "admin"), job["id"])
    client.get("/v1/jobs/000000000000", headers={"Authorization": "Bearer " + TOKENS["admin"] + "x"})
    texts = [client.get(p).text for p in ("/v1/jobs", "/v1/datasets", "/v1/datasets/d1", "/metrics", "/")]
    time.sleep(0.2)  # the events are in the state database too: checked there
    db = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))
    for secret in TOKENS.values():
        assert all(secret not in t for t in texts)
        assert secret.encode() not in db


def test_a_failing_job_is_retried_with_backoff_then_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATA_MANAGER_STATE", raising=False)
    config = write_config(tmp_path, extra='[service]\nretries = 2\nretry_backoff = "0.2s"\n')
    (tmp_path / "data" / "d1" / "b" / "file.bin").unlink()
    (tmp_path / "data" / "d1" / "b").rmdir()  # source b is gone: exit 1 at the source check
    with TestClient(create_app(Service(DataManager.from_file(config))), raise_server_exceptions=False) as c:
        job = c.post("/v1/backups", json={"data_id": "d1"}).json()
        ended = wait_job(c, job["id"], timeout=40)
    assert ended["state"] == "failed", ended
    assert [(a["outcome"], a["exit_code"]) for a in ended["attempts"]] == [("failed", 1)] * 3
    assert ended["error"]["exit_code"] == 1 and ended["error"]["code"] == "source" and "b" in ended["error"]["message"]
    starts = [a["started_at"] for a in ended["attempts"]]
    assert starts == sorted(starts)


def test_a_due_schedule_runs_one_backup_then_expires_old_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from data_manager.timestamps import now_utc

    monkeypatch.delenv("DATA_MANAGER_STATE", raising=False)
    config = write_config(tmp_path, extra='[datasets.d1.schedule]\ncron = "* * * * *"\nttl = "60d"\n')
    service = Service(DataManager.from_file(config))
    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        deadline = time.monotonic() + 10
        while service.store.schedule_state("d1")["last_due"] is None:  # the first tick saw the schedule
            assert time.monotonic() < deadline
            time.sleep(0.1)
        service.scheduler.clock = lambda: now_utc() + timedelta(minutes=3)  # 3 due times passed
        deadline = time.monotonic() + 30
        while True:
            jobs = c.get("/v1/jobs").json()["jobs"]
            if any(j["kind"] == "forget" and j["state"] == "done" for j in jobs):
                break
            assert time.monotonic() < deadline, jobs
            time.sleep(0.2)
    backups = [j for j in jobs if j["kind"] == "backup"]
    assert len(backups) == 1 and backups[0]["trigger"] == "schedule" and backups[0]["state"] == "done"
    run = service.store.runs("d1")[0]
    assert run["job_id"] == backups[0]["id"] and run["coalesced"] >= 2
    forget = [j for j in jobs if j["kind"] == "forget"]
    assert len(forget) == 1 and forget[0]["trigger"] == "expiry" and forget[0]["params"] == {"ttl": "60d"}
