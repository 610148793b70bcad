"""The job launcher: each job the service accepted runs as a child process, never in the web server.

An attempt of a job is ``python -m data_manager.service.child PID --config CONFIG backup DATA_ID --json``
(``restore ... --yes``, ``forget ... --ttl``): the very command a user runs, so guards, locks, availability
marks, time limits, monitoring pings and the core's ``jobs``/``tasks`` records are the CLI's. The launcher
reads its ``--json`` progress lines (stderr) into ``job.progress`` events, its error object, and its result
(stdout); it finds the core job the attempt recorded by the child's pid.

- The child dies with the service (``PR_SET_PDEATHSIG``, :mod:`.child`), releasing its lock; every child is
  started from the launcher's one long-lived thread, as the signal follows the thread that forked.
- At start (:meth:`Launcher.recover`) a job recorded ``running`` belongs to a service that died: its
  child is waited for (it got SIGTERM) and the job re-queued, a backup with ``--resume``.
- Exit codes: 0 done; 1 (or a signal) retried ``retries`` times, ``retry_backoff`` doubling, a backup with
  ``--resume`` if the failed attempt had started one; 3 (refused: a guard, a lock) tried again
  ``refused_retry`` later, ``refused_retries`` times; 2 and 4 are final. A ``--resume`` with nothing to
  resume (exit 2) is run again at once as a plain backup.
- One job per dataset runs at a time, and at most ``max_jobs`` in all.
- After a scheduled backup whose schedule has a ``ttl``, a ``forget --ttl`` job expires the old backups.
- A backup of a dataset with a ``window`` (:mod:`.windows`) starts only inside it; at its end the child is
  stopped as by Ctrl-C (SIGTERM; SIGKILL after :data:`WINDOW_GRACE`) and the job waits, pending with
  ``--resume``, for the next window. Neither counts as a failure.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from ..errors import ExitCode
from ..jobs import StateDB, format_duration, pid_alive
from ..scrub import scrub
from ..timestamps import iso, now_utc
from .events import EventBus
from .metrics import Metrics
from .settings import Schedule, ServiceSettings
from .windows import Windows
from .store import CANCELLED, DONE, FAILED, PENDING, RUNNING, Store

log = logging.getLogger(__name__)

JOB_ENV = "DATA_MANAGER_SERVICE_JOB"
PROGRESS_EVERY = 1.0  # seconds between two job.progress events of one job
ADOPT_WAIT = 30.0  # how long a restarted service waits for a dead service's child to finish stopping
WINDOW_GRACE = 60.0  # how long a backup stopped at its window's end has to release its lock before SIGKILL


@dataclass
class Run:
    """An attempt running now."""

    job: dict[str, Any]
    n: int
    resume: bool
    proc: subprocess.Popen[bytes]
    started: float
    core_job_id: str | None = None
    progress: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    stdout: list[bytes] = field(default_factory=list)
    readers: list[threading.Thread] = field(default_factory=list)
    last_progress_event: float = 0.0
    window_end: datetime | None = None  # the end of the backup window it runs in
    window_closed: float | None = None  # when (monotonic) it was stopped because the window closed


def _later(seconds: float) -> str:
    return iso(now_utc() + timedelta(seconds=seconds))


def _child_of(pid: int, job_id: str) -> bool:
    """Whether ``pid`` is a job process of ``job_id`` (its environment says so): a reused pid is not."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{JOB_ENV}={job_id}".encode() in env


def deprioritize(pid: int, by: int) -> None:
    """Make process ``pid``, a session leader just started, ``by`` nicer than this process, for the CPU.

    Its nice value alone is not enough: with the kernel's autogroups (``kernel.sched_autogroup_enabled``, on
    in most desktop and many server kernels), every session is a scheduling group of its own and a nice
    value counts only against threads of the same group; a job in a new session would get the CPU share of
    the whole service at any nice. So its autogroup is made nicer too (``/proc/PID/autogroup``), where the
    kernel has them and lets us. Raises ``OSError`` if the process is gone."""
    nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + by)
    os.setpriority(os.PRIO_PROCESS, pid, nice)
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(nice))
    except OSError as exc:  # no autogroups in this kernel, or a /proc that refuses it: the nice value holds
        log.debug("pid %d: its autogroup stays as it was: %s", pid, exc.strerror or exc)


