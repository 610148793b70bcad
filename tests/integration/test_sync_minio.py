"""The ``sync`` engine on a real MinIO (``tests/servers.py``'s ``s3_bucket``): the bucket is a browsable mirror
of a directory (one object per file under ``DATA_ID/mirror/SOURCE/``), changes cycle through it, a file
becomes a directory, names with spaces and non-UTF-8 bytes, a file edited in the bucket fails verify and
restore (exit 4), and an interrupted backup is resumed."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from data_manager.api import DataManager
from data_manager.errors import CorruptBackupError

from ..helpers import make_tree, snapshot

pytestmark = pytest.mark.minio


def manager(tmp_path: Path, s3: Any, src: Path, **engine: Any) -> DataManager:
    storage = {"type": "s3", "endpoint": s3.endpoint, "secure": False, "access_key": s3.access_key,
               "secret_key": s3.secret_key, "bucket": s3.bucket, "prefix": "repo", "engine": "sync", **engine}
    return DataManager.from_dict({"storages": {"vault": storage}, "datasets": {
        "exp": {"storage": "vault", "sources": [{"name": "raw", "type": "directory", "path": str(src)}]}}})


def mirror(s3: Any) -> dict[str, bytes]:
    prefix = "repo/exp/mirror/raw/"
    out = {}
    for obj in s3.client.list_objects(s3.bucket, prefix=prefix, recursive=True):
        resp = s3.client.get_object(s3.bucket, obj.object_name)
        try:
            out[obj.object_name[len(prefix):]] = resp.read()
        finally:
            resp.close()
            resp.release_conn()
    return out


def same_tree(a: Path, b: Path) -> None:
    x, y = snapshot(a), snapshot(b)
    x.pop(b"."), y.pop(b".")
    assert x == y


def restore(dm: DataManager, target: Path, which: str = "latest") -> Path:
    dm.restore("exp", which, overrides={"raw": {"path": str(target)}})
    return target


def test_the_bucket_mirrors_the_directory_through_cycles_of_changes(tmp_path: Path, s3_bucket: Any) -> None:
    src = make_tree(tmp_path / "src")
    (src / "big.bin").write_bytes(os.urandom(6 << 20))  # several parts of a multipart upload
    dm = manager(tmp_path, s3_bucket, src, delete_after="1s")
    dm.backup("exp")
    objects = mirror(s3_bucket)
    assert objects["spaces and ünïcödé.txt"] == b"x"
    assert objects["latin1-\\xe9t\\xe9"] == b"not utf-8 name"  # S3 keys are UTF-8: escaped; restored as it was
    assert objects["big.bin"] == (src / "big.bin").read_bytes()
    same_tree(src, restore(dm, tmp_path / "r0"))

    # modify, create, delete, rename; a file replaced by a directory of that name
    (src / "hello.txt").write_text("changed\n")
    (src / "new file.txt").write_text("new")
    os.remove(src / "zero")
    os.rename(src / "sub" / "data.csv", src / "sub" / "moved.csv")
    os.remove(src / "big.bin")
    (src / "big.bin").mkdir()
    (src / "big.bin" / "inside").write_bytes(b"a directory now")
    dm.backup("exp")
    repo = dm.repository("vault")
    assert repo.backups("exp")[-1].manifest["sync"]["sources"]["raw"]["uploaded"] == 4
    objects = mirror(s3_bucket)
    assert objects["hello.txt"] == b"changed\n" and objects["sub/moved.csv"] == (src / "sub" / "moved.csv").read_bytes()
    assert "big.bin" not in objects and objects["big.bin/inside"] == b"a directory now"
    assert sorted(repo.pending("exp")["raw"]) == ["sub/data.csv", "zero"]  # still in the bucket, for a while
    assert "zero" in objects
    same_tree(src, restore(dm, tmp_path / "r1"))
    assert dm.verify("exp").ok

    time.sleep(1.2)
    dm.backup("exp")
    assert repo.pending("exp")["raw"] == {}
    assert "zero" not in mirror(s3_bucket) and "sub/data.csv" not in mirror(s3_bucket)
    same_tree(src, restore(dm, tmp_path / "r2"))


def test_objects_carry_mtime_mode_and_digest_as_rclone_reads_them(tmp_path: Path, s3_bucket: Any) -> None:
    """Each object's user metadata has the file's mtime and mode in rclone's format (``rclone lsl`` of the
    bucket shows the files' own mtimes), and its BLAKE3 where known before the upload (files held whole)."""
    import blake3

    src = tmp_path / "src"
    src.mkdir()
    (src / "small.txt").write_bytes(b"small")
    (src / "large.bin").write_bytes(os.urandom(3 << 20))  # streamed: its digest comes after its upload starts
    os.chmod(src / "small.txt", 0o640)
    os.utime(src / "small.txt", ns=(1_683_827_651_523_399_602, 1_683_827_651_523_399_602))
    os.utime(src / "large.bin", ns=(1_600_000_000_000_000_007, 1_600_000_000_000_000_007))
    manager(tmp_path, s3_bucket, src).backup("exp")
    meta = {}
    for name in ("small.txt", "large.bin"):
        st = s3_bucket.client.stat_object(s3_bucket.bucket, f"repo/exp/mirror/raw/{name}")
        meta[name] = {k.lower(): v for k, v in st.metadata.items() if k.lower().startswith("x-amz-meta-")}
    assert meta["small.txt"] == {"x-amz-meta-mtime": "1683827651.523399602", "x-amz-meta-mode": "100640",
                                 "x-amz-meta-blake3": blake3.blake3(b"small").hexdigest()}
    assert meta["large.bin"]["x-amz-meta-mtime"] == "1600000000.000000007"
    assert "x-amz-meta-blake3" not in meta["large.bin"]

    rclone = shutil.which("rclone")
    assert rclone, "rclone is missing (scripts/services installs it)"
    env = {**os.environ, "RCLONE_CONFIG": "/dev/null", "TZ": "UTC", "RCLONE_CONFIG_M_TYPE": "s3",
           "RCLONE_CONFIG_M_PROVIDER": "Minio", "RCLONE_CONFIG_M_ENDPOINT": f"http://{s3_bucket.endpoint}",
           "RCLONE_CONFIG_M_ACCESS_KEY_ID": s3_bucket.access_key,
           "RCLONE_CONFIG_M_SECRET_ACCESS_KEY": s3_bucket.secret_key}
    env.pop("AWS_CA_BUNDLE", None)  # rclone refuses a CA bundle for its own transport
    out = subprocess.run([rclone, "lsl", f"m:{s3_bucket.bucket}/repo/exp/mirror/raw"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    listed = {line.split()[-1]: " ".join(line.split()[1:3]) for line in out.stdout.splitlines()}
    assert listed == {"small.txt": "2023-05-11 17:54:11.523399602", "large.bin": "2020-09-13 12:26:40.000000007"}


def test_an_object_changed_in_the_bucket_fails_verify_and_restore(tmp_path: Path, s3_bucket: Any) -> None:
    src = make_tree(tmp_path / "src")
    dm = manager(tmp_path, s3_bucket, src)
    dm.backup("exp")
    data = b"someone else's edit\n"
    s3_bucket.client.put_object(s3_bucket.bucket, "repo/exp/mirror/raw/hello.txt", io.BytesIO(data), len(data))
    with pytest.raises(CorruptBackupError, match="hello.txt: differs"):
        dm.verify("exp")
    target = tmp_path / "target"
    with pytest.raises(CorruptBackupError):
        restore(dm, target)
    assert not target.exists()


def test_an_interrupted_backup_is_resumed(tmp_path: Path, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from data_manager.engines.sync import engine as engine_module

    monkeypatch.setattr(engine_module, "JOURNAL_EVERY", 4)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"f {i}").write_bytes(os.urandom(3000))
    dm = manager(tmp_path, s3_bucket, src)
    calls = {"n": 0}
    real = engine_module.SyncSourceSink.file_done

    def dying(self: Any, *args: Any, **kw: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt  # killed mid-backup
        real(self, *args, **kw)

    monkeypatch.setattr(engine_module.SyncSourceSink, "file_done", dying)
    with pytest.raises(BaseException):
        dm.backup("exp")
    monkeypatch.setattr(engine_module.SyncSourceSink, "file_done", real)
    again = manager(tmp_path, s3_bucket, src)
    again.backup("exp", resume=True)
    uploaded = again.repository("vault").backups("exp")[-1].manifest["sync"]["sources"]["raw"]["uploaded"]
    assert uploaded <= 30 - 16  # the journals of the killed run listed at least 16 files
    same_tree(src, restore(again, tmp_path / "r"))
    assert again.verify("exp").ok
