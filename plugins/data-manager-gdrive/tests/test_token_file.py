"""The OAuth token file is written through a fresh, unguessable temporary file (issue 16, point 12)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from data_manager_gdrive import auth
from data_manager_gdrive.auth import save_token


class Creds:
    def __init__(self, token: str) -> None:
        self.token = token

    def to_json(self) -> str:
        return json.dumps({"token": self.token})


def test_a_planted_symlink_at_the_old_predictable_name_is_not_followed(tmp_path: Path) -> None:
    token = tmp_path / "cfg" / "gdrive-token.json"
    token.parent.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    # the name the token was once written through: another local user could guess and plant it
    (token.parent / f".{token.name}.{os.getpid()}.tmp").symlink_to(victim)
    save_token(Creds("secret"), token)
    assert victim.read_text() == "precious"
    assert json.loads(token.read_text()) == {"token": "secret"}
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


def test_temporary_file_is_exclusive_random_0600_and_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[tuple[str, int, int]] = []
    synced: list[int] = []
    real_open, real_fsync = os.open, os.fsync

    def spy_open(path, flags, mode=0o777, **kw):  # type: ignore[no-untyped-def]
        opened.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, **kw)

    def spy_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(auth.os, "open", spy_open)
    monkeypatch.setattr(auth.os, "fsync", spy_fsync)
    token = tmp_path / "gdrive-token.json"
    names = set()
    for i in range(2):
        opened.clear()
        save_token(Creds(f"t{i}"), token)
        path, flags, mode = opened[0]
        assert Path(path).parent == tmp_path and Path(path) != token
        assert flags & os.O_CREAT and flags & os.O_EXCL and flags & os.O_WRONLY and not flags & os.O_TRUNC
        assert mode == 0o600
        names.add(path)
        assert not Path(path).exists()  # renamed over the token
    assert len(names) == 2 and all(str(os.getpid()) not in Path(n).name for n in names)
    assert synced
    assert json.loads(token.read_text()) == {"token": "t1"}
    assert [p.name for p in tmp_path.iterdir()] == [token.name]


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "gdrive-token.json"
    token.write_text("old")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(auth.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        save_token(Creds("new"), token)
    assert token.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == [token.name]
