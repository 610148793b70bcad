"""Second copies (data_manager/operations/copy.py) between two filesystem storages: an exact, verified copy; a
re-run skips what is there; an interrupted copy is an incomplete backup the next run resumes; dry runs
write nothing; corrupt or crafted sources write nothing; bad input is one line and exit 2."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from data_manager.api import DataManager
from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.errors import CorruptBackupError, DataManagerError, RefusedError, StorageError, UsageError
from data_manager.locks import DatasetLock
from data_manager.types import Settings

from ..helpers import cli, make_sqlite, make_tree, snapshot


def _files(root: Path) -> dict[str, bytes]:
    """Every object below ``root`` (the storage), lock objects and temporary files left out."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and "/.locks/" not in f"/{rel}" and not path.name.endswith(".part"):
            out[rel] = path.read_bytes()
    return out


def _config(tmp_path: Path, **dataset: Any) -> dict[str, Any]:
    src = tmp_path / "src"
    if not src.exists():
        make_tree(src)
        (src / "big.bin").write_bytes(os.urandom(2_500_000))  # several 1 MiB blocks, stored as is
        make_sqlite(tmp_path / "notes.db")
    return {
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "a")},
                     "offsite": {"type": "filesystem", "root": str(tmp_path / "b")}},
        "datasets": {"exp42": {"storage": "local", **dataset,
                               "sources": [{"name": "raw", "type": "directory", "path": str(src)},
                                           {"name": "notes", "type": "sqlite", "path": str(tmp_path / "notes.db")}]}},
    }


def _toml(tmp_path: Path, copies: str = "", storage: str = "local") -> Path:
    """The same config as a file, for the command."""
    _config(tmp_path)
    path = tmp_path / "dm.toml"
    path.write_text(f"""
[storages.local]
type = "filesystem"
root = "{tmp_path / 'a'}"
[storages.offsite]
type = "filesystem"
root = "{tmp_path / 'b'}"
[datasets.exp42]
storage = "{storage}"
{copies}
[[datasets.exp42.sources]]
name = "raw"
type = "directory"
path = "{tmp_path / 'src'}"
""")
    return path


def _flip_config(config: dict[str, Any]) -> DataManager:
    """The same dataset read from its copy: what a user does when the first storage is lost."""
    flipped = json.loads(json.dumps(config))
    flipped["datasets"]["exp42"]["storage"] = "offsite"
    flipped["datasets"]["exp42"].pop("copies", None)
    return DataManager.from_dict(flipped)


def test_a_copy_is_the_backup_byte_for_byte_and_restores(tmp_path: Path) -> None:
    config = _config(tmp_path)
    dm = DataManager.from_dict(config)
    ts = dm.backup("exp42").timestamp
    result = dm.copy("exp42", "latest", to="offsite")
    assert [(b.timestamp, b.state, b.skipped) for b in result.backups] == [(ts, "copied", 0)]
    assert result.backups[0].artifacts >= 4 and result.job_id
    assert _files(tmp_path / "b") == _files(tmp_path / "a")  # as stored: no recompression, nothing more
    [listed] = dm.list_backups("exp42")
    assert (listed.complete, listed.storages, listed.incomplete_in) == (True, ["local", "offsite"], [])
    assert listed.to_json()["storages"] == ["local", "offsite"]
    job = dm.job(result.job_id)
    assert (job.kind, job.state, job.backup, [t.state for t in job.tasks]) == ("copy", "done", ts, ["done"])
    # The copy alone is enough: verified and restored from it.
    other = _flip_config(config)
    other.verify("exp42", ts)
    other.restore("exp42", ts, overrides={"raw": {"path": str(tmp_path / "back")}}, only=["raw"])
    assert snapshot(tmp_path / "back") == snapshot(tmp_path / "src")


