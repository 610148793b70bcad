"""The gdrive storage against a fake Drive v3 server, driven by the real google-api-python-client."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fake_drive import CHUNK_UNIT as CHUNK
from fake_drive import FOLDER, FakeDrive, parse_q

from data_manager.api import DataManager
from data_manager.errors import ConfigError, NotFoundError, StorageError
from data_manager.testing import check_storage_contract
from data_manager.types import FileAttributes, Settings
from data_manager_gdrive import GDriveStorage
from data_manager_gdrive.auth import save_token


def read(storage: GDriveStorage, key: str, offset: int = 0, length: int | None = None) -> bytes:
    with storage.open_read(key, offset, length) as f:
        return f.read()


def write(storage: GDriveStorage, key: str, data: bytes, piece: int = 100_000) -> None:
    with storage.open_write(key) as w:
        for i in range(0, len(data), piece):
            w.write(data[i : i + piece])


def folders_named(fake: FakeDrive, name: str) -> list[Any]:
    return [f for f in fake.files.values() if f.is_folder and f.name == name and not f.trashed]


# --------------------------------------------------------------------------- the contract


def test_contract_in_my_drive_path(storage: GDriveStorage, fake: FakeDrive) -> None:
    check_storage_contract(storage)
    assert storage.location() == "gdrive://my-drive/backups/lab"
    assert [f.name for f in folders_named(fake, "lab")] == ["lab"]


def test_contract_in_folder_by_id(make_storage: Callable[..., GDriveStorage], fake: FakeDrive) -> None:
    folder = fake.mkdir("given")
    storage = make_storage(root=None, root_folder_id=folder)
    check_storage_contract(storage)
    assert storage.location() == f"gdrive://folder:{folder}"


def test_contract_in_shared_drive(make_storage: Callable[..., GDriveStorage], fake: FakeDrive) -> None:
    # The fake hides shared-drive items from requests without supportsAllDrives / includeItemsFromAllDrives.
    drive = fake.add_shared_drive("0AsharedDriveX")
    storage = make_storage(drive_id=drive, root="dm")
    check_storage_contract(storage)
    write(storage, "x/y.bin", b"data")
    (f,) = fake.visible()
    assert f.drive_id == drive and fake.path_of(f) == "dm/x/y.bin"


# --------------------------------------------------------------------------- uploads


def test_large_write_is_chunked_resumable_and_hidden_until_commit(storage: GDriveStorage, fake: FakeDrive) -> None:
    data = os.urandom(3 * CHUNK + 1000)
    w = storage.open_write("d/t/s/big.bin")
    for i in range(0, len(data), 70_000):
        w.write(data[i : i + 70_000])
    # Three full chunks have gone out with an unknown total; the file does not exist on Drive yet.
    assert fake.content_ranges == [f"bytes {i * CHUNK}-{(i + 1) * CHUNK - 1}/*" for i in range(3)]
    assert fake.visible() == [] and not storage.exists("d/t/s/big.bin")
    assert max(len(s.data) for s in fake.sessions.values()) == 3 * CHUNK
    w.commit()
    assert fake.content_ranges[-1] == f"bytes {3 * CHUNK}-{len(data) - 1}/{len(data)}"
    (f,) = fake.visible()
    assert f.name == "big.bin" and fake.path_of(f) == "backups/lab/d/t/s/big.bin"
    assert read(storage, "d/t/s/big.bin") == data
    # Ranges are served with 206 a chunk at a time.
    assert read(storage, "d/t/s/big.bin", CHUNK - 5, 10) == data[CHUNK - 5 : CHUNK + 5]
    before = fake.count("media")
    assert read(storage, "d/t/s/big.bin", 10) == data[10:]
    assert fake.count("media") - before == 4


@pytest.mark.parametrize("size", [10, 3 * CHUNK + 1000], ids=["one request", "resumable"])
def test_a_mirrored_files_attributes_go_with_its_drive_file(storage: GDriveStorage, fake: FakeDrive, size: int) -> None:
    """A ``sync`` mirror on Drive: the file's mtime is the Drive file's ``modifiedTime`` (milliseconds kept, after
    the rename of a resumable upload too), its mode and digest are public ``properties``."""
    with storage.open_write_deferred("m/f.bin", FileAttributes(1_683_827_651_523_399_602, 0o640, "ab" * 32)) as w:
        w.write(os.urandom(size))
    (f,) = fake.visible()
    assert f.name == "f.bin" and f.modified == "2023-05-11T17:54:11.523Z"
    assert f.properties == {"mode": "640", "blake3": "ab" * 32}
    assert [e.modified for e in storage.list("m")] == [datetime(2023, 5, 11, 17, 54, 11, 523000, timezone.utc)]


def test_writer_memory_is_bounded_by_one_chunk(storage: GDriveStorage, fake: FakeDrive) -> None:
    w = storage.open_write("d/mem.bin")
    biggest = 0
    for _ in range(40):
        w.write(b"\x01" * 50_000)
        biggest = max(biggest, w._media.pending())  # type: ignore[attr-defined]
    w.commit()
    assert biggest <= CHUNK + 50_000
    assert fake.visible()[0].data == b"\x01" * 2_000_000


def test_exact_multiple_of_chunk_and_small_files(storage: GDriveStorage, fake: FakeDrive) -> None:
    exact = os.urandom(2 * CHUNK)
    write(storage, "a/exact", exact)
    assert read(storage, "a/exact") == exact
    assert fake.content_ranges[-1] == f"bytes {CHUNK}-{2 * CHUNK - 1}/{2 * CHUNK}"
    # Objects that fit in one chunk go in one multipart request, under their final name.
    before = len(fake.calls)
    write(storage, "a/small.json", b'{"x": 1}\r\n\n\r')
    assert fake.calls[before:] == ["multipart"]
    assert read(storage, "a/small.json") == b'{"x": 1}\r\n\n\r'


def test_a_failed_commit_leaves_nothing(storage: GDriveStorage, fake: FakeDrive) -> None:
    fake.fail("update", 403, "insufficientFilePermissions")  # the rename to the final name
    with pytest.raises(StorageError, match="permission denied"):
        write(storage, "d/x.bin", os.urandom(2 * CHUNK + 5))
    assert fake.visible() == [] and list(storage.list("d")) == []


def test_abort_cancels_the_session(storage: GDriveStorage, fake: FakeDrive) -> None:
    w = storage.open_write("d/x.bin")
    w.write(os.urandom(CHUNK + 1))
    w.abort()
    w.abort()
    assert fake.count("upload_cancel") == 1 and all(s.cancelled for s in fake.sessions.values())
    assert fake.visible() == []


def test_leftover_part_files_are_not_listed(storage: GDriveStorage, fake: FakeDrive) -> None:
    write(storage, "d/kept", b"1")
    parent = fake.visible()[0].parents[0]
    fake._create({"name": ".lost.part-0123abcd", "parents": [parent]}, b"half", {})
    assert [e.name for e in storage.list("d")] == ["kept"]


@pytest.mark.parametrize("size", [100, 3 * CHUNK])
def test_md5_mismatch_is_detected(storage: GDriveStorage, fake: FakeDrive, size: int) -> None:
    fake.corrupt()
    with pytest.raises(StorageError, match="md5") as err:
        write(storage, "d/c.bin", os.urandom(size))
    assert "\n" not in str(err.value)
    assert fake.visible() == []


def test_replace_keeps_one_file(storage: GDriveStorage, fake: FakeDrive) -> None:
    write(storage, "d/f", b"one")
    other = GDriveStorage("drive", storage.settings)  # another run: knows nothing about the folder
    write(other, "d/f", b"two" * CHUNK)
    assert read(storage, "d/f") == b"two" * CHUNK
    assert [f.data[:3] for f in fake.visible()] == [b"two"]


def test_concurrent_writers_share_folders(storage: GDriveStorage, fake: FakeDrive) -> None:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            write(storage, f"ds/ts/src/f{i}", os.urandom(CHUNK + i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(folders_named(fake, "src")) == 1 and len(folders_named(fake, "ds")) == 1
    assert sorted(e.name for e in storage.list("ds/ts/src")) == [f"f{i}" for i in range(6)]


def test_folder_ids_are_cached(storage: GDriveStorage, fake: FakeDrive) -> None:
    write(storage, "ds/ts/src/first", b"x")
    before = len(fake.calls)
    for i in range(10):
        write(storage, f"ds/ts/src/n{i}", b"x")
    assert fake.calls[before:] == ["multipart"] * 10  # one call per small object, no folder lookups


# --------------------------------------------------------------------------- faults


def test_resume_after_a_dropped_chunk(storage: GDriveStorage, fake: FakeDrive) -> None:
    data = os.urandom(4 * CHUNK + 77)
    write(storage, "d/a", data[:10])  # folders exist now
    # Dropped twice in a row (httplib2 re-sends once by itself), after 1.5 chunks of a 2-chunk body were read.
    storage_2 = GDriveStorage("drive", Settings({**storage.settings._values, "chunk_size": 2 * CHUNK}))
    w = storage_2.open_write("d/resumed.bin")
    w.write(data[: 2 * CHUNK + 1])  # sends chunk 0 normally
    fake.drop("upload_chunk", times=2, after=CHUNK + CHUNK // 2)
    w.write(data[2 * CHUNK + 1 :])
    w.commit()
    assert fake.count("upload_probe") >= 1
    probe = [r for r in fake.content_ranges if r.startswith("bytes */")]
    assert probe and probe[0] in ("bytes */*", f"bytes */{len(data)}")
    # The server had kept 256 KiB of the dropped chunk: the client resumed from there, not from the start.
    assert any(r.startswith(f"bytes {3 * CHUNK}-") for r in fake.content_ranges)
    assert read(storage_2, "d/resumed.bin") == data


def test_lost_answer_to_the_last_chunk(storage: GDriveStorage, fake: FakeDrive) -> None:
    data = os.urandom(2 * CHUNK + 9)
    w = storage.open_write("d/lost.bin")
    w.write(data)
    fake.lose_answer("upload_chunk", times=2)  # the file is complete on the server, the client does not know
    w.commit()
    assert fake.count("upload_probe") == 1  # the probe is answered 200 with the file: done, nothing re-sent
    assert read(storage, "d/lost.bin") == data and len(fake.visible()) == 1


def test_retries_after_429_rate_limits_and_500(storage: GDriveStorage, fake: FakeDrive) -> None:
    data = os.urandom(3 * CHUNK)
    fake.fail("list", 429, "rateLimitExceeded")
    fake.fail("create", 403, "userRateLimitExceeded")
    fake.fail("upload_start", 503, "backendError")
    fake.fail("upload_chunk", 429, "rateLimitExceeded", times=2)
    fake.fail("update", 500, "internalError")
    fake.drop("list", times=2)
    write(storage, "d/r.bin", data)
    fake.fail("media", 429, "rateLimitExceeded")
    fake.fail("media", 502, "badGateway")
    assert read(storage, "d/r.bin") == data
    assert fake.faults == []


def test_retries_are_bounded(make_storage: Callable[..., GDriveStorage], fake: FakeDrive) -> None:
    storage = make_storage(retries=2)
    fake.fail("*", 503, "backendError", times=100)
    with pytest.raises(StorageError) as err:
        list(storage.list(""))
    assert str(err.value) == "Google Drive: look up folder 'backups': gave up after 3 tries (HTTP 503 backendError: fake backendError)"
    assert len(fake.calls) == 3


def test_quota_exhausted_is_one_clear_line(storage: GDriveStorage, fake: FakeDrive) -> None:
    write(storage, "d/a", b"x")
    fake.fail("multipart", 403, "storageQuotaExceeded", message="The user's Drive storage quota has been exceeded.")
    with pytest.raises(StorageError) as err:
        write(storage, "d/b", b"y")
    assert str(err.value) == (
        "Google Drive: upload d/b: storage quota exhausted "
        "(storageQuotaExceeded: The user's Drive storage quota has been exceeded.)"
    )
    assert fake.count("multipart") == 2  # not retried


def test_permission_denied_is_one_clear_line(storage: GDriveStorage, fake: FakeDrive) -> None:
    fake.fail("get", 403, "insufficientFilePermissions", message="The user does not have sufficient permissions for this file.")
    with pytest.raises(StorageError) as err:
        storage.check()
    assert str(err.value) == (
        "Google Drive: open the root folder: permission denied "
        "(insufficientFilePermissions: The user does not have sufficient permissions for this file.)"
    )


def test_bad_token_is_permission_denied(make_storage: Callable[..., GDriveStorage], fake: FakeDrive) -> None:
    fake.token = "another"
    with pytest.raises(StorageError, match=r"^Google Drive: open the root folder: permission denied"):
        make_storage().check()


def test_check(make_storage: Callable[..., GDriveStorage], fake: FakeDrive) -> None:
    make_storage().check()  # root path missing: created on the first write
    with pytest.raises(StorageError, match=r"^Google Drive: gdrive://folder:nope: root folder not found \(or not shared"):
        make_storage(root=None, root_folder_id="nope").check()
    file_id = fake._create({"name": "plain"}, b"x", {}).id
    with pytest.raises(StorageError, match="is not a folder"):
        make_storage(root=None, root_folder_id=file_id).check()


# --------------------------------------------------------------------------- listing and deleting


def test_pagination_over_many_files(make_storage: Callable[..., GDriveStorage], fake: FakeDrive) -> None:
    storage = make_storage(page_size=7)
    names = [f"obj-{i:03d}" for i in range(40)]
    for name in names:
        write(storage, f"many/{name}", name.encode())
    write(storage, "many/sub/x", b"x")
    before = fake.count("list")
    entries = {e.name: e for e in storage.list("many")}
    assert fake.count("list") - before == 6  # 41 children, 7 a page
    assert sorted(entries) == sorted(names + ["sub"])
    assert entries["sub"].is_dir and entries["obj-007"].size == 7
    assert sorted(k for k, _ in storage.walk("many")) == sorted([f"many/{n}" for n in names] + ["many/sub/x"])


def test_delete_to_trash_or_for_good(make_storage: Callable[..., GDriveStorage], fake: FakeDrive) -> None:
    trash = make_storage()
    write(trash, "ds/ts1/s/a", b"a")
    write(trash, "ds/ts1/s/b", b"b")
    write(trash, "ds/ts2/s/c", b"c")
    trash.delete("ds/ts1/s/a")
    assert [f.name for f in fake.files.values() if f.trashed] == ["a"]
    trash.delete("ds/ts1/s/b")  # the last object: its empty folders go too (to the trash)
    assert sorted(f.name for f in fake.files.values() if f.trashed) == ["a", "b", "s", "ts1"]
    assert [e.name for e in trash.list("ds")] == ["ts2"]
    permanent = make_storage(delete="permanent")
    permanent.delete_tree("ds/ts2")
    assert "c" not in {f.name for f in fake.files.values()}
    assert list(permanent.walk("")) == []
    permanent.delete("ds/missing/x")


def test_read_missing(storage: GDriveStorage) -> None:
    with pytest.raises(NotFoundError):
        storage.open_read("no/such/key")
    write(storage, "d/x", b"x")
    with pytest.raises(NotFoundError):
        storage.open_read("d/y")
    assert read(storage, "d/x", 1) == b""


# --------------------------------------------------------------------------- through the core


def test_dataset_round_trip(tmp_path: Path, gdrive_settings: dict[str, Any], fake: FakeDrive) -> None:
    src = tmp_path / "raw"
    (src / "sub").mkdir(parents=True)
    big = os.urandom(5 * CHUNK + 123)  # does not compress: stored as is, in several chunks
    (src / "big.bin").write_bytes(big)
    (src / "sub" / "notes.txt").write_text("hello drive\n" * 1000)
    dm = DataManager.from_dict(
        {
            "storages": {"drive": {"type": "gdrive", **gdrive_settings}},
            "datasets": {"exp42": {"storage": "drive", "sources": [{"name": "raw", "type": "directory", "path": str(src)}]}},
        }
    )
    result = dm.backup("exp42")
    assert result.location.startswith("gdrive://my-drive/backups/lab/exp42/")
    uploads = fake.count("upload_chunk")
    assert uploads >= 5
    dm.verify("exp42")
    target = tmp_path / "restored"
    dm.restore("exp42", "latest", overrides={"raw": {"path": str(target)}})
    assert (target / "big.bin").read_bytes() == big
    assert (target / "sub" / "notes.txt").read_text() == "hello drive\n" * 1000
    assert [b.complete for b in dm.list_backups("exp42")] == [True]
    files = {fake.path_of(f) for f in fake.visible()}
    assert f"backups/lab/exp42/{result.timestamp}/backup.json" in files
    dm.close()


def test_cli_bad_config_and_denied_storage(tmp_path: Path, fake: FakeDrive) -> None:
    from data_manager.cli import main

    src = tmp_path / "raw"
    src.mkdir()
    (src / "f").write_text("x")
    config = tmp_path / "dm.toml"

    def run(storage_extra: str) -> Any:
        config.write_text(
            f"""
