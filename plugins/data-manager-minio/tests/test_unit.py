"""Without a server: settings, key selection, error texts, retries, registration."""

from __future__ import annotations

import sys

import pytest

from data_manager.errors import ConfigError, StorageError
from data_manager.plugins import get_registry
from data_manager.types import Settings
from data_manager_minio.connection import Connection, ConnectionSettings, describe, is_transient
from data_manager_minio.source import MinioSource
from data_manager_minio.storage import S3Storage, normalize_prefix

BASE = {"endpoint": "s3.example.org:9000", "access_key": "AK", "secret_key": "SK-very-secret", "bucket": "b"}


def _settings(**kw: object) -> Settings:
    return Settings({**BASE, **kw}, where="dm.toml, dataset 'd', source 'b'", secret_keys=("secret_key",))


def test_registered_lazily() -> None:
    reg = get_registry()
    assert "minio" in reg.source_types and "s3" in reg.storage_types
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", "import sys, data_manager_minio.source, data_manager_minio.storage; "
                               "print('boto3' in sys.modules, 'botocore' in sys.modules)"],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "False False"


def test_one_client_only() -> None:
    """boto3 is the plugin's one HTTP client: neither the minio SDK nor pycurl is imported or required."""
    import ast
    import configparser
    import re
    from pathlib import Path

    import data_manager_minio

    names = set()
    for path in Path(data_manager_minio.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    assert not names & {"minio", "pycurl", "urllib3", "obstore"}, names
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).parents[1] / "setup.cfg")
    required = {re.split(r"[<>=!~ ]", line.strip())[0] for line in setup["options"]["install_requires"].splitlines()
                if line.strip()}
    assert required == {"data-manager", "boto3", "blake3"}, required


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


def _client_error(code: str, status: int, message: str = "", **error: str) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": message, **error},  # type: ignore[typeddict-item]
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def test_transient_errors_and_texts() -> None:
    from botocore import exceptions as b

    assert is_transient(b.ConnectionClosedError(endpoint_url="http://x"))
    assert is_transient(b.EndpointConnectionError(endpoint_url="http://x"))
    assert is_transient(b.ReadTimeoutError(endpoint_url="http://x"))
    assert is_transient(b.ResponseStreamingError(error="reset"))
    assert is_transient(b.IncompleteReadError(actual_bytes=1, expected_bytes=2))
    assert not is_transient(b.SSLError(endpoint_url="https://x", error="bad certificate"))
    assert is_transient(_client_error("SlowDown", 503)) and is_transient(_client_error("InternalError", 500))
    assert is_transient(_client_error("503", 503)) and is_transient(_client_error("", 429))
    assert is_transient(_client_error("XAmzContentChecksumMismatch", 400))
    assert not is_transient(_client_error("AccessDenied", 403)) and not is_transient(_client_error("NoSuchKey", 404))
    assert not is_transient(ValueError("bug"))
    assert "connection broke" in describe(b.ConnectionClosedError(endpoint_url="http://x"))
    assert "cannot connect" in describe(b.EndpointConnectionError(endpoint_url="http://x"))
    assert "TLS handshake failed" in describe(b.SSLError(endpoint_url="https://x", error="bad certificate"))
    assert describe(_client_error("SignatureDoesNotMatch", 403, "The request signature...")).startswith(
        "the secret key does not match the access key")
    assert describe(_client_error("403", 403)).startswith("access denied")  # a HEAD's answer has no body
    assert describe(_client_error("NoSuchBucket", 404, "x", BucketName="b")) == "bucket 'b' does not exist"
    assert describe(_client_error("404", 404)) == "no such object"
    assert describe(_client_error("503", 503)) == "server error (HTTP 503)"
    assert describe(_client_error("SlowDown", 503, "Please reduce\nyour rate")) == "SlowDown: Please reduce"


def test_call_retries_then_gives_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ParamValidationError, ReadTimeoutError

    monkeypatch.setattr("time.sleep", lambda s: None)
    conn = Connection(ConnectionSettings.read(_settings(retries=2)), "s3 storage 's'", StorageError)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ReadTimeoutError(endpoint_url="http://x")
        return "ok"

    assert conn.call("reading x", flaky) == "ok" and len(calls) == 3

    def dead() -> None:
        raise ReadTimeoutError(endpoint_url="http://x")

    with pytest.raises(StorageError) as e:
        conn.call("reading x", dead)
    assert str(e.value) == "s3 storage 's': reading x: the server stopped answering (read timed out)"

    def denied() -> None:
        raise _client_error("SignatureDoesNotMatch", 403, "SK-very-secret never appears")

    with pytest.raises(StorageError) as e:
        conn.call("reading x", denied)
    assert "SK-very-secret" not in str(e.value) and "secret key does not match" in str(e.value)

    def bug() -> None:
        raise KeyError("a bug is not a storage error")

    with pytest.raises(KeyError):
        conn.call("reading x", bug)

    def misuse() -> None:
        raise ParamValidationError(report="Bucket is required")

    with pytest.raises(ParamValidationError):  # boto3 called wrongly: a bug here, never hidden as a server error
        conn.call("reading x", misuse)


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


def test_small_size_is_capped_by_range_size() -> None:
    assert MinioSource("b", _settings()).small_size == 1 << 20
    assert MinioSource("b", _settings(small_size="8MiB", range_size="2MiB")).small_size == 2 << 20
    assert MinioSource("b", _settings(small_size=0)).small_size == 0
    with pytest.raises(ConfigError, match="small_size"):
        MinioSource("b", _settings(small_size="lots"))
