"""A lock broken under a running job (``lock break --force``) stops it at the next source boundary.

The heartbeat alone notices only every ttl/3 (200 s by default); the job reads its lock back between
sources, so the next source never runs while another job may already hold the dataset.

Uses a test source ``lockbreak`` registered by this module: it records that it ran and, with ``force_break``,
breaks the dataset's locks as ``data-manager lock break --force`` would, once its own backup is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from data_manager import hookimpl
from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.locks import break_locks, list_locks
from data_manager.types import ArtifactSet, ArtifactSink, Settings, Source, SourceType

from ..helpers import builtin_plugins


class LockBreakSource(Source):
    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        settings.check_known({"marker", "force_break", "root"})
        self.marker = settings.get_path("marker")
        self.force_break = settings.get_bool("force_break", False)
        self.root = settings.get_str("root")

    def backup(self, sink: ArtifactSink) -> None:
        self.marker.write_text("ran")
        with sink.open("data.bin") as out:
            out.write(b"x" * 100)
        if self.force_break:
            storage = FilesystemStorage("local", Settings({"root": self.root}))
            assert list_locks(storage, "d"), "the job must hold a lock to break"
            break_locks(storage, "d", force=True)

    def restore(self, artifacts: ArtifactSet) -> None:
        pass


@hookimpl
def register_source_types(register: Callable[[SourceType], None]) -> None:
    register(SourceType("lockbreak", LockBreakSource, "test source that breaks the dataset's lock"))


@pytest.fixture(autouse=True)
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DATA_MANAGER_STATE", str(tmp_path / "state.db"))
    monkeypatch.delenv("DATA_MANAGER_CONFIG", raising=False)
    with builtin_plugins(__name__):
        yield


def test_force_broken_lock_stops_the_job_before_the_next_source(tmp_path: Path) -> None:
    root = tmp_path / "backups"
    first, second = tmp_path / "first.ran", tmp_path / "second.ran"
    config = tmp_path / "dm.toml"
    config.write_text(
        f'[storages.local]\ntype = "filesystem"\nroot = "{root}"\n\n'
        '[locks]\nsettle = "0.05s"\n\n'  # the default ttl (10m): the heartbeat would notice only after 200 s
        f'[[datasets.d.sources]]\nname = "first"\ntype = "lockbreak"\nmarker = "{first}"\n'
        f'force_break = true\nroot = "{root}"\n\n'
        f'[[datasets.d.sources]]\nname = "second"\ntype = "lockbreak"\nmarker = "{second}"\nroot = "{root}"\n'
    )
    from data_manager.cli import main

    result = CliRunner().invoke(main, ["--config", str(config), "backup", "d"])
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    # (the "broke the lock" warning comes from the breaking, which runs in this same process here)
    errors = [line for line in result.stderr.splitlines() if line.startswith("data-manager: error:")]
    assert len(errors) == 1 and "the lock on d was broken while the job ran" in errors[0], result.stderr
    assert first.exists() and not second.exists()
    assert list(root.glob("d/*/backup.json")) == []
    assert list(root.glob("d/*/first/source.json"))  # the first source finished before the break

    status = CliRunner().invoke(main, ["--config", str(config), "status", "--json"])
    [job] = json.loads(status.stdout)["recent"]
    assert job["state"] == "failed" and "lock on d was broken" in job["error"]
    assert [t["state"] for t in job["tasks"]] == ["done", "failed"]
