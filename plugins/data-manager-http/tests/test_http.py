"""The http source against the local export server (conftest.py), through the Python API: every fault
ends in a complete, checked artifact or in one clear line and no complete backup."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from data_manager.api import DataManager
from data_manager.errors import ConfigError, SourceError
from data_manager.types import Settings
from data_manager_http import SECRET_KEYS
from data_manager_http.checksums import etag_md5, whole
from data_manager_http.client import retry_after
from data_manager_http.source import HttpSource
from data_manager_http.urls import label, public_url

KiB = 1 << 10
TOKEN = "s3cr3t-token-value-42"


def manager(tmp_path: Path, url: str, **keys: Any) -> DataManager:
    source = {"name": "db", "type": "http", "url": url, "chunk_size": "256KiB", "retry_delay": "10ms",
              "retries": 3, **keys}
    return DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "datasets": {"site42": {"sources": [source]}},
    })


def stored(tmp_path: Path, dm: DataManager) -> tuple[bytes, dict[str, Any]]:
    """The latest backup's artifact (read back through restore to a file) and the source's info."""
    [info] = [b for b in dm.list_backups("site42") if b.complete][-1:]
    out = tmp_path / f"restored-{info.timestamp}"
    dm.restore("site42", overrides={"db": {"path": str(out)}})
    meta = json.loads((tmp_path / "backups" / "site42" / info.timestamp / "db" / "source.json").read_text())
    return out.read_bytes(), meta["info"]


def no_complete_backup(dm: DataManager) -> None:
    assert not any(b.complete for b in dm.list_backups("site42"))


def backup_fails(dm: DataManager, *expected: str) -> str:
    with pytest.raises(SourceError) as e:
        dm.backup("site42")
    message = str(e.value)
    assert "\n" not in message and message.startswith("source 'db' (127.0.0.1:")
    for text in expected:
        assert text in message, message
    no_complete_backup(dm)
    return message


# --------------------------------------------------------------------------- the happy paths


def test_ranges_in_chunk_size_pieces_of_one_version(tmp_path: Path, export_server: Any) -> None:
    export_server.data = bytes(range(256)) * 4000 + b"tail"  # 1 024 004 bytes: 4 ranges of 256 KiB
    dm = manager(tmp_path, export_server.url)
    result = dm.backup("site42")
    data, info = stored(tmp_path, dm)
    assert data == export_server.data and result.size == len(data)
    gets = export_server.gets()
    assert [g.range for g in gets] == [(0, 256 * KiB - 1), (256 * KiB, 512 * KiB - 1), (512 * KiB, 768 * KiB - 1),
                                       (768 * KiB, 1_024_003)]
    assert all(g.headers.get("If-Match") == export_server.etag for g in gets[1:])
    assert info["ranged"] is True and info["ranges"] == 4 and info["size"] == len(data)
    assert info["filename"] == "site42.zip" and info["content_type"] == "application/zip"
    assert info["digest"] is None and info["parts"] == 1  # ranged: parts, each with its digest in the manifest


def test_a_server_sending_less_than_asked_is_asked_for_the_rest(tmp_path: Path, export_server: Any) -> None:
    export_server.max_range = 100_000
    dm = manager(tmp_path, export_server.url)
    dm.backup("site42")
    assert stored(tmp_path, dm)[0] == export_server.data
    # sorted: the next range is asked for ahead, while the current one is still being read
    assert sorted(g.range for g in export_server.gets())[:4] == [
        (0, 256 * KiB - 1), (100_000, 256 * KiB - 1), (200_000, 256 * KiB - 1), (256 * KiB, 512 * KiB - 1)]


def test_the_next_range_is_asked_for_while_one_is_read(tmp_path: Path, export_server: Any) -> None:
    export_server.slow = 0.005  # 8 KiB pieces: a range of 256 KiB takes at least 160 ms to send
    dm = manager(tmp_path, export_server.url)
    dm.backup("site42")
    assert stored(tmp_path, dm)[0] == export_server.data
    gets = export_server.gets()
    assert [g.range for g in gets][:2] == [(0, 256 * KiB - 1), (256 * KiB, 512 * KiB - 1)]
    assert gets[1].at - gets[0].at < 0.1  # asked before the first range's body was through
    assert len(gets) == -(-len(export_server.data) // (256 * KiB))  # each range once


def test_without_ranges_one_streamed_get(tmp_path: Path, export_server: Any) -> None:
    export_server.ranges = False
    dm = manager(tmp_path, export_server.url)
    dm.backup("site42")
    data, info = stored(tmp_path, dm)
    assert data == export_server.data
    assert len(export_server.gets()) == 1 and info["ranged"] is False and info["ranges"] == 0


def test_an_empty_export(tmp_path: Path, export_server: Any) -> None:
    export_server.data = b""
    dm = manager(tmp_path, export_server.url)
    dm.backup("site42")
    data, info = stored(tmp_path, dm)
    assert data == b"" and info["size"] == 0


# --------------------------------------------------------------------------- lengths and checksums


@pytest.mark.parametrize("ranges", [True, False])
def test_a_content_length_that_lies_fails_in_one_line(tmp_path: Path, export_server: Any, ranges: bool) -> None:
    export_server.ranges = ranges
    export_server.extra_length = 100  # announces 100 bytes more than it sends, then closes
    expected = (("Content-Length 262244 does not match Content-Range bytes 0-262143",) if ranges
                else ("the answer ended before its Content-Length", "gave up after 2 retries"))
    backup_fails(manager(tmp_path, export_server.url, retries=2), *expected)
    assert len(export_server.gets()) == (1 if ranges else 3)


@pytest.mark.parametrize("kind,header", [("repr-digest", "Repr-Digest"), ("digest", "Digest"),
                                         ("etag-md5", "ETag"), ("content-md5", None)])
def test_server_checksums_are_checked(tmp_path: Path, export_server: Any, kind: str, header: str | None) -> None:
    export_server.digest = kind
    dm = manager(tmp_path, export_server.url)
    dm.backup("site42")
    data, info = stored(tmp_path, dm)
    assert data == export_server.data
    if header:
        assert info["server_checksum"].startswith(f"{header}: ")

    export_server.wrong_digest = True
    export_server.requests.clear()
    dm2 = manager(tmp_path / "2", export_server.url)
    backup_fails(dm2, "Content-MD5" if kind == "content-md5" else "do not match the server's")


@pytest.mark.parametrize("header", ["Repr-Digest", "Content-MD5"])
def test_a_required_checksum_header_that_is_missing(tmp_path: Path, export_server: Any, header: str) -> None:
    backup_fails(manager(tmp_path, export_server.url, checksum_header=header),
                 "checksum_header", f"no usable {header.lower()} header")


def test_checksum_none_ignores_a_wrong_digest(tmp_path: Path, export_server: Any) -> None:
    export_server.digest, export_server.wrong_digest = "repr-digest", True
    dm = manager(tmp_path, export_server.url, checksum_header="none")
    dm.backup("site42")


# --------------------------------------------------------------------------- retries


def test_429_and_503_honour_retry_after(tmp_path: Path, export_server: Any) -> None:
    export_server.statuses = [(429, "1"), (503, None)]
    dm = manager(tmp_path, export_server.url)
    dm.backup("site42")
    gets = export_server.gets()
    assert stored(tmp_path, dm)[0] == export_server.data
    assert len(gets) >= 3
    assert gets[1].at - gets[0].at >= 0.95  # the second GET came after the Retry-After of the first


def test_a_retry_after_beyond_the_limit_gives_up_at_once(tmp_path: Path, export_server: Any) -> None:
    export_server.statuses = [(503, "3600")]
    t0 = time.monotonic()
    backup_fails(manager(tmp_path, export_server.url), "HTTP 503", "asks to wait 3600s")
    assert time.monotonic() - t0 < 5


def test_retries_used_up_on_a_busy_range(tmp_path: Path, export_server: Any) -> None:
    export_server.statuses = [(None, None)] + [(503, "0")] * 10  # the first range passes, the second never does
    backup_fails(manager(tmp_path, export_server.url, retries=2), "bytes 262144-524287", "HTTP 503",
                 "gave up after 2 retries")


def test_a_server_that_is_not_there(tmp_path: Path, export_server: Any) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backup_fails(manager(tmp_path, f"http://127.0.0.1:{port}/export", retries=1),
                 "HEAD: cannot connect (connection refused or host unreachable)")


def test_a_client_error_is_not_retried(tmp_path: Path, export_server: Any) -> None:
    export_server.statuses = [(403, None)] * 5
    backup_fails(manager(tmp_path, export_server.url), "HTTP 403 forbidden")
    assert len(export_server.gets()) == 1


def test_a_server_refusing_a_second_connection_is_asked_one_range_at_a_time(tmp_path: Path,
                                                                             export_server: Any) -> None:
    export_server.statuses = [(None, None), (429, "0")]  # the range asked ahead: "too many requests"
    export_server.slow = 0.002  # 8 KiB pieces: a range of 256 KiB takes at least 64 ms to send
    dm = manager(tmp_path, export_server.url)
    dm.backup("site42")
    assert stored(tmp_path, dm)[0] == export_server.data
    gets = export_server.gets()
    assert len(gets) == -(-len(export_server.data) // (256 * KiB)) + 1  # that range once more
    # after the 429 each range is asked for once the one before is through, not while it is read
    later = [g.at for g in gets[2:]]
    assert all(b - a > 0.05 for a, b in zip(later, later[1:]))


def test_a_dropped_connection_resumes_from_the_last_byte(tmp_path: Path, export_server: Any) -> None:
    export_server.drops = [None, 100_000, 5]  # the second range breaks twice, at 100 000 and 5 more bytes in
    dm = manager(tmp_path, export_server.url)
    dm.backup("site42")
    data, info = stored(tmp_path, dm)
    assert data == export_server.data
    starts = sorted(g.range[0] for g in export_server.gets())
    # The second GET (the second range) breaks 100 000 bytes in; the third (the rest of it, or the third range,
    # asked ahead) 5 bytes in: each is asked again from the byte where it broke, nothing read twice.
    assert len(starts) == -(-len(export_server.data) // (256 * KiB)) + 2 and 256 * KiB + 100_000 in starts
    assert 256 * KiB + 100_005 in starts or 512 * KiB + 5 in starts
    assert info["resumed"] == 2


def test_a_dropped_stream_without_ranges_starts_again(tmp_path: Path, export_server: Any) -> None:
    export_server.ranges = False
    export_server.drops = [300_000]
    dm = manager(tmp_path, export_server.url)
    dm.backup("site42")
    data, info = stored(tmp_path, dm)
    assert data == export_server.data and len(export_server.gets()) == 2 and info["restarts"] == 1


def test_a_slow_server_is_waited_for(tmp_path: Path, export_server: Any) -> None:
    export_server.data = export_server.data[: 200 * KiB]
    export_server.slow = 0.01  # 25 pieces of 8 KiB, 10 ms apart
    dm = manager(tmp_path, export_server.url, timeout="2s")
    dm.backup("site42")
    assert stored(tmp_path, dm)[0] == export_server.data


def test_a_stalled_answer_times_out_and_is_asked_again(tmp_path: Path, export_server: Any) -> None:
    export_server.stall = [0.0, 1.5]  # the second range's body does not come within the timeout
    dm = manager(tmp_path, export_server.url, timeout="0.5s")
    dm.backup("site42")
    assert stored(tmp_path, dm)[0] == export_server.data
    asked = [g.range for g in export_server.gets()]
    assert asked.count((256 * KiB, 512 * KiB - 1)) >= 2  # the stalled range was asked again


# --------------------------------------------------------------------------- an export that changes


@pytest.mark.parametrize("part_size", ["64MiB", "256KiB"], ids=["in-one-part", "parts-committed"])
@pytest.mark.parametrize("honour", [True, False], ids=["412", "validators-compared"])
def test_an_export_changed_between_ranges_starts_again(tmp_path: Path, export_server: Any, honour: bool,
                                                       part_size: str) -> None:
    export_server.honour_conditions = honour
    export_server.change_after = 2  # the third GET sees a new version (256KiB: after 2 parts were committed)
    old = export_server.data
    dm = manager(tmp_path, export_server.url, part_size=part_size)
    dm.backup("site42")
    data, info = stored(tmp_path, dm)
    assert data == export_server.data != old  # the new version whole, never a splice
    assert info["restarts"] == 1 and info["etag"] == export_server.etag
    parts = [p for p in (tmp_path / "backups").rglob("export.parts/*/*") if p.is_file()]
    assert len({p.parent.name for p in parts}) == 1 and len(parts) == info["parts"]  # the old version's gone


def test_an_export_that_keeps_changing_fails(tmp_path: Path, export_server: Any) -> None:
    export_server.change_every = 2
    backup_fails(manager(tmp_path, export_server.url), "the export changed while it was downloaded, again")


# --------------------------------------------------------------------------- restore


def test_restore_uploads_to_the_import_url(tmp_path: Path, export_server: Any) -> None:
    export_server.digest = "repr-digest"
    dm = manager(tmp_path, export_server.url, restore_url=export_server.import_url,
                 headers={"Authorization": f"Bearer {TOKEN}"})
    dm.backup("site42")
    export_server.upload_status = [(503, "0")]  # a POST answered 503 was not taken: sent again
    dm.restore("site42")
    [upload] = export_server.uploads
    assert upload.method == "POST" and upload.body == export_server.data
    assert upload.headers["Authorization"] == f"Bearer {TOKEN}"
    assert upload.headers["Content-Type"] == "application/zip"
    assert upload.headers["Repr-Digest"] == export_server.digest_headers()["Repr-Digest"]


def test_restore_put_failure_is_one_line(tmp_path: Path, export_server: Any) -> None:
    dm = manager(tmp_path, export_server.url, restore_url=export_server.import_url, restore_method="PUT")
    dm.backup("site42")
    export_server.upload_status = [(400, None)]
    with pytest.raises(SourceError) as e:
        dm.restore("site42")
    assert "PUT: HTTP 400: import failed: try later" in str(e.value)


def test_restore_to_a_file_replaces_it_whole(tmp_path: Path, export_server: Any) -> None:
    dm = manager(tmp_path, export_server.url)
    dm.backup("site42")
    target = tmp_path / "out" / "site42.zip"
    target.parent.mkdir()
    target.write_bytes(b"old")
    target.chmod(0o640)
    dm.restore("site42", overrides={"db": {"path": str(target)}})
    assert target.read_bytes() == export_server.data and target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["site42.zip"]  # no staging file left


def test_restore_says_where_it_needs_to_go(tmp_path: Path, export_server: Any) -> None:
    dm = manager(tmp_path, export_server.url)
    dm.backup("site42")
    with pytest.raises(ConfigError, match=r"--set db.path=FILE"):
        dm.restore("site42")
    dm2 = manager(tmp_path, export_server.url, restore_url=export_server.import_url)
    with pytest.raises(ConfigError, match=r"both set.*--set db.restore_url="):
        dm2.restore("site42", overrides={"db": {"path": str(tmp_path / "x")}})
    dm2.restore("site42", overrides={"db": {"path": str(tmp_path / "x"), "restore_url": ""}})
    assert (tmp_path / "x").read_bytes() == export_server.data


def test_restore_of_a_source_no_longer_configured_needs_a_target(tmp_path: Path, export_server: Any) -> None:
    manager(tmp_path, export_server.url, headers={"Authorization": f"Bearer {TOKEN}"}).backup("site42")
    dm = DataManager.from_dict({  # the dataset now has another source: db is known only from the backup
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "datasets": {"site42": {"sources": [{"name": "other", "type": "http", "url": export_server.url}]}},
    })
    from data_manager.errors import UsageError

    with pytest.raises(UsageError, match="--set db.KEY=VALUE"):
        dm.restore("site42", only=["db"])
    target = tmp_path / "from-the-backup.zip"
    dm.restore("site42", only=["db"], overrides={"db": {"path": str(target)}})
    assert target.read_bytes() == export_server.data


# --------------------------------------------------------------------------- secrets


def test_secrets_never_in_metadata_or_logs(tmp_path: Path, export_server: Any, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    export_server.drops = [1000]  # a warning is logged, naming the URL
    dm = manager(tmp_path, f"{export_server.url}?site=42&token={TOKEN}",
                 headers={"Authorization": f"Bearer {TOKEN}", "X-Trace": "fine"})
    dm.backup("site42")
    everything = "".join(p.read_text(errors="replace") for p in (tmp_path / "backups").rglob("*")
                         if p.is_file() and p.suffix in (".json", "") and p.name != "export")
    assert TOKEN not in everything and TOKEN not in caplog.text
    _, info = stored(tmp_path, dm)
    assert info["url"] == f"{export_server.url}?site=42&token=***"
    assert "?site=42&token=***" in caplog.text  # the warning is readable, only the token masked
    export_server.statuses = [(404, None)]
    with pytest.raises(SourceError) as e:
        dm.backup("site42")
    assert TOKEN not in str(e.value) and "HTTP 404 not found" in str(e.value)


def test_headers_never_follow_a_redirect_to_another_host(tmp_path: Path, export_server: Any,
                                                          other_server: Any) -> None:
    export_server.redirect = other_server.url.replace("127.0.0.1", "localhost")  # another host, as a CDN's
    dm = manager(tmp_path, export_server.url, headers={"Authorization": f"Bearer {TOKEN}", "X-Api-Key": TOKEN})
    dm.backup("site42")
    assert stored(tmp_path, dm)[0] == other_server.data
    assert export_server.gets()[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert other_server.gets() and all(TOKEN not in json.dumps(r.headers) for r in other_server.requests)


def test_https_checks_the_certificate(tmp_path: Path, tls_server: Any, monkeypatch: Any) -> None:
    server, cert = tls_server
    message = backup_fails(manager(tmp_path, server.url), "TLS handshake failed")
    assert "Traceback" not in message
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted now, as with a site's own CA
    dm = manager(tmp_path / "2", server.url)
    dm.backup("site42")
    assert stored(tmp_path / "2", dm)[0] == server.data


def test_check_asks_head_and_accepts_a_server_without_it(tmp_path: Path, export_server: Any) -> None:
    export_server.head_status = 405
    dm = manager(tmp_path, export_server.url)
    dm.backup("site42")
    assert export_server.requests[0].method == "HEAD"
    export_server.head_status = 401
    backup_fails(manager(tmp_path / "2", export_server.url), "HTTP 401 not authorised")


def test_restore_checks_the_backup_before_it_uploads(tmp_path: Path, export_server: Any) -> None:
    dm = manager(tmp_path, export_server.url, restore_url=export_server.import_url)
    result = dm.backup("site42")
    [artifact] = (tmp_path / "backups" / "site42" / result.timestamp / "db").glob("export.parts/*/000001")
    artifact.write_bytes(b"damaged" + artifact.read_bytes()[7:])
    from data_manager.errors import CorruptBackupError

    with pytest.raises(CorruptBackupError):
        dm.restore("site42")
    assert export_server.uploads == []


# --------------------------------------------------------------------------- settings and small parts


def make(**values: Any) -> HttpSource:
    return HttpSource("db", Settings(values, where="t.toml, source 'db'", secret_keys=SECRET_KEYS))


@pytest.mark.parametrize("values,key", [
    ({}, "url"),
    ({"url": ""}, "url"),
    ({"url": "ftp://x/y"}, "url"),
    ({"url": "http:///nohost"}, "url"),
    ({"url": "http://h/x", "headers": "Bearer x"}, "headers"),
    ({"url": "http://h/x", "headers": {"Bad Name": "x"}}, "headers"),
    ({"url": "http://h/x", "headers": {"Range": "bytes=0-"}}, "headers"),
    ({"url": "http://h/x", "chunk_size": "lots"}, "chunk_size"),
    ({"url": "http://h/x", "checksum_header": "crc32"}, "checksum_header"),
    ({"url": "http://h/x", "restore_method": "PATCH"}, "restore_method"),
    ({"url": "http://h/x", "retry_delay": "soon"}, "retry_delay"),
    ({"url": "http://h/x", "urll": "x"}, "urll"),
])
def test_bad_settings_name_the_key(values: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        make(**values)
    assert e.value.key == key and "t.toml" in str(e.value)


def test_settings_recorded_as_secret_are_unknown_not_wrong() -> None:
    src = make(url="***", headers="***", restore_url="***", path="/tmp/x")
    assert src.url is None and src.restore_url is None and src.headers == {} and src.path == Path("/tmp/x")
    with pytest.raises(ConfigError, match="recorded as a secret"):
        src.check()


def test_public_url_masks_secret_query_values() -> None:
    url = "https://user:pw@site.example:8443/api/export?site=42&access_token=abc&X-Amz-Signature=f00&q=a%20b"
    assert public_url(url) == "https://user@site.example:8443/api/export?site=42&access_token=***&X-Amz-Signature=***&q=a%20b"
    assert label("https://site.example/export") == "site.example/export"


def test_checksum_headers_parse() -> None:
    data = b"hello"
    sha = hashlib.sha256(data)
    import base64

    b64 = base64.b64encode(sha.digest()).decode()
    assert whole({"repr-digest": f"md5=:{base64.b64encode(hashlib.md5(data).digest()).decode()}:, sha-256=:{b64}:"},
                 "auto").algorithm == "sha-256"
    assert whole({"digest": f"SHA-256={sha.hexdigest()}"}, "auto").digest == sha.digest()  # hex, as some send
    assert whole({"etag": 'W/"' + "a" * 32 + '"'}, "auto") is None  # weak: never a checksum
    assert etag_md5('"5f3c8a2b-1a4"') is None and etag_md5('"' + "0" * 32 + '"') == bytes(16)
    assert whole({"digest": "SHA-256=!!"}, "auto") is None


def test_retry_after_forms() -> None:
    assert retry_after("7") == 7.0 and retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412475.0) == 5.0
