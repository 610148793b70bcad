"""Directory restore: what the mutation sample of 2026-12-03 (the thirteenth session) found no test for. A
member's mode is exact whatever the umask; ownership is only given away as root; setuid bits survive a
chown; crafted volumes (a NUL in a pax path, a member cut short) and indexes (a bad line) are refused with
a message that says where."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from data_manager.api import DataManager
from data_manager.errors import CorruptBackupError
from tests.helpers import replace_artifact


def manager(tmp_path: Path, src: Path) -> DataManager:
    return DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "datasets": {"d": {"sources": [{"name": "raw", "type": "directory", "path": str(src)}]}},
    })


def backed_up(tmp_path: Path) -> tuple[DataManager, str]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "seed").write_bytes(b"x")
    dm = manager(tmp_path, src)
    return dm, dm.backup("d").timestamp


def put_volume(tmp_path: Path, ts: str, volume: bytes, index: list[dict]) -> None:
    backup = tmp_path / "backups" / "d" / ts
    replace_artifact(backup, "raw", "vol-000001.tar", volume)
    replace_artifact(backup, "raw", "files.jsonl", "".join(json.dumps(e) + "\n" for e in index).encode())


def restore_modes(tmp_path: Path, modes: tuple[int, ...], umask: int) -> None:
    """Files ``m<mode>`` of these modes backed up, then restored to ``out`` under ``umask``: each mode exact."""
    src = tmp_path / "src"
    src.mkdir()
    for mode in modes:
        (src / f"m{mode:o}").write_bytes(b"data")
        os.chmod(src / f"m{mode:o}", mode)
    dm = manager(tmp_path, src)
    dm.backup("d")
    old = os.umask(umask)
    try:
        dm.restore("d", overrides={"raw": {"path": str(tmp_path / "out")}})
    finally:
        os.umask(old)
    for mode in modes:
        assert os.stat(tmp_path / "out" / f"m{mode:o}").st_mode & 0o7777 == mode


def test_modes_the_umask_would_clear_are_restored_exactly(tmp_path: Path) -> None:
    restore_modes(tmp_path, (0o666, 0o777, 0o640, 0o600), umask=0o027)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_a_setuid_file_of_another_owner_keeps_its_bits_when_asked(tmp_path: Path) -> None:
    """chown clears setuid bits: the mode is set after it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "tool").write_bytes(b"#!/bin/sh\n")
    os.chown(src / "tool", 1234, 4321)
    os.chmod(src / "tool", 0o4755)
    dm = manager(tmp_path, src)
    dm.backup("d")
    dm.restore("d", overrides={"raw": {"path": str(tmp_path / "out"), "keep_setuid": True}})
    st = os.stat(tmp_path / "out" / "tool")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 4321, 0o4755)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to see that no chown happens")
