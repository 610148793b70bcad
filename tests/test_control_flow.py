"""The backup's control flow against local fake services: guards, jobs, locks, resume, cleanup, timeouts.

Uses the filesystem storage, the directory source, and a test source ``slowtest`` registered by this very
module (added to the built-in plugin list inside try/finally, also in the child processes it starts).
The experiments guard plugin (plugins/data-manager-experiments) must be installed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from data_manager import hookimpl
from data_manager.errors import SourceError
from data_manager.types import ArtifactSet, ArtifactSink, Settings, Source, SourceType

from .helpers import builtin_plugins

fake_services = pytest.importorskip("data_manager_experiments.fake_services")
FakeServices = fake_services.FakeServices

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "fake-token-4711"


# --------------------------------------------------------------------------- a slow, failing test source


class SlowSource(Source):
    """Writes ``chunks`` chunks over ``seconds``; touches ``marker`` when it starts; fails half-way if
    ``fail``; ``block`` sleeps in one long call (only a signal stops it)."""

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        settings.check_known({"seconds", "chunks", "fail", "block", "marker", "path"})
        self.seconds = float(settings.get("seconds", 0))
        self.chunks = settings.get_int("chunks", 10, minimum=1)
        self.fail = settings.get_bool("fail", False)
        self.block = settings.get_bool("block", False)
        self.marker = settings.get("marker")
        self.path = settings.get("path")

    def backup(self, sink: ArtifactSink) -> None:
        if self.marker:
            Path(self.marker).write_text(str(os.getpid()))
        if self.block:
            time.sleep(self.seconds)
        with sink.open("data.bin") as out:
            for i in range(self.chunks):
                if self.fail and i == self.chunks // 2:
                    raise SourceError(f"source {self.name!r}: failing on purpose half-way")
                out.write(bytes([i % 256]) * 4096)
                time.sleep(self.seconds / self.chunks)

    def restore(self, artifacts: ArtifactSet) -> None:
        with artifacts.open("data.bin") as f:
            data = f.read()
        if self.path:
            Path(self.path).write_bytes(data)


@hookimpl
def register_source_types(register: Callable[[SourceType], None]) -> None:
    register(SourceType("slowtest", SlowSource, "test source"))


THIS = "tests.test_control_flow"


@pytest.fixture(autouse=True)
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DATA_MANAGER_STATE", str(tmp_path / "state.db"))
    monkeypatch.delenv("DATA_MANAGER_CONFIG", raising=False)
    with builtin_plugins(THIS):
        yield


@pytest.fixture
def fake() -> Iterator[Any]:
    with FakeServices(token=TOKEN) as services:
        yield services


# --------------------------------------------------------------------------- helpers


def toml_value(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, bool) else str(v).lower()


def write_config(tmp_path: Path, sources: list[dict[str, Any]], *, fake: Any = None, experiments_url: str | None = None,
                 timeout: str | None = None, guard: dict[str, Any] | None = None, name: str = "dm.toml") -> Path:
    lines = ["[storages.local]", 'type = "filesystem"', f"root = {toml_value(str(tmp_path / 'backups'))}", "",
             "[locks]", 'settle = "0.1s"', ""]
    if fake is not None or experiments_url is not None:
        lines += ["[guards.experiments]", f"experiments_url = {toml_value(experiments_url or fake.experiments_url)}"]
        if fake is not None:
            lines.append(f"spark_url = {toml_value(fake.spark_url)}")
        lines.append('token = "${DM_TEST_TOKEN}"')
        for k, v in (guard or {"timeout": "2s", "retries": 1}).items():
            lines.append(f"{k} = {toml_value(v)}")
        lines.append("")
    lines.append("[datasets.d]")
    if timeout:
        lines.append(f'timeout = "{timeout}"')
    for src in sources:
        lines += ["", "[[datasets.d.sources]]"] + [f"{k} = {toml_value(v)}" for k, v in src.items()]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def tree(tmp_path: Path, name: str = "a", files: int = 5) -> Path:
    root = tmp_path / "data" / name
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"f{i}.txt").write_text(f"file {i}\n" * 100)
    return root


def cli(config: Path, *args: str) -> Any:
    result = CliRunner().invoke(plugins_main(), ["--config", str(config), *args], env={"DM_TEST_TOKEN": TOKEN})
    assert "Traceback" not in (result.stderr or ""), result.stderr
    return result


def plugins_main() -> Any:
    from data_manager.cli import main

    return main


CHILD = (
    "import sys; sys.path.insert(0, {root!r}); import data_manager.plugins as p; "
    "p.BUILTIN_PLUGINS += ({this!r},); from data_manager.cli import main; main()"
)


def spawn(config: Path, *args: str) -> subprocess.Popen[str]:
    """``data-manager --config CONFIG ARGS`` in a child process that also knows the ``slowtest`` source."""
    code = CHILD.format(root=str(ROOT), this=THIS)
    env = {**os.environ, "DM_TEST_TOKEN": TOKEN}
    return subprocess.Popen([sys.executable, "-c", code, "--config", str(config), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen[str] | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"child ended early: {proc.returncode} {proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def status(config: Path) -> dict[str, Any]:
    r = cli(config, "status", "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def dm(config: Path) -> Any:
    from data_manager import DataManager

    os.environ["DM_TEST_TOKEN"] = TOKEN
    return DataManager.from_file(config)


# --------------------------------------------------------------------------- guards


def test_guard_says_no_exit_3_nothing_written(tmp_path: Path, fake: Any) -> None:
    config = write_config(tmp_path, [{"name": "a", "type": "directory", "path": str(tree(tmp_path))}], fake=fake)
    fake.refuse["d"] = "experiment 17 is writing d"
    r = cli(config, "backup", "d")
    assert r.exit_code == 3, (r.stdout, r.stderr)
    assert "experiment 17 is writing d" in r.stderr and r.stderr.strip().count("\n") == 0
    assert files_under(tmp_path / "backups") == [] and fake.availability == []

    del fake.refuse["d"]
    fake.running["d"] = ["spark-123"]
    r = cli(config, "backup", "d")
    assert r.exit_code == 3 and "spark-123" in r.stderr
    assert files_under(tmp_path / "backups") == [] and fake.availability == []
    jobs = status(config)["recent"]
    assert [j["state"] for j in jobs] == ["failed", "failed"] and "refused" in jobs[0]["error"]

    fake.running.clear()
    r = cli(config, "backup", "d")
    assert r.exit_code == 0, r.stderr
    assert fake.marks("d") == [False, True]
    assert {b["job_id"] for b in fake.availability} == {status(config)["recent"][0]["id"]}


def test_guard_unreachable_clear_error_nothing_written(tmp_path: Path) -> None:
    closed = fake_services.closed_port_url()
    config = write_config(tmp_path, [{"name": "a", "type": "directory", "path": str(tree(tmp_path))}],
                          experiments_url=closed + "/em", guard={"timeout": "1s", "retries": 1})
    r = cli(config, "backup", "d")
    assert r.exit_code == 1, (r.stdout, r.stderr)
    line = r.stderr.strip()
    assert line.count("\n") == 0 and "experiments-manager" in line and "unreachable" in line, line
    assert TOKEN not in line and "after 2 attempts" in line
    assert files_under(tmp_path / "backups") == []


def test_bad_source_fails_before_the_dataset_is_marked(tmp_path: Path, fake: Any) -> None:
    """Sources are checked (while the lock settles) before guards mark the dataset unavailable."""
    config = write_config(tmp_path, [{"name": "a", "type": "directory", "path": str(tree(tmp_path))},
                                     {"name": "b", "type": "directory", "path": str(tmp_path / "gone")}], fake=fake)
    r = cli(config, "backup", "d")
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert r.stderr.strip() == f"data-manager: error: source 'b': {tmp_path / 'gone'} is not a directory"
    assert fake.availability == [] and files_under(tmp_path / "backups") == []
    st = status(config)
    assert st["recent"][0]["state"] == "failed" and st["datasets"][0]["locks"] == []


def test_unclaimed_guard_table_is_a_config_error(tmp_path: Path, fake: Any) -> None:
    config = write_config(tmp_path, [{"name": "a", "type": "directory", "path": str(tree(tmp_path))}], fake=fake)
    config.write_text(config.read_text().replace("[guards.experiments]", "[guards.experiment]"))
    r = cli(config, "backup", "d")
    assert r.exit_code == 2 and "[guards.experiment]: no installed plugin uses this table" in r.stderr


# --------------------------------------------------------------------------- failures, release


def test_failure_in_second_source_releases_and_keeps_earlier_backups(tmp_path: Path, fake: Any) -> None:
    a = tree(tmp_path)
    good = write_config(tmp_path, [{"name": "a", "type": "directory", "path": str(a)},
                                   {"name": "b", "type": "slowtest", "chunks": 4}], fake=fake)
    first = dm(good).backup("d")
    assert first.job_id and dm(good).job(first.job_id).state == "done" and first.release_error is None
    bad = write_config(tmp_path, [{"name": "a", "type": "directory", "path": str(a)},
                                  {"name": "b", "type": "slowtest", "chunks": 4, "fail": True}], fake=fake, name="bad.toml")
    r = cli(bad, "backup", "d")
    assert r.exit_code == 1 and "failing on purpose" in r.stderr, r.stderr
    assert fake.marks("d") == [False, True, False, True] and fake.available["d"] is True

    st = status(bad)
    job = st["recent"][0]
    assert job["state"] == "failed" and "failing on purpose" in job["error"]
    assert [(t["source"], t["state"]) for t in job["tasks"]] == [("a", "done"), ("b", "failed")]
    assert st["unavailable"] == [] and st["datasets"][0]["locks"] == []

    m = dm(bad)
    backups = m.list_backups("d")
    assert [b.complete for b in backups] == [True, False]
    assert m.verify("d").timestamp == first.timestamp  # latest is still the earlier, intact backup


def test_release_failure_is_loud_and_shown_by_status(tmp_path: Path, fake: Any) -> None:
    config = write_config(tmp_path, [{"name": "a", "type": "directory", "path": str(tree(tmp_path))}], fake=fake)
    fake.fail_release = True
    r = cli(config, "backup", "d")
    assert r.exit_code == 1 and "complete" in r.stdout  # the backup itself is done...
    assert "may still be marked unavailable" in r.stderr  # ...but the operator is told
    st = status(config)
    assert st["unavailable"][0]["data_id"] == "d" and st["unavailable"][0]["state"] == "release_failed"
    assert st["recent"][0]["state"] == "done" and st["recent"][0]["release_error"]
    assert "RELEASE FAILED" in cli(config, "status").stdout
    fake.fail_release = False
    assert cli(config, "backup", "d").exit_code == 0
    assert status(config)["unavailable"] == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_release_and_unlock(tmp_path: Path, fake: Any, sig: int) -> None:
    marker = tmp_path / "started"
    config = write_config(tmp_path, [{"name": "b", "type": "slowtest", "seconds": 30, "chunks": 300,
                                      "marker": str(marker)}], fake=fake)
    child = spawn(config, "backup", "d")
    wait_for(marker, child)
    child.send_signal(sig)
    assert child.wait(timeout=20) == 130
    assert fake.marks("d") == [False, True]
    st = status(config)
    assert st["recent"][0]["error"] == "interrupted" and st["datasets"][0]["locks"] == [] and st["unavailable"] == []


# --------------------------------------------------------------------------- kill -9, resume, cleanup


def test_kill_9_then_resume(tmp_path: Path, fake: Any) -> None:
    a = tree(tmp_path)
    marker = tmp_path / "b-started"
    slow = write_config(tmp_path, [{"name": "a", "type": "directory", "path": str(a)},
                                   {"name": "b", "type": "slowtest", "seconds": 60, "chunks": 600,
                                    "marker": str(marker)}], fake=fake)
    child = spawn(slow, "backup", "d")
    wait_for(marker, child)
    time.sleep(0.3)
    child.send_signal(signal.SIGKILL)
    child.wait()

    m = dm(slow)
    [partial] = m.list_backups("d")
    assert not partial.complete
    assert cli(slow, "restore", "--yes", "d").exit_code == 2  # latest never picks an incomplete backup
    ts = partial.timestamp
    a_record = (tmp_path / "backups" / "d" / ts / "a" / "source.json").read_bytes()
    st = status(slow)
    assert st["running"] == [] and st["recent"][0]["state"] == "failed" and "killed" in st["recent"][0]["error"]
    assert st["unavailable"][0]["data_id"] == "d"  # the kill left the mark: status shows it

    fast = write_config(tmp_path, [{"name": "a", "type": "directory", "path": str(a)},
                                   {"name": "b", "type": "slowtest", "chunks": 3}], fake=fake, name="fast.toml")
    r = cli(fast, "backup", "d", "--resume", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["timestamp"] == ts and doc["resumed"] == ["a"]
    assert (tmp_path / "backups" / "d" / ts / "a" / "source.json").read_bytes() == a_record
    m = dm(fast)
    assert m.verify("d").timestamp == ts and [b.complete for b in m.list_backups("d")] == [True]
    assert status(fast)["unavailable"] == [] and fake.available["d"] is True
    r = cli(fast, "backup", "d", "--resume")
    assert r.exit_code == 2 and "nothing to resume" in r.stderr


def test_cleanup_removes_old_incomplete_but_not_a_locked_newest(tmp_path: Path) -> None:
    config = write_config(tmp_path, [{"name": "a", "type": "directory", "path": str(tree(tmp_path))}])
    root = tmp_path / "backups" / "d"
    for ts in ("20200101T000000Z", "20200102T000000Z"):
        (root / ts / "a").mkdir(parents=True)
        (root / ts / "a" / "vol-000001.tar.zst").write_bytes(b"partial")
    # A live lock of another job (this test's own pid, so "alive"): the newest incomplete one stays.
    lock = {"job_id": "other", "operation": "backup", "host": socket.gethostname(), "pid": os.getpid(),
            "created": time.time(), "expires": time.time() + 600}
    (root / ".locks").mkdir()
    (root / ".locks" / "other.json").write_text(json.dumps(lock))
    r = cli(config, "cleanup", "--dry-run")
    assert r.exit_code == 0 and "would remove: d/20200101T000000Z" in r.stdout and "kept: d/20200102T000000Z" in r.stdout
    assert (root / "20200101T000000Z").exists()
    r = cli(config, "cleanup", "d", "--older-than", "1h", "--json")
    assert [(i["timestamp"], i["action"]) for i in json.loads(r.stdout)] == [
        ("20200101T000000Z", "removed"), ("20200102T000000Z", "kept")]
    assert not (root / "20200101T000000Z").exists() and (root / "20200102T000000Z").exists()
    (root / ".locks" / "other.json").unlink()
    assert "removed: d/20200102T000000Z" in cli(config, "cleanup").stdout
    assert cli(config, "list", "backup", "d").stdout.startswith("no backups")


# --------------------------------------------------------------------------- locks


def test_two_concurrent_backups_one_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, [{"name": "b", "type": "slowtest", "seconds": 3, "chunks": 30}])
    first, second = spawn(config, "backup", "d"), spawn(config, "backup", "d")
    results = sorted([(p.wait(timeout=60), p.stderr.read() if p.stderr else "") for p in (first, second)])
    assert [code for code, _ in results] == [0, 3], results
    assert "is locked by backup job" in results[1][1] and results[1][1].strip().count("\n") == 0

    # --wait: a second backup waits for the first to finish instead of failing.
    marker = tmp_path / "started"
    slow = write_config(tmp_path, [{"name": "b", "type": "slowtest", "seconds": 1.5, "chunks": 15,
                                    "marker": str(marker)}], name="slow.toml")
    child = spawn(slow, "backup", "d")
    wait_for(marker, child)
    r = cli(config, "backup", "d", "--wait", "30")
    assert r.exit_code == 0, r.stderr
    assert child.wait(timeout=30) == 0
    assert [b.complete for b in dm(config).list_backups("d")] == [True, True, True]


def test_stale_lock_reported_and_broken_explicitly(tmp_path: Path) -> None:
    config = write_config(tmp_path, [{"name": "a", "type": "directory", "path": str(tree(tmp_path))}])
    locks = tmp_path / "backups" / "d" / ".locks"
    locks.mkdir(parents=True)
    old = time.time() - 7200
    (locks / "abc.json").write_text(json.dumps({"job_id": "abc", "operation": "backup", "host": "elsewhere",
                                                "pid": 4242, "created": old, "expires": old + 600}))
    r = cli(config, "backup", "d")
    assert r.exit_code == 3 and "STALE" in r.stderr and "lock break d" in r.stderr and "host elsewhere" in r.stderr
    assert "STALE" in cli(config, "lock", "list").stdout
    assert cli(config, "lock", "break", "d").exit_code == 0
    assert cli(config, "lock", "list", "d").stdout.startswith("no locks")
    assert cli(config, "backup", "d").exit_code == 0
    assert cli(config, "list", "backup", "--json").stdout.count('"complete": true') == 1  # .locks is no backup


# --------------------------------------------------------------------------- timeouts


def test_timeout_stops_the_job_and_releases(tmp_path: Path, fake: Any) -> None:
    # ``block``: the source sleeps in one call, so only the watchdog's signal can stop it.
    config = write_config(tmp_path, [{"name": "b", "type": "slowtest", "seconds": 30, "block": True}],
                          fake=fake, timeout="1s")
    t0 = time.monotonic()
    r = cli(config, "backup", "d")
    assert time.monotonic() - t0 < 10
    assert r.exit_code == 1 and "ran longer than its limit of 1s" in r.stderr, (r.exit_code, r.stderr)
    assert fake.marks("d") == [False, True]
    st = status(config)
    assert st["recent"][0]["state"] == "failed" and "limit" in st["recent"][0]["error"]
    assert st["datasets"][0]["locks"] == [] and st["unavailable"] == []


def test_timeout_in_a_worker_thread(tmp_path: Path) -> None:
    """Called from another thread (an API caller's worker): the limit is checked as data moves."""
    import threading

    from data_manager.jobs import JobTimeoutError

    config = write_config(tmp_path, [{"name": "b", "type": "slowtest", "seconds": 20, "chunks": 200}], timeout="1s")
    m = dm(config)
    got: list[BaseException] = []

    def run() -> None:
        try:
            m.backup("d")
        except BaseException as exc:  # noqa: BLE001
            got.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(15)
    assert len(got) == 1 and isinstance(got[0], JobTimeoutError), got
    assert m.jobs()[0].state == "failed"