def test_copying_again_skips_a_complete_copy_and_all_copies_only_what_is_missing(tmp_path: Path) -> None:
    dm = DataManager.from_dict(_config(tmp_path))
    first = dm.backup("exp42").timestamp
    dm.copy("exp42", first, to="offsite")
    before = {p: os.stat(tmp_path / "b" / p).st_ino for p in _files(tmp_path / "b")}
    again = dm.copy("exp42", "latest", to="offsite")
    assert [b.state for b in again.backups] == ["already complete"]
    second = dm.backup("exp42").timestamp
    every = dm.copy("exp42", "all", to="offsite")
    assert [(b.timestamp, b.state) for b in every.backups] == [(first, "already complete"), (second, "copied")]
    assert {p: os.stat(tmp_path / "b" / p).st_ino for p in before} == before  # nothing rewritten
    assert _files(tmp_path / "b") == _files(tmp_path / "a")
    assert [b.storages for b in dm.list_backups()] == [["local", "offsite"]] * 2  # each backup listed once


def test_an_interrupted_copy_is_incomplete_there_and_the_next_run_resumes_it(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path)
    dm = DataManager.from_dict(config)
    ts = dm.backup("exp42").timestamp
    real = FilesystemStorage.open_write
    written: list[str] = []

    def failing(self: FilesystemStorage, key: str) -> Any:
        if self.name == "offsite" and "/.locks/" not in f"/{key}":
            if len(written) == 3:
                raise StorageError(f"{key}: disk full (test)")
            written.append(key)
        return real(self, key)

    monkeypatch.setattr(FilesystemStorage, "open_write", failing)
    with pytest.raises(StorageError, match="disk full"):
        dm.copy("exp42", ts, to="offsite")
    assert not (tmp_path / "b" / "exp42" / ts / "backup.json").exists()
    [listed] = dm.list_backups("exp42")
    assert (listed.storages, listed.incomplete_in) == (["local"], ["offsite"])
    job = dm.jobs("exp42", running=False)[0]
    assert (job.kind, job.state) == ("copy", "failed") and job.error.startswith("to offsite: ")
    assert not list((tmp_path / "b" / "exp42" / ".locks").glob("*.json"))  # the lock was released
    with pytest.raises(UsageError, match="no complete backup"):
        _flip_config(config).verify("exp42")  # latest never picks the incomplete copy

    monkeypatch.setattr(FilesystemStorage, "open_write", real)
    done = {p: os.stat(tmp_path / "b" / p).st_ino for p in _files(tmp_path / "b")}
    resumed = dm.copy("exp42", ts, to="offsite")
    assert resumed.backups[0].skipped == sum(1 for k in written if not k.endswith(".json"))
    assert {p: os.stat(tmp_path / "b" / p).st_ino for p in done} == done  # what was copied was kept
    assert _files(tmp_path / "b") == _files(tmp_path / "a")
    _flip_config(config).verify("exp42", ts)


def test_a_dry_run_writes_nothing_and_records_no_job(tmp_path: Path) -> None:
    dm = DataManager.from_dict(_config(tmp_path))
    ts = dm.backup("exp42").timestamp
    jobs = len(dm.jobs(limit=None))
    plan = dm.copy("exp42", "all", to="offsite", dry_run=True)
    assert [(b.timestamp, b.state, b.skipped) for b in plan.backups] == [(ts, "would copy", 0)]
    assert plan.backups[0].bytes == sum(len(v) for k, v in _files(tmp_path / "a").items() if not k.endswith(".json"))
    assert not (tmp_path / "b").exists() and len(dm.jobs(limit=None)) == jobs