def test_not_root_means_no_file_is_given_away(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restore that is not root's keeps its own ownership (an fchown would fail with EPERM there)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "theirs").write_bytes(b"data")
    os.chown(src / "theirs", 1234, 4321)
    dm = manager(tmp_path, src)
    dm.backup("d")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    chowned: list[tuple] = []
    monkeypatch.setattr(os, "fchown", lambda *a: chowned.append(a))
    dm.restore("d", overrides={"raw": {"path": str(tmp_path / "out")}})
    assert chowned == [] and (tmp_path / "out" / "theirs").read_bytes() == b"data"


def test_a_nul_in_a_pax_path_is_a_corrupt_backup(tmp_path: Path) -> None:
    dm, ts = backed_up(tmp_path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x")
        info.size = 1
        info.pax_headers = {"path": "ok\0evil"}
        tar.addfile(info, io.BytesIO(b"e"))
    put_volume(tmp_path, ts, buf.getvalue(), [{"path": "ok\0evil", "type": "file", "mode": 0o644,
                                               "mtime_ns": 0, "size": 1, "volume": "vol-000001.tar"}])
    with pytest.raises(CorruptBackupError, match=r"unsafe path .ok\\x00evil"):
        dm.restore("d", overrides={"raw": {"path": str(tmp_path / "out")}})
    assert not (tmp_path / "out").exists()


def test_a_member_cut_short_says_how_much_is_missing(tmp_path: Path) -> None:
    """The volume ends inside the member's data: its header said 4 bytes, 2 are there."""
    dm, ts = backed_up(tmp_path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("short")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"abcd"))
    volume = buf.getvalue()[:512 + 2]
    put_volume(tmp_path, ts, volume, [{"path": "short", "type": "file", "mode": 0o644, "mtime_ns": 0, "size": 4,
                                       "volume": "vol-000001.tar"}])
    with pytest.raises(CorruptBackupError, match="short"):
        dm.restore("d", overrides={"raw": {"path": str(tmp_path / "out")}})


def test_a_bad_index_line_is_named_by_its_number(tmp_path: Path) -> None:
    dm, ts = backed_up(tmp_path)
    backup = tmp_path / "backups" / "d" / ts
    with dm.repository("local").artifacts(dm.list_backups("d")[0], "raw").open("files.jsonl") as f:
        good = f.read()
    bad = good.count(b"\n") + 2  # after one more good line
    replace_artifact(backup, "raw", "files.jsonl", good + b'{"path": "a", "type": "file"}\n{"type": 1}\n')
    with pytest.raises(CorruptBackupError, match=rf"files.jsonl: line {bad} is not an index entry"):
        dm.restore("d", overrides={"raw": {"path": str(tmp_path / "out")}})


def _edit_info(tmp_path: Path, ts: str, change: dict) -> None:
    meta = tmp_path / "backups" / "d" / ts / "backup.json"
    doc = json.loads(meta.read_text())
    info = doc["sources"][0]["info"]
    for key, value in change.items():
        if value is None:
            info.pop(key)
        else:
            info[key] = value
    meta.write_text(json.dumps(doc))
    source = tmp_path / "backups" / "d" / ts / "raw" / "source.json"
    if source.exists():
        src_doc = json.loads(source.read_text())
        src_doc["info"] = info
        source.write_text(json.dumps(src_doc))


def test_a_backup_that_recorded_no_root_mode_restores_the_root_0755(tmp_path: Path) -> None:
    dm, ts = backed_up(tmp_path)
    _edit_info(tmp_path, ts, {"root_mode": None})
    dm.restore("d", overrides={"raw": {"path": str(tmp_path / "out")}})
    assert os.stat(tmp_path / "out").st_mode & 0o7777 == 0o755


def test_a_bad_recorded_root_mode_is_named(tmp_path: Path) -> None:
    dm, ts = backed_up(tmp_path)
    _edit_info(tmp_path, ts, {"root_mode": "rwx"})
    with pytest.raises(CorruptBackupError, match=r"^raw: bad recorded root mode 'rwx'$"):
        dm.restore("d", overrides={"raw": {"path": str(tmp_path / "out")}})


def test_a_volume_that_is_not_tar_is_named(tmp_path: Path) -> None:
    dm, ts = backed_up(tmp_path)
    put_volume(tmp_path, ts, b"\x01" * 1024, [])
    with pytest.raises(CorruptBackupError, match=r"^raw/vol-000001.tar: not a valid tar volume \("):
        dm.restore("d", overrides={"raw": {"path": str(tmp_path / "out")}})


@pytest.mark.parametrize("volume, why", [
    (b"", "empty archive"),
    (bytes(100), "the archive ends inside a header"),
])
def test_a_volume_cut_short_says_where(tmp_path: Path, volume: bytes, why: str) -> None:
    dm, ts = backed_up(tmp_path)
    put_volume(tmp_path, ts, volume, [])
    with pytest.raises(CorruptBackupError, match=rf"^raw/vol-000001.tar: not a valid tar volume \({why}\)$"):
        dm.restore("d", overrides={"raw": {"path": str(tmp_path / "out")}})


def test_a_volume_that_ends_inside_a_pax_header_says_so(tmp_path: Path) -> None:
    dm, ts = backed_up(tmp_path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x")
        info.pax_headers = {"comment": "c" * 2000}  # a pax block of several 512-byte blocks
        tar.addfile(info)
    put_volume(tmp_path, ts, buf.getvalue()[:512 + 600], [])
    with pytest.raises(CorruptBackupError, match=r"the archive ends inside a pax extended header"):
        dm.restore("d", overrides={"raw": {"path": str(tmp_path / "out")}})


def test_the_staging_tree_is_synced_not_another_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import data_manager.builtin.directory as directory

    dm, ts = backed_up(tmp_path)
    synced: list[str] = []
    monkeypatch.setattr(directory, "sync_filesystem", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")))
    dm.restore("d", overrides={"raw": {"path": str(tmp_path / "out")}})
    assert len(synced) == 1 and os.path.basename(synced[0]).startswith(".out.dm-restore-")


def test_the_umask_is_read_as_octal_without_changing_it() -> None:
    from data_manager.builtin.directory import _umask

    old = os.umask(0o027)
    try:
        assert _umask() == 0o027
        assert os.umask(0o027) == 0o027  # not changed by reading it
    finally:
        os.umask(old)


def test_the_reader_hands_out_exactly_what_is_asked_when_a_read_brings_more() -> None:
    from data_manager.builtin.tarheaders import TarReader

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, size in enumerate((10, 700, 3000)):
            info = tarfile.TarInfo(f"f{i}")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes([65 + i]) * size))
    got = []
    reader = TarReader(io.BytesIO(buf.getvalue()), read_size=1 << 20)  # one read brings the whole archive
    for member in reader:
        got.append((member.name, reader.data(member.size)))
    assert got == [(b"f0", b"A" * 10), (b"f1", b"B" * 700), (b"f2", b"C" * 3000)]


def test_our_own_volume_cut_inside_its_first_pax_header_says_so(tmp_path: Path) -> None:
    """The directory source's own pax header block (read by a fast path) followed by too few bytes."""
    import zstandard

    dm, ts = backed_up(tmp_path)
    [vol] = (tmp_path / "backups" / "d" / ts / "raw").glob("vol-*")
    data = vol.read_bytes()
    if vol.suffix == ".zst":
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    put_volume(tmp_path, ts, data[:512 + 100], [])
    with pytest.raises(CorruptBackupError, match=r"\(the archive ends inside a pax extended header\)$"):
        dm.restore("d", overrides={"raw": {"path": str(tmp_path / "out")}})


def test_names_that_end_in_the_letters_of_a_slash_strip_keep_them(tmp_path: Path) -> None:
    """A directory member's trailing '/' is removed, nothing else (``XX/``, ``a-X``)."""
    src = tmp_path / "src"
    (src / "boX" / "XX").mkdir(parents=True)
    (src / "boX" / "XX" / "f").write_text("x")
    dm = manager(tmp_path, src)
    dm.backup("d")
    dm.restore("d", overrides={"raw": {"path": str(tmp_path / "out")}})
    assert (tmp_path / "out" / "boX" / "XX" / "f").read_text() == "x"


def test_a_pax_header_with_no_member_after_it_is_named(tmp_path: Path) -> None:
    dm, ts = backed_up(tmp_path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x")
        info.pax_headers = {"comment": "a member should follow"}
        tar.addfile(info)
    data = buf.getvalue()
    volume = data[:1024] + bytes(1024)  # the pax header block and its body, then the end of the archive
    put_volume(tmp_path, ts, volume, [])
    with pytest.raises(CorruptBackupError, match=r"\(a pax extended header at the end of the archive\)$"):
        dm.restore("d", overrides={"raw": {"path": str(tmp_path / "out")}})


def test_files_of_the_restoring_user_with_plain_modes_cost_no_chown_or_chmod(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path of a restore of many small files: created with their final mode, owned already."""
    import stat

    calls: list[str] = []  # on files (the root directory's mode is set apart, last)
    real_fchown, real_fchmod = os.fchown, os.fchmod
    on_file = lambda fd: stat.S_ISREG(os.fstat(fd).st_mode)  # noqa: E731
    monkeypatch.setattr(os, "fchown", lambda fd, *a: (on_file(fd) and calls.append("fchown"), real_fchown(fd, *a)))
    monkeypatch.setattr(os, "fchmod", lambda fd, *a: (on_file(fd) and calls.append("fchmod"), real_fchmod(fd, *a)))
    restore_modes(tmp_path, (0o644, 0o755, 0o600, 0o700), umask=0o022)
    assert calls == []
