"""A local fake of the Google Drive v3 API, speaking the wire protocol as google-api-python-client uses it.

Google Drive cannot be reached from the test machines, so the tests point the real client at this server
(``api_root = fake.url``). What it implements, as Drive does:

* ``POST /upload/drive/v3/files?uploadType=resumable``: starts a session, answers 200 with ``Location``;
* ``PUT`` on the session URL with ``Content-Range: bytes a-b/N`` or ``bytes a-b/*``: answers ``308`` with
  ``Range: bytes=0-M`` until the last byte, then ``200`` with the file resource. Chunks other than the last
  must be multiples of 256 KiB. ``bytes */N`` and ``bytes */*`` are status probes. ``DELETE`` cancels;
* ``POST /upload/drive/v3/files?uploadType=multipart``: metadata and content in one request;
* ``POST /drive/v3/files`` (folders), ``GET /drive/v3/files`` with ``q`` (the subset: ``'ID' in parents``,
  ``name = '...'``, ``mimeType = '...'``, ``mimeType != '...'``, ``trashed = true|false``, joined by
  ``and``), ``fields``, ``pageSize`` and ``pageToken``; ``GET /drive/v3/files/ID`` (``alt=media`` with
  ``Range`` answered ``206``); ``PATCH`` (``name``, ``trashed``, ``addParents``/``removeParents``,
  ``appProperties``, ``properties``, ``modifiedTime``, which create takes too);
  ``DELETE`` (with everything below a folder);
* shared drives: their items are invisible without ``supportsAllDrives=true`` (404) and unlisted without
  ``includeItemsFromAllDrives=true``;
* errors as Google's JSON bodies (``{"error": {"code", "message", "errors": [{"reason", ...}]}}``); a
  request without ``Authorization: Bearer <token>`` gets 401.

Faults are injected by the test: :meth:`FakeDrive.fail` (an HTTP error with a reason),
:meth:`FakeDrive.drop` (the connection dropped part-way through reading the request body; for an upload
chunk the server keeps the 256 KiB-aligned part it had read, as Drive may), :meth:`FakeDrive.lose_answer`
(the request is carried out, the answer lost) and :meth:`FakeDrive.corrupt`.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

FOLDER = "application/vnd.google-apps.folder"
CHUNK_UNIT = 256 << 10
ROOT_ID = "0AfakeMyDriveRoot"


class DriveError(Exception):
    def __init__(self, code: int, reason: str, message: str, domain: str = "global") -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.domain = code, reason, message, domain

    def body(self) -> bytes:
        return json.dumps(
            {
                "error": {
                    "code": self.code,
                    "message": self.message,
                    "errors": [{"message": self.message, "domain": self.domain, "reason": self.reason}],
                }
            }
        ).encode()


def not_found(file_id: str) -> DriveError:
    return DriveError(404, "notFound", f"File not found: {file_id}.")


@dataclass
class FakeFile:
    id: str
    name: str
    mime_type: str
    parents: list[str]
    created: str
    modified: str
    data: bytes = b""
    trashed: bool = False
    drive_id: str | None = None
    app_properties: dict[str, str] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def is_folder(self) -> bool:
        return self.mime_type == FOLDER

    def resource(self) -> dict[str, Any]:
        r: dict[str, Any] = {
            "kind": "drive#file",
            "id": self.id,
            "name": self.name,
            "mimeType": self.mime_type,
            "parents": list(self.parents),
            "createdTime": self.created,
            "modifiedTime": self.modified,
            "trashed": self.trashed,
            "capabilities": {"canAddChildren": self.is_folder, "canEdit": True},
        }
        if self.drive_id:
            r["driveId"] = self.drive_id
        if self.app_properties:
            r["appProperties"] = dict(self.app_properties)
        if self.properties:
            r["properties"] = dict(self.properties)
        if not self.is_folder:
            r["size"] = str(len(self.data))
            r["md5Checksum"] = hashlib.md5(self.data).hexdigest()
        return r


@dataclass
class Session:
    id: str
    metadata: dict[str, Any]
    params: dict[str, str]
    data: bytearray = field(default_factory=bytearray)
    total: int | None = None
    file_id: str | None = None
    cancelled: bool = False


@dataclass
class Fault:
    op: str
    kind: str  # "fail" | "drop" | "lose"
    times: int
    status: int = 500
    reason: str = "backendError"
    message: str = ""
    after: int = 0


# --------------------------------------------------------------------------- fields and q


def parse_fields(text: str | None) -> dict[str, Any] | None:
    """``"nextPageToken,files(id,name)"`` -> ``{"nextPageToken": None, "files": {"id": None, "name": None}}``."""
    if not text or text.strip() == "*":
        return None
    out: dict[str, Any] = {}
    i, n = 0, len(text)
    while i < n:
        m = re.match(r"\s*([A-Za-z_*][\w/*]*)\s*", text[i:])
        if not m:
            raise DriveError(400, "invalidParameter", f"Invalid field selection {text}")
        name = m.group(1)
        i += m.end()
        sub = None
        if i < n and text[i] == "(":
            depth, j = 1, i + 1
            while j < n and depth:
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
            sub = parse_fields(text[i + 1 : j - 1])
            i = j
        if "/" in name:  # a/b form
            head, rest = name.split("/", 1)
            out.setdefault(head, {})
            if isinstance(out[head], dict):
                out[head].update(parse_fields(rest) or {})
        else:
            out[name] = sub
        while i < n and text[i] in " ,":
            i += 1
    return out


def project(obj: dict[str, Any], fields: dict[str, Any] | None) -> dict[str, Any]:
    if fields is None or "*" in fields:
        return obj
    out = {}
    for key, sub in fields.items():
        if key in obj:
            value = obj[key]
            if sub is not None and isinstance(value, dict):
                value = project(value, sub)
            elif sub is not None and isinstance(value, list):
                value = [project(v, sub) for v in value]
            out[key] = value
    return out


_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<op>!=|=)|(?P<word>[A-Za-z_][\w.]*))")


def parse_q(q: str) -> list[tuple[str, str, Any]]:
    """The clauses of a query as ``(field, op, value)``, all joined by ``and``."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    q = q.strip()
    while pos < len(q):
        m = _TOKEN.match(q, pos)
        if not m or m.end() == pos:
            raise DriveError(400, "invalid", f"Invalid Value (q: {q})", "global")
        pos = m.end()
        kind = m.lastgroup
        text = m.group(kind)
        if kind == "str":
            text = re.sub(r"\\(.)", r"\1", text[1:-1])
        tokens.append((kind, text))
    clauses = []
    i = 0
    while i < len(tokens):
        if tokens[i][0] == "str" and i + 2 < len(tokens) and tokens[i + 1] == ("word", "in") and tokens[i + 2] == ("word", "parents"):
            clauses.append(("parents", "in", tokens[i][1]))
            i += 3
        elif (
            i + 2 < len(tokens)
            and tokens[i][0] == "word"
            and tokens[i][1] in ("name", "mimeType", "trashed")
            and tokens[i + 1][0] == "op"
        ):
            fld, op, (vkind, value) = tokens[i][1], tokens[i + 1][1], tokens[i + 2]
            if fld == "trashed":
                if vkind != "word" or value not in ("true", "false"):
                    raise DriveError(400, "invalid", f"Invalid Value (q: {q})")
                value = value == "true"
            elif vkind != "str":
                raise DriveError(400, "invalid", f"Invalid Value (q: {q})")
            clauses.append((fld, op, value))
            i += 3
        else:
            raise DriveError(400, "invalid", f"Invalid Value (q: {q})")
        if i < len(tokens):
            if tokens[i] != ("word", "and"):
                raise DriveError(400, "invalid", f"Invalid Value (q: {q}): only 'and' is supported here")
            i += 1
            if i == len(tokens):
                raise DriveError(400, "invalid", f"Invalid Value (q: {q})")
    return clauses