[storages.drive]
type = "gdrive"
auth = "none"
api_root = "{fake.url}"
retry_delay = 0.001
{storage_extra}

[datasets.exp42]
storage = "drive"
[[datasets.exp42.sources]]
name = "raw"
type = "directory"
path = "{src}"
"""
        )
        return CliRunner().invoke(main, ["--config", str(config), "backup", "exp42"])

    bad = run("chunk_size = 1000000")
    assert bad.exit_code == 2, bad.output
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "chunk_size" in lines[0] and "256 KiB" in lines[0], bad.output

    fake.fail("get", 403, "insufficientFilePermissions", message="The user does not have sufficient permissions.")
    denied = run("")
    assert denied.exit_code == 1, denied.output
    lines = [line for line in denied.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "permission denied" in lines[0] and "Traceback" not in denied.output, denied.output

    ok = run("")
    assert ok.exit_code == 0, ok.output


# --------------------------------------------------------------------------- settings and auth


@pytest.mark.parametrize(
    "values, key",
    [
        ({"auth": "none", "api_root": "https://www.googleapis.com/"}, "auth"),
        ({"auth": "none", "api_root": "http://drive.example.org/"}, "api_root"),
        ({"auth": "none", "api_root": "http://127.0.0.1:1/", "delete": "shred"}, "delete"),
        ({"auth": "none", "api_root": "http://127.0.0.1:1/", "chunk_size": 300000}, "chunk_size"),
        ({"auth": "none", "api_root": "http://127.0.0.1:1/", "root": "a/../b"}, "root"),
        ({"auth": "none", "api_root": "http://127.0.0.1:1/", "page_size": 5000}, "page_size"),
        ({"auth": "oauth"}, "client_secrets_file"),
        ({"auth": "service_account"}, "credentials_file"),
        ({"auth": "magic"}, "auth"),
        ({"credentials": "x"}, "credentials"),
    ],
)
def test_settings_are_checked(values: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        GDriveStorage("drive", Settings(values, where="dm.toml: [storages.drive]"))
    assert err.value.key == key and str(err.value).startswith("dm.toml: [storages.drive]: key ")


def test_default_auth_kind() -> None:
    assert GDriveStorage("d", Settings({"credentials_file": "/k.json"})).auth == "service_account"
    assert GDriveStorage("d", Settings({"client_secrets_file": "/c.json"})).auth == "oauth"
    assert GDriveStorage("d", Settings({})).auth == "adc"


def test_service_account_key_errors_are_one_line(tmp_path: Path) -> None:
    missing = GDriveStorage("d", Settings({"credentials_file": str(tmp_path / "nope.json")}))
    with pytest.raises(StorageError, match=r"key file .*nope.json does not exist$"):
        missing.check()
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "service_account"}')
    with pytest.raises(StorageError, match="not a usable service account key file"):
        GDriveStorage("d", Settings({"credentials_file": str(bad)})).check()


def test_oauth_uses_the_cached_token(tmp_path: Path, fake: FakeDrive, gdrive_settings: dict[str, Any]) -> None:
    token = tmp_path / "cfg" / "gdrive-token.json"
    expiry = (datetime.now(timezone.utc) + timedelta(hours=1)).replace(tzinfo=None).isoformat() + "Z"
    save_token(
        type("C", (), {"to_json": lambda self: json.dumps({"token": "test", "refresh_token": "r", "client_id": "c",
                                                            "client_secret": "s", "expiry": expiry})})(),
        token,
    )
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    values = {**gdrive_settings, "auth": "oauth", "client_secrets_file": str(tmp_path / "client.json"), "token_file": str(token)}
    storage = GDriveStorage("drive", Settings(values))
    storage.check()
    write(storage, "d/x", b"via oauth")
    assert read(storage, "d/x") == b"via oauth"


def test_oauth_without_token_and_terminal_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    storage = GDriveStorage("d", Settings({"client_secrets_file": str(tmp_path / "c.json"), "token_file": str(tmp_path / "t.json")}))
    with pytest.raises(StorageError) as err:
        storage.check()
    assert "run `data-manager status` once in a terminal" in str(err.value) and "\n" not in str(err.value)


def test_plugin_import_is_light() -> None:
    code = "import sys, data_manager_gdrive; print(any(m.startswith(('googleapiclient', 'google.')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_fake_query_parser() -> None:
    assert parse_q(f"'a\\'b' in parents and name = 'x\\\\y' and mimeType = '{FOLDER}' and trashed = false") == [
        ("parents", "in", "a'b"),
        ("name", "=", "x\\y"),
        ("mimeType", "=", FOLDER),
        ("trashed", "=", False),
    ]


def test_a_mirrored_file_with_a_time_drive_cannot_take_keeps_drives_own(storage: GDriveStorage, fake: FakeDrive) -> None:
    with storage.open_write_deferred("m/old", FileAttributes(-5 * 10**9, 0o644)) as w:
        w.write(b"before 1970")
    (f,) = fake.visible()
    assert f.modified.startswith(str(datetime.now(timezone.utc).year)) and f.properties == {"mode": "644"}
