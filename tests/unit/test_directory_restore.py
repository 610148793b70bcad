"""Restores of crafted or damaged volumes: they fail as corrupt, write nothing outside the target, and leave
the target as it was. Tested through the API on real backups whose volumes are then replaced."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from data_manager.api import DataManager
from data_manager.errors import CorruptBackupError
from tests.helpers import replace_artifact, snapshot


def manager(tmp_path: Path, src: Path) -> DataManager:
    return DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "datasets": {"d": {"sources": [{"name": "raw", "type": "directory", "path": str(src)}]}},
    })


def everything(root: Path) -> list[str]:
    """Every path below ``root`` but the backups and the state directory, symlinks not followed."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel.split(os.sep)[0] == "backups":
            continue
        out += [os.path.join(rel, n) for n in dirnames + filenames]
    return sorted(out)


def craft(tmp_path: Path, ts: str, name: str, kind: str) -> None:
    """Replace the backup's one volume by a pax tar volume holding a harmless file, then a member called
    ``name``, and its index by one listing exactly those two (so only the name is wrong)."""
    buf = io.BytesIO()
    index = [{"path": "ok.txt", "type": "file", "mode": 0o644, "mtime_ns": 0, "size": 3, "volume": "vol-000001.tar"}]
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 3
        tar.addfile(ok, io.BytesIO(b"ok\n"))
        member = tarfile.TarInfo(name)
        entry = {"path": name, "type": kind, "mode": 0o644, "mtime_ns": 0, "volume": "vol-000001.tar"}
        if kind == "file":
            member.size = 4
            tar.addfile(member, io.BytesIO(b"evil"))
            entry["size"] = 4
        elif kind == "dir":
            member.type = tarfile.DIRTYPE
            tar.addfile(member)
        else:
            member.type, member.linkname = tarfile.SYMTYPE, "/etc"
            tar.addfile(member)
            entry["target"] = "/etc"
        index.append(entry)
    backup = tmp_path / "backups" / "d" / ts
    replace_artifact(backup, "raw", "vol-000001.tar", buf.getvalue())
    replace_artifact(backup, "raw", "files.jsonl", "".join(json.dumps(e) + "\n" for e in index).encode())


@pytest.mark.parametrize("name, kind", [
    ("sub/../../evil", "file"), ("sub/../../evil", "dir"), ("sub/../../evil", "symlink"), ("../evil", "file"),
    ("sub/../../../evil", "file"), ("{abs}/evil", "file"), ("{abs}/evil", "dir"), ("a//b", "file"),
])
def test_unsafe_member_names_are_refused(tmp_path: Path, name: str, kind: str) -> None:
    target = tmp_path / "t" / "raw"
    (target / "sub").mkdir(parents=True)
    (target / "keep.txt").write_text("mine")
    dm = manager(tmp_path, target)
    ts = dm.backup("d").timestamp
    (target / "keep.txt").write_text("changed after the backup")  # a successful restore would undo this
    craft(tmp_path, ts, name.format(abs=tmp_path / "abs"), kind)
    before, around = snapshot(target), everything(tmp_path)

    with pytest.raises(CorruptBackupError):
        dm.restore("d")
    assert snapshot(target) == before
    assert everything(tmp_path) == around  # nothing written beside the target, or anywhere else
    assert not (tmp_path / "abs").exists()


def test_a_crafted_volume_restores_when_its_names_are_safe(tmp_path: Path) -> None:
    """The crafting above is sound: with a safe name the same kind of volume restores."""
    target = tmp_path / "t" / "raw"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("mine")
    dm = manager(tmp_path, target)
    ts = dm.backup("d").timestamp
    craft(tmp_path, ts, "fine", "file")
    dm.restore("d")
    assert (target / "ok.txt").read_text() == "ok\n" and (target / "fine").read_bytes() == b"evil"
    assert not (target / "keep.txt").exists()


def test_a_flipped_byte_in_a_volume_of_whole_tar_records_is_caught(tmp_path: Path) -> None:
    """tar reads 10240-byte records: when a volume is a whole number of them, tar stops right at its end
    without reading past it, so only the restore's own read to EOF checks the volume's digest."""
    target = tmp_path / "t" / "raw"
    target.mkdir(parents=True)
    # 1536 bytes of pax and ustar headers + 69,120 of data + 1024 of trailer = 7 records of 10240 bytes.
    (target / "noise.bin").write_bytes(os.urandom(69_120))
    dm = manager(tmp_path, target)
    ts = dm.backup("d").timestamp
    [vol] = (tmp_path / "backups" / "d" / ts / "raw").glob("vol-*")
    assert vol.name == "vol-000001.tar"  # stored as-is: the flipped byte reaches tar unchanged
    data = bytearray(vol.read_bytes())
    assert len(data) % tarfile.RECORDSIZE == 0, len(data)
    data[1536 + 30_000] ^= 0x01  # inside the file's data: no tar header notices
    vol.write_bytes(data)
    (target / "noise.bin").write_bytes(b"changed after the backup")
    before, around = snapshot(target), everything(tmp_path)

    with pytest.raises(CorruptBackupError):
        dm.restore("d")
    assert snapshot(target) == before
    assert everything(tmp_path) == around


