"""Verify's sample selection, the state database's verify records and their migration, progress figures."""

from __future__ import annotations

import io
import json
import random
import sqlite3
from pathlib import Path

import pytest

from data_manager.errors import UsageError
from data_manager.jobs import StateDB
from data_manager.progress import JsonProgress, checked
from data_manager.engines.records import ArtifactRecord
from data_manager.operations.verify import choose_sample, parse_sample


def art(name: str, size: int) -> tuple[str, ArtifactRecord]:
    return "s", ArtifactRecord(name, size, "0" * 64, size, "none")


def test_parse_sample() -> None:
    assert parse_sample("5%") == 0.05 and parse_sample(" 0.5 %") == 0.005 and parse_sample("100%") == 1
    for bad in ("0%", "101%", "5", "1/5", "x%", "-1%"):
        with pytest.raises(UsageError, match="percentage"):
            parse_sample(bad)


def test_sample_covers_the_share_of_bytes_in_backup_order_and_varies() -> None:
    arts = [art(f"a{i}", 100) for i in range(100)]
    chosen = choose_sample(arts, 0.05, random.Random(1))
    assert sum(a.size for _, a in chosen) == 500 and len(chosen) == 5
    assert chosen == [a for a in arts if a in chosen]  # in the backup's order
    assert choose_sample(arts, 0.05, random.Random(2)) != chosen  # random: repeated samples cover more
    assert len(choose_sample([art("only", 10)], 0.01)) == 1  # at least one artifact
    assert choose_sample(arts, 1.0) == arts and choose_sample([], 0.5) == []


V1_SCHEMA = """
CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, data_id TEXT NOT NULL, state TEXT NOT NULL,
    host TEXT NOT NULL, pid INTEGER NOT NULL, created_at TEXT NOT NULL, started_at TEXT, ended_at TEXT, backup TEXT,
    bytes INTEGER NOT NULL DEFAULT 0, error TEXT, release_error TEXT);
CREATE INDEX jobs_by_time ON jobs (created_at);
CREATE TABLE tasks (job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE, position INTEGER NOT NULL,
    source TEXT NOT NULL, type TEXT NOT NULL, state TEXT NOT NULL, started_at TEXT, ended_at TEXT,
    bytes INTEGER NOT NULL DEFAULT 0, error TEXT, PRIMARY KEY (job_id, source));
CREATE TABLE availability (data_id TEXT PRIMARY KEY, state TEXT NOT NULL, job_id TEXT NOT NULL, since TEXT NOT NULL,
    error TEXT);
INSERT INTO jobs VALUES ('abc123abc123', 'backup', 'd', 'done', 'h', 1, '2026-01-01T00:00:00.000Z', NULL,
    '2026-01-01T00:01:00.000Z', '20260101T000000Z', 42, NULL, NULL);
PRAGMA user_version = 1;
"""


def test_a_version_1_database_keeps_its_jobs_and_gains_verify_records(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    con = sqlite3.connect(path)
    con.executescript(V1_SCHEMA)
    con.close()
    db = StateDB(path)
    job = db.job("abc123abc123")
    assert job is not None and job.bytes == 42 and job.backup == "20260101T000000Z"
    assert db.verifies("/srv", "d") == {}
    db.record_verify("/srv", "d", "20260101T000000Z", None)
    db.record_verify("/srv", "d", "20260102T000000Z", 0.05)
    db.record_verify("/elsewhere", "d", "20260101T000000Z", 0.5)  # a copy in another storage is another backup
    got = db.verifies("/srv", "d")
    assert got["20260101T000000Z"][1] is None and got["20260102T000000Z"][1] == 0.05
    assert got["20260101T000000Z"][0].endswith("Z")
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 2
    con.close()


def test_json_progress_lines_are_throttled_and_carry_percent_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    progress = JsonProgress(out)
    progress.begin("restore d/20260101T000000Z", 1000, 4)
    meter = checked(progress("raw"), lambda: None)  # as a job passes it on: its time limit checked first
    for _ in range(4):
        meter(250)
        meter(0)  # one artifact done
    progress.done()
    lines = [json.loads(line)["progress"] for line in out.getvalue().splitlines()]
    assert 2 <= len(lines) <= 3  # the source's start and the end; the blocks between came faster than 4/s
    last = lines[-1]
    assert last["bytes"] == 1000 and last["items"] == 4 and last["total_items"] == 4
    assert last["percent"] == 100.0 and last["eta_seconds"] == 0.0 and last["source"] == "raw"
    assert last["operation"] == "restore d/20260101T000000Z" and last["rate"] > 0
