"""The bearer token never travels in clear to another machine (issue 16, point 12)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from data_manager.errors import ConfigError
from data_manager.types import Dataset, Settings
from data_manager_experiments.guard import ExperimentsGuard, is_loopback

DS = Dataset("exp42", "local", ())


def make(**values: Any) -> ExperimentsGuard:
    return ExperimentsGuard(Settings(values, where="dm.toml: [guards.experiments]"))


@pytest.mark.parametrize("key, values", [
    ("experiments_url", {"experiments_url": "http://experiments-manager:8080/api/v1"}),
    ("experiments_url", {"experiments_url": "http://10.0.0.5/api"}),
    ("experiments_url", {"experiments_url": "http://[2001:db8::1]:8080/api"}),
    ("experiments_url", {"experiments_url": "http://localhost.evil.example/api"}),
    ("experiments_url", {"experiments_url": "http://127.0.0.1.nip.io/api"}),
    ("spark_url", {"experiments_url": "https://em.lab/api", "spark_url": "http://spark.lab:8081/api"}),
])
def test_token_over_plain_http_to_another_host_is_a_config_error(key: str, values: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        make(token="s3cret", **values)
    text = str(info.value)
    assert info.value.key == key and "in clear over http://" in text and "https://" in text
    assert "\n" not in text and "s3cret" not in text


@pytest.mark.parametrize("url", [
    "https://experiments-manager:8080/api/v1",
    "http://127.0.0.1:8080/em", "http://127.3.2.1/em", "http://localhost:8080/em", "http://LOCALHOST/em",
    "http://[::1]:8080/em", "http://[::ffff:127.0.0.1]/em",
])
def test_token_allowed_over_https_or_to_loopback(url: str) -> None:
    make(token="s3cret", experiments_url=url, spark_url=url)


def test_plain_http_without_a_token_is_allowed() -> None:
    make(experiments_url="http://experiments-manager:8080/api/v1")


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("128.0.0.1") and not is_loopback("") and not is_loopback(None)
    assert not is_loopback("example.com")


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[int, str | None]]
    redirect_to: str | None = None

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append((self.server.server_address[1], self.headers.get("Authorization")))
        if self.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.redirect_to + self.path)
            self.end_headers()
            return
        body = b'{"allowed": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[tuple[str, str, list[tuple[int, str | None]]]]:
    """Two local servers (two origins): the first redirects every request to the second."""
    seen: list[tuple[int, str | None]] = []
    final = ThreadingHTTPServer(("127.0.0.1", 0), type("Final", (_Recorder,), {"seen": seen}))
    final_url = f"http://127.0.0.1:{final.server_address[1]}"
    first = ThreadingHTTPServer(("127.0.0.1", 0), type("First", (_Recorder,), {"seen": seen, "redirect_to": final_url}))
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (first, final)]
    for t in threads:
        t.start()
    try:
        yield f"http://127.0.0.1:{first.server_address[1]}", final_url, seen
    finally:
        for s in (first, final):
            s.shutdown()
            s.server_close()


def test_a_redirect_to_another_origin_does_not_carry_the_token(servers: tuple[str, str, list[Any]]) -> None:
    first, final, seen = servers
    g = make(token="s3cret", experiments_url=first, retries=0)
    assert g.check(DS, "backup") is None
    (port1, auth1), (port2, auth2) = seen
    assert str(port1) in first and auth1 == "Bearer s3cret"
    assert str(port2) in final and auth2 is None
