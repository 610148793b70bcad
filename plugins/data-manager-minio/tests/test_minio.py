"""Against the real MinIO (fixture ``s3_bucket``): the storage contract, multipart checks, round trips."""

from __future__ import annotations

import json

import hashlib
import io
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from data_manager.api import DataManager
from data_manager.errors import CorruptBackupError, SourceError, StorageError
from data_manager.testing import check_storage_contract
from data_manager.types import Settings
from data_manager_minio.storage import S3Storage

pytestmark = pytest.mark.minio
minio = pytest.importorskip("minio")

MiB = 1 << 20


class Bucket:
    """The fixture's fresh bucket (``tests/servers.py``), its client, and the source/storage settings to reach it."""

    def __init__(self, fixture: Any) -> None:
        self.name = fixture.bucket
        self.client = fixture.client
        self.conn = {"endpoint": fixture.endpoint, "secure": False, "access_key": fixture.access_key,
                     "secret_key": fixture.secret_key}
        self.extra: list[str] = []

    def put(self, key: str, data: bytes, **kw: Any) -> None:
        self.client.put_object(self.name, key, io.BytesIO(data), len(data), **kw)

    def get(self, key: str, bucket: str | None = None) -> bytes:
        r = self.client.get_object(bucket or self.name, key)
        try:
            return r.read()
        finally:
            r.close()
            r.release_conn()

    def keys(self, bucket: str | None = None, prefix: str | None = None) -> set[str]:
        return {o.object_name for o in self.client.list_objects(bucket or self.name, prefix=prefix, recursive=True)}

    def other(self) -> str:
        """A bucket name for restores elsewhere (removed afterwards)."""
        name = f"{self.name[:40]}-{uuid.uuid4().hex[:8]}"
        self.extra.append(name)
        return name

    def uploads(self) -> list[Any]:
        """Unfinished multipart uploads (none may be left behind)."""
        import boto3

        s3 = boto3.client("s3", endpoint_url=f"http://{self.conn['endpoint']}", region_name="us-east-1",
                          aws_access_key_id=self.conn["access_key"], aws_secret_access_key=self.conn["secret_key"])
        return s3.list_multipart_uploads(Bucket=self.name).get("Uploads", [])

    def cleanup(self) -> None:
        from tests.servers import remove_bucket

        for b in self.extra:
            remove_bucket(self.client, b)


@pytest.fixture
def bucket(s3_bucket: Any) -> Any:
    b = Bucket(s3_bucket)
    yield b
    b.cleanup()


def storage(bucket: Bucket, **kw: Any) -> S3Storage:
    return S3Storage("s3t", Settings({**bucket.conn, "bucket": bucket.name, **kw}))


# --------------------------------------------------------------------------- storage


def test_storage_contract(bucket: Bucket) -> None:
    check_storage_contract(storage(bucket, prefix="root/of backups"))
    check_storage_contract(storage(bucket))  # at the bucket's root too


def test_multipart_upload_checked_and_invisible_until_complete(bucket: Bucket) -> None:
    s = storage(bucket, part_size="5MiB")
    data = os.urandom(12 * MiB + 5)
    w = s.open_write("x/mp.bin")
    for i in range(0, len(data), MiB):
        w.write(data[i : i + MiB])
    assert not s.exists("x/mp.bin") and list(s.list("x")) == []
    assert len(bucket.uploads()) == 1
    w.commit()
    assert w.etag is not None and w.etag.endswith("-3")  # three parts, the ETag checked against our MD5s
    with s.open_read("x/mp.bin") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
    with s.open_read("x/mp.bin", 7 * MiB - 3, 10) as f:  # a range across a part boundary
        assert f.read() == data[7 * MiB - 3 : 7 * MiB + 7]
    assert bucket.uploads() == []


@pytest.mark.parametrize("size_hint, overlap", [(None, True), (11 * MiB + 3, False), (MiB, True)])
def test_parts_cut_at_the_limit(bucket: Bucket, size_hint: int | None, overlap: bool) -> None:
    """One large write is cut into exact parts, with or without a (possibly wrong) size hint."""
    from data_manager_minio.multipart import ObjectUpload

    s = storage(bucket)
    data = os.urandom(11 * MiB + 3)
    w = ObjectUpload(s.conn, bucket.name, "x/cut.bin", part_size=5 * MiB, size=size_hint, overlap=overlap)
    w.write(memoryview(data)[:7])
    w.write(data[7:])
    w.commit()
    assert w.etag is not None and w.etag.endswith("-3") and w.size == len(data)
    assert bucket.get("x/cut.bin") == data


