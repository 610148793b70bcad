"""Backups crafted by someone who can write to the storage: the restore refuses them (exit 4), writes nothing
outside its target, and leaves the target as it was."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from blake3 import blake3

from data_manager import DataManager
from data_manager.errors import CorruptBackupError, ExitCode, UsageError

from ..helpers import cli, snapshot, write_config

Member = tuple[str, str, bytes | str]  # (kind, name, data or link target)


def tar_volume(members: list[Member], mode: int = 0o644) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, payload in members:
            info = tarfile.TarInfo(name)
            info.mode = mode
            info.mtime = 1_700_000_000
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(payload)
                tar.addfile(info)
            else:
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def index_of(volumes: list[bytes]) -> bytes:
    """The files.jsonl a real backup of these volumes would have."""
    lines = []
    for raw in volumes:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for m in tar:
                kind = "dir" if m.isdir() else "symlink" if m.issym() else "file"
                entry = {"path": m.name, "type": kind, "mode": m.mode}
                if kind == "file":
                    entry["size"] = m.size
                if kind == "symlink":
                    entry["target"] = m.linkname
                lines.append(json.dumps(entry) + "\n")
    return "".join(lines).encode()


class Crafted:
    """A real backup of dataset ``exp42`` whose ``raw`` source is then replaced by crafted volumes."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.store = tmp_path / "store"
        self.src = tmp_path / "src"
        self.src.mkdir()
        (self.src / "real.txt").write_text("real\n")
        self.config = write_config(tmp_path / "dm.toml", self.store, {"raw": self.src})
        self.dm = DataManager.from_file(self.config)
        self.timestamp = self.dm.backup("exp42").timestamp
        self.dir = self.store / "exp42" / self.timestamp
        self.target = tmp_path / "target"
        self.target.mkdir()
        (self.target / "precious.txt").write_text("keep me\n")
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        os.chmod(self.outside, 0o755)

    def manifest(self) -> dict:
        return json.loads((self.dir / "backup.json").read_text())

    def save(self, manifest: dict) -> None:
        (self.dir / "backup.json").write_text(json.dumps(manifest, indent=2))

    def replace(self, volumes: list[bytes], index: bytes | None = None, edit: Callable[[dict], None] | None = None) -> None:
        """Put ``volumes`` (stored as-is) and an index in place of the source's artifacts, digests made to match."""
        manifest = self.manifest()
        raw = next(s for s in manifest["sources"] if s["name"] == "raw")
        shutil.rmtree(self.dir / "raw")
        (self.dir / "raw").mkdir()
        artifacts = []
        named = [(f"vol-{i:06d}.tar", data) for i, data in enumerate(volumes, 1)]
        named.append(("files.jsonl", index_of(volumes) if index is None else index))
        for name, data in named:
            (self.dir / "raw" / name).write_bytes(data)
            artifacts.append({"name": name, "file": name, "size": len(data), "blake3": blake3(data).hexdigest(),
                              "stored_size": len(data), "compression": "none"})
        raw["artifacts"] = artifacts
        raw["info"]["volumes"] = [n for n, _ in named[:-1]]
        if edit is not None:
            edit(raw)
        self.save(manifest)

    def restore(self) -> None:
        self.dm.restore("exp42", self.timestamp, overrides={"raw": {"path": str(self.target)}})

    def refused(self, match: str | None = None) -> None:
        """The restore is refused as corrupt; the target and everything outside it unchanged."""
        before = snapshot(self.target)
        outside_mode = os.stat(self.outside).st_mode
        with pytest.raises(CorruptBackupError, match=match):
            self.restore()
        assert snapshot(self.target) == before
        assert list(self.outside.iterdir()) == []
        assert os.stat(self.outside).st_mode == outside_mode
        leftovers = [p.name for p in self.tmp.iterdir() if ".dm-" in p.name]
        assert leftovers == []


@pytest.fixture
def crafted(tmp_path: Path) -> Crafted:
    return Crafted(tmp_path)


