"""``data-manager serve`` under load (issue 19): API latency while backups run, idle RSS with 1,000
datasets, RSS growth after many requests and SSE reconnects.

    .venv/bin/python bench/bench_service.py                     # 4 backups of 256 MiB, 20 clients for 60 s
    .venv/bin/python bench/bench_service.py --size 1GiB         # the issue's full figure
    options: --backups N, --size SIZE, --clients N, --seconds S, --interval S (between one client's
             requests), --datasets N, --requests N, --reconnects N, --dir /var/tmp, --code HEAD|REV|checkout,
             --keep (leave the temp dir), --out FILE (default bench/results/service.json)

Three phases, each against a real ``serve`` process on a free loopback port, on a temp config (a
``filesystem`` storage, ``worm`` engine, directory sources):

1. **Latency under load**: ``--backups`` datasets of ``--size`` each (random and text blocks alternating,
   so compression has work to do) are backed up at once (``max_jobs`` = N); a feeder posts a new backup
   of a dataset as soon as its previous one ends, so N backups run for the whole measurement. ``--clients``
   processes poll ``GET /v1/jobs/{id}`` of the dataset's current job, each waiting ``--interval`` between its
   requests, for ``--seconds``. Targets: p50 <= 30 ms, p99 <= 150 ms, 0 errors. Then the backups are
   cancelled and the same polling runs ``--baseline-seconds`` more with none running, for comparison.
2. **Idle RSS**: a service with ``--datasets`` datasets configured (each a directory source and a daily
   schedule due about 12 h from now, so nothing runs), 5 s after it is ready. Target <= 120 MB.
3. **RSS growth**: on that service, after a few small backups (so there are jobs and events) and a
   warm-up, ``--requests`` requests (job, job list, dataset, health, metrics and the page, from 4 threads)
   and ``--reconnects`` server-sent-event reconnects (``/v1/events`` with ``Last-Event-ID`` and
   ``/v1/jobs/{id}/events``, each read up to the newest event and dropped). RSS is read after each half:
   growth over the whole run, target < 10 MB; a second half that grows as much as the first is a leak.

RSS is the serve process's own (``VmRSS`` in /proc, job children not counted: they are the CLI's), in MB
of 10^6 bytes. Latencies are measured by the clients, one process each with its own httpx client (as 20
real clients are: 20 threads under one GIL measured their own queueing too), so they include the client's
own time: the server alone is faster than the figures. On a shared machine (2 CPUs
here, others running tests) the load phase competes with whatever else runs: the load average is printed
with the results.

data-manager runs from a ``git archive`` of ``--code`` (default HEAD), as bench_dedup.py does: others edit
this checkout while a run lasts minutes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx

from common import RESULTS, precompile

TOP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP))
from data_manager.units import parse_size  # noqa: E402  (the checkout's: only a unit parser)

MB = 1_000_000
TARGETS = {"p50_ms": 30.0, "p99_ms": 150.0, "errors": 0, "idle_rss_mb": 120.0, "growth_mb": 10.0}


# --------------------------------------------------------------------------- the service process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """A ``data-manager serve`` process run from ``code`` (a directory holding ``data_manager/``)."""

    def __init__(self, config: Path, code: str) -> None:
        self.config = config
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATA_MANAGER_STATE", "DATA_MANAGER_CONFIG")}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [code, os.environ.get("PYTHONPATH")]))
        self.log = config.parent / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_seconds = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> Serve:
        t0 = time.perf_counter()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "data_manager", "--config", str(self.config), "serve",
                                          "--port", str(self.port)], stdout=out, stderr=out, env=self.env)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"serve exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    self.ready_seconds = time.perf_counter() - t0
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"serve not ready after {timeout}s: {self.log.read_text()[-3000:]}")

    def _status(self, key: str) -> float:
        """``VmRSS``/``VmHWM`` of the serve process in MB."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024 / MB
        raise SystemExit(f"no {key} for pid {self.proc.pid}")

    def rss(self) -> float:
        return self._status("VmRSS")

    def peak_rss(self) -> float:
        return self._status("VmHWM")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the serve process itself (not its job children)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        """SIGTERM, as systemd stops it: running jobs are stopped by the service itself."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return -9


def config_text(work: Path, datasets: dict[str, Path], *, max_jobs: int, schedule: str | None = None) -> Path:
    """A config: storage ``local`` (filesystem, default engine), one directory source per dataset."""
    (work / "store").mkdir(parents=True, exist_ok=True)
    lines = ["[storages.local]", 'type = "filesystem"', f'root = "{work / "store"}"', "",
             "[state]", f'path = "{work / "state.db"}"', "", "[service]", f"max_jobs = {max_jobs}", ""]
    for data_id, path in datasets.items():
        lines += [f"[datasets.{data_id}]", f"[[datasets.{data_id}.sources]]", 'name = "files"', 'type = "directory"',
                  f'path = "{path}"']
        if schedule:
            lines += [f"[datasets.{data_id}.schedule]", f'cron = "{schedule}"', 'jitter = "10m"']
        lines.append("")
    out = work / "dm.toml"
    out.write_text("\n".join(lines))
    return out


def make_file(path: Path, size: int, rng: random.Random) -> None:
    """``size`` bytes: 4 MiB blocks of random bytes and of text-like lines, alternating."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = 4 << 20
    text = "".join(f"{i},sensor_{i % 64:03d},{rng.gauss(20, 5):.4f},OK\n" for i in range(200_000)).encode()
    with path.open("wb") as f:
        written, n = 0, 0
        while written < size:
            k = min(block, size - written)
            if n % 2:
                start = rng.randrange(len(text) - k) if len(text) > k else 0
                f.write(text[start:start + k].ljust(k, b"\n"))
            else:
                f.write(os.urandom(k))
            written += k
            n += 1


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