def test_failed_upload_is_aborted(bucket: Bucket) -> None:
    s = storage(bucket, part_size="5MiB")
    w = s.open_write("x/failed.bin")
    w.write(os.urandom(11 * MiB))
    assert len(bucket.uploads()) == 1
    w.abort()
    w.abort()
    assert bucket.uploads() == [] and not s.exists("x/failed.bin")


def test_checksum_answer_mismatch_fails_and_aborts(bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("data_manager_minio.multipart.payload_signed", lambda conn: False)  # as over https
    s = storage(bucket, part_size="5MiB")
    s3 = s.conn.s3
    real = s3.upload_part
    monkeypatch.setattr(s3, "upload_part", lambda **k: {**real(**k), "ChecksumCRC32": "AAAAAA=="})
    w = s.open_write("x/bad.bin")
    with pytest.raises(StorageError, match="checksum 'AAAAAA==', not the CRC32"):
        w.write(os.urandom(6 * MiB))
        w.write(os.urandom(6 * MiB))
        w.commit()
    w.abort()
    assert bucket.uploads() == [] and not s.exists("x/bad.bin")


def _damage_parts(s: S3Storage) -> None:
    """Bodies of UploadPart altered after they were signed (and checksummed): damaged on the way."""

    def damage(request: Any, **kwargs: Any) -> None:
        body = request.body
        if isinstance(body, (bytes, bytearray)) and body:
            request.body = bytes([body[0] ^ 1]) + bytes(body[1:])

    s.conn.s3.meta.events.register("before-send.s3.UploadPart", damage)


def test_signed_payload_checked_by_server(bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over plain http no checksum is sent: the body's signed sha256 is what the server checks."""
    import minio.api

    from data_manager_minio.multipart import payload_signed

    s = storage(bucket, part_size="5MiB")
    assert payload_signed(s.conn)
    monkeypatch.setattr(minio.api, "sha256_hash", lambda body: hashlib.sha256(b"other bytes").hexdigest())
    _damage_parts(s)
    for size in (MiB, 6 * MiB):  # one PUT (the minio SDK), then a multipart upload (boto3)
        w = s.open_write("x/damaged.bin")
        with pytest.raises(StorageError, match="XAmzContentSHA256Mismatch"):
            w.write(os.urandom(size))
            w.commit()
        w.abort()
    assert bucket.uploads() == [] and not s.exists("x/damaged.bin")


def test_crc32_sent_and_checked_where_unsigned(bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    """As over https (no signed payload): every body carries its CRC32, which the server checks and answers."""
    monkeypatch.setattr("data_manager_minio.multipart.payload_signed", lambda conn: False)
    monkeypatch.setattr("data_manager.retry.time.sleep", lambda s: None)
    s = storage(bucket, part_size="5MiB")
    for size in (0, MiB, 11 * MiB):  # checked: each answer equals the CRC32 sent (check_etag)
        data = os.urandom(size)
        with s.open_write(f"x/crc{size}.bin") as w:
            w.write(data)
        with s.open_read(f"x/crc{size}.bin") as f:
            assert f.read() == data
    _damage_parts(s)
    w = s.open_write("x/damaged.bin")
    with pytest.raises(StorageError, match="Mismatch"):
        w.write(os.urandom(6 * MiB))
        w.commit()
    w.abort()
    assert bucket.uploads() == [] and not s.exists("x/damaged.bin")


def test_headers_of_a_write(bucket: Bucket) -> None:
    """Content headers, user metadata and Expires arrive as given, by one PUT and by a multipart upload."""
    from data_manager_minio.multipart import ObjectUpload

    s = storage(bucket, part_size="5MiB")
    headers = {"Content-Type": "text/csv", "Cache-Control": "no-cache", "Content-Disposition": "attachment",
               "Content-Language": "de", "x-amz-meta-run": "42", "Expires": "Thu, 01 Dec 2044 16:00:00 GMT"}
    for size in (10, 6 * MiB):
        with ObjectUpload(s.conn, bucket.name, f"h/{size}", part_size=5 * MiB, headers=headers) as w:
            w.write(os.urandom(size))
        stat = bucket.client.stat_object(bucket.name, f"h/{size}")
        got = {k.lower(): v for k, v in stat.metadata.items()}
        for k, v in headers.items():
            assert got[k.lower()] == v, (size, k)


def test_failed_part_is_retried(bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib3

    monkeypatch.setattr("data_manager.retry.time.sleep", lambda s: None)
    from botocore.exceptions import ConnectionClosedError

    s = storage(bucket, part_size="5MiB")
    s3 = s.conn.s3
    real = s3.upload_part
    failures = []

    def flaky(**k: Any) -> dict[str, Any]:
        if len(failures) < 2:
            failures.append(1)
            raise ConnectionClosedError(endpoint_url="http://x") if failures[1:] else urllib3.exceptions.ProtocolError("reset")
        return real(**k)

    monkeypatch.setattr(s3, "upload_part", flaky)
    data = os.urandom(11 * MiB)
    with s.open_write("x/retried.bin") as w:
        w.write(data)
    assert len(failures) == 2
    with s.open_read("x/retried.bin") as f:
        assert f.read() == data


def test_storage_class(bucket: Bucket) -> None:
    s = storage(bucket, storage_class="REDUCED_REDUNDANCY")
    with s.open_write("cls/rrs") as w:
        w.write(b"cold-ish")
    with s.open_write("cls/std", storage_class="STANDARD") as w:
        w.write(b"warm")
    assert s.storage_class_of("cls/rrs") == "REDUCED_REDUNDANCY"
    assert s.storage_class_of("cls/std") == "STANDARD"


def test_wrong_credentials_one_line(bucket: Bucket) -> None:
    s = S3Storage("s3t", Settings({**bucket.conn, "secret_key": "wrong-secret-123", "bucket": bucket.name}))
    with pytest.raises(StorageError) as e:
        s.check()
    msg = str(e.value)
    assert "\n" not in msg and "wrong-secret-123" not in msg and "secret key" in msg
    with pytest.raises(StorageError, match="does not exist"):
        S3Storage("s3t", Settings({**bucket.conn, "bucket": bucket.name + "-nope"})).check()


# --------------------------------------------------------------------------- source round trips

OBJECTS = {
    "empty": b"",
    "hello.txt": b"hello\n",
    "dir/spaces and ünïcødé – ключ.txt": "ünïcødé".encode() * 100,
    "dots/..hidden/..x": b"not a parent",  # '..' inside keys (the SDK and MinIO refuse whole '..' segments)
    "dots/a..b/...": b"three dots",
    "folder/": b"",  # a "directory marker"
    "table.csv": b"id,value\n" + b"".join(b"%d,%d\n" % (i, i * i) for i in range(50_000)),
}


def fill(bucket: Bucket, prefix: str = "") -> dict[str, bytes]:
    objects = dict(OBJECTS)
    for key, data in objects.items():
        bucket.put(prefix + key, data)
    bucket.put(prefix + "meta.json", b"{}", content_type="application/json",
               metadata={"Experiment": "exp42", "Operator": "ada"})
    objects["meta.json"] = b"{}"
    big = os.urandom(11 * MiB + 123)  # uploaded in 5 MiB parts: a multipart object
    bucket.client.put_object(bucket.name, prefix + "big/multi.bin", io.BytesIO(big), len(big), part_size=5 * MiB)
    objects["big/multi.bin"] = big
    for i in range(150):
        data = b"sample %d\n" % i * (i % 7)
        bucket.put(f"{prefix}many/{i:04d}.txt", data)
        objects[f"many/{i:04d}.txt"] = data
    return objects


def dm_for(b: Bucket, tmp_path: Path, **src: Any) -> DataManager:
    return DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "datasets": {"d": {"sources": [{"name": "b", "type": "minio", **b.conn, "bucket": b.name,
                                        "range_size": "4MiB", "part_size": "5MiB", **src}]}},
    })


def test_round_trip_elsewhere(bucket: Bucket, tmp_path: Path) -> None:
    objects = fill(bucket, "data/")
    bucket.put("outside/prefix.txt", b"not backed up")
    dm = dm_for(bucket, tmp_path, prefix="data")
    result = dm.backup("d")
    assert result.size == sum(map(len, objects.values())) + sum(
        a.size for a in dm.repository("local").artifacts(dm.list_backups("d")[0], "b").record.artifacts
        if a.name == "objects.jsonl")
    other = bucket.other()
    dm.restore("d", "latest", overrides={"b": {"bucket": other, "prefix": "restored/here"}})
    assert bucket.keys(other) == {"restored/here/" + k for k in objects}
    for key, data in objects.items():
        assert bucket.get("restored/here/" + key, other) == data, key
    stat = bucket.client.stat_object(other, "restored/here/meta.json")
    assert stat.content_type == "application/json"
    assert stat.metadata["x-amz-meta-experiment"] == "exp42" and stat.metadata["x-amz-meta-operator"] == "ada"
    dm.verify("d")


def test_large_object_in_a_volume_of_its_own(bucket: Bucket, tmp_path: Path) -> None:
    """An object of half a volume or more is alone in its volume, and the core's digest of that volume is its own."""
    from blake3 import blake3

    objects = fill(bucket)
    dm = dm_for(bucket, tmp_path, volume_size="8MiB")  # big/multi.bin (11 MiB) is alone, the rest share
    dm.backup("d")
    info = dm.list_backups("d")[-1]
    artifacts = dm.repository("local").artifacts(info, "b")
    with artifacts.open("objects.jsonl") as f:
        entries = [json.loads(line) for line in f.read().splitlines()]
    big = next(e for e in entries if e["key"] == "big/multi.bin")
    assert big["offset"] == 0 and [e for e in entries if e["volume"] == big["volume"]] == [big]
    assert big["blake3"] == blake3(objects["big/multi.bin"]).hexdigest()
    assert {a.name: a.digest for a in artifacts.record.artifacts}[big["volume"]] == big["blake3"]
    assert all(e["blake3"] == blake3(objects[e["key"]]).hexdigest() for e in entries)
    other = bucket.other()
    dm.restore("d", "latest", overrides={"b": {"bucket": other}})
    assert bucket.get("big/multi.bin", other) == objects["big/multi.bin"]


# Keys that need percent-encoding in the URL libcurl signs (MinIO refuses '//' and '.'/'..' segments).
AWKWARD_KEYS = ["a+b=c&d!'()*@$,;:.txt", "percent%20x", "q?mark#hash", "[brackets]{}|^`", 'quote"s<>',
                "tab\tkey", "back\\slash", "emoji 😀", "tilde~"]


def _fetch_counts(caplog: pytest.LogCaptureFixture) -> tuple[int, int]:
    import re

    m = re.search(r"(\d+) small objects fetched over libcurl, (\d+) handed", caplog.text)
    assert m, "the backup did not report its small-object fetches"
    return int(m[1]), int(m[2])


def _index(dm: DataManager, backup: bool = False) -> dict[str, dict[str, Any]]:
    """The latest backup's index lines by key, without where the bytes went (volume, offset, number)."""
    if backup:
        dm.backup("d")
    info = dm.list_backups("d")[-1]
    with dm.repository("local").artifacts(info, "b").open("objects.jsonl") as f:
        entries = [json.loads(line) for line in f.read().splitlines()]
    return {e["key"]: {k: v for k, v in e.items() if k not in ("n", "volume", "offset")} for e in entries}


def test_small_objects_fetched_over_libcurl(bucket: Bucket, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from data_manager_minio.source import MinioSource

    objects = fill(bucket)
    for key in AWKWARD_KEYS:
        bucket.put(key, key.encode() * 3, metadata={"Key-Length": str(len(key))})
        objects[key] = key.encode() * 3
    dm = dm_for(bucket, tmp_path)
    with caplog.at_level("DEBUG", logger="data_manager_minio"):
        dm.backup("d")
    assert _fetch_counts(caplog) == (len(objects) - 1, 0)  # all but the 11 MiB object, none handed back
    assert "listing over libcurl stopped" not in caplog.text
    # Listed and fetched by the SDK alone, every object gets the same index line: ETag, times, headers...
    monkeypatch.setattr(MinioSource, "_lister", lambda self: None)
    assert _index(dm) == _index(dm_for(bucket, tmp_path / "sdk", small_size=0), backup=True)
    other = bucket.other()
    dm.restore("d", "latest", overrides={"b": {"bucket": other}})
    for key, data in objects.items():
        assert bucket.get(key, other) == data, key
    assert bucket.client.stat_object(other, "tilde~").metadata["x-amz-meta-key-length"] == "6"


def test_listing_over_libcurl_with_an_awkward_prefix(bucket: Bucket, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from data_manager_minio import listing

    real, listed = listing.parse_page, []

    def parse_page(body: bytes) -> Any:
        objects, token = real(body)
        listed.extend(o.object_name for o in objects)
        return objects, token

    monkeypatch.setattr(listing, "parse_page", parse_page)
    prefix = "dir +é&=x;%20/"
    for key in AWKWARD_KEYS + ["plain"]:
        bucket.put(prefix + key, key.encode())
    bucket.put("dir +é&=y/outside", b"not below the prefix")
    dm = dm_for(bucket, tmp_path, prefix=prefix)
    with caplog.at_level("INFO", logger="data_manager_minio"):
        dm.backup("d")
    assert "listing over libcurl stopped" not in caplog.text
    assert sorted(listed) == sorted(prefix + k for k in AWKWARD_KEYS + ["plain"])  # all listed over libcurl
    assert set(_index(dm)) == set(AWKWARD_KEYS + ["plain"])


def test_listing_that_breaks_is_finished_by_the_sdk(bucket: Bucket, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A page refused half-way (here the third): the SDK lists the rest after the last key, none twice or lost."""
    from data_manager_minio import listing

    objects = fill(bucket)
    real, pages = listing.parse_page, []

    def parse_page(body: bytes) -> Any:
        pages.append(body)
        if len(pages) == 3:
            raise ValueError("HTTP 503")
        return real(body)

    monkeypatch.setattr(listing, "PAGE", 7)
    monkeypatch.setattr(listing, "parse_page", parse_page)
    dm = dm_for(bucket, tmp_path)
    with caplog.at_level("INFO", logger="data_manager_minio"):
        dm.backup("d")
    assert "listing over libcurl stopped (HTTP 503); the SDK lists the rest" in caplog.text
    assert len(pages) == 3
    info = dm.list_backups("d")[-1]
    with dm.repository("local").artifacts(info, "b").open("objects.jsonl") as f:
        keys = [json.loads(line)["key"] for line in f.read().splitlines()]
    assert sorted(keys) == sorted(objects)


def test_small_objects_handed_back_to_the_sdk(bucket: Bucket, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """libcurl signing with a wrong secret: every GET refused, and every object still backed up (by the SDK)."""
    import dataclasses

    from data_manager_minio import fetch

    objects = fill(bucket)
    real = fetch.SmallObjects.__init__

    def init(self: Any, cs: Any, *args: Any) -> None:
        real(self, dataclasses.replace(cs, secret_key="not-the-secret"), *args)

    monkeypatch.setattr(fetch.SmallObjects, "__init__", init)
    dm = dm_for(bucket, tmp_path)
    with caplog.at_level("DEBUG", logger="data_manager_minio"):
        dm.backup("d")
    assert _fetch_counts(caplog) == (0, len(objects) - 1)
    assert "in a row failed (HTTP 403)" in caplog.text and "not-the-secret" not in caplog.text
    other = bucket.other()
    dm.restore("d", "latest", overrides={"b": {"bucket": other}})
    assert bucket.keys(other) == set(objects)
    assert all(bucket.get(key, other) == data for key, data in objects.items())


def test_small_object_fetcher_hands_back_what_it_cannot_take(bucket: Bucket) -> None:
    """Grown past the limit since the listing, or deleted: handed back to the SDK path, never buffered or lost."""
    import queue
    import threading
    from types import SimpleNamespace

    from data_manager.types import Settings
    from data_manager_minio.connection import ConnectionSettings
    from data_manager_minio.fetch import SmallObjects

    bucket.put("fits", b"x" * 100)
    bucket.put("grew", b"y" * 5000)
    todo: queue.Queue[Any] = queue.Queue()
    for n, key in enumerate(["fits", "grew", "deleted"]):
        todo.put((n, SimpleNamespace(object_name=key)))
    todo.put(None)
    got: dict[str, bytes] = {}
    back: list[str] = []
    cs = ConnectionSettings.read(Settings(bucket.conn))
    fetcher = SmallObjects(cs, bucket.name, "us-east-1", 2, max_size=1000)
    fetcher.run(todo, lambda item, headers, body: got.update({item[1].object_name: bytes(body)}),
                lambda item: back.append(item[1].object_name) or True, threading.Event())
    assert got == {"fits": b"x" * 100} and sorted(back) == ["deleted", "grew"]
    assert (fetcher.fetched, fetcher.handed_back) == (1, 2)


def test_restore_in_place_keeps_or_deletes_extra(bucket: Bucket, tmp_path: Path) -> None:
    objects = fill(bucket)
    dm = dm_for(bucket, tmp_path, exclude=["many/01*"])
    dm.backup("d")
    bucket.put("hello.txt", b"changed after the backup")
    bucket.client.remove_object(bucket.name, "table.csv")
    bucket.put("new-object", b"added after the backup")
    dm.restore("d", "latest")
    assert bucket.get("hello.txt") == objects["hello.txt"] and bucket.get("table.csv") == objects["table.csv"]
    assert bucket.get("new-object") == b"added after the backup"  # left alone by default
    dm.restore("d", "latest", overrides={"b": {"delete_extra": True}})
    keys = bucket.keys()
    assert "new-object" not in keys
    assert {k for k in objects if k.startswith("many/01")} <= keys  # excluded: out of scope, kept


def test_corrupt_backup_writes_no_damaged_object(bucket: Bucket, tmp_path: Path) -> None:
    bucket.put("a/big.bin", os.urandom(6 * MiB))  # random: lands in a stored (uncompressed) volume
    dm = dm_for(bucket, tmp_path)
    dm.backup("d")
    vol = next(p for p in (tmp_path / "backups").rglob("vol-*") if p.stat().st_size > MiB)
    with open(vol, "r+b") as f:
        f.seek(3 * MiB)
        byte = f.read(1)
        f.seek(3 * MiB)
        f.write(bytes([byte[0] ^ 1]))
    other = bucket.other()
    with pytest.raises(CorruptBackupError):  # verify_first (the default): nothing written
        dm.restore("d", "latest", overrides={"b": {"bucket": other}})
    assert not bucket.client.bucket_exists(other)  # not even the bucket
    with pytest.raises(CorruptBackupError, match="does not match its blake3"):  # checked per object before completing
        dm.restore("d", "latest", overrides={"b": {"bucket": other, "verify_first": False}})
    assert bucket.keys(other) == set()
    assert list(bucket.client._list_multipart_uploads(other).uploads) == []


def test_missing_bucket_and_bad_credentials(bucket: Bucket, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        dm_for(bucket, tmp_path, bucket=bucket.name + "-missing").backup("d")
    with pytest.raises(SourceError) as e:
        dm_for(bucket, tmp_path, secret_key="not-the-secret").backup("d")
    assert "not-the-secret" not in str(e.value) and "\n" not in str(e.value)


def test_cli_bad_credentials_one_line(bucket: Bucket, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from data_manager.cli import main

    config = tmp_path / "dm.toml"
    config.write_text(
        f'[storages.s3]\ntype = "s3"\nendpoint = "{bucket.conn["endpoint"]}"\nsecure = false\naccess_key = "{bucket.conn["access_key"]}"\n'
        f'secret_key = "${{DM_TEST_S3_SECRET}}"\nbucket = "{bucket.name}"\n'
        f'[datasets.d]\nstorage = "s3"\n[[datasets.d.sources]]\nname = "raw"\ntype = "directory"\npath = "{tmp_path}"\n'
    )
    r = CliRunner().invoke(main, ["--config", str(config), "backup", "d"], env={"DM_TEST_S3_SECRET": "bad-secret-xyz"})
    assert r.exit_code == 1, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "secret key" in lines[0] and "bad-secret-xyz" not in r.output, r.output


# --------------------------------------------------------------------------- the s3 storage under a real dataset


def test_directory_backed_up_to_s3(bucket: Bucket, tmp_path: Path) -> None:
    from tests.helpers import make_tree, snapshot

    tree = make_tree(tmp_path / "raw")
    (tree / "large.bin").write_bytes(os.urandom(12 * MiB))
    before = snapshot(tree)
    dm = DataManager.from_dict({
        "storages": {"s3": {"type": "s3", **bucket.conn, "bucket": bucket.name, "prefix": "backups", "part_size": "5MiB"}},
        "datasets": {"exp": {"storage": "s3", "sources": [{"name": "raw", "type": "directory", "path": str(tree)}]}},
    })
    dm.backup("exp")
    assert any(k.startswith("backups/exp/") and k.endswith("backup.json") for k in bucket.keys())
    dm.verify("exp")
    restored = tmp_path / "restored"
    dm.restore("exp", "latest", overrides={"raw": {"path": str(restored)}})
    assert snapshot(restored) == before
    assert [b.complete for b in dm.list_backups("exp")] == [True]
    assert bucket.uploads() == []


def test_object_replaced_while_read_is_not_backed_up(bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from data_manager_minio import download

    bucket.put("stable", b"s" * 100)
    bucket.put("moving", os.urandom(3 * MiB))
    real = download.ObjectReader.read
    replaced = []

    def read(self: Any, n: int = -1) -> bytes:
        data = real(self, n)
        if self._key == "moving" and not replaced:
            replaced.append(1)
            bucket.put("moving", b"a newer version")  # the next range request must notice (If-Match)
        return data

    monkeypatch.setattr(download.ObjectReader, "read", read)
    dm = dm_for(bucket, tmp_path, range_size="1MiB")
    dm.backup("d")
    info = dm.list_backups("d")[0].manifest["sources"][0]["info"]
    assert info["changed_during_backup"] == ["moving"] and info["objects"] == 1
    other = bucket.other()
    dm.restore("d", "latest", overrides={"b": {"bucket": other}})
    assert bucket.keys(other) == {"stable"}


def test_a_stopped_backup_resumes_after_its_last_checkpoint(bucket: Bucket, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """On worm the source saves a checkpoint after every batch of objects: a backup stopped after its third
    is continued by --resume from there (the volumes before it kept as stored, the listing resumed after
    the batch's last key) and restores exactly what the bucket holds."""
    import data_manager_minio.source as source_module
    from data_manager.checkpoints import Checkpoints

    objects = fill(bucket)
    monkeypatch.setattr(source_module, "BATCH_OBJECTS", 25)
    real_save, saved = Checkpoints.save, []

    def save_then_stop(self: Checkpoints, *args: Any) -> None:
        real_save(self, *args)
        saved.append(list(self.volumes))
        if len(saved) == 3:
            raise SourceError("stopped after the third checkpoint")

    monkeypatch.setattr(Checkpoints, "save", save_then_stop)
    dm = dm_for(bucket, tmp_path, volume_size="64KiB", parallel=2)
    with pytest.raises(SourceError, match="third checkpoint"):
        dm.backup("d")
    [stopped] = dm.list_backups("d")
    where = tmp_path / "backups" / "d" / stopped.timestamp / "b"
    before = {p.name.split(".")[0]: p.stat().st_ino for p in where.glob("vol-*")}  # vol-000001.zst
    assert set(saved[2]) <= set(before)
    monkeypatch.setattr(Checkpoints, "save", real_save)
    caplog.set_level("INFO")
    dm.backup("d", resume=True)
    assert "resuming after checkpoint 3" in caplog.text
    after = {p.name.split(".")[0]: p.stat().st_ino for p in where.glob("vol-*")}
    assert all(after[v] == before[v] for v in saved[2])  # kept, not written again
    assert not list(where.glob("checkpoint-*"))
    entries = _index(dm)
    assert set(entries) == set(objects)  # each object once: none skipped, none twice
    info = dm.list_backups("d")[-1]
    assert info.timestamp == stopped.timestamp and info.complete
    with dm.repository("local").artifacts(info, "b").open("objects.jsonl") as f:
        numbers = [json.loads(line)["n"] for line in f.read().splitlines()]
    assert sorted(numbers) == list(range(1, len(objects) + 1))
    arts = dm.repository("local").artifacts(info, "b")
    volumes = [a.name for a in arts.record.artifacts if a.name.startswith("vol-")]
    assert sorted(arts.info["volumes"]) == sorted(volumes) and len(set(volumes)) == len(volumes)
    other = bucket.other()
    dm.restore("d", "latest", overrides={"b": {"bucket": other}})
    assert bucket.keys(other) == set(objects)
    for key, data in objects.items():
        assert bucket.get(key, other) == data, key
    dm.verify("d")