def matches(f: FakeFile, clauses: list[tuple[str, str, Any]]) -> bool:
    for fld, op, value in clauses:
        if fld == "parents":
            ok = (ROOT_ID if value == "root" else value) in f.parents
        else:
            actual = {"name": f.name, "mimeType": f.mime_type, "trashed": f.trashed}[fld]
            ok = actual == value if op == "=" else actual != value
        if not ok:
            return False
    return True


# --------------------------------------------------------------------------- the server


class FakeDrive:
    """The fake Drive: start with :meth:`start` (or as a context manager), point ``api_root`` at :attr:`url`."""

    def __init__(self, token: str = "test") -> None:
        self.token = token
        self.lock = threading.RLock()
        self.files: dict[str, FakeFile] = {}
        self.sessions: dict[str, Session] = {}
        self.faults: list[Fault] = []
        self.calls: list[str] = []  # the op of every request, in order
        self.content_ranges: list[str] = []  # Content-Range of every upload PUT, in order
        self.max_page_size = 1000
        self._ids = itertools.count(1)
        self._clock = 0.0
        self._corrupt = 0
        now = self._now()
        self.files[ROOT_ID] = FakeFile(ROOT_ID, "My Drive", FOLDER, [], now, now)
        self.server: ThreadingHTTPServer | None = None
        self.url = ""

    # -- lifecycle
    def start(self) -> FakeDrive:
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, name="fake-drive", daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> FakeDrive:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls
    def fail(self, op: str, status: int = 500, reason: str = "backendError", times: int = 1, message: str = "") -> None:
        """The next ``times`` requests of ``op`` (see :meth:`_Handler.op`, or ``"*"``) get this error."""
        with self.lock:
            self.faults.append(Fault(op, "fail", times, status, reason, message or f"fake {reason}"))

    def drop(self, op: str, times: int = 1, after: int = 0) -> None:
        """The next ``times`` requests of ``op`` lose their connection after ``after`` bytes of body are read."""
        with self.lock:
            self.faults.append(Fault(op, "drop", times, after=after))

    def lose_answer(self, op: str, times: int = 1) -> None:
        """The next ``times`` requests of ``op`` are carried out, but the connection drops before the answer."""
        with self.lock:
            self.faults.append(Fault(op, "lose", times))

    def corrupt(self, times: int = 1) -> None:
        """The next ``times`` uploads are stored with one byte flipped (md5 then differs from what was sent)."""
        with self.lock:
            self._corrupt += times

    def add_shared_drive(self, drive_id: str, name: str = "Shared") -> str:
        with self.lock:
            now = self._now()
            self.files[drive_id] = FakeFile(drive_id, name, FOLDER, [], now, now, drive_id=drive_id)
        return drive_id

    def mkdir(self, name: str, parent: str = ROOT_ID) -> str:
        with self.lock:
            return self._create({"name": name, "mimeType": FOLDER, "parents": [parent]}, b"", {}).id

    def count(self, op: str) -> int:
        return sum(1 for c in self.calls if c == op)

    def visible(self, parent: str | None = None) -> list[FakeFile]:
        """Non-trashed files (not folders), optionally only those directly in ``parent``."""
        with self.lock:
            return [
                f for f in self.files.values() if not f.is_folder and not f.trashed and (parent is None or parent in f.parents)
            ]

    def path_of(self, f: FakeFile) -> str:
        parts = [f.name]
        while f.parents and f.parents[0] in self.files and self.files[f.parents[0]].parents:
            f = self.files[f.parents[0]]
            parts.append(f.name)
        return "/".join(reversed(parts))

    # -- internals
    def _now(self) -> str:
        t = max(time.time(), self._clock + 0.001)
        self._clock = t
        return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _new_id(self) -> str:
        return f"fake{next(self._ids):06d}" + base64.urlsafe_b64encode(hashlib.sha1(str(time.time()).encode()).digest()[:6]).decode()

    def take_fault(self, op: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.op in (op, "*"):
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def get(self, file_id: str, params: dict[str, str]) -> FakeFile:
        with self.lock:
            if file_id == "root":
                file_id = ROOT_ID
            f = self.files.get(file_id)
            if f is None or (f.drive_id and params.get("supportsAllDrives") != "true"):
                raise not_found(file_id)
            return f

    def _create(self, meta: dict[str, Any], data: bytes, params: dict[str, str]) -> FakeFile:
        with self.lock:
            parents = [ROOT_ID if p == "root" else p for p in meta.get("parents") or [ROOT_ID]]
            if len(parents) != 1:
                raise DriveError(403, "cannotAddParent", "A shared drive item must have exactly one parent.")
            parent = self.get(parents[0], params)
            if not parent.is_folder:
                raise DriveError(400, "invalid", "The parent is not a folder.")
            if self._corrupt and data:
                self._corrupt -= 1
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            now = self._now()
            f = FakeFile(
                self._new_id(),
                meta.get("name", "Untitled"),
                meta.get("mimeType") or "application/octet-stream",
                parents,
                now,
                meta.get("modifiedTime") or now,  # writable, as on Drive
                bytes(data),
                drive_id=parent.drive_id,
                app_properties=dict(meta.get("appProperties") or {}),
                properties=dict(meta.get("properties") or {}),
            )
            self.files[f.id] = f
            return f

    def list(self, params: dict[str, str]) -> dict[str, Any]:
        clauses = parse_q(params.get("q", ""))
        size = int(params.get("pageSize", "100"))
        if not 1 <= size <= self.max_page_size:
            raise DriveError(400, "invalid", f"Invalid Value (pageSize: {size})")
        if params.get("corpora") == "drive" and not params.get("driveId"):
            raise DriveError(400, "invalid", "The driveId parameter must be specified if and only if corpora is set to drive.")
        if params.get("includeItemsFromAllDrives") == "true" and params.get("supportsAllDrives") != "true":
            raise DriveError(403, "teamDrivesParameterNotSupported", "includeItemsFromAllDrives needs supportsAllDrives.")
        all_drives = params.get("includeItemsFromAllDrives") == "true"
        with self.lock:
            hits = [
                f
                for f in self.files.values()
                if f.parents and matches(f, clauses) and (all_drives or not f.drive_id)
                and (params.get("corpora") != "drive" or f.drive_id == params.get("driveId"))
            ]
        start = int(params.get("pageToken") or "0", 36) if params.get("pageToken") else 0
        page = hits[start : start + size]
        out: dict[str, Any] = {"kind": "drive#fileList", "incompleteSearch": False, "files": [f.resource() for f in page]}
        if start + size < len(hits):
            out["nextPageToken"] = _b36(start + size)
        return out

    def delete_tree(self, f: FakeFile) -> None:
        with self.lock:
            for child in [c for c in self.files.values() if f.id in c.parents]:
                self.delete_tree(child)
            self.files.pop(f.id, None)


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


_RANGE = re.compile(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)$")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeDrive
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle + delayed ACK cost 40 ms a request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- plumbing
    def _params(self) -> tuple[str, dict[str, str]]:
        parts = urlsplit(self.path)
        return parts.path, {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, ctype: str = "application/json; charset=UTF-8") -> None:
        if getattr(self, "_mute", False):
            return
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body or status not in (204, 308):
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _json(self, status: int, obj: dict[str, Any], params: dict[str, str] | None = None) -> None:
        fields = parse_fields((params or {}).get("fields"))
        self._send(status, json.dumps(project(obj, fields)).encode())

    def _body(self, limit: int | None = None) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        if limit is not None:
            n = min(n, limit)
        chunks = []
        while n > 0:
            data = self.rfile.read(min(n, 1 << 16))
            if not data:
                break
            chunks.append(data)
            n -= len(data)
        return b"".join(chunks)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def op(self, method: str, path: str, params: dict[str, str]) -> str:
        if path.startswith("/upload/drive/v3/files"):
            if method == "POST":
                return "upload_start" if params.get("uploadType") == "resumable" else "multipart"
            if method == "PUT":
                cr = self.headers.get("Content-Range", "")
                return "upload_probe" if cr.startswith("bytes */") else "upload_chunk"
            return "upload_cancel"
        if path == "/drive/v3/files":
            return {"GET": "list", "POST": "create"}.get(method, "other")
        if path.startswith("/drive/v3/files/"):
            if method == "GET":
                return "media" if params.get("alt") == "media" else "get"
            return {"PATCH": "update", "DELETE": "delete"}.get(method, "other")
        return "other"

    def _handle(self, method: str) -> None:
        path, params = self._params()
        op = self.op(method, path, params)
        self.fake.calls.append(op)
        if op in ("upload_chunk", "upload_probe"):
            self.fake.content_ranges.append(self.headers.get("Content-Range", ""))
        fault = self.fake.take_fault(op)
        if fault is not None and fault.kind == "drop":
            partial = self._body(fault.after)
            if op == "upload_chunk":
                self._keep_partial(params, partial)
            self._drop()
            return
        try:
            if self.headers.get("Authorization") != f"Bearer {self.fake.token}":
                self._body()
                raise DriveError(401, "authError", "Invalid Credentials", "global")
            if fault is not None and fault.kind == "fail":
                self._body()
                raise DriveError(fault.status, fault.reason, fault.message, "usageLimits")
            self._mute = fault is not None and fault.kind == "lose"
            getattr(self, "_" + op)(path, params)
        except DriveError as err:
            self._send(err.code, err.body())
        if getattr(self, "_mute", False):
            self._mute = False
            self._drop()

    do_GET = lambda self: self._handle("GET")  # noqa: E731
    do_POST = lambda self: self._handle("POST")  # noqa: E731
    do_PUT = lambda self: self._handle("PUT")  # noqa: E731
    do_PATCH = lambda self: self._handle("PATCH")  # noqa: E731
    do_DELETE = lambda self: self._handle("DELETE")  # noqa: E731

    # -- uploads
    def _upload_start(self, path: str, params: dict[str, str]) -> None:
        meta = json.loads(self._body() or b"{}")
        parents = meta.get("parents") or ["root"]
        self.fake.get(parents[0], params)  # fail now on a bad parent, as Drive does
        total = self.headers.get("X-Upload-Content-Length")
        sid = "s" + hashlib.sha1(f"{time.time()}{id(meta)}".encode()).hexdigest()[:16]
        with self.fake.lock:
            self.fake.sessions[sid] = Session(sid, meta, params, total=int(total) if total else None)
        location = f"{self.fake.url}upload/drive/v3/files?uploadType=resumable&upload_id={sid}"
        self._send(200, b"", {"Location": location})

    def _session(self, params: dict[str, str]) -> Session:
        s = self.fake.sessions.get(params.get("upload_id", ""))
        if s is None or s.cancelled:
            raise DriveError(404, "notFound", "Upload session not found or expired.")
        return s

    def _keep_partial(self, params: dict[str, str], partial: bytes) -> None:
        s = self.fake.sessions.get(params.get("upload_id", ""))
        m = _RANGE.match(self.headers.get("Content-Range", ""))
        if s is None or not m or m.group(1) is None or int(m.group(1)) != len(s.data):
            return
        keep = len(partial) - len(partial) % CHUNK_UNIT
        s.data += partial[:keep]

    def _progress(self, s: Session) -> None:
        if s.file_id is not None:
            self._json(200, self.fake.files[s.file_id].resource(), s.params)
            return
        headers = {"Range": f"bytes=0-{len(s.data) - 1}"} if s.data else {}
        self._send(308, b"", headers)

    def _upload_probe(self, path: str, params: dict[str, str]) -> None:
        self._body()
        s = self._session(params)
        self._progress(s)

    def _upload_chunk(self, path: str, params: dict[str, str]) -> None:
        data = self._body()
        s = self._session(params)
        m = _RANGE.match(self.headers.get("Content-Range", ""))
        if not m or m.group(1) is None:
            raise DriveError(400, "badContentRange", "Invalid Content-Range header")
        first, last, total = int(m.group(1)), int(m.group(2)), m.group(3)
        if last - first + 1 != len(data):
            raise DriveError(400, "badContentRange", "Content-Range does not match the body length")
        if s.file_id is not None:
            self._progress(s)
            return
        if total != "*":
            if s.total is not None and s.total != int(total):
                raise DriveError(400, "badContentRange", "The total size changed during the upload")
            s.total = int(total)
        final = s.total is not None and last + 1 == s.total
        if not final and len(data) % CHUNK_UNIT:
            raise DriveError(400, "badContentRange", "Chunks other than the last must be multiples of 256 KiB")
        if first > len(s.data):
            raise DriveError(400, "badContentRange", f"Chunk starts at {first}, the server has {len(s.data)} bytes")
        s.data += data[len(s.data) - first :]  # bytes the server already has are skipped
        if s.total is not None and len(s.data) > s.total:
            raise DriveError(400, "badContentRange", "More bytes than the declared total")
        if s.total is not None and len(s.data) == s.total:
            f = self.fake._create(s.metadata, bytes(s.data), s.params)
            s.file_id = f.id
            s.data = bytearray()
        self._progress(s)

    def _upload_cancel(self, path: str, params: dict[str, str]) -> None:
        self._body()
        s = self._session(params)
        s.cancelled = True
        self._send(499, b"")

    def _multipart(self, path: str, params: dict[str, str]) -> None:
        body = self._body()
        if params.get("uploadType") != "multipart":
            raise DriveError(400, "invalid", "Unsupported uploadType")
        m = re.search(r'boundary="?([^";]+)"?', self.headers.get("Content-Type", ""))
        if not m:
            raise DriveError(400, "badContent", "multipart/related without boundary")
        delim = b"--" + m.group(1).encode()
        pieces = body.split(delim)
        parts = []
        for piece in pieces[1:]:
            if piece.startswith(b"--"):
                break
            nl = b"\r\n" if piece.startswith(b"\r\n") else b"\n"
            piece = piece[len(nl) :]
            head, sep, content = piece.partition(nl + nl)
            if not sep:
                raise DriveError(400, "badContent", "a multipart part without headers")
            if content.endswith(nl):
                content = content[: -len(nl)]
            parts.append(content)
        if len(parts) != 2:
            raise DriveError(400, "badContent", f"expected 2 parts, got {len(parts)}")
        meta = json.loads(parts[0])
        f = self.fake._create(meta, parts[1], params)
        self._json(200, f.resource(), params)

    # -- metadata
    def _create(self, path: str, params: dict[str, str]) -> None:
        meta = json.loads(self._body() or b"{}")
        f = self.fake._create(meta, b"", params)
        self._json(200, f.resource(), params)

    def _list(self, path: str, params: dict[str, str]) -> None:
        self._body()
        self._json(200, self.fake.list(params), params)

    def _file_id(self, path: str) -> str:
        return path[len("/drive/v3/files/") :]

    def _get(self, path: str, params: dict[str, str]) -> None:
        self._body()
        self._json(200, self.fake.get(self._file_id(path), params).resource(), params)

    def _media(self, path: str, params: dict[str, str]) -> None:
        self._body()
        f = self.fake.get(self._file_id(path), params)
        if f.is_folder:
            raise DriveError(403, "fileNotDownloadable", "Only files with binary content can be downloaded.")
        data = f.data
        rng = self.headers.get("Range")
        if rng is None:
            self._send(200, data, ctype="application/octet-stream")
            return
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
        if not m:
            raise DriveError(400, "badRange", "Bad Range header")
        first = int(m.group(1))
        last = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
        if first >= len(data):
            self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            return
        self._send(206, data[first : last + 1], {"Content-Range": f"bytes {first}-{last}/{len(data)}"}, "application/octet-stream")

    def _update(self, path: str, params: dict[str, str]) -> None:
        meta = json.loads(self._body() or b"{}")
        with self.fake.lock:
            f = self.fake.get(self._file_id(path), params)
            if "name" in meta:
                f.name = meta["name"]
            if "trashed" in meta:
                f.trashed = bool(meta["trashed"])
            if "appProperties" in meta:
                f.app_properties.update(meta["appProperties"])
            if "properties" in meta:
                f.properties.update(meta["properties"])
            for p in filter(None, params.get("removeParents", "").split(",")):
                if p in f.parents:
                    f.parents.remove(p)
            for p in filter(None, params.get("addParents", "").split(",")):
                self.fake.get(p, params)
                f.parents.append(p)
            f.modified = meta.get("modifiedTime") or self.fake._now()
            resource = f.resource()
        self._json(200, resource, params)

    def _delete(self, path: str, params: dict[str, str]) -> None:
        self._body()
        f = self.fake.get(self._file_id(path), params)
        self.fake.delete_tree(f)
        self._send(204, b"")

    def _other(self, path: str, params: dict[str, str]) -> None:
        self._body()
        raise DriveError(404, "notFound", f"Not Found: {self.command} {path}")