# --------------------------------------------------------------------------- phase 1: latency under load


@dataclass
class Load:
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    backups_done: int = 0
    backups_failed: int = 0
    running_samples: list[int] = field(default_factory=list)


def poll_process(url: str, poll: str, data_id: str, current: Any, seconds: float, interval: float,
                 out: Any) -> None:
    """One client, in a process of its own (as 20 real clients are): ``GET poll`` of the dataset's current
    job every ``interval`` for ``seconds``; its latencies (ms) and errors go to ``out``. Threads in this
    process would measure each other: 20 httpx clients under one GIL add their own queueing to the tail."""
    mine: list[float] = []
    errors: list[str] = []
    slow: list[tuple[float, float]] = []  # (wall clock at its start, ms) of each request over the p99 target
    end = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=10) as c:
        while time.monotonic() < end:
            path = poll.format(id=current[data_id])
            t, wall = time.perf_counter(), time.time()
            try:
                r = c.get(path)
                ms = (time.perf_counter() - t) * 1000
                if ms > TARGETS["p99_ms"]:
                    slow.append((wall, ms))
                body = r.json() if r.status_code == 200 else {}
                if r.status_code != 200 or "status" not in body and "state" not in body:
                    errors.append(f"{r.status_code} {r.text[:200]}")
                else:
                    mine.append(ms)
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            if interval:
                time.sleep(interval)
    out.put((mine, errors, slow))


def stalls(slow: list[tuple[float, float]], t0: float) -> str:
    """Requests over the p99 target by the second they started in: many clients slow in the same second
    is a stall of the server (or the machine), not queueing."""
    by_second: dict[int, list[float]] = {}
    for wall, ms in slow:
        by_second.setdefault(int(wall - t0), []).append(ms)
    worst = sorted(by_second.items(), key=lambda kv: -len(kv[1]))[:8]
    return ", ".join(f"{sec}s: {len(v)} (max {max(v):.0f} ms)" for sec, v in sorted(worst)) or "none"


def run_pollers(url: str, args: argparse.Namespace, current: Any, seconds: float) -> tuple[list[float], list[str]]:
    """``args.clients`` poller processes for ``seconds``; all their latencies and errors. Prints when the
    requests over the p99 target started (:func:`stalls`)."""
    t0 = time.time()
    ctx = multiprocessing.get_context("fork")  # a spawned child would import common.py and wait for its lock
    out = ctx.Queue()
    procs = [ctx.Process(target=poll_process, args=(url, args.poll, f"b{k % args.backups}", current, seconds,
                                                    args.interval, out), daemon=True)
             for k in range(args.clients)]
    for pr in procs:
        pr.start()
    latencies: list[float] = []
    errors: list[str] = []
    slow: list[tuple[float, float]] = []
    for _ in procs:
        mine, errs, late = out.get(timeout=seconds + 120)
        latencies += mine
        errors += errs
        slow += late
    for pr in procs:
        pr.join(10)
    print(f"  {len(slow)} of {len(latencies)} requests over {TARGETS['p99_ms']:g} ms, by second: "
          f"{stalls(slow, t0)}", flush=True)
    return latencies, errors


