"""A key holder (an append or write-only key, or a stolen passphrase) can write any snapshot it likes: one
whose names would become keys or paths is listed as damaged and never restored or copied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from data_manager.engines.base import RepositoryEngine
from data_manager.engines.dedup.engine import DedupBackupWriter
from data_manager.engines.worm import WormEngine
from data_manager.errors import CorruptBackupError
from tests.unit.dedup.test_engine import backup, make_storage, new_repo, reopen


@pytest.mark.parametrize("field, value", [
    ("source", "../../outside"),
    ("artifact", "../escape"),
    ("artifact", "/etc/passwd"),
    ("data_id", "../x"),
    ("timestamp", "2026111T123456Z"),
    ("size", -1),
])
def test_a_crafted_snapshot_is_damaged_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str,
                                               value: Any) -> None:
    engine = new_repo(tmp_path)
    good = backup(engine, "d", {"s": {"a": b"good data"}})
    real = DedupBackupWriter.manifest

    def crafted(self: DedupBackupWriter) -> dict[str, Any]:
        doc = real(self)
        art = doc["sources"][0]["artifacts"][0]
        if field == "source":
            doc["sources"][0]["name"] = value
        elif field == "artifact":
            art["name"] = value
        elif field == "size":
            art["size"] = value
        else:
            doc[field] = value
        return doc

    monkeypatch.setattr(DedupBackupWriter, "manifest", crafted)
    backup(engine, "d", {"s": {"a": b"evil data"}})
    monkeypatch.undo()
    fresh = reopen(engine, tmp_path, cache="other-cache")  # nothing from the writer's own cache
    listed = fresh.backups("d")
    assert [b.timestamp for b in listed if b.complete] == [good["timestamp"]]
    damaged = [b for b in listed if b.damaged]
    assert len(damaged) == 1 and "bad" in damaged[0].damaged
    assert fresh.resolve("d", "latest").timestamp == good["timestamp"]
    with pytest.raises(CorruptBackupError):
        for b in damaged:
            fresh.resolve("d", b.timestamp)
    # A copy to a plain storage takes the good backup only.
    target = WormEngine(make_storage(tmp_path / "plain"))
    RepositoryEngine.copy_backup(fresh, target, "d", good["timestamp"])
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["d"]
