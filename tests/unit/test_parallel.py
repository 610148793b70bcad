"""``--parallel N`` / ``[datasets.X] parallel``: the sources of one job on threads (data_manager/parallel.py).

The job-level tests use a test source ``rendezvous`` registered by this module: its backup (and restore)
waits until every source named in ``peers`` has started, with a timeout, so a job that ran them one after
another fails (rather than hangs) instead of passing by luck. ``boom`` fails once its peers have started;
``stream`` writes until it is stopped (or for 20 s, then says it finished).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from data_manager import hookimpl
from data_manager.errors import ConfigError, SourceError
from data_manager.jobs import JobTimeoutError
from data_manager.parallel import SourceRunner, Stopped
from data_manager.types import ArtifactSet, ArtifactSink, Settings, Source, SourceType

from ..helpers import builtin_plugins

WAIT = 10.0  # how long a source waits for its peers before failing the test
_started: dict[str, threading.Event] = {}
_guard = threading.Lock()


def _event(name: str) -> threading.Event:
    with _guard:
        return _started.setdefault(name, threading.Event())


class Rendezvous(Source):
    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        settings.check_known({"peers", "mode", "marker"})
        self.peers = settings.get_list("peers", [])
        self.mode = settings.get_str("mode", "meet")
        self.marker = settings.get_path("marker", None)

    def _meet(self, phase: str) -> None:
        _event(f"{phase}:{self.name}").set()
        for peer in self.peers:
            if not _event(f"{phase}:{peer}").wait(WAIT):
                raise SourceError(f"{self.name}: {peer} never started while {self.name} ran: not in parallel")

    def backup(self, sink: ArtifactSink) -> None:
        self._meet("backup")
        if self.mode == "boom":
            raise SourceError(f"{self.name}: boom")
        with sink.open("data.bin") as out:
            if self.mode == "stream":
                deadline = time.monotonic() + 20.0
                while time.monotonic() < deadline:
                    out.write(b"s" * 65536)
                    time.sleep(0.01)
                assert self.marker is not None
                self.marker.write_text("ran to the end")
            else:
                out.write(self.name.encode() * 1000)

    def restore(self, artifacts: ArtifactSet) -> None:
        self._meet("restore")
        with artifacts.open("data.bin") as f:
            data = f.read()
        assert data == self.name.encode() * 1000
        if self.marker is not None:
            self.marker.write_bytes(data)


@hookimpl
def register_source_types(register: Callable[[SourceType], None]) -> None:
    register(SourceType("rendezvous", Rendezvous, "test source that waits for its peers"))


@pytest.fixture(autouse=True)
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DATA_MANAGER_STATE", str(tmp_path / "state.db"))
    monkeypatch.delenv("DATA_MANAGER_CONFIG", raising=False)
    _started.clear()
    with builtin_plugins(__name__):
        yield


def _config(tmp_path: Path, sources: list[dict[str, Any]], extra: str = "") -> Path:
    lines = [f'[storages.local]\ntype = "filesystem"\nroot = "{tmp_path / "backups"}"\n',
             '[locks]\nsettle = "0.05s"\n', f"[datasets.d]\n{extra}"]
    for src in sources:
        lines.append("[[datasets.d.sources]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in src.items()))
    path = tmp_path / "dm.toml"
    path.write_text("\n".join(lines))
    return path


def _run(config: Path, *args: str) -> Any:
    from data_manager.cli import main

    return CliRunner().invoke(main, ["--config", str(config), *args])


def _last_job(config: Path) -> dict[str, Any]:
    return json.loads(_run(config, "status", "--json").stdout)["recent"][0]


# --------------------------------------------------------------------------- through the command


def test_parallel_2_really_overlaps_backup_and_restore(tmp_path: Path) -> None:
    a_out, b_out = tmp_path / "a.out", tmp_path / "b.out"
    config = _config(tmp_path, [
        {"name": "a", "type": "rendezvous", "peers": ["b"], "marker": str(a_out)},
        {"name": "b", "type": "rendezvous", "peers": ["a"], "marker": str(b_out)},
    ])
    result = _run(config, "backup", "d", "--parallel", "2")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    [manifest] = (tmp_path / "backups" / "d").glob("*/backup.json")
    doc = json.loads(manifest.read_text())
    assert [s["name"] for s in doc["sources"]] == ["a", "b"]  # the config's order, whichever finished first
    job = _last_job(config)
    assert job["state"] == "done" and [(t["source"], t["state"]) for t in job["tasks"]] == [("a", "done"), ("b", "done")]

    result = _run(config, "restore", "d", "--yes", "--parallel", "2")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert a_out.read_bytes() == b"a" * 1000 and b_out.read_bytes() == b"b" * 1000
    assert _last_job(config)["state"] == "done"


def test_parallel_from_the_config(tmp_path: Path) -> None:
    config = _config(tmp_path, [
        {"name": "a", "type": "rendezvous", "peers": ["b"]},
        {"name": "b", "type": "rendezvous", "peers": ["a"]},
    ], extra="parallel = 2\n")
    result = _run(config, "backup", "d")
    assert result.exit_code == 0, (result.stdout, result.stderr)


def test_without_parallel_sources_run_one_after_another(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the same two sources, one at a time, never meet (the first gives up waiting)."""
    monkeypatch.setattr(sys.modules[__name__], "WAIT", 0.5)
    config = _config(tmp_path, [
        {"name": "a", "type": "rendezvous", "peers": ["b"]},
        {"name": "b", "type": "rendezvous", "peers": ["a"]},
    ])
    result = _run(config, "backup", "d")
    assert result.exit_code == 1 and "a: b never started while a ran" in result.stderr, result.stderr


