"""A local export server (standard library: ``ThreadingHTTPServer`` in a thread) whose faults a test sets.

``export_server`` serves ``/export`` (bytes in ``server.data``) with or without byte ranges, and takes
uploads at ``/import``. A test arms faults before the backup: answers with a status (and Retry-After)
for the next GETs, a connection closed after N body bytes, a Content-Length that lies, a wrong digest, a
slow body, an export replaced after the k-th GET. Every request is recorded (method, path, headers).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    range: tuple[int, int | None] | None = None
    at: float = 0.0  # time.monotonic() of its arrival


@dataclass
class Upload:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ExportServer:
    """What the handler serves and the faults it injects; every attribute may be changed by a test."""

    data: bytes = b""
    ranges: bool = True
    version: int = 1
    honour_conditions: bool = True  # If-Match / If-Unmodified-Since answered with 412 when stale
    send_validators: bool = True
    digest: str | None = None  # "repr-digest", "digest", "content-md5", "etag-md5" or None
    wrong_digest: bool = False
    statuses: list[tuple[int | None, str | None]] = field(default_factory=list)  # next GETs: (status, Retry-After)
    drops: list[int | None] = field(default_factory=list)  # next GETs: close the connection after N body bytes
    extra_length: int = 0  # added to Content-Length (the body is not): a length that lies
    slow: float = 0.0  # seconds between 8 KiB pieces of a body
    stall: list[float] = field(default_factory=list)  # next GETs: sleep this long after the headers
    change_after: int | None = None  # replace the export (new bytes, ETag, Last-Modified) after this many GETs
    change_every: int | None = None  # ... and again every this many GETs
    max_range: int | None = None  # a 206 holds at most this many bytes, whatever was asked
    redirect: str | None = None  # GET and HEAD of /export answer 302 to this URL
    head_status: int = 200
    upload_status: list[tuple[int, str | None]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    port: int = 0
    scheme: str = "http"
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/export"

    @property
    def import_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/import"

    @property
    def etag(self) -> str:
        if self.digest == "etag-md5":
            return f'"{hashlib.md5(self.data + (b"x" if self.wrong_digest else b"")).hexdigest()}"'
        return f'"v{self.version}-{len(self.data)}"'

    @property
    def last_modified(self) -> str:
        return formatdate(1_700_000_000 + self.version, usegmt=True)

    def gets(self) -> list[Request]:
        return [r for r in self.requests if r.method == "GET"]

    def digest_headers(self) -> dict[str, str]:
        data = self.data + (b"x" if self.wrong_digest else b"")
        if self.digest == "repr-digest":
            return {"Repr-Digest": f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"}
        if self.digest == "digest":
            return {"Digest": f"MD5={base64.b64encode(hashlib.md5(data).digest()).decode()}"}
        return {}


_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _handler(server: ExportServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

        def _record(self) -> Request:
            m = _RANGE.match(self.headers.get("Range", ""))
            req = Request(self.command, self.path, dict(self.headers.items()),
                          (int(m[1]), int(m[2]) if m[2] else None) if m else None, time.monotonic())
            with server.lock:
                server.requests.append(req)
            return req

        def _answer(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self._record()
            if server.redirect:
                self._answer(302, {"Location": server.redirect})
                return
            self._answer(server.head_status, {"Accept-Ranges": "bytes" if server.ranges else "none"})

        def do_GET(self) -> None:  # noqa: C901 - one place for every fault
            req = self._record()
            if server.redirect:
                self._answer(302, {"Location": server.redirect})
                return
            with server.lock:
                n = len(server.gets())
                if server.change_every is not None and server.change_after is None:
                    server.change_after = server.change_every
                if server.change_after is not None and n > server.change_after:
                    server.change_after = n + server.change_every if server.change_every else None
                    server.version += 1
                    server.data = bytes(reversed(server.data))
                status = server.statuses.pop(0) if server.statuses else None
                drop = server.drops.pop(0) if server.drops else None
                stall = server.stall.pop(0) if server.stall else 0.0
                data, etag, modified = server.data, server.etag, server.last_modified
            if status is not None and status[0] is not None:
                code, retry_after = status
                self._answer(code, {"Retry-After": retry_after} if retry_after else {}, b"busy, come back later\n")
                return
            headers = {"Content-Type": "application/zip", "Content-Disposition": 'attachment; filename="site42.zip"'}
            if server.send_validators:
                headers |= {"ETag": etag, "Last-Modified": modified}
            headers |= server.digest_headers()
            start, end, code = 0, len(data) - 1, 200
            if server.ranges:
                headers["Accept-Ranges"] = "bytes"
                stale = (self.headers.get("If-Match") not in (None, etag)
                         or self.headers.get("If-Unmodified-Since") not in (None, modified))
                if server.honour_conditions and stale:
                    self._answer(412, {}, b"precondition failed\n")
                    return
                if req.range is not None:
                    start = req.range[0]
                    end = min(req.range[1] if req.range[1] is not None else len(data) - 1, len(data) - 1)
                    if server.max_range:
                        end = min(end, start + server.max_range - 1)
                    if start >= len(data):
                        self._answer(416, {"Content-Range": f"bytes */{len(data)}"})
                        return
                    code = 206
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            body = data[start : end + 1]
            if server.digest == "content-md5":
                md5 = hashlib.md5(body + (b"x" if server.wrong_digest else b"")).digest()
                headers["Content-MD5"] = base64.b64encode(md5).decode()
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body) + server.extra_length))
            self.end_headers()
            self.wfile.flush()
            if stall:
                time.sleep(stall)
            if drop is not None:
                self.wfile.write(body[:drop])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if server.extra_length:
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            piece = 8192 if server.slow else 1 << 20
            for i in range(0, len(body), piece):
                self.wfile.write(body[i : i + piece])
                if server.slow:
                    self.wfile.flush()
                    time.sleep(server.slow)

        def _receive(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with server.lock:
                status = server.upload_status.pop(0) if server.upload_status else None
                if status is None:
                    server.uploads.append(Upload(self.command, self.path, dict(self.headers.items()), body))
            if status is not None and status[0] is not None:
                code, retry_after = status
                self._answer(code, {"Retry-After": retry_after} if retry_after else {}, b"import failed: try later\n")
            else:
                self._answer(201, {}, b'{"imported": true}\n')

        do_POST = _receive
        do_PUT = _receive

    return Handler


@pytest.fixture
def export_server() -> Iterator[ExportServer]:
    """A fresh server with 1 MiB + 17 bytes of random data at ``server.url``."""
    yield from _serve()


@pytest.fixture
def other_server() -> Iterator[ExportServer]:
    """A second server (another port: another host for urllib3), e.g. where the first redirects."""
    yield from _serve()


@pytest.fixture
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ExportServer, Path]]:
    """The export server over https, with a self-signed certificate for 127.0.0.1; and that certificate's
    file (trust it with SSL_CERT_FILE)."""
    import ssl

    cert, key = _self_signed(tmp_path_factory.mktemp("tls"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    for state in _serve(ctx):
        yield state, cert


def _self_signed(where: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "data-manager-http test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = where / "cert.pem", where / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def _serve(tls: Any = None) -> Iterator[ExportServer]:
    state = ExportServer(data=os.urandom((1 << 20) + 17), scheme="https" if tls else "http")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def config_file(tmp_path: Path, export_server: ExportServer) -> Any:
    """``config_file(**source_keys)``: a config with a filesystem storage and dataset ``site42`` whose one
    source ``db`` is an http export of ``export_server`` (small retry delays, small chunks)."""

    def make(**keys: Any) -> Path:
        values = {"url": export_server.url, "chunk_size": "256KiB", "retry_delay": "10ms", "retries": 3, **keys}
        lines = ["[storages.local]", 'type = "filesystem"', f'root = "{tmp_path / "backups"}"', "",
                 "[datasets.site42]", "", "[[datasets.site42.sources]]", 'name = "db"', 'type = "http"']
        for k, v in values.items():
            if isinstance(v, dict):
                lines.append(f"{k} = {{ " + ", ".join(f'{hk} = "{hv}"' for hk, hv in v.items()) + " }")
            elif isinstance(v, str):
                lines.append(f'{k} = "{v}"')
            else:
                lines.append(f"{k} = {str(v).lower() if isinstance(v, bool) else v}")
        path = tmp_path / "data-manager.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    return make
