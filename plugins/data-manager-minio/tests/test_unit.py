"""Without a server: settings, key selection, error texts, retries, registration."""

from __future__ import annotations

import sys

import pytest

from data_manager.errors import ConfigError, StorageError
from data_manager.plugins import get_registry
from data_manager.types import FileAttributes, Settings
from data_manager_minio.connection import Connection, ConnectionSettings, describe, is_transient
from data_manager_minio.source import MinioSource
from data_manager_minio.storage import S3Storage, mirror_metadata, normalize_prefix

BASE = {"endpoint": "s3.example.org:9000", "access_key": "AK", "secret_key": "SK-very-secret", "bucket": "b"}


def _settings(**kw: object) -> Settings:
    return Settings({**BASE, **kw}, where="dm.toml, dataset 'd', source 'b'", secret_keys=("secret_key",))


def test_registered_lazily() -> None:
    reg = get_registry()
    assert "minio" in reg.source_types and "s3" in reg.storage_types
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", "import sys, data_manager_minio.source, data_manager_minio.storage; "
                               "print('minio' in sys.modules, 'pycurl' in sys.modules)"],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "False False"


def test_without_pycurl_the_sdk_lists_and_fetches(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "pycurl", None)  # import pycurl -> ImportError
    monkeypatch.delitem(sys.modules, "data_manager_minio.fetch", raising=False)
    with caplog.at_level("INFO"):
        source = MinioSource("b", _settings())
        assert source._small_objects() is None and source._lister() is None
    assert caplog.text.count("libcurl (pycurl) cannot be loaded here") == 1