def test_a_corrupt_artifact_is_never_copied(tmp_path: Path) -> None:
    dm = DataManager.from_dict(_config(tmp_path))
    ts = dm.backup("exp42").timestamp
    vol = next((tmp_path / "a" / "exp42" / ts / "raw").glob("vol-*"))
    data = bytearray(vol.read_bytes())
    data[len(data) // 2] ^= 1
    vol.write_bytes(bytes(data))
    with pytest.raises(CorruptBackupError, match=vol.name):
        dm.copy("exp42", ts, to="offsite")
    copied = _files(tmp_path / "b")
    assert not any(k.endswith(vol.name) or k.endswith("backup.json") for k in copied), copied


@pytest.mark.parametrize("craft", [
    lambda doc: doc["sources"][0]["artifacts"][0].update(name="../../escape"),
    lambda doc: doc["sources"][0].update(name="../raw"),
    lambda doc: doc["sources"][0]["artifacts"][0].update(stored_size=-1),
    lambda doc: doc["sources"].append(dict(doc["sources"][0])),
])
def test_a_crafted_manifest_writes_nothing(tmp_path: Path, craft: Any) -> None:
    dm = DataManager.from_dict(_config(tmp_path))
    ts = dm.backup("exp42").timestamp
    meta = tmp_path / "a" / "exp42" / ts / "backup.json"
    doc = json.loads(meta.read_text())
    craft(doc)
    meta.write_text(json.dumps(doc))
    with pytest.raises(CorruptBackupError):
        dm.copy("exp42", ts, to="offsite")
    assert not _files(tmp_path / "b") and not (tmp_path / "escape").exists()


def test_another_complete_backup_under_the_same_name_is_not_overwritten(tmp_path: Path) -> None:
    dm = DataManager.from_dict(_config(tmp_path))
    ts = dm.backup("exp42").timestamp
    dm.copy("exp42", ts, to="offsite")
    theirs = tmp_path / "b" / "exp42" / ts / "backup.json"
    doc = json.loads(theirs.read_text())
    doc["host"] = "elsewhere"
    theirs.write_text(json.dumps(doc))
    with pytest.raises(DataManagerError, match="holds another complete backup"):
        dm.copy("exp42", ts, to="offsite")
    assert json.loads(theirs.read_text())["host"] == "elsewhere"


def test_a_copy_takes_the_datasets_lock_in_the_target(tmp_path: Path) -> None:
    dm = DataManager.from_dict(_config(tmp_path))
    dm.backup("exp42")
    holder = DatasetLock(dm.storage("offsite"), "exp42", "otherjob0001", "copy", dm.lock_settings)
    holder.acquire()
    try:
        with pytest.raises(RefusedError, match="locked by"):
            dm.copy("exp42", to="offsite")
        dm.backup("exp42")  # the lock in the target does not hold up the dataset's own storage
    finally:
        holder.release()
    assert not (tmp_path / "b" / "exp42").exists() or not list((tmp_path / "b" / "exp42").glob("2*"))


def test_copies_copy_every_backup_after_it_completes(tmp_path: Path) -> None:
    dm = DataManager.from_dict(_config(tmp_path, copies=["offsite"]))
    result = dm.backup("exp42")
    assert (result.copies, result.copy_error) == (["offsite"], None)
    assert result.to_json()["copies"] == ["offsite"]
    assert _files(tmp_path / "b") == _files(tmp_path / "a")


# --------------------------------------------------------------------------- through the command


def _one_line(r: Any, code: int) -> str:
    assert r.returncode == code, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("data-manager: error: ") and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_cli_copy_list_and_json(tmp_path: Path) -> None:
    config = _toml(tmp_path)
    assert cli("backup", "exp42", config=config).returncode == 0
    r = cli("copy", "exp42", "--to", "offsite", "--dry-run", config=config)
    assert r.returncode == 0 and "would copy" in r.stdout and not (tmp_path / "b").exists(), r.stderr
    r = cli("copy", "latest", "exp42", "--to", "offsite", "--json", config=config)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["source"], doc["target"], [b["state"] for b in doc["backups"]]) == ("local", "offsite", ["copied"])
    r = cli("list", "backup", "exp42", config=config)
    assert r.returncode == 0 and "local,offsite" in r.stdout and "STORAGES" in r.stdout, r.stdout
    listed = json.loads(cli("list", "backup", "--json", config=config).stdout)
    assert [b["storages"] for b in listed] == [["local", "offsite"]]
    r = cli("copy", "--all", "exp42", "--to", "offsite", config=config)
    assert r.returncode == 0 and "already complete in offsite" in r.stdout, r.stdout


