"""``backup --resume`` of a half-done http export: a real ``data-manager backup`` process killed (SIGKILL)
after some parts were committed, then resumed by the real CLI against the local export server.

The export (5 MiB + 5 bytes) comes in 256 KiB ranges into 1 MiB parts; the GET of the 13th range (byte
3 MiB) stalls, so the killed run has committed exactly parts 1-3.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import cli

MiB = 1 << 20
KILLED_AT = 3 * MiB  # the bytes the killed run committed (parts 1-3)


def ok(r: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r


@pytest.fixture
def killed(tmp_path: Path, export_server: Any, config_file: Any) -> dict[str, Any]:
    """A backup process killed with SIGKILL once parts 1-3 were committed; the config, env and the
    incomplete backup's directory."""
    export_server.data = os.urandom(5 * MiB + 5)
    export_server.digest = "repr-digest"  # a whole-export sha-256: kept parts are hashed too
    export_server.stall = [0.0] * 12 + [60.0]  # the 13th GET (byte 3 MiB, asked ahead) hangs
    config = config_file(part_size="1MiB")
    env = {"DATA_MANAGER_STATE": str(tmp_path / "state.db")}
    proc = subprocess.Popen([sys.executable, "-m", "data_manager", "--config", str(config), "backup", "site42"],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = tmp_path / "backups" / "site42"
    deadline = time.monotonic() + 60
    try:
        while not list(root.glob("*/db/.committed/export.parts/*/000003.json")):
            assert proc.poll() is None, "the backup ended before it was killed"
            assert time.monotonic() < deadline, "part 3 was never committed"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    [backup] = [p for p in root.iterdir() if not p.name.startswith(".")]  # not .locks
    assert not (backup / "backup.json").exists()
    export_server.stall = []
    return {"config": config, "env": env, "backup": backup, "gets": len(export_server.gets())}


def ranges_since(export_server: Any, n: int) -> list[tuple[int, int | None] | None]:
    return [g.range for g in export_server.gets()[n:]]


def restored(tmp_path: Path, killed: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    target = tmp_path / "restored.zip"
    ok(cli("restore", "--yes", "--set", f"db.path={target}", "site42", config=killed["config"], env=killed["env"]))
    meta = json.loads((killed["backup"] / "db" / "source.json").read_text())
    return target.read_bytes(), meta


def left_in_storage(backup: Path) -> list[str]:
    return sorted(str(p.relative_to(backup / "db")) for p in (backup / "db").rglob("*") if p.is_file())


def test_resume_asks_only_for_the_missing_bytes(tmp_path: Path, export_server: Any, killed: dict[str, Any]) -> None:
    r = ok(cli("backup", "site42", "--resume", "--json", config=killed["config"], env=killed["env"]))
    assert json.loads(r.stdout)["size"] == len(export_server.data)
    asked = ranges_since(export_server, killed["gets"])
    assert asked[0] == (KILLED_AT, KILLED_AT + 256 * 1024 - 1)
    assert all(rng is not None and rng[0] >= KILLED_AT for rng in asked), asked
    missing = len(export_server.data) - KILLED_AT
    assert sum(rng[1] - rng[0] + 1 for rng in asked if rng and rng[1] is not None) == missing
    data, meta = restored(tmp_path, killed)
    assert data == export_server.data
    assert meta["info"]["resumed_bytes"] == KILLED_AT and meta["info"]["parts"] == 6
    assert meta["info"]["server_checksum"].startswith("Repr-Digest: sha-256=")
    assert [a["size"] for a in meta["artifacts"]] == [MiB] * 5 + [5]
    assert not any(".committed" in p for p in left_in_storage(killed["backup"]))  # a finished source: source.json
    ok(cli("verify", "site42", config=killed["config"], env=killed["env"]))


def test_an_export_changed_since_starts_over_saying_so(tmp_path: Path, export_server: Any,
                                                       killed: dict[str, Any]) -> None:
    export_server.version += 1
    export_server.data = os.urandom(4 * MiB)
    r = ok(cli("backup", "site42", "--resume", config=killed["config"], env=killed["env"]))
    assert "not continuing the interrupted run's 3145728 bytes: the export changed since" in r.stderr
    asked = ranges_since(export_server, killed["gets"])
    assert asked[0][0] == KILLED_AT and asked[1] == (0, 256 * 1024 - 1)  # type: ignore[index]
    data, meta = restored(tmp_path, killed)
    assert data == export_server.data and meta["info"]["resumed_bytes"] == 0
    versions = {p.split("/")[1] for p in left_in_storage(killed["backup"]) if p.startswith("export.parts/")}
    assert len(versions) == 1  # the old version's parts are gone


@pytest.mark.parametrize("damage", ["same size, other bytes", "truncated"])
def test_a_tampered_part_is_not_kept(tmp_path: Path, export_server: Any, killed: dict[str, Any], damage: str) -> None:
    [part] = list((killed["backup"] / "db").glob("export.parts/*/000002"))
    if damage == "truncated":
        part.write_bytes(part.read_bytes()[:-1])
    else:
        part.write_bytes(bytes(b ^ 0xFF for b in part.read_bytes()[:16]) + part.read_bytes()[16:])
    r = ok(cli("backup", "site42", "--resume", config=killed["config"], env=killed["env"]))
    asked = ranges_since(export_server, killed["gets"])
    assert all(rng is not None and rng[0] >= MiB for rng in asked), asked  # part 1 was kept
    assert (MiB, MiB + 256 * 1024 - 1) in asked  # part 2 downloaded again
    if damage != "truncated":
        assert "part export.parts/" in r.stderr and "is not as it recorded" in r.stderr
    data, meta = restored(tmp_path, killed)
    assert data == export_server.data and meta["info"]["resumed_bytes"] == MiB
    ok(cli("verify", "site42", config=killed["config"], env=killed["env"]))


def test_a_server_without_ranges_now_starts_over(tmp_path: Path, export_server: Any, killed: dict[str, Any]) -> None:
    export_server.ranges = False
    r = ok(cli("backup", "site42", "--resume", config=killed["config"], env=killed["env"]))
    assert "the server no longer answers byte ranges; starting over" in r.stderr
    assert len(export_server.gets()) == killed["gets"] + 1  # the whole export, in the one answer
    data, meta = restored(tmp_path, killed)
    assert data == export_server.data and [a["name"] for a in meta["artifacts"]] == ["export"]
    assert left_in_storage(killed["backup"]) == ["export", "source.json"]  # the parts were deleted
