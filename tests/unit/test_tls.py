"""The core's reading of the tls* settings (used by the cassandra and memsql sources) and its loopback test."""

from __future__ import annotations

import ssl

import pytest

from data_manager.errors import ConfigError
from data_manager.tls import TlsSettings, all_loopback, is_loopback
from data_manager.types import Settings


def tls(**values: object) -> TlsSettings:
    return TlsSettings(Settings(values, where="f.toml: [x]"), "src")


def test_off_by_default() -> None:
    assert tls().context() is None


def test_on_verifies_the_server_and_its_name() -> None:
    ctx = tls(tls=True).context()
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_verify_off_is_encrypted_but_unauthenticated() -> None:
    ctx = tls(tls=True, tls_verify=False, tls_check_hostname=False).context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


@pytest.mark.parametrize("values, key", [
    ({"tls_verify": False}, "tls_verify"),
    ({"tls": True, "tls_key_file": "/k"}, "tls_key_file"),
    ({"tls": True, "tls_verify": False, "tls_ca_file": "/ca"}, "tls_ca_file"),
    ({"tls": True, "tls_verify": False, "tls_check_hostname": True}, "tls_check_hostname"),
])
def test_bad_combinations_name_the_key(values: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^f\.toml: \[x\]: key '{key}'"):
        tls(**values)


def test_a_file_that_cannot_be_loaded_names_its_key(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"key 'tls_ca_file': cannot load it"):
        tls(tls=True, tls_ca_file=str(tmp_path / "missing.pem")).context()


def test_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.10") and is_loopback("::1")
    assert is_loopback("localhost") and is_loopback("LOCALHOST.") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback("example.com") and not is_loopback("") and not is_loopback(None)
    assert all_loopback(["127.0.0.1", "localhost"]) and not all_loopback(["127.0.0.1", "db1"])
