"""Many small files on the ``dedup`` engine through the real command: editing 1% of them stores little
again (the directory source groups small files into chunks of about 16, at boundaries set by their
contents), ``files.jsonl`` is compressed there and stays plain on ``worm``, and every backup restores."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from tests.helpers import cli, snapshot


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r


def test_editing_one_percent_of_small_files_stores_a_fraction_again(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "raw"
    rng = random.Random(7)
    files = []
    for i in range(3000):
        f = raw / f"d{i % 30:02d}" / f"sample-{i:05d}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({"sample": i, "values": [rng.random() for _ in range(rng.randint(5, 40))]}))
        files.append(f)
    config = tmp_path / "dm.toml"
    config.write_text(f"""
[storages.vault]
type = "filesystem"
root = "{tmp_path / 'vault'}"
engine = "dedup"
passphrase = "${{DM_PASSPHRASE}}"
cache_dir = "{tmp_path / 'cache'}"

[storages.plain]
type = "filesystem"
root = "{tmp_path / 'plain'}"

[datasets.many]
storage = "vault"

[[datasets.many.sources]]
name = "raw"
type = "directory"
path = "{raw}"

[datasets.flat]
storage = "plain"

[[datasets.flat.sources]]
name = "raw"
type = "directory"
path = "{raw}"
""")
    env = {"DATA_MANAGER_STATE": str(tmp_path / "state.db"), "DM_PASSPHRASE": "correct horse"}
    ok(cli("repo", "init", "vault", config=config, env=env))

    def backup(*args: str) -> dict:
        return json.loads(ok(cli("backup", "many", "--json", *args, config=config, env=env)).stdout)

    first = backup()
    before = snapshot(raw)
    for f in rng.sample(files, 30):
        with f.open("a") as out:
            out.write(" ")
    edited = backup()
    after = snapshot(raw)
    # before grouping, 1 MiB chunks of ~1,000 files each: 1% of the files edited changed every chunk (100%)
    assert 0 < edited["stored_size"] < 0.45 * first["stored_size"], (edited["stored_size"], first["stored_size"])

    records = {a["name"]: a for a in _artifacts(config, env, "many", edited["timestamp"], monkeypatch)}
    index = records["files.jsonl"]
    assert index["stored_size"] < index["size"] / 2  # compressed (it is encrypted on dedup anyway)

    for ts, tree in ((first["timestamp"], before), (edited["timestamp"], after)):
        target = tmp_path / f"restored-{ts}"
        ok(cli("restore", ts, "many", "--yes", "--set", f"raw.path={target}", config=config, env=env))
        assert snapshot(target) == tree

    flat = json.loads(ok(cli("backup", "flat", "--json", config=config, env=env)).stdout)
    (stored,) = (tmp_path / "plain" / "flat" / flat["timestamp"]).rglob("files.jsonl*")
    assert stored.name == "files.jsonl" and stored.read_bytes().startswith(b"{")  # worm: readable as it is


def _artifacts(config: Path, env: dict[str, str], data_id: str, ts: str,
               monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    from data_manager.api import DataManager

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    dm = DataManager.from_file(config)
    (info,) = [b for b in dm.repository("vault").backups(data_id) if b.timestamp == ts]
    return [a for s in info.manifest["sources"] for a in s["artifacts"]]
