"""A backup counts only once every source is committed: ``backup.json`` is written last.

The test source ``halfway`` (registered by this module through the plugin registry, as a third party's
would be) writes one artifact, then fails if told to.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from data_manager import hookimpl
from data_manager.api import DataManager
from data_manager.errors import SourceError, UsageError
from data_manager.types import ArtifactSet, ArtifactSink, Settings, Source, SourceType

from ..helpers import builtin_plugins
from tests.helpers import make_tree

THIS = "tests.unit.test_backup_commit"


class HalfwaySource(Source):
    """Writes ``part.bin``, then raises if ``fail``."""

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        settings.check_known({"fail"})
        self.fail = settings.get_bool("fail", False)

    def backup(self, sink: ArtifactSink) -> None:
        with sink.open("part.bin") as out:
            out.write(b"half of the data" * 1000)
        if self.fail:
            raise SourceError(f"source {self.name!r}: failing after one artifact, on purpose")

    def restore(self, artifacts: ArtifactSet) -> None:
        raise AssertionError("never restored")


@hookimpl
def register_source_types(register: Callable[[SourceType], None]) -> None:
    register(SourceType("halfway", HalfwaySource, "test source"))


@pytest.fixture
def with_halfway() -> Iterator[None]:
    with builtin_plugins(THIS):
        yield


def manager(tmp_path: Path, fail: bool) -> DataManager:
    return DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "datasets": {"d": {"sources": [
            {"name": "first", "type": "directory", "path": str(tmp_path / "tree")},
            {"name": "second", "type": "halfway", "fail": fail},
        ]}},
    })


def test_a_source_failing_after_writing_leaves_no_manifest(tmp_path: Path, with_halfway: None) -> None:
    make_tree(tmp_path / "tree")
    good = manager(tmp_path, fail=False).backup("d").timestamp
    dm = manager(tmp_path, fail=True)
    with pytest.raises(SourceError, match="on purpose"):
        dm.backup("d")

    [bad] = [p.name for p in (tmp_path / "backups" / "d").iterdir() if p.name not in (good, ".locks")]
    base = tmp_path / "backups" / "d" / bad
    # The failed backup got as far as the second source's artifact: only backup.json is missing.
    assert (base / "first" / "source.json").is_file()
    assert [p.name for p in (base / "second").iterdir()] == ["part.bin.zst"]
    assert not (base / "backup.json").exists()
    assert (tmp_path / "backups" / "d" / good / "backup.json").is_file()

    assert [(b.timestamp, b.complete) for b in dm.list_backups("d")] == [(good, True), (bad, False)]
    assert dm.find_backup("d", "latest")[1].timestamp == good
    with pytest.raises(UsageError, match="incomplete"):
        dm.find_backup("d", bad)
    assert json.loads((tmp_path / "backups" / "d" / good / "backup.json").read_text())["timestamp"] == good


def test_the_only_backup_failing_leaves_no_latest(tmp_path: Path, with_halfway: None) -> None:
    make_tree(tmp_path / "tree")
    dm = manager(tmp_path, fail=True)
    with pytest.raises(SourceError):
        dm.backup("d")
    assert [b.complete for b in dm.list_backups("d")] == [False]
    assert list((tmp_path / "backups").rglob("backup.json")) == []
    with pytest.raises(UsageError, match="no complete backup"):
        dm.restore("d", "latest")