@pytest.mark.parametrize("args, words", [
    (("copy", "exp42", "--to", "nowhere"), "unknown storage"),
    (("copy", "exp42", "--to", "local"), "where exp42's backups are"),
    (("copy", "nope", "--to", "offsite"), "unknown dataset"),
    (("copy", "2026-11-23", "exp42", "--to", "offsite"), "bad timestamp"),
    (("copy", "20200101T000000Z", "exp42", "--to", "offsite"), "no backup"),
    (("copy", "--all", "latest", "exp42", "--to", "offsite"), "--all"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...], words: str) -> None:
    config = _toml(tmp_path)
    assert cli("backup", "exp42", config=config).returncode == 0
    assert words in _one_line(cli(*args, config=config), 2)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("copies, words", [
    ('copies = ["offsite", "elsewhere"]', "key 'copies': unknown storage 'elsewhere'"),
    ('copies = ["local"]', "key 'copies': 'local' is the dataset's own storage"),
    ('copies = "offsite"', "key 'copies': must be a list"),
])
def test_cli_bad_copies_is_a_config_error(tmp_path: Path, copies: str, words: str) -> None:
    config = _toml(tmp_path, copies)
    line = _one_line(cli("backup", "exp42", config=config), 2)
    assert str(config) in line and "dataset 'exp42'" in line and words in line, line


def test_cli_a_failed_copy_after_a_backup_keeps_the_backup_and_exits_1(tmp_path: Path) -> None:
    config = _toml(tmp_path, 'copies = ["offsite"]')
    (tmp_path / "b").write_text("not a directory: every write to offsite fails")
    r = cli("backup", "exp42", config=config)
    line = _one_line(r, 1)
    assert "is complete, but its copy to 'offsite' failed" in line and "backup exp42/" in r.stdout, r.stdout
    listed = json.loads(cli("list", "backup", "exp42", "--json", config=config).stdout)
    assert [(b["complete"], b["storages"]) for b in listed] == [(True, ["local"])]
    assert cli("verify", "exp42", config=config).returncode == 0
    status = cli("status", config=config).stdout
    assert "copy exp42" in status and "FAILED" in status and "to offsite:" in status, status
    r = cli("backup", "exp42", "--json", config=config)
    assert r.returncode == 1 and json.loads(r.stdout)["copy_error"], r.stderr


def test_a_resumed_copy_keeps_a_source_json_that_matches_and_rewrites_one_that_does_not(tmp_path: Path) -> None:
    """Every source was copied, then the copy stopped before its backup.json: the next run writes only that,
    keeping each source.json that holds the source's content; one that holds anything else is rewritten."""
    dm = DataManager.from_dict(_config(tmp_path))
    ts = dm.backup("exp42").timestamp
    dm.copy("exp42", ts, to="offsite")
    b = tmp_path / "b" / "exp42" / ts
    (b / "backup.json").unlink()
    raw, notes = b / "raw" / "source.json", b / "notes" / "source.json"
    kept = raw.stat().st_ino
    notes.write_text(json.dumps({"name": "notes", "artifacts": []}))  # another content: not the source's
    again = dm.copy("exp42", ts, to="offsite")
    assert again.backups[0].state == "copied" and again.backups[0].artifacts == 0
    assert raw.stat().st_ino == kept
    assert notes.read_bytes() == (tmp_path / "a" / "exp42" / ts / "notes" / "source.json").read_bytes()
    assert _files(tmp_path / "b") == _files(tmp_path / "a")
    (b / "backup.json").unlink()
    notes.write_bytes(b"{not json")  # damaged: rewritten too
    dm.copy("exp42", ts, to="offsite")
    assert _files(tmp_path / "b") == _files(tmp_path / "a")


# --------------------------------------------------------------------------- copy_object (survivors of scripts/mutation worm)


def _one_volume(tmp_path: Path) -> tuple[FilesystemStorage, FilesystemStorage, str, Any]:
    """A backup's first directory volume: the two storages, its key and its record."""
    from data_manager.engines.records import checked_sources
    from data_manager.engines.worm import WormEngine

    dm = DataManager.from_dict(_config(tmp_path))
    ts = dm.backup("exp42").timestamp
    src = FilesystemStorage("local", Settings({"root": str(tmp_path / "a")}))
    dst = FilesystemStorage("offsite", Settings({"root": str(tmp_path / "b")}))
    manifest = WormEngine(src).read_manifest("exp42", ts)
    raw = next(s for s in checked_sources(manifest, "test") if s.name == "raw")
    art = next(a for a in raw.artifacts if a.name.startswith("vol-"))
    return src, dst, f"exp42/{ts}/raw/{art.stored_name}", art


def test_copy_object_counts_every_stored_byte_as_progress(tmp_path: Path) -> None:
    from data_manager.engines.worm import copy_object

    src, dst, key, art = _one_volume(tmp_path)
    counted: list[int] = []
    copy_object(src, dst, key, art, counted.append)
    assert sum(counted) == art.stored_size and (tmp_path / "b" / key).read_bytes() == (tmp_path / "a" / key).read_bytes()


def test_copy_object_refuses_an_object_longer_than_recorded(tmp_path: Path) -> None:
    from data_manager.engines.worm import copy_object

    src, dst, key, art = _one_volume(tmp_path)
    with open(tmp_path / "a" / key, "ab") as f:
        f.write(b"appended by whoever holds the bucket")
    with pytest.raises(CorruptBackupError) as e:
        copy_object(src, dst, key, art)
    assert str(e.value) == f"{src.location()}: {key}: longer than the {art.stored_size} bytes stored, as recorded"
    assert not (tmp_path / "b" / key).exists()


def test_copy_object_passes_on_a_target_that_cannot_be_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from data_manager.engines.worm import copy_object

    src, dst, key, art = _one_volume(tmp_path)

    def refuse(key: str) -> Any:
        raise StorageError(f"{key}: read-only (test)")

    monkeypatch.setattr(dst, "open_write", refuse)
    with pytest.raises(StorageError, match="read-only \\(test\\)"):
        copy_object(src, dst, key, art)


def test_a_copy_reports_its_size_and_each_source_as_it_goes(tmp_path: Path) -> None:
    """``begin`` gets the copy's title and the bytes it will move; ``progress`` a counter per source."""
    from data_manager.engines.worm import WormEngine

    DataManager.from_dict(_config(tmp_path)).backup("exp42")
    src = WormEngine(FilesystemStorage("local", Settings({"root": str(tmp_path / "a")})))
    dst = WormEngine(FilesystemStorage("offsite", Settings({"root": str(tmp_path / "b")})))
    [ts] = src.timestamps("exp42")
    begun: list[tuple[str, int]] = []
    counted: dict[str, int] = {}

    def progress(name: str) -> Any:
        counted[name] = 0
        return lambda n: counted.__setitem__(name, counted[name] + n)

    done = src.copy_backup(dst, "exp42", ts, dry_run=False, check=lambda: None, progress=progress,
                           begin=lambda title, total: begun.append((title, total)))
    stored = sum(f.stat().st_size for f in (tmp_path / "a" / "exp42" / ts).rglob("*")
                 if f.is_file() and f.name not in ("source.json", "backup.json"))
    assert begun == [(f"copy exp42/{ts} to {dst.storage.location()}", stored)]
    assert counted == {f"{ts}/raw": counted[f"{ts}/raw"], f"{ts}/notes": counted[f"{ts}/notes"]}
    assert sum(counted.values()) == stored and done.artifacts == sum(
        1 for f in (tmp_path / "a" / "exp42" / ts).rglob("*") if f.is_file() and f.name not in ("source.json", "backup.json"))


def test_a_dry_run_reports_no_progress_and_a_copy_needs_no_callbacks(tmp_path: Path) -> None:
    from data_manager.engines.worm import WormEngine

    DataManager.from_dict(_config(tmp_path)).backup("exp42")
    src = WormEngine(FilesystemStorage("local", Settings({"root": str(tmp_path / "a")})))
    dst = WormEngine(FilesystemStorage("offsite", Settings({"root": str(tmp_path / "b")})))
    [ts] = src.timestamps("exp42")
    called: list[object] = []
    dry = src.copy_backup(dst, "exp42", ts, dry_run=True, check=lambda: None,
                          progress=lambda name: called.append(name), begin=lambda *a: called.append(a))
    assert called == [] and dry.state == "would copy" and not (tmp_path / "b" / "exp42").exists()
    done = src.copy_backup(dst, "exp42", ts, dry_run=False, check=lambda: None, progress=None, begin=None)
    assert done.state == "copied" and _files(tmp_path / "b") == _files(tmp_path / "a")