def test_leftovers_are_found_beside_the_real_target_of_a_symlink(tmp_path: Path) -> None:
    from data_manager.builtin.directory import DirectorySource
    from data_manager.types import Settings

    real = tmp_path / "volumes" / "data"
    real.mkdir(parents=True)
    link = tmp_path / "data"
    link.symlink_to(real)
    staging = real.parent / ".data.dm-restore-0123abcd"
    (staging / "sub").mkdir(parents=True)
    beside_link = tmp_path / ".data.dm-restore-feedbeef"  # not ours: the target is where the link points
    beside_link.mkdir()
    source = DirectorySource("raw", Settings({"path": str(link)}))
    assert source.restore_leftovers(remove=False) == [str(staging)]
    assert staging.exists()
    assert source.restore_leftovers(remove=True) == [str(staging)]
    assert not staging.exists() and beside_link.exists() and real.exists()
    assert DirectorySource("raw", Settings({"path": str(real)})).restore_leftovers(remove=False) == []


# --------------------------------------------------------------------------- survivors of scripts/mutation directory


def test_the_restored_root_loses_setuid_and_setgid_unless_asked(tmp_path: Path) -> None:
    """The root directory's mode is set last, apart from its members: it is stripped the same way."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    os.chmod(src, 0o2775)  # a group-shared directory: setgid
    dm = manager(tmp_path, src)
    dm.backup("d")
    plain, kept = tmp_path / "plain", tmp_path / "kept"
    dm.restore("d", overrides={"raw": {"path": str(plain)}})
    dm.restore("d", overrides={"raw": {"path": str(kept), "keep_setuid": True}})
    assert os.stat(plain).st_mode & 0o7777 == 0o775
    assert os.stat(kept).st_mode & 0o7777 == 0o2775


def test_files_of_another_owner_are_restored_with_that_owner(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give files away")
    src = tmp_path / "src"
    src.mkdir()
    (src / "theirs").write_bytes(b"data")
    os.chown(src / "theirs", 1234, 4321)
    dm = manager(tmp_path, src)
    dm.backup("d")
    out = tmp_path / "out"
    dm.restore("d", overrides={"raw": {"path": str(out)}})
    st = os.stat(out / "theirs")
    assert (st.st_uid, st.st_gid) == (1234, 4321) and (out / "theirs").read_bytes() == b"data"


def test_index_lines_are_read_one_by_one_when_the_batch_does_not_line_up() -> None:
    """A line holding two JSON values (``1, 2``) must not shift every line after it."""
    from data_manager.builtin.directory import _entries

    out = _entries([b"1, 2", b'{"a": 3}'])
    assert isinstance(out[0], ValueError) and out[1] == {"a": 3}
    assert _entries([b"1", b"[2]"]) == [1, [2]]


def test_an_index_naming_other_files_than_the_volumes_is_refused(tmp_path: Path) -> None:
    """Same count, same sizes, one other name: the index's digest of the entries must differ."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "seed").write_bytes(b"x")
    dm = manager(tmp_path, src)
    ts = dm.backup("d").timestamp
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 3
        tar.addfile(ok, io.BytesIO(b"ok\n"))
    index = {"path": "ko.txt", "type": "file", "mode": 0o644, "mtime_ns": 0, "size": 3, "volume": "vol-000001.tar"}
    backup = tmp_path / "backups" / "d" / ts
    replace_artifact(backup, "raw", "vol-000001.tar", buf.getvalue())
    replace_artifact(backup, "raw", "files.jsonl", (json.dumps(index) + "\n").encode())
    before = everything(tmp_path)
    with pytest.raises(CorruptBackupError, match="^raw/files.jsonl: lists 1 entries that differ from the 1 in the "
                                                 "volumes$"):
        dm.restore("d", overrides={"raw": {"path": str(tmp_path / "out")}})
    assert everything(tmp_path) == before


def test_a_restore_target_below_missing_directories_is_created(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    dm = manager(tmp_path, src)
    dm.backup("d")
    deep = tmp_path / "x" / "y" / "z" / "out"
    dm.restore("d", overrides={"raw": {"path": str(deep)}})
    assert (deep / "f").read_bytes() == b"data"
