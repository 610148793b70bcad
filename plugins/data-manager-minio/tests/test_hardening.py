"""The backup's index is an attacker's input (issue 16, point 9).

A crafted ``objects.jsonl`` restored against the real MinIO (fixture ``s3_bucket``) must end in one
CorruptBackupError line (exit 4) before anything was written: no bucket made, no object put.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from data_manager.api import DataManager
from data_manager.errors import CorruptBackupError, ExitCode
from data_manager.types import Settings
from data_manager_minio.source import MinioSource, check_entry

GOOD = {"n": 1, "key": "data/a.txt", "size": 3, "etag": "x", "last_modified": None, "content_type": "text/plain",
        "headers": {"cache-control": "no-cache"}, "metadata": {"experiment": "exp42"}, "storage_class": "STANDARD",
        "blake3": "0" * 64, "volume": "vol-000001", "offset": 0}


def entry(**over: Any) -> dict[str, Any]:
    return {**GOOD, **over}


def test_a_genuine_entry_passes():
    check_entry(entry(), "")
    check_entry(entry(key="ünï cödé/with spaces/ and 'quotes'", headers={}, metadata={}), "some/prefix/")
    check_entry(entry(key="k" * 1015), "prefix/12")  # 1024 bytes in all


@pytest.mark.parametrize("over, needle", [
    ({"headers": {"x-amz-acl": "public-read-write"}}, "header 'x-amz-acl'"),
    ({"headers": {"x-amz-website-redirect-location": "https://evil.example"}}, "not one a backup keeps"),
    ({"headers": {"Cache-Control": "x"}}, "not one a backup keeps"),
    ({"headers": {"cache-control": "x\r\nx-amz-acl: public-read"}}, "not a header value"),
    ({"content_type": "text/plain\r\nx-amz-acl: public-read"}, "not a header value"),
    ({"metadata": {"a\r\nx-amz-acl": "public-read"}}, "metadata name"),
    ({"metadata": {"a b": "c"}}, "metadata name"),
    ({"metadata": {"a": "b\nc"}}, "not a header value"),
    ({"metadata": {"a": "x" * 3000}}, "exceeds"),
    ({"key": ""}, "non-empty"),
    ({"key": None}, "non-empty"),
    ({"key": "a\0b"}, "NUL"),
    ({"key": "a/../b"}, "segment"),
    ({"key": "\ud800"}, "UTF-8"),
    ({"key": "k" * 1025}, "bytes with the prefix"),
    ({"key": "é" * 513}, "bytes with the prefix"),
    ({"size": -1}, "size"),
    ({"size": (5 << 40) + 1}, "up to 5 TiB"),
    ({"size": "3"}, "size"),
    ({"size": True}, "size"),
    ({"offset": -5}, "offset"),
    ({"blake3": "zz"}, "digest"),
    ({"volume": 3}, "volume"),
    ({"changed": "yes"}, "changed"),
])
def test_crafted_entries_are_refused(over, needle):
    with pytest.raises(ValueError, match=needle):
        check_entry(entry(**over), "")


def test_the_prefix_counts_toward_the_key_limit():
    with pytest.raises(ValueError, match="1025 bytes"):
        check_entry(entry(key="k" * 1016), "prefix/12")


# --------------------------------------------------------------------------- crafted index, real server


class _Crafted:
    """A stored backup's artifacts with the index replaced (as if the storage had been written by someone else)."""

    def __init__(self, real: Any, index: bytes) -> None:
        self.real, self.index = real, index
        self.info = real.info
        self.source_name = real.source_name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def open(self, name: str) -> Any:
        return io.BytesIO(self.index) if name == self.info.get("index", "objects.jsonl") else self.real.open(name)


CRAFTS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("acl header", lambda e: e["headers"].update({"x-amz-acl": "public-read-write"})),
    ("header injection", lambda e: e.update(content_type="text/plain\r\nx-amz-acl: public-read-write")),
    ("NUL key", lambda e: e.update(key=e["key"] + "\0")),
    ("long key", lambda e: e.update(key="k" * 1100)),
    ("negative size", lambda e: e.update(size=-1)),
]


@pytest.mark.minio
@pytest.mark.parametrize("what, craft", CRAFTS, ids=[c[0] for c in CRAFTS])
def test_a_crafted_index_writes_nothing(s3_bucket, tmp_path: Path, what, craft):
    conn = {"endpoint": s3_bucket.endpoint, "secure": False, "access_key": s3_bucket.access_key,
            "secret_key": s3_bucket.secret_key}
    for key in ("a.txt", "b/c.txt", "d.txt"):
        s3_bucket.client.put_object(s3_bucket.bucket, key, io.BytesIO(b"abc"), 3, metadata={"Experiment": "exp42"})
    dm = DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "datasets": {"d": {"sources": [{"name": "b", "type": "minio", **conn, "bucket": s3_bucket.bucket}]}},
    })
    dm.backup("d")
    real = dm.repository("local").artifacts(dm.list_backups("d")[-1], "b")
    with real.open("objects.jsonl") as f:
        lines = [json.loads(line) for line in f.read().splitlines()]
    craft(lines[-1])  # the last line: the others could be written before it is read, were it not checked first
    crafted = _Crafted(real, "".join(json.dumps(e) + "\n" for e in lines).encode())
    target = f"{s3_bucket.bucket[:40]}-{uuid.uuid4().hex[:8]}"
    src = MinioSource("b", Settings({**conn, "bucket": target}, where="test"))
    try:
        with pytest.raises(CorruptBackupError) as e:
            src.restore(crafted)
        text = str(e.value)
        assert "\n" not in text and "line 3" in text and e.value.exit_code == ExitCode.CORRUPT
        assert not s3_bucket.client.bucket_exists(target)  # nothing written, not even the bucket
        # into an existing bucket: no object written either
        s3_bucket.client.make_bucket(target)
        with pytest.raises(CorruptBackupError):
            src.restore(crafted)
        assert list(s3_bucket.client.list_objects(target, recursive=True)) == []
        src.restore(real)  # the genuine index restores
        assert len(list(s3_bucket.client.list_objects(target, recursive=True))) == 3
    finally:
        from tests.servers import remove_bucket

        remove_bucket(s3_bucket.client, target)
