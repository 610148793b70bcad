from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_drive import CHUNK_UNIT, FakeDrive  # noqa: E402

from data_manager.types import Settings  # noqa: E402
from data_manager_gdrive import GDriveStorage  # noqa: E402



@pytest.fixture
def fake() -> Iterator[FakeDrive]:
    with FakeDrive() as drive:
        yield drive


@pytest.fixture
def gdrive_settings(fake: FakeDrive) -> dict[str, Any]:
    """Settings for a storage on the fake server: dummy token, tiny chunks, fast retries."""
    return {"auth": "none", "api_root": fake.url, "chunk_size": CHUNK_UNIT, "retry_delay": 0.001, "root": "backups/lab"}


@pytest.fixture
def make_storage(gdrive_settings: dict[str, Any]) -> Iterator[Callable[..., GDriveStorage]]:
    made: list[GDriveStorage] = []

    def make(**extra: Any) -> GDriveStorage:
        values = {**gdrive_settings, **extra}
        values = {k: v for k, v in values.items() if v is not None}
        s = GDriveStorage("drive", Settings(values, where="test.toml: [storages.drive]"))
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def storage(make_storage: Callable[..., GDriveStorage]) -> GDriveStorage:
    return make_storage()