@pytest.mark.parametrize(
    "change, key",
    [
        ({"endpoint": "http://host:9000"}, "endpoint"),
        ({"endpoint": "host:9000/path"}, "endpoint"),
        ({"bucket": ""}, "bucket"),
        ({"part_size": "1MiB"}, "part_size"),
        ({"part_size": "lots"}, "part_size"),
        ({"parallel": 0}, "parallel"),
        ({"secure": "yes"}, "secure"),
        ({"bukket": "x"}, "bukket"),
    ],
)
def test_bad_source_settings(change: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        MinioSource("b", _settings(**change))
    assert e.value.key == key and "dm.toml" in str(e.value)


def test_keys_go_together() -> None:
    values = dict(BASE)
    del values["secret_key"]
    with pytest.raises(ConfigError, match="go together"):
        S3Storage("s", Settings(values))


def test_storage_settings() -> None:
    s = S3Storage("s", _settings(prefix="/backups/lab/", storage_class="reduced_redundancy", secure="false"))
    assert s.location() == "http://s3.example.org:9000/b/backups/lab"
    assert s.storage_class == "REDUCED_REDUNDANCY" and s.root == "backups/lab/"
    with pytest.raises(ConfigError, match="storage class"):
        S3Storage("s", _settings(storage_class="COLD_AS_ICE"))
    with pytest.raises(StorageError, match="bad key"):
        s._key("a/../b")


def test_no_secret_in_public_settings_or_description() -> None:
    settings = _settings()
    src = MinioSource("b", settings)
    assert "SK-very-secret" not in src.describe() + repr(settings.public())
    assert settings.public()["secret_key"] == "***"


def test_prefix_and_globs() -> None:
    assert normalize_prefix("") == "" and normalize_prefix("a/b") == "a/b/" and normalize_prefix("/a/") == "a/"
    src = MinioSource("b", _settings(include=["raw/*", "*.csv"], exclude=["*.tmp"]))
    assert src.selected("raw/x/y.bin") and src.selected("top.csv")
    assert not src.selected("raw/x.tmp") and not src.selected("other/x.bin")
    assert MinioSource("b", _settings()).selected("anything at all/..")


def test_transient_errors_and_texts() -> None:
    import urllib3
    from minio.error import ServerError

    assert is_transient(urllib3.exceptions.ProtocolError("reset"))
    assert is_transient(ServerError("boom", 503))
    assert not is_transient(ServerError("nope", 400))
    assert not is_transient(ValueError("bug"))
    assert "connection broke" in describe(urllib3.exceptions.ProtocolError("reset"))


def test_call_retries_then_gives_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib3

    monkeypatch.setattr("time.sleep", lambda s: None)
    conn = Connection(ConnectionSettings.read(_settings(retries=2)), "s3 storage 's'", StorageError)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise urllib3.exceptions.ReadTimeoutError(None, "/", "timed out")  # type: ignore[arg-type]
        return "ok"

    assert conn.call("reading x", flaky) == "ok" and len(calls) == 3

    def dead() -> None:
        raise urllib3.exceptions.ReadTimeoutError(None, "/", "timed out")  # type: ignore[arg-type]

    with pytest.raises(StorageError) as e:
        conn.call("reading x", dead)
    assert str(e.value) == "s3 storage 's': reading x: the server stopped answering (read timed out)"

    def bug() -> None:
        raise KeyError("a bug is not a storage error")

    with pytest.raises(KeyError):
        conn.call("reading x", bug)


def test_object_digest_blake3_and_older_sha256() -> None:
    import hashlib

    from blake3 import blake3

    from data_manager.errors import CorruptBackupError
    from data_manager_minio.source import object_digest

    data = b"object bytes"
    name, h, expected = object_digest({"key": "k", "blake3": blake3(data).hexdigest()})
    h.update(data)
    assert name == "blake3" and h.hexdigest() == expected
    name, h, expected = object_digest({"key": "k", "sha256": hashlib.sha256(data).hexdigest()})  # backups before blake3
    h.update(data)
    assert name == "sha256" and h.hexdigest() == expected
    with pytest.raises(CorruptBackupError, match="no digest"):
        object_digest({"key": "k"})


def test_small_object_headers() -> None:
    from data_manager_minio.fetch import parse_headers

    lines = [b"HTTP/1.1 200 OK\r\n", b"Content-Type: text/plain\r\n", b"ETag: \"abc\"\r\n",
             b"X-Amz-Meta-Owner: J\xf6rg\r\n", b"Content-Length: 5\r\n", b"\r\n"]
    assert parse_headers(lines) == {"content-type": "text/plain", "etag": '"abc"', "x-amz-meta-owner": "Jörg",
                                    "content-length": "5"}  # ISO-8859-1, as http.client decodes headers
    assert parse_headers([b"HTTP/1.1 100 Continue\r\n", b"\r\n", *lines])["etag"] == '"abc"'  # the last answer counts
    assert parse_headers([b"HTTP/1.1 206 Partial Content\r\n", b"ETag: \"abc\"\r\n"]) is None
    assert parse_headers([b"HTTP/1.1 503 Slow Down\r\n"]) is None
    assert parse_headers([]) is None


def test_small_size_is_capped_by_range_size() -> None:
    assert MinioSource("b", _settings()).small_size == 1 << 20
    assert MinioSource("b", _settings(small_size="8MiB", range_size="2MiB")).small_size == 2 << 20
    assert MinioSource("b", _settings(small_size=0)).small_size == 0
    with pytest.raises(ConfigError, match="small_size"):
        MinioSource("b", _settings(small_size="lots"))


def test_small_objects_without_sigv4_all_handed_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A libcurl that cannot sign (pycurl built on libcurl < 7.75): every object goes to the SDK path."""
    import queue
    import threading
    from types import SimpleNamespace

    import pycurl

    from data_manager_minio.fetch import SmallObjects

    def no_sigv4(self: SmallObjects) -> None:
        raise pycurl.error(48, "An unknown option was passed in to libcurl")

    monkeypatch.setattr(SmallObjects, "_handle", no_sigv4)
    todo: queue.Queue[object] = queue.Queue()
    for n in range(3):
        todo.put((n, SimpleNamespace(object_name=f"k{n}")))
    todo.put(None)
    back: list[int] = []
    fetcher = SmallObjects(ConnectionSettings.read(_settings()), "b", "us-east-1", 4, max_size=1 << 20)
    fetcher.run(todo, lambda *a: pytest.fail("nothing can be fetched"), lambda item: back.append(item[0]) or True,
                threading.Event())
    assert back == [0, 1, 2] and (fetcher.fetched, fetcher.handed_back) == (0, 3)


LISTING = """<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>a%20b/</Prefix>
<KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><Delimiter></Delimiter><IsTruncated>{truncated}</IsTruncated>
<EncodingType>url</EncodingType>{token}
<Contents><Key>a%20b/x%2By+z%C3%A9</Key><LastModified>2026-11-23T07:29:00.123Z</LastModified>
<ETag>&quot;0123abcd&quot;</ETag><Size>42</Size><StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key>a%20b/empty</Key><LastModified>2026-11-23T07:29:01Z</LastModified><ETag>"ff-2"</ETag>
<Size>0</Size><Owner><ID>o</ID></Owner></Contents></ListBucketResult>"""


def test_listing_page_parsed_as_the_sdk_parses_it() -> None:
    from datetime import datetime, timezone

    from minio.datatypes import parse_list_objects

    from data_manager_minio.listing import parse_page

    body = LISTING.format(truncated="true", token="<NextContinuationToken>t/1=</NextContinuationToken>").encode()
    objects, token = parse_page(body)
    assert token == "t/1="
    assert [o.object_name for o in objects] == ["a b/x+y z\u00e9", "a b/empty"]
    assert objects[0].last_modified == datetime(2026, 11, 23, 7, 29, 0, 123000, tzinfo=timezone.utc)

    class Response:  # what the SDK's parser reads of a urllib3 response
        data = body

    sdk = parse_list_objects(Response())[0]  # type: ignore[arg-type]
    attrs = ("object_name", "size", "etag", "last_modified", "storage_class")
    assert [[getattr(o, a) for a in attrs] for o in objects] == [[getattr(o, a) for a in attrs] for o in sdk]
    assert [o.last_modified.isoformat() for o in objects] == [o.last_modified.isoformat() for o in sdk]
    assert parse_page(LISTING.format(truncated="false", token="").encode())[1] is None


@pytest.mark.parametrize("body", [
    LISTING.format(truncated="true", token=""),  # truncated, but no way on: the SDK must take over
    '<?xml version="1.0"?><Error><Code>SlowDown</Code></Error>',
    "<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>",  # no key
    "not xml at all",
])
def test_listing_page_that_cannot_be_used(body: str) -> None:
    import xml.etree.ElementTree as ET

    from data_manager_minio.listing import parse_page

    with pytest.raises((ValueError, KeyError, ET.ParseError)):
        parse_page(body.encode())


def test_a_mirrored_files_attributes_as_user_metadata_in_rclones_format() -> None:
    assert mirror_metadata(FileAttributes(1_683_827_651_523_399_602, 0o640, "ab" * 32)) == {
        "x-amz-meta-mtime": "1683827651.523399602", "x-amz-meta-mode": "100640", "x-amz-meta-blake3": "ab" * 32}
    assert mirror_metadata(FileAttributes(7, 0o7777)) == {"x-amz-meta-mtime": "0.000000007", "x-amz-meta-mode": "107777"}
