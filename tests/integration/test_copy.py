"""Second copies between every pair of storage types: the filesystem, MinIO (``s3``, fixture ``s3_bucket``)
and Google Drive (``gdrive``, against the fake Drive v3 server of the gdrive plugin's tests, through the
real google-api-python-client). Each copy is first cut off by a failing target, then resumed; the copy holds
the same objects as the original, verifies and restores from the target alone, and ``list`` names both."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from data_manager.api import DataManager
from data_manager.errors import StorageError
from data_manager.types import Storage

from ..helpers import snapshot

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("data_manager_minio")
pytest.importorskip("data_manager_gdrive")
sys.path.insert(0, str(ROOT / "plugins" / "data-manager-gdrive" / "tests"))
from fake_drive import CHUNK_UNIT, FakeDrive  # noqa: E402

pytestmark = pytest.mark.minio
KINDS = ("filesystem", "s3", "gdrive")


@pytest.fixture
def storages(tmp_path: Path, s3_bucket: Any) -> Iterator[dict[str, dict[str, Any]]]:
    """One storage of each type, named after its type."""
    with FakeDrive() as fake:
        yield {
            "filesystem": {"type": "filesystem", "root": str(tmp_path / "fs")},
            "s3": {"type": "s3", "endpoint": s3_bucket.endpoint, "secure": False, "access_key": s3_bucket.access_key,
                   "secret_key": s3_bucket.secret_key, "bucket": s3_bucket.bucket, "prefix": "backups",
                   "part_size": "5MiB"},
            "gdrive": {"type": "gdrive", "auth": "none", "api_root": fake.url, "chunk_size": CHUNK_UNIT,
                       "retry_delay": 0.001, "root": "backups/lab"},
        }


def _objects(storage: Storage, prefix: str) -> dict[str, int | None]:
    return {key: entry.size for key, entry in storage.walk(prefix)}


@pytest.mark.parametrize("home, to", list(itertools.permutations(KINDS, 2)))
def test_copy_round_trip(tmp_path: Path, storages: dict[str, dict[str, Any]], home: str, to: str,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "big.bin").write_bytes(os.urandom(2_500_000))  # 1 MiB blocks, several Drive chunks and S3 parts
    (src / "sub" / "notes.txt").write_text("a copy, a copy\n" * 20_000)
    (src / "empty").write_bytes(b"")

    def manager(storage: str) -> DataManager:
        return DataManager.from_dict({"storages": storages, "datasets": {"exp42": {
            "storage": storage, "sources": [{"name": "raw", "type": "directory", "path": str(src)}]}}})

    dm = manager(home)
    ts = dm.backup("exp42").timestamp
    target = dm.storage(to)
    real = target.open_write
    opened: list[str] = []

    def failing(key: str) -> Any:
        if "/.locks/" not in f"/{key}":
            if len(opened) == 2:
                raise StorageError(f"{key}: the target went away (test)")
            opened.append(key)
        return real(key)

    monkeypatch.setattr(target, "open_write", failing)
    with pytest.raises(StorageError, match="went away"):
        dm.copy("exp42", ts, to=to)
    assert [b.storages for b in dm.list_backups("exp42")] == [[home]]
    monkeypatch.setattr(target, "open_write", real)

    resumed = dm.copy("exp42", ts, to=to)
    assert resumed.backups[0].state == "copied"
    assert resumed.backups[0].skipped == sum(1 for k in opened if not k.endswith(".json")) > 0
    prefix = f"exp42/{ts}"
    assert _objects(target, prefix) == _objects(dm.storage(home), prefix)
    assert [b.state for b in dm.copy("exp42", "latest", to=to).backups] == ["already complete"]
    assert [b.storages for b in dm.list_backups("exp42")] == [[home, to]]

    there = manager(to)  # the copy alone, as after losing the first storage
    there.verify("exp42", ts)
    there.restore("exp42", ts, overrides={"raw": {"path": str(tmp_path / "back")}})
    assert snapshot(tmp_path / "back") == snapshot(src)
    dm.close()
    there.close()
