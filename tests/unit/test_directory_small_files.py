"""The directory source's fast path for small files (issue #24): whole members built by
``tarheaders.FileMembers``, appended by ``_TarVolumes.member``, and their ``files.jsonl`` lines."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import tarfile
from pathlib import Path

import pytest
import zstandard
from blake3 import blake3

from data_manager.api import DataManager
from data_manager.builtin.tarheaders import MEMBER_DATA_AT, FileMembers, TarReader
from tests.helpers import snapshot


def tarfile_member(path: str, mode: int, uid: int, gid: int, mtime_ns: int, data: bytes) -> bytes:
    """What tarfile writes for the member the directory source describes (pax mtime with nanoseconds)."""
    sec, ns = divmod(mtime_ns, 10**9)
    info = tarfile.TarInfo(path)
    info.mode, info.uid, info.gid, info.size, info.mtime = mode, uid, gid, len(data), sec
    info.pax_headers = {"mtime": f"{sec}.{ns:09d}"}
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + data + bytes(-len(data) % 512)


@pytest.mark.parametrize("seed", range(10))
def test_file_members_are_tarfiles_bytes(seed: int) -> None:
    rng = random.Random(seed)
    members = FileMembers()
    alphabet = "abcxyz0129._- /\"\\'%{}"
    for _ in range(300):
        path = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 100))).strip("/") or "n"
        mode = rng.choice([0o644, 0o600, 0o755, rng.randint(0, 0o7777)])
        uid, gid = rng.choice([0, 1000, 0o7777777]), rng.choice([0, 100, 0o7777777])
        mtime_ns = rng.choice([10**18, rng.randint(10**18, 0o77777777777 * 10**9), 0o77777777777 * 10**9 + 999_999_999])
        data = rng.randbytes(rng.choice([0, 1, 511, 512, 513, rng.randint(0, 3000)]))
        member = members.build(path, mode, uid, gid, mtime_ns, data)
        assert member == tarfile_member(path, mode, uid, gid, mtime_ns, data), (path, mode, uid, gid, mtime_ns)
        assert member is not None and member[MEMBER_DATA_AT : MEMBER_DATA_AT + len(data)] == data


@pytest.mark.parametrize(("path", "uid", "mtime_ns"), [
    ("x" * 101, 0, 1_700_000_000 * 10**9),  # ustar holds 100 bytes of name
    ("ünï", 0, 1_700_000_000 * 10**9),  # not ASCII: a pax path record
    ("n", 0o7777777 + 1, 1_700_000_000 * 10**9),  # an id ustar cannot hold
    ("n", 0, 999_999_999 * 10**9),  # before 2001-09-09: the mtime record is not 30 bytes
    ("n", 0, (0o77777777777 + 1) * 10**9),  # past ustar's 11 octal digits (2242): a pax mtime alone
])
def test_file_members_decline_what_they_cannot_hold(path: str, uid: int, mtime_ns: int) -> None:
    assert FileMembers().build(path, 0o644, uid, 0, mtime_ns, b"data") is None


def manager(tmp_path: Path, src: Path, **extra: object) -> DataManager:
    return DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "datasets": {"d": {"sources": [{"name": "raw", "type": "directory", "path": str(src), **extra}]}},
    })


def volume_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()


def test_small_files_roll_over_volumes_and_their_offsets_are_right(tmp_path: Path) -> None:
    src = tmp_path / "src"
    rng = random.Random(24)
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(150):
            (src / f"d{d}" / f"f{i:03d}.txt").write_bytes(rng.randbytes(rng.randint(0, 3000)))
    os.utime(src / "d1" / "f007.txt", ns=(500_000_000_123_456_789, 500_000_000_123_456_789))  # 1985: slow path
    (src / "d2" / f"{'long' * 30}.txt").write_bytes(b"a name of more than 100 bytes")  # slow path too
    before = snapshot(src)
    dm = manager(tmp_path, src, volume_size="256KiB")
    ts = dm.backup("d").timestamp
    base = tmp_path / "backups" / "d" / ts / "raw"
    index = [json.loads(line) for line in (base / "files.jsonl").read_text().splitlines()]
    files = [e for e in index if e["type"] == "file"]
    assert len(files) == 601
    volumes = {v: volume_bytes(base / f"{v}.zst") for v in {e["volume"] for e in index}}
    assert len(volumes) > 4
    for name, data in volumes.items():
        members = list(TarReader(io.BytesIO(data)))
        # A volume closes with the first member that takes it past its limit.
        assert len(data) - (members[-1].offset - MEMBER_DATA_AT) < (256 << 10) + 1024, name
    for e in files:
        content = (src / e["path"]).read_bytes()
        assert volumes[e["volume"]][e["offset"] : e["offset"] + e["size"]] == content, e["path"]
        assert e["blake3"] == blake3(content).hexdigest()
        st = (src / e["path"]).stat()
        assert (e["mode"], e["mtime_ns"], e["size"]) == (st.st_mode & 0o7777, st.st_mtime_ns, st.st_size)
    shutil.rmtree(src)
    dm.restore("d")
    assert snapshot(src) == before


def test_odd_names_in_the_index_and_back(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    names = ['quote"d', "back\\slash", "new\nline", "tab\tand\x01ctl", "ünïcödé", "{\"json\": 1}", "%s%d", "x" * 255]
    for i, name in enumerate(names):
        (src / name).write_bytes(b"%d" % i)
    deep = src / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / "leaf.txt").write_bytes(b"a path of more than 100 bytes, each part shorter")
    raw = os.fsencode(str(src)) + b"/not-utf8-\xff\xfe"
    with open(raw, "wb") as f:
        f.write(b"raw")
    before = snapshot(src)
    dm = manager(tmp_path, src)
    ts = dm.backup("d").timestamp
    lines = (tmp_path / "backups" / "d" / ts / "raw" / "files.jsonl").read_bytes().splitlines()
    assert all(line.isascii() for line in lines)  # ensure_ascii, as json.dumps writes it
    paths = {json.loads(line)["path"] for line in lines}
    assert set(names) | {"not-utf8-\udcff\udcfe", f"{'d' * 60}/{'e' * 60}/leaf.txt"} <= paths
    shutil.rmtree(src)
    dm.restore("d")
    assert snapshot(src) == before
