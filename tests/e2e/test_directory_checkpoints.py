"""A directory backup on the ``worm`` engine checkpoints after every volume: a run killed at any step is
continued by ``backup --resume`` from its last checkpoint (the volumes before it kept, not written again),
and the backup restores exactly what a run that never stopped would have."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..helpers import cli, killed, snapshot


def _tree(root: Path) -> Path:
    """About 1.3 MB in three levels: files that compress and files that do not, small and large, so that
    with 128 KiB volumes both volume streams roll many times, inside directories and between them."""
    src = root / "src"
    for d in range(3):
        for s in range(3):
            sub = src / f"d{d}" / f"s{s}"
            sub.mkdir(parents=True)
            for i in range(4):
                (sub / f"text{i}.csv").write_text(f"{d},{s},{i}\n" * (2000 + 500 * i))  # compressible
                (sub / f"rand{i}.bin").write_bytes(os.urandom(5000 + 30_000 * i))  # stored as-is past 64 KiB
        (src / f"d{d}" / "empty").mkdir()
    os.symlink("d0/s0/text0.csv", src / "link")
    return src


def _config(tmp_path: Path, src: Path) -> Path:
    config = tmp_path / "dm.toml"
    config.write_text(f"""
[storages.local]
type = "filesystem"
root = "{tmp_path / 'store'}"

[datasets.exp42]
storage = "local"

[[datasets.exp42.sources]]
name = "raw"
type = "directory"
path = "{src}"
volume_size = "128KiB"
""")
    return config


def _listed(config: Path) -> list[dict]:
    return json.loads(cli("list", "backup", "exp42", "--json", config=config).stdout)


def test_a_backup_killed_at_any_step_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    config = _config(tmp_path, src)
    counted = tmp_path / "count"
    assert killed(config, 0, "backup", "exp42", count=counted).returncode == 0
    steps = int(counted.read_text())
    store = tmp_path / "store" / "exp42"
    first = json.loads((store / _listed(config)[0]["timestamp"] / "raw" / "source.json").read_text())
    names = [a["name"] for a in first["artifacts"]]
    assert sum(n.startswith("vol-") for n in names) >= 10, names
    assert not any(n.startswith("checkpoint-") for n in names), names
    want = snapshot(src)
    kept_some = 0
    for at in range(steps // 10, steps, max(1, steps // 12)):
        r = killed(config, at, "backup", "exp42")
        assert r.returncode == -9, (at, r.stderr)
        stopped = [b for b in _listed(config) if not b["complete"]]
        assert len(stopped) == 1, (at, stopped)
        before = {p.name: p.stat().st_ino for p in (store / stopped[0]["timestamp"] / "raw").glob("vol-*")}
        r = cli("-v", "backup", "exp42", "--resume", config=config)
        assert r.returncode == 0, (at, r.stderr)
        done = store / stopped[0]["timestamp"] / "raw"
        assert not list(done.glob("checkpoint-*")), at  # discarded once the index is committed
        record = json.loads((done / "source.json").read_text())
        volumes = [a["name"] for a in record["artifacts"] if a["name"].startswith("vol-")]
        assert sorted(record["info"]["volumes"]) == sorted(volumes) == sorted(set(volumes)), at
        if "resuming after checkpoint" in r.stderr:
            kept_some += 1
            after = {p.name: p.stat().st_ino for p in done.glob("vol-*")}
            assert {n for n, ino in before.items() if after.get(n) == ino}, at  # not written again
        target = tmp_path / f"back{at}"
        r = cli("restore", stopped[0]["timestamp"], "exp42", "--set", f"raw.path={target}", "--yes", config=config)
        assert r.returncode == 0, (at, r.stderr)
        assert snapshot(target) == want, at
    assert kept_some >= 5, kept_some
