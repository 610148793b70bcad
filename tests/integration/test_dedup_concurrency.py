"""Two ``data-manager backup`` processes started together into one ``dedup`` repository (no repository lock),
on the filesystem storage and on MinIO through the ``s3`` storage (fixture ``s3_bucket``): two datasets
that share a big file (new bytes every round, so both writers race to store the same chunks) and each have
their own. Some rounds the two processes share one local cache (one machine: a writer may reuse what the
other indexed a moment ago), others each has its own (two machines: both store the shared chunks).
Every backup completes and restores byte for byte, and ``check --read-data-subset 100%`` passes.

Then ``check`` beside a backup or a restore, interleaved deterministically in one process (three engine bugs
these found: check reset the shared cache under a running restore, judged packs indexed after its walk, and
checked pointers committed after its sync against a stale index)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from data_manager.api import DataManager
from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.engines.dedup.chunker import ChunkerParams
from data_manager.engines.dedup.engine import DedupEngine
from data_manager.errors import CorruptBackupError
from data_manager.types import Settings

from ..helpers import cli, snapshot

KDF = {"memory_kib": 8, "iterations": 1, "lanes": 1}  # cheap Argon2id: tests, not security
SMALL = ChunkerParams(16 << 10, 64 << 10, 256 << 10)
PASSPHRASE = "correct horse"
DATASETS = ("alpha", "beta")
ROUNDS = 3


def _toml(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)


def _config(tmp_path: Path, storage: dict[str, Any]) -> Path:
    lines = ["[locks]", 'settle = "0.02s"', "", "[storages.vault]"]
    lines += [f"{k} = {_toml(v)}" for k, v in storage.items()]
    # Each backup uploads ~3.5 MB at 2 MiB/s: it lasts long enough for the other to start meanwhile.
    lines += ['engine = "dedup"', 'passphrase = "${DM_PASSPHRASE}"', 'pack_size = "256KiB"', 'limit_upload = "2MiB/s"']
    for name in DATASETS:
        lines += ["", f"[datasets.{name}]", 'storage = "vault"', "", f"[[datasets.{name}.sources]]",
                  'name = "files"', 'type = "directory"', f'path = "{tmp_path / "src" / name}"']
    config = tmp_path / "dm.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def _round(src: Path, n: int) -> None:
    """Round ``n``'s data: the same new 3 MB in both datasets (under another name in each), and their own."""
    shared = random.Random(n).randbytes(3_000_000)
    for i, name in enumerate(DATASETS):
        own = random.Random(1000 * n + i)
        root = src / name
        (root / "own").mkdir(parents=True, exist_ok=True)
        (root / ("big.bin" if i == 0 else "copy-of-big.bin")).write_bytes(shared)
        (root / "own" / f"r{n}.bin").write_bytes(own.randbytes(300_000 + 50_000 * i))
        (root / "own" / "notes.txt").write_text(f"{name} round {n}\n" * 5_000)