def latency_under_load(work: Path, code: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(19)
    size = args.size_bytes
    datasets = {}
    t0 = time.perf_counter()
    for i in range(args.backups):
        make_file(work / "load" / f"b{i}" / "data.bin", size, rng)
        datasets[f"b{i}"] = work / "load" / f"b{i}"
    print(f"  made {args.backups} x {size / MB:.0f} MB in {time.perf_counter() - t0:.1f}s", flush=True)
    config = config_text(work / "load", datasets, max_jobs=args.backups)
    serve = Serve(config, code).start()
    load = Load()
    manager = multiprocessing.get_context("fork").Manager()  # the current job of each dataset, for the pollers
    current: Any = manager.dict()
    stop = threading.Event()
    lock = threading.Lock()
    try:
        with httpx.Client(base_url=serve.url, timeout=30) as admin:
            for data_id in datasets:
                r = admin.post("/v1/backups", json={"data_id": data_id})
                r.raise_for_status()
                current[data_id] = r.json()["id"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # every backup running before the clock starts
                states = [admin.get(f"/v1/jobs/{j}").json()["state"] for j in current.values()]
                if all(s == "running" for s in states):
                    break
                time.sleep(0.2)
            else:
                print(f"  note: not all {args.backups} backups running after 60 s: {states}", flush=True)

            def feeder() -> None:
                """Keep every dataset backing up: a new backup as soon as the previous one ended."""
                with httpx.Client(base_url=serve.url, timeout=30) as c:
                    while not stop.is_set():
                        running = 0
                        for data_id, job_id in list(current.items()):
                            state = c.get(f"/v1/jobs/{job_id}").json()["state"]
                            if state in ("done", "failed", "cancelled"):
                                with lock:
                                    if state == "done":
                                        load.backups_done += 1
                                    else:
                                        load.backups_failed += 1
                                r = c.post("/v1/backups", json={"data_id": data_id})
                                r.raise_for_status()
                                current[data_id] = r.json()["id"]
                            running += state == "running"
                        load.running_samples.append(running)
                        stop.wait(0.5)

            cpu0, wall0 = serve.cpu_seconds(), time.perf_counter()
            feeding = threading.Thread(target=feeder, daemon=True)
            feeding.start()
            lat, errs = run_pollers(serve.url, args, current, args.seconds)
            load.latencies_ms += lat
            load.errors += errs
            stop.set()
            feeding.join(60)
            wall = time.perf_counter() - wall0
            cpu = serve.cpu_seconds() - cpu0
            peak = serve.peak_rss()

            # the same polling with no backup running (the jobs cancelled): what the load itself costs
            for job_id in current.values():
                admin.post(f"/v1/jobs/{job_id}/cancel")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and any(
                    admin.get(f"/v1/jobs/{j}").json()["state"] not in ("done", "failed", "cancelled")
                    for j in current.values()):
                time.sleep(0.5)
            quiet: list[float] = []
            if args.baseline_seconds:
                quiet, errs = run_pollers(serve.url, args, current, args.baseline_seconds)
                load.errors += errs
    finally:
        code_ = serve.stop()
        manager.shutdown()
    lat = load.latencies_ms
    return {
        "poll": args.poll, "backups": args.backups, "size_bytes": size, "clients": args.clients,
        "seconds": round(wall, 1),
        "interval_s": args.interval, "requests": len(lat), "requests_per_s": round(len(lat) / wall, 1),
        "p50_ms": round(percentile(lat, 50), 2), "p90_ms": round(percentile(lat, 90), 2),
        "p99_ms": round(percentile(lat, 99), 2), "max_ms": round(max(lat), 2) if lat else None,
        "mean_ms": round(statistics.fmean(lat), 2) if lat else None, "errors": len(load.errors),
        "error_samples": load.errors[:5], "backups_done": load.backups_done, "backups_failed": load.backups_failed,
        "backups_running_mean": round(statistics.fmean(load.running_samples), 2) if load.running_samples else None,
        "serve_cpu_share": round(cpu / wall, 2), "serve_peak_rss_mb": round(peak, 1), "serve_exit": code_,
        "serve_ready_s": round(serve.ready_seconds, 2),
        "idle_requests": len(quiet), "idle_p50_ms": round(percentile(quiet, 50), 2),
        "idle_p99_ms": round(percentile(quiet, 99), 2),
    }


# --------------------------------------------------------------------------- phases 2 and 3: idle RSS, growth


def sse_until(client: httpx.Client, path: str, headers: dict[str, str], last: int | None,
              until_events: tuple[str, ...] = ()) -> int:
    """Read a server-sent-event stream until event id ``last`` (or an event of a type in ``until_events``)
    and drop the connection, as a browser does when its tab closes; the number of events read."""
    n = 0
    with client.stream("GET", path, headers=headers, timeout=httpx.Timeout(30)) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{path}: {r.status_code}")
        for line in r.iter_lines():
            if line.startswith("id:"):
                n += 1
                if last is not None and int(line[3:].strip()) >= last:
                    return n
            elif line.startswith("event:") and line[6:].strip() in until_events:
                return n
    raise RuntimeError(f"{path}: the stream ended after {n} events")


def idle_and_growth(work: Path, code: str, args: argparse.Namespace) -> dict[str, Any]:
    root = work / "many"
    datasets = {}
    for i in range(args.datasets):
        d = root / "data" / f"d{i:04d}"
        d.mkdir(parents=True)
        (d / "note.txt").write_text(f"dataset {i}\n" * 50)
        datasets[f"d{i:04d}"] = d
    later = datetime.now(timezone.utc) + timedelta(hours=12)  # daily, due in about 12 h: nothing runs now
    config = config_text(root, datasets, max_jobs=2, schedule=f"{later.minute} {later.hour} * * *")
    serve = Serve(config, code).start()
    out: dict[str, Any] = {"datasets": args.datasets, "serve_ready_s": round(serve.ready_seconds, 2)}
    errors: list[str] = []
    try:
        time.sleep(5)
        out["idle_rss_mb"] = round(serve.rss(), 1)
        with httpx.Client(base_url=serve.url, timeout=60) as c:
            for path in ("/v1/datasets", "/"):
                t = time.perf_counter()
                r = c.get(path)
                out[f"GET {path} ms"] = round((time.perf_counter() - t) * 1000, 1)
                if r.status_code != 200:
                    errors.append(f"{path}: {r.status_code}")
            out["rss_after_list_and_page_mb"] = round(serve.rss(), 1)

            # jobs and events to read: a few small backups
            jobs = [c.post("/v1/backups", json={"data_id": f"d{i:04d}"}).json()["id"] for i in range(6)]
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if all(c.get(f"/v1/jobs/{j}").json()["state"] in ("done", "failed") for j in jobs):
                    break
                time.sleep(0.5)
            newest = max(int(e) for e in _event_ids(c))

            rng = random.Random(19)
            # mostly what a dashboard polls; the page and /metrics (every dataset) about 1 request in 60 each
            paths = ([f"/v1/jobs/{j}" for j in jobs] * 7 + ["/v1/jobs?limit=20"] * 6
                     + [f"/v1/datasets/d{i:04d}" for i in range(0, args.datasets, max(1, args.datasets // 6))][:6]
                     + ["/healthz"] * 4 + ["/metrics", "/"])
            counts = {"requests": 0, "reconnects": 0}

            def requests(n: int, threads: int = 4) -> None:
                def worker(k: int) -> None:
                    local = random.Random(k + n)
                    with httpx.Client(base_url=serve.url, timeout=60) as cc:
                        for _ in range(n // threads):
                            path = local.choice(paths)
                            try:
                                r = cc.get(path)
                                if r.status_code != 200:
                                    errors.append(f"{path}: {r.status_code}")
                            except httpx.HTTPError as exc:
                                errors.append(f"{path}: {type(exc).__name__}")
                ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
                counts["requests"] += n // threads * threads

            def reconnects(n: int) -> None:
                for k in range(n):
                    try:
                        if k % 2:
                            job = jobs[k % len(jobs)]
                            sse_until(c, f"/v1/jobs/{job}/events", {}, None, until_events=("job.done", "job.failed"))
                        else:
                            sse_until(c, "/v1/events", {"Last-Event-ID": str(rng.randrange(0, newest))}, newest)
                    except (httpx.HTTPError, RuntimeError) as exc:
                        errors.append(f"SSE: {exc}")
                    counts["reconnects"] += 1

            t0 = time.perf_counter()
            requests(500)  # warm-up: lazy imports, caches, the thread pool
            reconnects(10)
            time.sleep(2)
            out["rss_warm_mb"] = round(serve.rss(), 1)
            warm = dict(counts)
            halves = []
            for _ in range(2):
                requests(args.requests // 2)
                reconnects(args.reconnects // 2)
                time.sleep(2)  # the server notices the dropped streams within 0.2 s
                halves.append(round(serve.rss(), 1))
            out["growth_seconds"] = round(time.perf_counter() - t0, 1)
            out["rss_after_half_mb"], out["rss_after_all_mb"] = halves
            out["growth_mb"] = round(halves[1] - out["rss_warm_mb"], 1)
            out["growth_from_idle_mb"] = round(halves[1] - out["idle_rss_mb"], 1)
            out["growth_second_half_mb"] = round(halves[1] - halves[0], 1)
            out["requests_measured"] = counts["requests"] - warm["requests"]  # after the warm-up
            out["reconnects_measured"] = counts["reconnects"] - warm["reconnects"]
            out["serve_peak_rss_mb"] = round(serve.peak_rss(), 1)
    finally:
        out["serve_exit"] = serve.stop()
    out["errors"] = len(errors)
    out["error_samples"] = errors[:5]
    return out


def _event_ids(c: httpx.Client) -> list[str]:
    """Ids of every stored event (a replay from 0, read until the stream has been quiet for 1 s)."""
    ids: list[str] = []
    try:
        with c.stream("GET", "/v1/events?since=0", timeout=httpx.Timeout(10, read=1.0)) as r:
            for line in r.iter_lines():
                if line.startswith("id:"):
                    ids.append(line[3:].strip())
    except httpx.ReadTimeout:
        pass
    if not ids:
        raise SystemExit("no events stored after the small backups")
    return ids


# --------------------------------------------------------------------------- report


def export_code(rev: str, base: Path) -> tuple[str, str]:
    """The directory to run data-manager from, and what it is: ``rev``'s data_manager/ exported into
    ``base``, or the working tree for ``checkout``."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(TOP), *a], capture_output=True, text=True).stdout.strip()

    if rev == "checkout":
        precompile(TOP / "data_manager")
        dirty = git("status", "--porcelain", "--", "data_manager").splitlines()
        return str(TOP), f"working tree at {git('rev-parse', '--short', 'HEAD')}" + (
            f" (+{len(dirty)} uncommitted files under data_manager/)" if dirty else "")
    commit = git("rev-parse", "--short", rev)
    if not commit:
        raise SystemExit(f"--code {rev}: no such commit")
    out = base / f"code-{commit}"
    out.mkdir()
    subprocess.run(f"git -C {TOP} archive {commit} data_manager | tar -x -C {out}", shell=True, check=True)
    precompile(out)
    return str(out), f"commit {commit} ({git('log', '-1', '--format=%ci %s', commit)[:90]})"


def verdict(value: float, target: float, strict: bool = False) -> str:
    ok = value < target if strict else value <= target
    return "PASS" if ok else "FAIL"


def print_table(load: dict[str, Any], many: dict[str, Any]) -> list[tuple[str, float, str, float | None, str]]:
    rows: list[tuple[str, float, str, float | None, str]] = []

    def add(name: str, value: float, target: float | None, strict: bool = False, unit: str = "") -> None:
        if target is None:
            rows.append((name, value, "", None, ""))
        else:
            sign = "<" if strict else "<="
            rows.append((name, value, f"{sign} {target:g}{unit}", value / target if target else None,
                         verdict(value, target, strict)))

    polled = f"GET {load['poll']}"
    add(f"{polled} p50 ms", load["p50_ms"], TARGETS["p50_ms"])
    add(f"{polled} p99 ms", load["p99_ms"], TARGETS["p99_ms"])
    add(f"{polled} p90 ms", load["p90_ms"], None)
    add(f"{polled} max ms", load["max_ms"], None)
    add("errors under load", load["errors"], TARGETS["errors"])
    if load["idle_requests"]:
        add("  same polling, no backup running: p50 ms", load["idle_p50_ms"], None)
        add("  same polling, no backup running: p99 ms", load["idle_p99_ms"], None)
    add(f"idle RSS MB, {many['datasets']} datasets", many["idle_rss_mb"], TARGETS["idle_rss_mb"])
    add(f"RSS growth MB, {many['requests_measured']} req + {many['reconnects_measured']} SSE", many["growth_mb"],
        TARGETS["growth_mb"], strict=True)
    add("  of which the second half MB", many["growth_second_half_mb"], None)
    add("  growth from idle (no warm-up) MB", many["growth_from_idle_mb"], None)
    add("errors in the growth phase", many["errors"], TARGETS["errors"])
    print(f"\n{'measure':<46}{'value':>10}  {'target':<10}{'ratio':>7}  result")
    for name, value, target, ratio, result in rows:
        r = f"{ratio:7.2f}" if ratio is not None else " " * 7
        print(f"{name:<46}{value:>10.1f}  {target:<10}{r}  {result}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backups", type=int, default=4, help="backups running at once (default 4)")
    ap.add_argument("--size", default="256MiB", help="each backup's dataset (default 256MiB; the issue: 1GiB)")
    ap.add_argument("--clients", type=int, default=20, help="polling clients, one process each (default 20)")
    ap.add_argument("--seconds", type=float, default=60, help="how long they poll (default 60)")
    ap.add_argument("--interval", type=float, default=0.1,
                    help="seconds between one client's requests (default 0.1: 20 clients make up to 200 req/s)")
    ap.add_argument("--poll", default="/v1/jobs/{id}",
                    help="what the clients poll (default /v1/jobs/{id}; /healthz, which reads no database, tells "
                         "the server's CPU share from the state database's locking)")
    ap.add_argument("--baseline-seconds", type=float, default=10,
                    help="then the same polling with the backups cancelled, for comparison (default 10; 0: skip)")
    ap.add_argument("--datasets", type=int, default=1000, help="datasets configured for the RSS phases (default 1000)")
    ap.add_argument("--requests", type=int, default=10_000, help="requests of the growth phase (default 10000)")
    ap.add_argument("--reconnects", type=int, default=200, help="SSE reconnects of the growth phase (default 200)")
    ap.add_argument("--dir", default="/var/tmp", help="where the temp dir goes (default /var/tmp)")
    ap.add_argument("--code", default="HEAD", help="HEAD (default), a revision, or checkout (the working tree)")
    ap.add_argument("--keep", action="store_true", help="leave the temp dir")
    ap.add_argument("--out", type=Path, default=RESULTS / "service.json")
    args = ap.parse_args()
    args.size_bytes = parse_size(args.size)
    if not args.size_bytes:
        raise SystemExit(f"--size {args.size!r}: a size like 256MiB or 1GiB")
    work = Path(tempfile.mkdtemp(prefix="dm-bench-service-", dir=args.dir))
    load_avg = os.getloadavg()
    try:
        code, code_text = export_code(args.code, work)
        print(f"data-manager: {code_text}", flush=True)
        print(f"machine: {os.cpu_count()} CPUs, load average {load_avg[0]:.2f} at start "
              f"(a shared machine: others' work runs beside this benchmark)", flush=True)
        print(f"phase 1: {args.backups} backups of {args.size} kept running, {args.clients} clients polling "
              f"GET {args.poll} every {args.interval}s for {args.seconds:g}s", flush=True)
        load = latency_under_load(work, code, args)
        print(f"  {load['requests']} requests ({load['requests_per_s']}/s), {load['backups_done']} backups done, "
              f"{load['backups_failed']} failed, mean {load['backups_running_mean']} running; serve used "
              f"{load['serve_cpu_share']:.0%} of a CPU, peak RSS {load['serve_peak_rss_mb']} MB", flush=True)
        shutil.rmtree(work / "load", ignore_errors=True)  # the backups' GBs
        print(f"phase 2+3: {args.datasets} datasets; then {args.requests} requests and {args.reconnects} SSE "
              f"reconnects", flush=True)
        many = idle_and_growth(work, code, args)
        print(f"  ready in {many['serve_ready_s']}s; GET /v1/datasets {many['GET /v1/datasets ms']} ms, GET / "
              f"{many['GET / ms']} ms; RSS idle {many['idle_rss_mb']}, after list+page "
              f"{many['rss_after_list_and_page_mb']}, warm {many['rss_warm_mb']}, after half "
              f"{many['rss_after_half_mb']}, after all {many['rss_after_all_mb']} MB", flush=True)
        load_end = os.getloadavg()
        print(f"\nbench_service: {args.backups} x {args.size}, {args.clients} clients, {args.seconds:g}s; "
              f"{args.datasets} datasets (load average {load_avg[0]:.2f} -> {load_end[0]:.2f}, "
              f"{os.cpu_count()} CPUs, shared)", end="")
        rows = print_table(load, many)
        for sample in load["error_samples"] + many["error_samples"]:
            print(f"  error: {sample}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "title": "service", "code": code_text, "machine": platform.platform(), "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "load_average": [load_avg[0], load_end[0]],
            "args": {k: v for k, v in vars(args).items() if k != "out"}, "load": load, "many": many,
            "targets": TARGETS, "rows": [dict(zip(("measure", "value", "target", "ratio", "result"), r)) for r in rows],
        }, indent=2, default=str))
        print(f"(saved {args.out})")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