def test_the_crafting_itself_restores(crafted: Crafted) -> None:
    """The harness is sound: well-formed crafted volumes restore (so a refusal below is the defence's doing)."""
    crafted.replace([tar_volume([("dir", "d", b""), ("file", "d/a.txt", b"a")]), tar_volume([("file", "b.txt", b"b")])])
    crafted.restore()
    assert (crafted.target / "d" / "a.txt").read_bytes() == b"a"
    assert (crafted.target / "b.txt").read_bytes() == b"b"
    assert not (crafted.target / "precious.txt").exists()


def test_a_symlink_in_one_volume_and_a_file_through_it_in_the_next(crafted: Crafted) -> None:
    crafted.replace([tar_volume([("symlink", "l", str(crafted.outside))]), tar_volume([("file", "l/x", b"evil")])])
    crafted.refused("symlink")


def test_a_symlink_in_one_volume_and_a_directory_entry_of_its_name_in_the_next(crafted: Crafted) -> None:
    """A directory entry ``l`` with mode 0777 must not chmod the directory the link points at."""
    crafted.replace([tar_volume([("symlink", "l", str(crafted.outside))]), tar_volume([("dir", "l", b"")], mode=0o777)])
    crafted.refused()


def test_a_symlink_then_a_deeper_file_in_the_same_volume(crafted: Crafted) -> None:
    crafted.replace([tar_volume([("symlink", "l", str(crafted.outside)), ("file", "l/sub/x", b"evil")])])
    crafted.refused("symlink")


@pytest.mark.parametrize("name", ["sub/../../evil", "../evil", "/abs", "a//b", "./x", "a/./b"])
def test_unsafe_member_names(crafted: Crafted, name: str) -> None:
    crafted.replace([tar_volume([("file", name, b"evil")])])
    crafted.refused("unsafe path")


@pytest.mark.parametrize("members", [
    [("file", "x", b"1"), ("file", "x", b"2")],
    [("file", "x", b"1"), ("symlink", "x", "/etc")],
    [("symlink", "x", "/etc"), ("file", "x", b"1")],
    [("file", "x", b"1"), ("dir", "x", b"")],
], ids=["file-twice", "file-then-symlink", "symlink-then-file", "file-then-dir"])
def test_a_name_that_comes_twice(crafted: Crafted, members: list[Member]) -> None:
    crafted.replace([tar_volume(members)])
    crafted.refused()


def test_a_name_that_comes_twice_across_volumes(crafted: Crafted) -> None:
    crafted.replace([tar_volume([("file", "x", b"1")]), tar_volume([("symlink", "x", "/etc")])])
    crafted.refused("twice")


def test_a_member_larger_than_its_data(crafted: Crafted) -> None:
    volume = tar_volume([("file", "big", b"x" * 5000)])
    # Header and two blocks of data: the member says 5000 bytes.
    crafted.replace([volume[:1536]], index=b'{"path": "big", "type": "file", "size": 5000}\n')
    crafted.refused()


def test_a_volume_that_is_not_tar(crafted: Crafted) -> None:
    crafted.replace([b"\x00not a tar volume" * 100], index=b"")
    crafted.refused()


def test_an_index_that_does_not_match_the_volumes(crafted: Crafted) -> None:
    volume = tar_volume([("file", "a", b"a")])
    crafted.replace([volume], index=index_of([volume]) + b'{"path": "b", "type": "file", "size": 1}\n')
    crafted.refused("files.jsonl")


def test_an_index_that_is_not_json(crafted: Crafted) -> None:
    crafted.replace([tar_volume([("file", "a", b"a")])], index=b"{not json\n")
    crafted.refused("files.jsonl")


def test_a_corrupt_index_is_found_on_restore_not_only_by_verify(crafted: Crafted) -> None:
    """files.jsonl's bytes no longer match its recorded digest."""
    crafted.replace([tar_volume([("file", "a", b"a")])])
    index = crafted.dir / "raw" / "files.jsonl"
    data = bytearray(index.read_bytes())
    data[5] ^= 1
    index.write_bytes(bytes(data))
    crafted.refused("files.jsonl")