def _start(config: Path, data_id: str, cache: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "data_manager", "--config", str(config), "backup", data_id, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _spans(config: Path, made: dict[str, str]) -> list[tuple[datetime, datetime]]:
    """When each backup of ``made`` (DATA_ID: TIMESTAMP) started and finished, as it recorded."""
    dm = DataManager.from_file(config)
    try:
        docs = [next(b.manifest for b in dm.list_backups(name) if b.timestamp == ts) for name, ts in made.items()]
    finally:
        dm.close()
    return [(datetime.fromisoformat(d["started_at"]), datetime.fromisoformat(d["finished_at"])) for d in docs]


@pytest.fixture(params=["filesystem", pytest.param("s3", marks=pytest.mark.minio)])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "filesystem":
        return {"type": "filesystem", "root": str(tmp_path / "vault")}
    pytest.importorskip("data_manager_minio")
    b = request.getfixturevalue("s3_bucket")
    return {"type": "s3", "endpoint": b.endpoint, "secure": False, "access_key": b.access_key,
            "secret_key": b.secret_key, "bucket": b.bucket, "prefix": "backups"}


def test_two_backups_at_once_into_one_repository(storage: dict[str, Any], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DM_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-of-the-test"))
    config = _config(tmp_path, storage)
    dm = DataManager.from_file(config)
    DedupEngine.create(dm.storage("vault"), Settings({"passphrase": PASSPHRASE}), chunker=SMALL, kdf=KDF,
                       cache_dir=tmp_path / "cache-of-init").close()
    dm.close()
    src = tmp_path / "src"
    trees: dict[str, dict[str, dict]] = {name: {} for name in DATASETS}  # TIMESTAMP -> the source then
    for n in range(ROUNDS):
        _round(src, n)
        shared = n % 2 == 0  # one machine (one cache), or two
        procs = {name: _start(config, name, tmp_path / ("cache" if shared else f"cache-{name}")) for name in DATASETS}
        made = {}
        for name, p in procs.items():
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0 and "Traceback" not in err, (n, name, p.returncode, err)
            made[name] = json.loads(out)["timestamp"]
            trees[name][made[name]] = snapshot(src / name)
        spans = _spans(config, made)
        assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], (n, spans)  # they ran at the same time
        r = cli("check", "vault", "--read-data-subset", "100%", "--json", config=config)
        assert r.returncode == 0, (n, r.stdout, r.stderr)
        (report,) = json.loads(r.stdout)
        assert report["ok"] and not report["errors"], (n, report)
        assert report["counts"]["snapshots"] == 2 * (n + 1), (n, report["counts"])
        assert not [note for note in report["notes"] if note.startswith("writers/")], report  # both removed theirs

    dm = DataManager.from_file(config)
    try:
        for name in DATASETS:
            listed = dm.list_backups(name)
            assert [b.timestamp for b in listed] == sorted(trees[name]) and all(b.complete for b in listed), name
            for ts, tree in trees[name].items():
                out = tmp_path / "restored" / name / ts
                dm.restore(name, ts, overrides={"files": {"path": str(out)}})
                assert snapshot(out) == tree, (name, ts)
                shutil.rmtree(out)
    finally:
        dm.close()


# --------------------------------------------------------------------------- check beside backups and restores
# A check run while another process writes or reads the repository, the two interleaved deterministically in
# one process: the check's storage calls (listing, walking) run the other side at the worst moment.


def _one_dataset(tmp_path: Path, size: int) -> dict[str, Any]:
    """The config (as a dict) of a new dedup repository in ``tmp_path/vault`` (cache ``tmp_path/cache``), 64 KiB
    packs, and one dataset ``alpha`` of ``size`` random bytes, backed up once."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(random.Random(1).randbytes(size))
    root = tmp_path / "vault"
    DedupEngine.create(FilesystemStorage("vault", Settings({"root": str(root)})), Settings({"passphrase": PASSPHRASE}),
                       chunker=SMALL, kdf=KDF, cache_dir=tmp_path / "cache").close()
    config = {"storages": {"vault": {"type": "filesystem", "root": str(root), "engine": "dedup",
                                     "passphrase": PASSPHRASE, "pack_size": "64KiB", "cache_dir": str(tmp_path / "cache")}},
              "datasets": {"alpha": {"storage": "vault", "sources": [{"name": "f", "type": "directory", "path": str(src)}]}}}
    dm = DataManager.from_dict(config)
    try:
        dm.backup("alpha")
    finally:
        dm.close()
    (src / "b.bin").write_bytes(random.Random(2).randbytes(size))  # new data for a next backup
    return config


def _checker(tmp_path: Path, cache: str) -> tuple[DedupEngine, FilesystemStorage]:
    storage = FilesystemStorage("vault", Settings({"root": str(tmp_path / "vault")}))
    return DedupEngine(storage, Settings({"passphrase": PASSPHRASE}), cache_dir=tmp_path / cache), storage


def test_a_check_while_another_machine_commits_a_backup_reports_no_damage(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    config = _one_dataset(tmp_path, 500_000)
    checker, storage = _checker(tmp_path, "cache-of-the-checker")
    real, other = storage.walk, []

    def walk(prefix: str) -> Iterator[Any]:
        if not other:  # the check has synced its index: now the other machine's backup commits
            other.append(DataManager.from_dict(config))
            other[0].backup("alpha")
            other[0].close()
        yield from real(prefix)

    monkeypatch.setattr(storage, "walk", walk)
    report = checker.check_repository(0.0)
    if not other or report.counts["snapshots"] != 2:
        pytest.fail(f"the other backup did not commit during the check: {report.counts}")
    assert report.ok, report.errors


def test_a_check_beside_a_backup_on_the_same_machine_reports_no_damage(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    config = _one_dataset(tmp_path, 500_000)
    checker, storage = _checker(tmp_path, "cache")  # the backup's cache: one machine, one user
    real, other = storage.walk, []

    def walk(prefix: str) -> Iterator[Any]:
        yield from real(prefix)
        if prefix == "packs/meta" and not other:  # the packs are walked: now the backup commits
            other.append(DataManager.from_dict(config))
            other[0].backup("alpha")
            other[0].close()

    monkeypatch.setattr(storage, "walk", walk)
    report = checker.check_repository(0.0)
    if not other:
        pytest.fail("the backup did not run during the check")
    assert report.ok, report.errors


def test_a_restore_on_the_same_machine_survives_a_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _one_dataset(tmp_path, 1_500_000)  # chunks in several packs: read in several ranged reads
    checker, storage = _checker(tmp_path, "cache")
    real_list, reset, release = storage.list, threading.Event(), threading.Event()
    listings: list[str] = []

    def listing(prefix: str) -> Iterator[Any]:
        if prefix == "index":
            listings.append(prefix)
            if len(listings) == 2:  # the check reset the cache and syncs it again: held here a while
                reset.set()
                release.wait(60)
        return real_list(prefix)

    monkeypatch.setattr(storage, "list", listing)
    checked: list[Any] = []
    check = threading.Thread(target=lambda: checked.append(checker.check_repository(0.0)))
    dm = DataManager.from_dict(config)
    reader = dm.repository("vault").storage
    real_read = reader.open_read

    def open_read(key: str, *args: Any, **kwargs: Any) -> Any:
        if key.startswith("packs/data/") and not check.is_alive() and not checked:  # the restore has begun
            check.start()
            if not reset.wait(60):
                pytest.fail("the check did not reset the cache")
        return real_read(key, *args, **kwargs)

    monkeypatch.setattr(reader, "open_read", open_read)
    try:
        dm.restore("alpha", "latest", overrides={"f": {"path": str(tmp_path / "restored")}})
    finally:
        release.set()
        check.join(60)
        dm.close()
    assert checked and checked[0].ok, checked