def test_a_failing_source_stops_the_others_and_leaves_no_backup(tmp_path: Path) -> None:
    marker = tmp_path / "stream.finished"
    config = _config(tmp_path, [
        {"name": "stream", "type": "rendezvous", "peers": ["boom"], "mode": "stream", "marker": str(marker)},
        {"name": "boom", "type": "rendezvous", "peers": ["stream"], "mode": "boom"},
        {"name": "later", "type": "rendezvous"},
    ])
    t0 = time.monotonic()
    result = _run(config, "backup", "d", "--parallel", "2")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("data-manager: error:")]
    assert errors == ["data-manager: error: boom: boom"], result.stderr  # the first failure, not "stopped"
    assert "Traceback" not in result.stderr
    assert not marker.exists() and time.monotonic() - t0 < 15.0  # stream was stopped, not run for its 20 s
    root = tmp_path / "backups" / "d"
    assert list(root.glob("*/backup.json")) == []  # an incomplete backup
    assert list(root.glob("*/*/source.json")) == []
    job = _last_job(config)
    assert job["state"] == "failed" and job["error"] == "boom: boom"
    tasks = {t["source"]: t for t in job["tasks"]}
    assert tasks["boom"]["state"] == "failed" and tasks["boom"]["error"] == "boom: boom"
    assert tasks["stream"]["state"] == "failed" and tasks["stream"]["error"].startswith("stopped: another source")
    assert tasks["later"]["state"] == "failed" and tasks["later"]["error"] == "not started"
    assert json.loads(_run(config, "lock", "list", "--json").stdout) == []  # released


@pytest.mark.parametrize("value", ["0", "-1", '"two"', "true", "1.5", "[2]"])
def test_a_bad_parallel_in_the_config_is_one_line_naming_the_key(tmp_path: Path, value: str) -> None:
    config = _config(tmp_path, [{"name": "a", "type": "rendezvous"}], extra=f"parallel = {value}\n")
    result = _run(config, "backup", "d")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "dataset 'd': key 'parallel': must be a positive integer" in lines[0], lines


@pytest.mark.parametrize("value", ["0", "-2", "x", "1.5", ""])
def test_a_bad_parallel_option_is_one_line(tmp_path: Path, value: str) -> None:
    config = _config(tmp_path, [{"name": "a", "type": "rendezvous"}])
    for command in (["backup", "d"], ["restore", "d", "--yes"]):
        result = _run(config, *command, "--parallel", value)
        assert result.exit_code == 2, (result.stdout, result.stderr)
        assert result.stderr.strip() == f"data-manager: error: --parallel {value!r}: expected a positive whole number"


def test_the_api_checks_parallel(tmp_path: Path) -> None:
    from data_manager.api import DataManager

    dm = DataManager.from_file(_config(tmp_path, [{"name": "a", "type": "rendezvous"}]))
    with pytest.raises(Exception) as info:
        dm.backup("d", parallel=0)
    assert "parallel" in str(info.value) and getattr(info.value, "exit_code", None) == 2
    with pytest.raises(ConfigError):
        DataManager.from_dict({"storages": {"s": {"type": "filesystem", "root": str(tmp_path)}},
                               "datasets": {"d": {"parallel": 0, "sources": [{"name": "a", "type": "rendezvous"}]}}})