def test_a_recorded_volume_list_that_is_not_a_list(crafted: Crafted) -> None:
    crafted.replace([tar_volume([("file", "a", b"a")])], edit=lambda raw: raw["info"].update(volumes="vol-000001.tar"))
    crafted.refused("volume list")


def test_setuid_and_setgid_bits_are_dropped(crafted: Crafted) -> None:
    crafted.replace([tar_volume([("file", "tool", b"#!/bin/sh\n")], mode=0o6755)])
    crafted.restore()
    assert stat.S_IMODE(os.stat(crafted.target / "tool").st_mode) == 0o755


def test_keep_setuid_keeps_them(crafted: Crafted) -> None:
    crafted.replace([tar_volume([("file", "tool", b"#!/bin/sh\n")], mode=0o6755)])
    crafted.dm.restore("exp42", crafted.timestamp, overrides={"raw": {"path": str(crafted.target), "keep_setuid": True}})
    assert stat.S_IMODE(os.stat(crafted.target / "tool").st_mode) == 0o6755


# --------------------------------------------------------------------------- where a backup says it belongs


def test_a_backup_copied_under_another_data_id_is_refused(crafted: Crafted) -> None:
    """The storage's layout, not the manifest, says which dataset a backup is; a mismatch is corrupt."""
    other = crafted.store / "exp43" / crafted.timestamp
    other.parent.mkdir()
    shutil.copytree(crafted.dir, other)
    config = crafted.tmp / "two.toml"
    config.write_text(crafted.config.read_text() + '\n[datasets.exp43]\n[[datasets.exp43.sources]]\nname = "raw"\n'
                      f'type = "directory"\npath = "{crafted.target}"\n')
    dm = DataManager.from_file(config)
    with pytest.raises(CorruptBackupError, match="exp42"):
        dm.restore("exp43", crafted.timestamp)
    [info] = dm.list_backups("exp43")
    assert not info.complete and "exp42" in (info.damaged or "")
    assert (crafted.target / "precious.txt").exists()


def test_a_backup_whose_timestamp_was_changed_is_refused(crafted: Crafted) -> None:
    manifest = crafted.manifest()
    manifest["timestamp"] = "20200101T000000Z"
    crafted.save(manifest)
    with pytest.raises(CorruptBackupError, match="20200101T000000Z"):
        crafted.restore()


def test_a_source_not_in_the_config_needs_a_target(crafted: Crafted) -> None:
    """The storage's content never picks where data is written: a source the config does not have is restored
    only where --set puts it."""
    manifest = crafted.manifest()
    extra = json.loads(json.dumps(manifest["sources"][0]))
    extra["name"] = "stray"
    extra["settings"]["path"] = str(crafted.outside / "planted")
    manifest["sources"].append(extra)
    crafted.save(manifest)
    shutil.copytree(crafted.dir / "raw", crafted.dir / "stray")
    with pytest.raises(UsageError, match=r"--set stray\.path="):
        crafted.dm.restore("exp42", crafted.timestamp, overrides={"raw": {"path": str(crafted.target)}})
    assert list(crafted.outside.iterdir()) == []
    elsewhere = crafted.tmp / "stray-here"
    crafted.dm.restore("exp42", crafted.timestamp,
                       overrides={"raw": {"path": str(crafted.target)}, "stray": {"path": str(elsewhere)}})
    assert (elsewhere / "real.txt").read_text() == "real\n"
    assert list(crafted.outside.iterdir()) == []


def test_the_cli_exits_4_with_one_line(crafted: Crafted) -> None:
    crafted.replace([tar_volume([("symlink", "l", str(crafted.outside))]), tar_volume([("file", "l/x", b"evil")])])
    r = cli("restore", crafted.timestamp, "exp42", "--yes", "--set", f"raw.path={crafted.target}", config=crafted.config)
    assert r.returncode == ExitCode.CORRUPT, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert list(crafted.outside.iterdir()) == []
    assert (crafted.target / "precious.txt").read_text() == "keep me\n"
