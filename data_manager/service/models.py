"""The API's request and response bodies (pydantic): what the OpenAPI document (``/openapi.json``,
docs/openapi.json) is generated from."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DATA_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
JOB_ID = r"^[0-9a-f]{12}$"
WHICH = r"^(latest|\d{8}T\d{6}Z)$"
SOURCE_KEY = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.[A-Za-z_][A-Za-z0-9_]{0,63}$"

JobState = Literal["pending", "running", "done", "failed", "cancelled"]
JobKind = Literal["backup", "restore", "forget"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackupRequest(_Strict):
    data_id: str = Field(pattern=DATA_ID, description="The dataset to back up.")


class RestoreRequest(_Strict):
    data_id: str = Field(pattern=DATA_ID)
    which: str = Field("latest", pattern=WHICH, description="latest, or a backup's TIMESTAMP (20261123T072900Z).")
    only: list[str] = Field(default_factory=list, max_length=100,
                            description="Restore only these sources (default: every source).")
    set: dict[str, str | int | bool] = Field(
        default_factory=dict, max_length=100,
        description="SOURCE.KEY -> value: restore a source elsewhere, e.g. {\"raw.path\": \"/tmp/raw\"}. "
                    "Secret keys (passwords, tokens) are refused: the job's parameters are stored.")


class Attempt(BaseModel):
    n: int
    pid: int | None = None
    core_job_id: str | None = Field(None, description="The job the attempt recorded (data-manager status).")
    resume: bool
    started_at: str
    ended_at: str | None = None
    outcome: str | None = Field(None, description="done, failed, refused, interrupted, window closed, cancelled, "
                                   "nothing to resume")
    exit_code: int | None = None
    error: str | None = None


class Task(BaseModel):
    source: str
    type: str
    state: str
    started_at: str | None = None
    ended_at: str | None = None
    bytes: int = 0
    error: str | None = None


class JobError(BaseModel):
    code: str = Field(description="The CLI's error code (source, storage, refused, usage, corrupt_backup, ...).")
    message: str | None = None
    exit_code: int | None = Field(None, description="The CLI's exit code of the last attempt.")


class Job(BaseModel):
    id: str
    kind: JobKind
    data_id: str
    state: JobState
    trigger: str = Field(description="api, schedule, run-now or expiry")
    params: dict[str, Any] = Field(default_factory=dict)
    due_at: str | None = Field(None, description="The schedule's due time this job is for.")
    created_at: str
    started_at: str | None = None
    ended_at: str | None = None
    next_attempt_at: str | None = None
    backup: str | None = Field(None, description="The TIMESTAMP written (backup) or restored.")
    bytes: int = 0
    attempts: list[Attempt] = Field(default_factory=list)
    tasks: list[Task] = Field(default_factory=list, description="One per source, from the latest attempt.")
    progress: dict[str, Any] | None = Field(None, description="The running attempt's latest progress.")
    error: JobError | None = None


class JobList(BaseModel):
    jobs: list[Job]


class LatestBackup(BaseModel):
    timestamp: str | None
    ended_at: str | None
    bytes: int
    age_seconds: float | None


class BackupWindow(BaseModel):
    """When the dataset's backups may run (``window`` in its schedule)."""

    window: str
    open: bool
    closes_at: str | None = None
    opens_at: str | None = None
    sources_restarting: list[str] = Field(default_factory=list, description="Sources that start over when a "
                                          "window closes on them (neither the storage's engine nor the source keeps what a stopped run stored).")


class ScheduleInfo(BaseModel):
    cron: str
    timezone: str
    jitter_seconds: float
    ttl_seconds: float | None
    paused: bool
    next_run: str | None
    window: BackupWindow | None = None


class Availability(BaseModel):
    state: str
    job_id: str
    since: str
    error: str | None = None


class Dataset(BaseModel):
    data_id: str
    storage: str
    sources: list[dict[str, str]]
    latest: LatestBackup | None = Field(None, description="The newest backup done through this state database.")
    schedule: ScheduleInfo | None = None
    availability: Availability | None = None
    active_jobs: list[str] = Field(default_factory=list)
    locks: list[dict[str, Any]] | None = Field(None, description="Lock objects in the storage (detail only).")
    backups: list[dict[str, Any]] | None = Field(None, description="Backups in the storages (detail only).")


class DatasetList(BaseModel):
    datasets: list[Dataset]


class Problem(BaseModel):
    """RFC 9457 problem details; ``exit_code`` is what the CLI would have exited with."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    code: str | None = None
    exit_code: int | None = None


class Health(BaseModel):
    status: str