# --------------------------------------------------------------------------- the runner itself


def test_one_at_a_time_runs_in_the_calling_thread_in_order() -> None:
    seen: list[tuple[str, Any]] = []
    runner: SourceRunner[int] = SourceRunner(1)
    runner.run([1, 2, 3], lambda i: seen.append(("work", (i, threading.current_thread().name))),
               between=lambda: seen.append(("check", None)))
    me = threading.current_thread().name
    assert seen == [("check", None), ("work", (1, me)), ("check", None), ("work", (2, me)),
                    ("check", None), ("work", (3, me))]


def test_never_more_than_n_at_once_and_the_check_before_each() -> None:
    running = 0
    peak = 0
    checks = 0
    lock = threading.Lock()

    def work(i: int) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    def between() -> None:
        nonlocal checks
        checks += 1

    SourceRunner[int](2, poll=0.01).run(list(range(7)), work, between=between)
    assert peak == 2 and checks == 7


def test_the_first_failure_stops_the_others_at_their_next_block() -> None:
    runner: SourceRunner[str] = SourceRunner(3, poll=0.01)
    started = threading.Barrier(2, timeout=WAIT)
    outcome: dict[str, BaseException] = {}

    def work(name: str) -> None:
        advance = runner.guard(lambda n: None)
        started.wait()
        if name == "fails":
            raise SourceError("fails: broken")
        try:
            for _ in range(2000):
                advance(1)
                time.sleep(0.005)
        except Stopped as exc:
            outcome[name] = exc
            raise

    with pytest.raises(SourceError, match="fails: broken"):
        runner.run(["streams", "fails"], work)
    assert isinstance(outcome.get("streams"), Stopped) and runner.stopping


def test_no_new_item_starts_after_a_failure() -> None:
    began: list[int] = []

    def work(i: int) -> None:
        began.append(i)
        if i == 0:
            raise SourceError("first")
        time.sleep(0.2)

    with pytest.raises(SourceError, match="first"):
        SourceRunner[int](2, poll=0.01).run([0, 1, 2, 3], work)
    assert 2 not in began and 3 not in began


@pytest.mark.parametrize("error", [KeyboardInterrupt(), JobTimeoutError("job x stopped: it ran longer than its limit")])
def test_ctrl_c_or_the_time_limit_in_the_waiting_thread_stops_the_workers(error: BaseException) -> None:
    """The watchdog's SIGINT (or Ctrl-C) lands in the thread that waits; the workers stop at their next
    block, and the interruption is raised once they have (or after the grace period)."""
    runner: SourceRunner[int] = SourceRunner(2, poll=0.01, grace=WAIT)
    stopped: list[int] = []
    ticks = 0

    def work(i: int) -> None:
        advance = runner.guard(lambda n: None)
        try:
            while True:
                advance(1)
                time.sleep(0.005)
        except Stopped:
            stopped.append(i)
            raise

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 5:
            raise error

    with pytest.raises(type(error)):
        runner.run([0, 1], work, tick=tick)
    assert sorted(stopped) == [0, 1]


def test_a_stuck_worker_is_given_up_after_the_grace_period() -> None:
    release = threading.Event()
    runner: SourceRunner[int] = SourceRunner(2, poll=0.01, grace=0.2)

    def work(i: int) -> None:
        release.wait(WAIT)  # never writes: the stop cannot reach it

    def tick() -> None:
        raise KeyboardInterrupt

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        runner.run([0, 1], work, tick=tick)
    assert time.monotonic() - t0 < WAIT / 2
    release.set()


def test_a_broken_lock_found_between_items_stops_the_job() -> None:
    began: list[int] = []
    checks = 0

    def between() -> None:
        nonlocal checks
        checks += 1
        if checks == 3:
            raise RuntimeError("the lock on d was broken")

    with pytest.raises(RuntimeError, match="broken"):
        SourceRunner[int](2, poll=0.01).run([0, 1, 2, 3], lambda i: began.append(i), between=between)
    assert sorted(began) == [0, 1]
