import json
import os
import shutil
from pathlib import Path

import pytest

from data_manager.api import DataManager
from data_manager.errors import CorruptBackupError
from tests.helpers import make_tree, snapshot


def manager(tmp_path: Path, src: Path, **extra: object) -> DataManager:
    return DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "datasets": {"d": {"sources": [{"name": "raw", "type": "directory", "path": str(src), **extra}]}},
    })


def assert_round_trip(tmp_path: Path, src: Path) -> None:
    """Back ``src`` up, delete it, restore it: every entry comes back as it was."""
    before = snapshot(src)
    dm = manager(tmp_path, src)
    dm.backup("d")
    shutil.rmtree(src)
    dm.restore("d")
    assert snapshot(src) == before


def test_round_trip_keeps_everything(tmp_path: Path) -> None:
    assert_round_trip(tmp_path, make_tree(tmp_path / "src"))


def test_restore_elsewhere_leaves_the_source(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    dm = manager(tmp_path, src)
    dm.backup("d")
    other = tmp_path / "other" / "place"
    dm.restore("d", overrides={"raw": {"path": str(other)}})
    assert snapshot(other) == snapshot(src)


def test_volumes_are_bounded_and_indexed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}.bin").write_bytes(os.urandom(400_000))
    (src / "big.bin").write_bytes(os.urandom(2_500_000))  # larger than a volume: a volume of its own
    dm = manager(tmp_path, src, volume_size="1MiB")
    ts = dm.backup("d").timestamp
    base = tmp_path / "backups" / "d" / ts / "raw"
    index = [json.loads(line) for line in (base / "files.jsonl").read_text().splitlines()]
    by_volume: dict[str, list[str]] = {}
    for entry in index:
        by_volume.setdefault(entry["volume"], []).append(entry["path"])
    # big.bin alone (a file is never split), then the others 3 a volume: a volume closes once past 1 MiB.
    assert sorted(by_volume.values()) == [["big.bin"], ["f0.bin", "f1.bin", "f2.bin"], ["f3.bin", "f4.bin", "f5.bin"]]
    assert sorted(p.name for p in base.glob("vol-*")) == sorted(by_volume)  # stored as-is: no .zst
    for volume, paths in by_volume.items():
        size = (base / volume).stat().st_size
        data = sum((src / p).stat().st_size for p in paths)
        # Only headers and the trailer beside the data; no volume goes on past the item that passed the limit.
        assert data < size < data + 4096 * len(paths) + 10240, (volume, size)
        assert size - (src / paths[-1]).stat().st_size < (1 << 20) + 4096 * len(paths), (volume, size)
    # The index says where every file's bytes are: one file can be read without the others.
    for entry in index:
        with open(base / entry["volume"], "rb") as f:
            f.seek(entry["offset"])
            assert f.read(entry["size"]) == (src / entry["path"]).read_bytes(), entry["path"]


def test_incompressible_files_are_stored_as_is(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "photo.jpg").write_bytes(b"\xff\xd8" + b"a" * 200_000)  # by suffix
    (src / "noise").write_bytes(os.urandom(200_000))  # by sample
    (src / "text").write_text("compress me " * 50_000)
    dm = manager(tmp_path, src)
    ts = dm.backup("d").timestamp
    index = {json.loads(line)["path"]: json.loads(line) for line in
             (tmp_path / "backups" / "d" / ts / "raw" / "files.jsonl").read_text().splitlines()}
    manifest = json.loads((tmp_path / "backups" / "d" / ts / "backup.json").read_text())
    comp = {a["name"]: a["compression"] for a in manifest["sources"][0]["artifacts"]}
    assert comp[index["photo.jpg"]["volume"]] == "none" and comp[index["noise"]["volume"]] == "none"
    assert comp[index["text"]["volume"]] == "zstd"


def test_corrupt_volume_leaves_target_untouched(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    dm = manager(tmp_path, src)
    ts = dm.backup("d").timestamp
    (src / "new-after-backup.txt").write_text("keep me")
    before = snapshot(src)
    vol = sorted((tmp_path / "backups" / "d" / ts / "raw").glob("vol-*.tar"))[-1]
    data = bytearray(vol.read_bytes())
    data[len(data) // 3] ^= 0xFF
    vol.write_bytes(data)
    with pytest.raises(CorruptBackupError, match="raw/vol-"):
        dm.restore("d")
    assert snapshot(src) == before
    assert [p.name for p in src.parent.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_exclude(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    dm = manager(tmp_path, src, exclude=["*.bin", "sub/data.csv"])
    dm.backup("d")
    out = tmp_path / "out"
    dm.restore("d", overrides={"raw": {"path": str(out)}})
    assert not (out / "sub" / "deeper" / "random.bin").exists() and not (out / "sub" / "data.csv").exists()
    assert (out / "hello.txt").exists()


def test_a_file_whose_directory_entry_is_in_a_later_volume(tmp_path: Path) -> None:
    """a.bin opens the stored stream (vol-000001); directory b/ then opens the compressed one
    (vol-000002), and b/c.bin goes to vol-000001: extraction meets b/c.bin before b/."""
    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(200_000))
    (src / "b" / "c.bin").write_bytes(os.urandom(200_000))
    os.chmod(src / "b", 0o750)
    assert_round_trip(tmp_path, src)