class Launcher:
    def __init__(self, store: Store, bus: EventBus, metrics: Metrics, settings: ServiceSettings,
                 config_path: Path, schedules: dict[str, Schedule], state: StateDB) -> None:
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self.settings = settings
        self.config_path = config_path
        self.schedules = schedules
        self.state = state
        self.host = socket.gethostname()
        self.runs: dict[str, Run] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self.started = False

    # ------------------------------------------------------------------ accepting

    def submit(self, kind: str, data_id: str, params: dict[str, Any], trigger: str, *,
               idempotency_key: str | None = None, request_hash: str | None = None,
               due: tuple[str, int] | None = None) -> tuple[dict[str, Any] | None, bool]:
        job, created = self.store.create_job(kind, data_id, params, trigger, idempotency_key=idempotency_key,
                                             request_hash=request_hash, due=due)
        if created and job is not None:
            self.bus.publish("job.created", job_id=job["id"], data_id=data_id, kind=kind, trigger=trigger,
                             due_at=job["due_at"])
            self._wake.set()
        return job, created

    def cancel(self, job_id: str) -> str | None:
        outcome = self.store.request_cancel(job_id, iso(now_utc()))
        if outcome == CANCELLED:
            job = self.store.job(job_id) or {}
            self.bus.publish("job.cancelled", job_id=job_id, data_id=job.get("data_id"))
        elif outcome == RUNNING:
            with self._lock:
                run = self.runs.get(job_id)
            if run is not None:
                self._signal(run, signal.SIGTERM)
        return outcome

    def progress(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            run = self.runs.get(job_id)
        return dict(run.progress) if run is not None and run.progress else None

    # ------------------------------------------------------------------ the thread

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="dm-launcher", daemon=True)
        self._thread.start()
        self.started = True

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, grace: float = 30.0) -> None:
        """Stop the children (SIGTERM: each releases its dataset), wait up to ``grace`` seconds, and leave
        their jobs pending with --resume for the next start."""
        self._stopping = True
        with self._lock:
            runs = list(self.runs.values())
        for run in runs:
            self._signal(run, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for run in runs:
            try:
                run.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(run, signal.SIGKILL)
                run.proc.wait()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        for run in runs:
            self._finish(run, run.proc.returncode)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._reap()
                if not self._stopping:
                    self._start_due()
            except Exception:
                log.exception("job launcher")  # never dies: the next pass tries again
            self._wake.wait(0.2)
            self._wake.clear()

    def _signal(self, run: Run, sig: int) -> None:
        try:
            run.proc.send_signal(sig)
        except (ProcessLookupError, OSError):
            pass

    # ------------------------------------------------------------------ starting

    def command(self, job: dict[str, Any], resume: bool) -> list[str]:
        params = job["params"]
        base = [sys.executable, "-m", "data_manager.service.child", str(os.getpid()), "--config", str(self.config_path)]
        if job["kind"] == "backup":
            return base + ["backup", job["data_id"], "--json"] + (["--resume"] if resume else [])
        if job["kind"] == "restore":
            args = ["restore", params.get("which") or "latest", job["data_id"], "--yes", "--json"]
            for name in params.get("only") or []:
                args += ["--only", name]
            for key, value in (params.get("set") or {}).items():
                args += ["--set", f"{key}={value}"]
            return base + args
        if job["kind"] == "forget":
            return base + ["forget", job["data_id"], "--json"] + (["--ttl", params["ttl"]] if params.get("ttl") else [])
        raise ValueError(f"unknown job kind {job['kind']!r}")

    def _start_due(self) -> None:
        with self._lock:
            busy = {r.job["data_id"] for r in self.runs.values()}
            free = self.settings.max_jobs - len(self.runs)
        if free <= 0:
            return
        for job in self.store.due_jobs(iso(now_utc())):
            if free <= 0:
                break
            if job["data_id"] in busy:
                continue
            window = self._window(job)
            window_end = None
            if window is not None:
                now = now_utc()
                window_end = window.closes_at(now)
                if window_end is None:
                    self._wait_for_window(job, window.next_open(now))
                    continue
            self._spawn(job, bool(job["resume"]) and job["kind"] == "backup", window_end)
            busy.add(job["data_id"])
            free -= 1

    def _window(self, job: dict[str, Any]) -> Windows | None:
        """The backup window that holds ``job`` back, if any (only backups wait for one)."""
        schedule = self.schedules.get(job["data_id"])
        return schedule.window if schedule is not None and job["kind"] == "backup" else None

    def _wait_for_window(self, job: dict[str, Any], opens: datetime) -> None:
        self.store.update_job(job["id"], next_attempt_at=iso(opens))
        self.bus.publish("job.waiting", job_id=job["id"], data_id=job["data_id"], kind=job["kind"],
                         reason="outside the dataset's backup window", next_attempt_at=iso(opens))
        log.info("job %s (%s of %s): waits for the backup window, opening %s", job["id"], job["kind"],
                 job["data_id"], iso(opens))

    def _spawn(self, job: dict[str, Any], resume: bool, window_end: datetime | None = None) -> None:
        env = {**os.environ, JOB_ENV: job["id"], "PYTHONUNBUFFERED": "1"}
        try:
            proc = subprocess.Popen(self.command(job, resume), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, start_new_session=True)
        except OSError as exc:
            self.store.update_job(job["id"], state=FAILED, ended_at=iso(now_utc()), error=f"cannot start: {exc}",
                                  error_code="failed", exit_code=ExitCode.FAILED)
            self.bus.publish("job.failed", job_id=job["id"], data_id=job["data_id"], error=f"cannot start: {exc}")
            return
        if self.settings.job_nice:
            # Backups are throughput work: behind the API's requests for the CPU (it answers in milliseconds
            # even while 4 jobs hash and compress on 2 cores). Set before the child has imported its modules,
            # so every process it starts (pg_dump, ...) inherits it.
            try:
                deprioritize(proc.pid, self.settings.job_nice)
            except OSError as exc:  # it may already be gone; its exit is handled as any other
                log.debug("job %s: cannot lower its priority: %s", job["id"], exc)
        n = self.store.start_attempt(job["id"], proc.pid, resume, iso(now_utc()))
        run = Run(job, n, resume, proc, time.monotonic(), window_end=window_end)
        assert proc.stdout is not None and proc.stderr is not None
        run.readers = [threading.Thread(target=self._read_stderr, args=(run, proc.stderr), daemon=True, name="dm-job-err"),
                       threading.Thread(target=self._read_stdout, args=(run, proc.stdout), daemon=True, name="dm-job-out")]
        for t in run.readers:
            t.start()
        with self._lock:
            self.runs[job["id"]] = run
        self.metrics.attempt(job["kind"], job["data_id"])
        self.bus.publish("job.started", job_id=job["id"], data_id=job["data_id"], kind=job["kind"], attempt=n,
                         resume=resume)
        log.info("job %s (%s of %s): attempt %d started, pid %d%s", job["id"], job["kind"], job["data_id"], n,
                 proc.pid, " (--resume)" if resume else "")

    def _read_stderr(self, run: Run, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            doc: Any = None
            if line.startswith("{"):
                try:
                    doc = json.loads(line)
                except ValueError:
                    doc = None
            if isinstance(doc, dict) and isinstance(doc.get("progress"), dict):
                run.progress = doc["progress"]
                now = time.monotonic()
                if now - run.last_progress_event >= PROGRESS_EVERY:
                    run.last_progress_event = now
                    self.bus.publish("job.progress", job_id=run.job["id"], data_id=run.job["data_id"],
                                     attempt=run.n, progress=doc["progress"])
            elif isinstance(doc, dict) and isinstance(doc.get("error"), dict):
                run.error = doc["error"]
            elif line.strip():
                run.tail.append(scrub(line))

    def _read_stdout(self, run: Run, stream: IO[bytes]) -> None:
        size = 0
        for chunk in iter(lambda: stream.read(65536), b""):
            if size < 4 << 20:
                run.stdout.append(chunk)
            size += len(chunk)

    # ------------------------------------------------------------------ ending

    def _reap(self) -> None:
        with self._lock:
            runs = list(self.runs.values())
        for run in runs:
            if run.core_job_id is None:
                run.core_job_id = self.store.core_job_for_pid(run.proc.pid, self.host)
                if run.core_job_id:
                    self.store.update_attempt(run.job["id"], run.n, core_job_id=run.core_job_id)
            code = run.proc.poll()
            if code is not None and not self._stopping:
                self._finish(run, code)
            elif code is None:
                self._close_window(run)

    def _close_window(self, run: Run) -> None:
        """Stop a backup whose window has closed: SIGTERM, then SIGKILL after WINDOW_GRACE."""
        if run.window_end is None:
            return
        if run.window_closed is None and now_utc() >= run.window_end:
            run.window_closed = time.monotonic()
            log.info("job %s (%s of %s): its backup window closed at %s; stopping it, to resume in the next",
                     run.job["id"], run.job["kind"], run.job["data_id"], iso(run.window_end))
            self._signal(run, signal.SIGTERM)
        elif run.window_closed is not None and time.monotonic() - run.window_closed > WINDOW_GRACE:
            self._signal(run, signal.SIGKILL)

    def _result(self, run: Run) -> dict[str, Any] | None:
        try:
            doc = json.loads(b"".join(run.stdout) or b"null")
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def _finish(self, run: Run, code: int | None) -> None:
        for t in run.readers:
            t.join(5)
        with self._lock:
            if self.runs.pop(run.job["id"], None) is None:
                return
        job_id, kind, data_id = run.job["id"], run.job["kind"], run.job["data_id"]
        job = self.store.job(job_id) or run.job
        if run.core_job_id is None:
            run.core_job_id = self.store.core_job_for_pid(run.proc.pid, self.host)
        now = iso(now_utc())
        seconds = time.monotonic() - run.started
        message = run.error.get("message") if run.error else (run.tail[-1] if run.tail else None)
        reason = run.error.get("code") if run.error else None
        result = self._result(run) if code == 0 else None
        started_backup = self._core_backup(run.core_job_id)

        if code == 0:
            outcome, state = "done", DONE
        elif job["cancel_requested"]:
            outcome, state = "cancelled", CANCELLED
        elif run.window_closed is not None:
            outcome, state = "window closed", PENDING
        elif self._stopping:
            outcome, state = "interrupted", PENDING
        elif code == ExitCode.USAGE and run.resume:
            outcome, state = "nothing to resume", PENDING
        elif code in (ExitCode.USAGE, ExitCode.CORRUPT):
            outcome, state = "failed", FAILED
        elif code == ExitCode.REFUSED:
            outcome, state = "refused", PENDING if job["refusals"] < self.settings.refused_retries else FAILED
        else:
            outcome, state = "failed", PENDING if job["failures"] < self.settings.retries else FAILED
        if code is not None and code < 0 and not message:
            message = f"the job process was killed by signal {-code}"
        if code not in (0, None) and not message:
            message = f"the job process exited with code {code}"
        error = None if code == 0 else scrub(message)
        self.store.update_attempt(job_id, run.n, ended_at=now, outcome=outcome, exit_code=code, error=error,
                                  core_job_id=run.core_job_id)
        if outcome in ("interrupted", "window closed"):
            reason = outcome.replace(" ", "_")
        self.metrics.finished(kind, data_id, code == 0, reason, seconds)

        values: dict[str, Any] = {"exit_code": code}
        if state == DONE:
            values.update(state=DONE, ended_at=now, error=None, error_code=None)
            if result:
                values["backup"] = result.get("timestamp") or started_backup
                values["bytes"] = int(result.get("size") or result.get("bytes") or 0)
        elif state in (FAILED, CANCELLED):
            values.update(state=state, ended_at=now, error=error,
                          error_code="cancelled" if state == CANCELLED else (reason or "failed"))
        else:  # pending again: a retry
            if outcome == "interrupted":
                values.update(resume=int(kind == "backup"), next_attempt_at=now)
            elif outcome == "window closed":
                window = self._window(job)
                opens = window.next_open(now_utc()) if window is not None else now_utc()
                values.update(resume=int(kind == "backup" and (started_backup is not None or bool(job["resume"]))),
                              next_attempt_at=iso(opens))
                error, reason = None, "window closed"
            elif outcome == "nothing to resume":
                values.update(resume=0, next_attempt_at=now)
            elif outcome == "refused":
                values.update(refusals=job["refusals"] + 1, next_attempt_at=_later(self.settings.refused_retry))
            else:
                backoff = self.settings.retry_backoff * 2 ** job["failures"]
                values.update(failures=job["failures"] + 1, next_attempt_at=_later(backoff),
                              resume=int(kind == "backup" and (started_backup is not None or bool(job["resume"]))))
            values.update(state=PENDING, error=error, error_code=reason or outcome)
        if started_backup and "backup" not in values:
            values["backup"] = started_backup
        self.store.update_job(job_id, **values)

        event = {DONE: "job.done", FAILED: "job.failed", CANCELLED: "job.cancelled"}.get(state)
        if event is None:
            event = "job.interrupted" if outcome in ("interrupted", "window closed") else "job.retrying"
        extra: dict[str, Any] = {"attempt": run.n, "exit_code": code}
        if error:
            extra["error"] = error
        if outcome == "window closed":
            extra.update(reason="the backup window closed", next_attempt_at=values["next_attempt_at"])
        if state == PENDING and outcome not in ("interrupted", "nothing to resume", "window closed"):
            extra["next_attempt_at"] = values["next_attempt_at"]
            extra["after"] = format_duration((datetime.fromisoformat(values["next_attempt_at"].replace("Z", "+00:00"))
                                              - now_utc()).total_seconds() + 0.5)
        if state == DONE and values.get("backup"):
            extra["backup"] = values["backup"]
        self.bus.publish(event, job_id=job_id, data_id=data_id, kind=kind, **extra)
        log.info("job %s (%s of %s): attempt %d %s (exit %s)", job_id, kind, data_id, run.n, outcome, code)
        if state == DONE and kind == "backup" and job["trigger"] == "schedule":
            self._expire(data_id)
        self._wake.set()

    def _core_backup(self, core_job_id: str | None) -> str | None:
        """The TIMESTAMP the core job wrote (or resumed), if it got that far."""
        if core_job_id is None:
            return None
        try:
            core = self.state.job(core_job_id)
        except Exception:
            return None
        return core.backup if core is not None else None

    def _expire(self, data_id: str) -> None:
        schedule = self.schedules.get(data_id)
        if schedule is not None and schedule.ttl:
            self.submit("forget", data_id, {"ttl": format_duration(schedule.ttl)}, "expiry")

    # ------------------------------------------------------------------ after a crash

    def recover(self) -> list[str]:
        """Jobs a killed service left running: wait for their processes to stop (they got SIGTERM), mark
        the attempt interrupted and queue the job again (a backup with --resume). Returns their ids."""
        out = []
        for attempt in self.store.open_attempts():
            job_id, pid = attempt["job_id"], attempt["pid"]
            deadline = time.monotonic() + ADOPT_WAIT
            while pid and pid_alive(pid) and _child_of(pid, job_id):
                if time.monotonic() > deadline:
                    log.warning("job %s: its process %d from the previous service is still running; stopping it", job_id, pid)
                    os.kill(pid, signal.SIGTERM)
                    time.sleep(10)
                    if pid_alive(pid) and _child_of(pid, job_id):
                        os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.1)
            job = self.store.job(job_id)
            if job is None:
                continue
            now = iso(now_utc())
            self.store.update_attempt(job_id, attempt["n"], ended_at=now, outcome="interrupted",
                                      error="the service stopped while this attempt ran")
            if job["state"] != RUNNING:
                continue
            if job["cancel_requested"]:
                self.store.update_job(job_id, state=CANCELLED, ended_at=now, error="cancelled", error_code="cancelled")
                self.bus.publish("job.cancelled", job_id=job_id, data_id=job["data_id"])
            else:
                self.store.update_job(job_id, state=PENDING, next_attempt_at=now, resume=int(job["kind"] == "backup"),
                                      error="interrupted: the service stopped while the job ran", error_code="interrupted")
                self.bus.publish("job.interrupted", job_id=job_id, data_id=job["data_id"], kind=job["kind"],
                                 attempt=attempt["n"])
            out.append(job_id)
        return out

    def expire_history(self) -> int:
        return self.store.expire(self.settings.keep_done, self.settings.keep_failed, time.time())

