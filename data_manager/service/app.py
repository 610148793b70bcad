"""The web application: the API under ``/v1`` (docs/service.md), the seed's ``/backup`` aliases, health,
metrics, the OpenAPI document and the status page.

Every error is an RFC 9457 ``application/problem+json`` body with the CLI's exit code where there is one;
an unexpected exception is logged with its traceback and answered with a 500 problem that has none. Request
handlers never run a job: they record it and return 202, the launcher (:mod:`.jobs`) runs it in a child
process. Handlers that read the storage (a dataset's locks and backups) run in the thread pool, one at a
time on the service's DataManager.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import DataManagerError, ExitCode, UsageError, error_code
from ..scrub import scrub
from ..timestamps import now_utc
from . import models
from .auth import COOKIE, allows, bearer
from .metrics import CONTENT_TYPE
from .runtime import Service
from .scheduler import parse_iso
from .windows import window_report

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
_STATUS_OF_EXIT = {ExitCode.USAGE: 400, ExitCode.REFUSED: 409, ExitCode.CORRUPT: 422, ExitCode.FAILED: 502}


class Problem(Exception):
    def __init__(self, status: int, detail: str | None = None, *, code: str | None = None,
                 exit_code: int | None = None, title: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.code, self.exit_code = status, detail, code, exit_code
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers


def _problem_response(request: Request, p: Problem) -> JSONResponse:
    body = models.Problem(type="about:blank" if p.code is None else f"urn:data-manager:problem:{p.code}",
                          title=p.title, status=p.status, detail=scrub(p.detail), instance=request.url.path,
                          code=p.code, exit_code=p.exit_code)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=p.status, media_type=PROBLEM, headers=p.headers)


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": models.Problem, "content": {PROBLEM: {}}, "description": HTTPStatus(s).phrase} for s in statuses}


_bearer = HTTPBearer(auto_error=False, description="A token of [service.tokens.NAME]")


def create_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(service.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(service.stop)

    app = FastAPI(title="data-manager", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="The backup service of data-manager (docs/service.md). Errors are RFC 9457 problem "
                              "details carrying the CLI's exit code.")
    app.state.service = service

    # ------------------------------------------------------------------ errors

    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> JSONResponse:
        return _problem_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _problem_response(request, Problem(exc.status_code, str(exc.detail) if exc.detail else None,
                                                  headers=getattr(exc, "headers", None)))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        detail = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid request"))
        return _problem_response(request, Problem(422, detail, code="usage", exit_code=ExitCode.USAGE))

    @app.exception_handler(DataManagerError)
    async def on_dm_error(request: Request, exc: DataManagerError) -> JSONResponse:
        status = _STATUS_OF_EXIT.get(exc.exit_code, 500)
        return _problem_response(request, Problem(status, str(exc).splitlines()[0] if str(exc) else None,
                                                  code=error_code(exc), exit_code=exc.exit_code))

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s: %s", request.method, request.url.path, scrub(f"{type(exc).__name__}: {exc}"), exc_info=exc)
        return _problem_response(request, Problem(500, "internal error (logged by the service)", code="internal",
                                                  exit_code=ExitCode.FAILED))

    # ------------------------------------------------------------------ auth

    def require(scope: str) -> Any:
        # async: no I/O here, and a sync dependency costs every request a hop to the thread pool and back
        async def check(request: Request,
                        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None) -> str | None:
            if not service.tokens.enabled:
                return None
            token = creds.credentials if creds is not None else None
            if token is None and request.method == "GET":
                token = request.cookies.get(COOKIE)
            who = service.tokens.identify(token)
            if who is None:
                raise Problem(401, "a bearer token is required" if token is None else "unknown token",
                              code="unauthorized", headers={"WWW-Authenticate": "Bearer"})
            if not allows(who[1], scope):
                raise Problem(403, f"token {who[0]!r} has scope {who[1]}; this needs {scope}", code="forbidden")
            return who[0]
        return Depends(check)

    READ, OPERATE, ADMIN = require("read"), require("operate"), require("admin")
    auth_problems = _problems(401, 403)

    # ------------------------------------------------------------------ helpers

    def job_view(row: dict[str, Any]) -> models.Job:
        attempts = service.store.attempts(row["id"])
        core_id = next((a["core_job_id"] for a in reversed(attempts) if a["core_job_id"]), None)
        tasks: list[models.Task] = []
        if core_id:
            core = service.state.job(core_id)
            if core is not None:
                tasks = [models.Task(**{k: v for k, v in t.to_json().items() if k != "job_id"}) for t in core.tasks]
        error = None
        if row["state"] != "done" and row["error_code"]:
            error = models.JobError(code=row["error_code"], message=row["error"], exit_code=row["exit_code"])
        return models.Job(
            id=row["id"], kind=row["kind"], data_id=row["data_id"], state=row["state"], trigger=row["trigger"],
            params=row["params"], due_at=row["due_at"], created_at=row["created_at"], started_at=row["started_at"],
            ended_at=row["ended_at"], next_attempt_at=row["next_attempt_at"], backup=row["backup"], bytes=row["bytes"],
            attempts=[models.Attempt(**{k: v for k, v in a.items() if k != "job_id"}) for a in attempts], tasks=tasks,
            progress=service.launcher.progress(row["id"]), error=error)

    def get_job(job_id: str) -> dict[str, Any]:
        row = service.store.job(job_id)
        if row is None:
            raise Problem(404, f"no job {job_id!r}", code="not_found", exit_code=ExitCode.USAGE)
        return row

    def dataset_or_404(data_id: str) -> Any:
        try:
            return service.dm.dataset(data_id)
        except UsageError as exc:
            raise Problem(404, str(exc), code="not_found", exit_code=ExitCode.USAGE) from None

    def idempotency(key: str | None, kind: str, body: dict[str, Any]) -> tuple[str | None, str | None]:
        if key is None:
            return None, None
        if not 1 <= len(key) <= 255 or not key.isprintable():
            raise Problem(400, "Idempotency-Key: 1 to 255 printable characters", code="usage", exit_code=ExitCode.USAGE)
        digest = hashlib.sha256(json.dumps([kind, body], sort_keys=True).encode()).hexdigest()
        return key, digest

    def accepted(job: dict[str, Any], created: bool, digest: str | None) -> JSONResponse:
        if not created and digest is not None and job["request_hash"] != digest:
            raise Problem(422, "this Idempotency-Key was used for a different request", code="usage",
                          exit_code=ExitCode.USAGE)
        headers = {"Location": f"/v1/jobs/{job['id']}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(job_view(job).model_dump(), status_code=202, headers=headers)

    def submit_backup(data_id: str, trigger: str, key: str | None) -> JSONResponse:
        dataset_or_404(data_id)
        key, digest = idempotency(key, "backup", {"data_id": data_id})
        job, created = service.launcher.submit("backup", data_id, {}, trigger, idempotency_key=key, request_hash=digest)
        assert job is not None
        return accepted(job, created, digest)

    def age(ended: str | None) -> float | None:
        return (now_utc() - parse_iso(ended)).total_seconds() if ended else None

    def window_view(data_id: str) -> models.BackupWindow:
        s = service.schedules[data_id]
        assert s.window is not None
        return models.BackupWindow(**window_report(s.window, service.dm.sources_restarting(data_id), now_utc()))

    def dataset_view(data_id: str, latest: dict[str, Any], marks: dict[str, Any], detail: bool = False) -> models.Dataset:
        ds = service.dm.dataset(data_id)
        schedule = None
        if data_id in service.schedules:
            s = service.schedules[data_id]
            nxt = service.scheduler.next_run(data_id)
            schedule = models.ScheduleInfo(cron=s.cron, timezone=s.timezone, jitter_seconds=s.jitter, ttl_seconds=s.ttl,
                                           paused=service.scheduler.paused(data_id),
                                           next_run=nxt.isoformat().replace("+00:00", "Z") if nxt else None,
                                           window=window_view(data_id) if s.window else None)
        last = latest.get(data_id)
        mark = marks.get(data_id)
        out = models.Dataset(
            data_id=data_id, storage=ds.storage, sources=[{"name": s.name, "type": s.type} for s in ds.sources],
            latest=models.LatestBackup(timestamp=last[0], ended_at=last[1], bytes=last[2] or 0, age_seconds=age(last[1]))
            if last else None,
            schedule=schedule,
            availability=models.Availability(state=mark.state, job_id=mark.job_id, since=mark.since, error=mark.error)
            if mark else None,
            active_jobs=[j["id"] for j in service.store.active(data_id)])
        if detail:
            with service.dm_lock:
                out.locks = [lk.to_json() for lk in service.dm.locks(data_id)]
                out.backups = [b.to_json() for b in service.dm.list_backups(data_id)]
        return out

    def marks() -> dict[str, Any]:
        return {a.data_id: a for a in service.state.unavailable()}

    # ------------------------------------------------------------------ health, metrics

    @app.get("/healthz", response_model=models.Health, tags=["health"])
    def healthz() -> models.Health:
        """The process answers."""
        return models.Health(status="ok")

    @app.get("/readyz", response_model=models.Health, tags=["health"], responses=_problems(503))
    def readyz() -> models.Health:
        """Started: state database open, launcher and scheduler running."""
        if not service.healthy:
            raise Problem(503, "starting, stopping, or a service thread died", code="not_ready")
        return models.Health(status="ready")

    @app.get("/metrics", tags=["health"], responses={200: {"content": {"text/plain": {}}}, **auth_problems},
             response_class=Response)
    def metrics(_: Any = READ) -> Response:
        """Prometheus metrics."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    # ------------------------------------------------------------------ jobs

    @app.post("/v1/backups", status_code=202, response_model=models.Job, tags=["jobs"],
              responses=_problems(400, 401, 403, 404, 422))
    def create_backup(body: models.BackupRequest, _: Any = OPERATE,
                      idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None) -> JSONResponse:
        """Queue a backup of a dataset; returns the job at once (pending). The same ``Idempotency-Key``
        again returns the same job."""
        return submit_backup(body.data_id, "api", idempotency_key)

    @app.post("/v1/restores", status_code=202, response_model=models.Job, tags=["jobs"],
              responses=_problems(400, 401, 403, 404, 422))
    def create_restore(body: models.RestoreRequest, _: Any = ADMIN,
                       idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None) -> JSONResponse:
        """Queue a restore (``data-manager restore --yes``): it replaces the sources' current data."""
        ds = dataset_or_404(body.data_id)
        names = {s.name: s for s in ds.sources}
        for name in body.only:
            if name not in names:
                raise Problem(422, f"only: {body.data_id} has no source {name!r} (sources: {', '.join(names)})",
                              code="usage", exit_code=ExitCode.USAGE)
        for target in body.set:
            source, _, key = target.partition(".")
            if source not in names or not key:
                raise Problem(422, f"set: {target!r}: expected SOURCE.KEY with a source of {body.data_id}",
                              code="usage", exit_code=ExitCode.USAGE)
            stype, _ = service.dm.registry.source_type(names[source].type, "restore")
            if key in stype.secret_keys or names[source].settings.is_secret(key):
                raise Problem(422, f"set: {target!r} is a secret: set it in the config (${{VAR}}), not through the API",
                              code="usage", exit_code=ExitCode.USAGE)
        params = body.model_dump()
        params.pop("data_id")
        key, digest = idempotency(idempotency_key, "restore", body.model_dump())
        job, created = service.launcher.submit("restore", body.data_id, params, "api", idempotency_key=key,
                                               request_hash=digest)
        assert job is not None
        return accepted(job, created, digest)

    @app.get("/v1/jobs", response_model=models.JobList, tags=["jobs"], responses=_problems(401, 403, 422))
    def list_jobs(_: Any = READ, data_id: Annotated[str | None, Query(pattern=models.DATA_ID)] = None,
                  state: models.JobState | None = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> models.JobList:
        """Jobs, newest first."""
        return models.JobList(jobs=[job_view(r) for r in service.store.jobs(data_id=data_id, state=state, limit=limit)])

    @app.get("/v1/jobs/{job_id}", response_model=models.Job, tags=["jobs"], responses=_problems(401, 403, 404, 422))
    async def read_job(job_id: Annotated[str, Path(pattern=models.JOB_ID)], _: Any = READ) -> models.Job:
        """One job: attempts, tasks (one per source), bytes, error, live progress."""
        # What clients poll, many times a second: answered on the event loop, without the two thread
        # pool round trips (endpoint, serialization) a sync endpoint takes. Its three reads take well
        # under a millisecond on the loop's kept connection, and in WAL mode never wait for a commit.
        return job_view(get_job(job_id))

    @app.post("/v1/jobs/{job_id}/cancel", status_code=202, response_model=models.Job, tags=["jobs"],
              responses=_problems(401, 403, 404, 409, 422))
    def cancel_job(job_id: Annotated[str, Path(pattern=models.JOB_ID)], _: Any = OPERATE) -> JSONResponse:
        """Cancel a pending job at once; a running one is stopped (SIGTERM: it releases the dataset)."""
        row = get_job(job_id)
        if service.launcher.cancel(job_id) is None:
            raise Problem(409, f"job {job_id} has already ended ({row['state']})", code="refused",
                          exit_code=ExitCode.REFUSED)
        return JSONResponse(job_view(get_job(job_id)).model_dump(), status_code=202)

    # ------------------------------------------------------------------ the seed's aliases

    @app.post("/backup", status_code=202, response_model=models.Job, tags=["aliases"], deprecated=True,
              responses=_problems(400, 401, 403, 404, 422))
    def seed_backup(body: models.BackupRequest, _: Any = OPERATE,
                    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None) -> JSONResponse:
        """Alias of ``POST /v1/backups``."""
        return submit_backup(body.data_id, "api", idempotency_key)

    @app.get("/backup/{job_id}", response_model=models.Job, tags=["aliases"], deprecated=True,
             responses=_problems(401, 403, 404, 422))
    def seed_job(job_id: Annotated[str, Path(pattern=models.JOB_ID)], _: Any = READ) -> models.Job:
        """Alias of ``GET /v1/jobs/{id}``."""
        return job_view(get_job(job_id))

    # ------------------------------------------------------------------ datasets and schedules

    @app.get("/v1/datasets", response_model=models.DatasetList, tags=["datasets"], responses=auth_problems)
    def list_datasets(_: Any = READ) -> models.DatasetList:
        """Configured datasets: newest backup, schedule and next run, availability mark, active jobs."""
        latest, m = service.store.last_good_backups(), marks()
        return models.DatasetList(datasets=[dataset_view(d, latest, m) for d in service.dm.config.datasets])

    @app.get("/v1/datasets/{data_id}", response_model=models.Dataset, tags=["datasets"],
             responses=_problems(401, 403, 404, 422, 502))
    def read_dataset(data_id: Annotated[str, Path(pattern=models.DATA_ID)], _: Any = READ) -> models.Dataset:
        """One dataset, with its locks and backups read from the storage."""
        if data_id not in service.dm.config.datasets:
            dataset_or_404(data_id)  # a dataset a plugin resolves is not listed, but readable
        return dataset_view(data_id, service.store.last_good_backups(), marks(), detail=True)

    def scheduled_or_409(data_id: str) -> None:
        dataset_or_404(data_id)
        if data_id not in service.schedules:
            raise Problem(409, f"dataset {data_id!r} has no schedule ([datasets.{data_id}.schedule])", code="usage",
                          exit_code=ExitCode.USAGE)

    @app.post("/v1/datasets/{data_id}/schedule/pause", response_model=models.Dataset, tags=["datasets"],
              responses=_problems(401, 403, 404, 409, 422))
    def pause(data_id: Annotated[str, Path(pattern=models.DATA_ID)], _: Any = OPERATE) -> models.Dataset:
        """Pause the schedule (kept across restarts, until resumed)."""
        scheduled_or_409(data_id)
        service.scheduler.set_paused(data_id, True)
        service.bus.publish("schedule.paused", data_id=data_id)
        return dataset_view(data_id, service.store.last_good_backups(), marks())

    @app.post("/v1/datasets/{data_id}/schedule/resume", response_model=models.Dataset, tags=["datasets"],
              responses=_problems(401, 403, 404, 409, 422))
    def resume(data_id: Annotated[str, Path(pattern=models.DATA_ID)], _: Any = OPERATE) -> models.Dataset:
        """Resume the schedule (missed due times coalesce into one run)."""
        scheduled_or_409(data_id)
        service.scheduler.set_paused(data_id, False)
        service.bus.publish("schedule.resumed", data_id=data_id)
        return dataset_view(data_id, service.store.last_good_backups(), marks())

    @app.post("/v1/datasets/{data_id}/schedule/run", status_code=202, response_model=models.Job, tags=["datasets"],
              responses=_problems(401, 403, 404, 409, 422))
    def run_now(data_id: Annotated[str, Path(pattern=models.DATA_ID)], _: Any = OPERATE) -> JSONResponse:
        """Back the dataset up now (a job with trigger run-now); 409 while it has a job queued or running."""
        dataset_or_404(data_id)
        active = service.store.active(data_id)
        if active:
            raise Problem(409, f"{data_id} has a job queued or running: {active[0]['id']}", code="refused",
                          exit_code=ExitCode.REFUSED)
        return submit_backup(data_id, "run-now", None)

    # ------------------------------------------------------------------ events

    def last_id(header: str | None, query: int | None) -> int | None:
        if query is not None:
            return query
        if header is None or not header.strip():
            return None
        if not header.strip().isdigit():
            raise Problem(400, "Last-Event-ID: expected an event id (a whole number)", code="usage",
                          exit_code=ExitCode.USAGE)
        return int(header)

    async def stream(request: Request, after: int, job_id: str | None) -> AsyncIterator[dict[str, Any]]:
        while True:
            events = service.bus.after(after, job_id, memory_only=True)
            if events is None:
                events = await anyio.to_thread.run_sync(service.bus.after, after, job_id) or []
            for event in events:
                after = event["id"]
                yield {"id": str(event["id"]), "event": event["type"], "data": json.dumps(event)}
            if not events:
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.2)

    sse = {200: {"content": {"text/event-stream": {}}, "description": "Server-sent events, each with an id"}}

    @app.get("/v1/events", tags=["events"], responses={**sse, **_problems(400, 401, 403, 422)},
             response_class=EventSourceResponse)
    def events(request: Request, _: Any = READ,
               last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
               since: Annotated[int | None, Query(ge=0, description="Replay events after this id")] = None) -> Any:
        """Every event as it happens; with ``Last-Event-ID`` (or ``since``) the ones after it first."""
        start = last_id(last_event_id, since)
        return EventSourceResponse(stream(request, service.bus.last_id if start is None else start, None), ping=15)

    @app.get("/v1/jobs/{job_id}/events", tags=["events"], responses={**sse, **_problems(400, 401, 403, 404, 422)},
             response_class=EventSourceResponse)
    def job_events(request: Request, job_id: Annotated[str, Path(pattern=models.JOB_ID)], _: Any = READ,
                   last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
                   since: Annotated[int | None, Query(ge=0)] = None) -> Any:
        """One job's events, from its first (or after ``Last-Event-ID``)."""
        get_job(job_id)
        start = last_id(last_event_id, since)
        return EventSourceResponse(stream(request, start or 0, job_id), ping=15)

    # ------------------------------------------------------------------ the page

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request) -> Response:
        from .page import render

        if service.tokens.enabled:
            who = service.tokens.identify(request.cookies.get(COOKIE) or bearer(request.headers.get("authorization")))
            if who is None:
                return RedirectResponse("/login", status_code=303)
        return HTMLResponse(render(service))

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form() -> HTMLResponse:
        from .page import login

        return HTMLResponse(login())

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        from urllib.parse import parse_qs

        from .page import login as login_page

        form = parse_qs((await request.body()).decode(errors="replace"))
        token = (form.get("token") or [""])[0]
        if service.tokens.identify(token) is None:
            return HTMLResponse(login_page("unknown token"), status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    return app
