"""Storage ``gdrive``: backups in a Google Drive folder, through the Drive v3 API.

Keys (``DATA_ID/TIMESTAMP/SOURCE/ARTIFACT``) are nested folders below the root folder; folder ids are
cached for the life of the storage object, so a backup looks each folder up (or creates it) once.

Writes are streamed with bounded memory: data is buffered up to one chunk (``chunk_size``, a multiple of
256 KiB) and sent with Drive's resumable upload protocol, total length unknown (``bytes a-b/*``) until the
commit. An interrupted chunk is resumed from the server's ``Range`` answer to a status probe. The upload
runs under a hidden temporary name (``.NAME.part-XXXXXXXX``, never listed); at commit its md5 is checked
against the ``md5Checksum`` Drive reports and it is renamed to its final name, so a file appears under
that name only complete. An object small enough for one request (``min(chunk_size, 5 MiB)``) is sent in a
single multipart request instead: Drive creates the file, complete, when that request succeeds.

Drive allows several files with one name in a folder: a commit removes the older ones, and a lookup takes
the newest (and, for folders, the oldest), so an interrupted replace never hides the data.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

from data_manager.retry import Backoff
from data_manager.errors import NotFoundError, StorageError
from data_manager.types import Entry, FileAttributes, ObjectWriter, Settings, Storage

from . import retry
from .auth import AUTH_KINDS, DEFAULT_TOKEN_FILE, SCOPES, make_credentials

FOLDER = "application/vnd.google-apps.folder"
DEFAULT_API_ROOT = "https://www.googleapis.com/"
CHUNK_UNIT = 256 << 10  # Drive wants every chunk but the last to be a multiple of 256 KiB
DEFAULT_CHUNK = 8 << 20
SIMPLE_UPLOAD_MAX = 5 << 20  # Drive's advice: multipart (one request) up to 5 MB, resumable above
FILE_FIELDS = "id,name,mimeType,size,md5Checksum,createdTime,modifiedTime"
LIST_FIELDS = "nextPageToken,files(id,name,mimeType,size,createdTime,modifiedTime)"
_PART = re.compile(r"^\..+\.part-[0-9a-f]{8}$")
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
_POOL = 8  # idle connections kept
T = TypeVar("T")

KNOWN_SETTINGS = {
    "root_folder_id",
    "root",
    "drive_id",
    "auth",
    "credentials_file",
    "subject",
    "client_secrets_file",
    "token_file",
    "oauth_port",
    "scope",
    "delete",
    "chunk_size",
    "page_size",
    "retries",
    "retry_delay",
    "timeout",
    "api_root",
}


def _q(text: str) -> str:
    """A string literal for a Drive query."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _is_partial(name: str) -> bool:
    return bool(_PART.match(name))


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _number(settings: Settings, key: str, default: float, minimum: float) -> float:
    value = settings.get(key, default)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise settings.error(key, f"must be a number, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise settings.error(key, f"must be a number, not {value!r}")
    if value < minimum:
        raise settings.error(key, f"must be at least {minimum}, not {value}")
    return float(value)


class GDriveStorage(Storage):
    """See the module docstring and docs/storages/gdrive.md."""

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        settings.check_known(KNOWN_SETTINGS)
        self.root_folder_id: str | None = settings.get_str("root_folder_id", None)
        self.drive_id: str | None = settings.get_str("drive_id", None)
        root = settings.get_str("root", "")
        self.root_parts = tuple(p for p in root.split("/") if p)
        if any(p in (".", "..") for p in self.root_parts):
            raise settings.error("root", "must be a plain folder path like 'backups/lab' (no '.' or '..')")

        self.credentials_file: Path | None = settings.get_path("credentials_file", None)
        self.client_secrets_file: Path | None = settings.get_path("client_secrets_file", None)
        self.token_file: Path = settings.get_path("token_file", DEFAULT_TOKEN_FILE)
        self.subject: str | None = settings.get_str("subject", None)
        self.oauth_port = settings.get_int("oauth_port", 0, minimum=0)
        default_auth = "service_account" if self.credentials_file else "oauth" if self.client_secrets_file else "adc"
        self.auth = settings.get_str("auth", default_auth)
        if self.auth not in AUTH_KINDS:
            raise settings.error("auth", f"must be one of {', '.join(AUTH_KINDS)}, not {self.auth!r}")
        if self.auth == "service_account" and self.credentials_file is None:
            raise settings.error("credentials_file", "missing (required with auth = \"service_account\")")
        if self.auth == "oauth" and self.client_secrets_file is None:
            raise settings.error("client_secrets_file", "missing (required with auth = \"oauth\")")
        self.scope = settings.get_str("scope", "drive")
        if self.scope not in SCOPES:
            raise settings.error("scope", f"must be one of {', '.join(SCOPES)}, not {self.scope!r}")

        self.delete_mode = settings.get_str("delete", "trash")
        if self.delete_mode not in ("trash", "permanent"):
            raise settings.error("delete", f"must be \"trash\" or \"permanent\", not {self.delete_mode!r}")
        self.chunk_size = settings.get_int("chunk_size", DEFAULT_CHUNK, minimum=CHUNK_UNIT)
        if self.chunk_size % CHUNK_UNIT:
            raise settings.error("chunk_size", f"must be a multiple of 262144 (256 KiB), not {self.chunk_size}")
        self.page_size = settings.get_int("page_size", 1000, minimum=1)
        if self.page_size > 1000:
            raise settings.error("page_size", f"must be at most 1000 (Drive's limit), not {self.page_size}")
        retries = settings.get_int("retries", 6, minimum=0)
        self.timeout = _number(settings, "timeout", 120.0, 1.0)
        self.policy = Backoff(retries=retries, base=_number(settings, "retry_delay", 1.0, 0.0), cap=32.0)

        api_root = settings.get_str("api_root", DEFAULT_API_ROOT)
        parts = urlsplit(api_root)
        local = parts.hostname in _LOCAL_HOSTS
        if parts.scheme not in ("https", "http") or not parts.hostname or (parts.scheme == "http" and not local):
            raise settings.error("api_root", "must be an https:// URL (http:// only for a server on this machine)")
        self.api_root = api_root if api_root.endswith("/") else api_root + "/"
        if self.auth == "none" and not local:
            raise settings.error("auth", "\"none\" is only for a test server: it needs an api_root on this machine")

        self.simple_max = min(self.chunk_size, SIMPLE_UPLOAD_MAX)
        self._lock = threading.Lock()  # building the service
        self._create_lock = threading.Lock()  # creating folders (Drive would happily make duplicates)
        self._idle: list[Any] = []  # authorized connections not in use: httplib2's are not thread-safe
        self._service: Any = None
        self._credentials: Any = None
        self._folders: dict[tuple[str, ...], str] = {}
        self._created: set[str] = set()  # folders this object created: nothing else is in them
        self._written: set[tuple[str, str]] = set()  # (folder id, name) committed by this object

    # ------------------------------------------------------------------ plumbing

    def location(self) -> str:
        if self.root_folder_id:
            base = f"folder:{self.root_folder_id}"
        elif self.drive_id:
            base = f"shared-drive:{self.drive_id}"
        else:
            base = "my-drive"
        return "gdrive://" + "/".join((base, *self.root_parts))

    def _base_id(self) -> str:
        return self.root_folder_id or self.drive_id or "root"

    def files(self) -> Any:
        """The ``files`` collection of the Drive v3 client (built on first use)."""
        with self._lock:
            if self._service is None:
                from googleapiclient import discovery, discovery_cache

                # The client logs a warning for each 403/429 it sees; we retry and report ourselves, in one line.
                logging.getLogger("googleapiclient.http").setLevel(logging.ERROR)

                doc = json.loads(discovery_cache.get_static_doc("drive", "v3"))
                # Upload URLs are built from rootUrl, not from the endpoint: point both at api_root.
                doc["rootUrl"] = doc["mtlsRootUrl"] = self.api_root
                self._credentials = make_credentials(
                    self.auth,
                    self.scope,
                    credentials_file=self.credentials_file,
                    subject=self.subject,
                    client_secrets_file=self.client_secrets_file,
                    token_file=self.token_file,
                    oauth_port=self.oauth_port,
                )
                self._service = discovery.build_from_document(doc, http=self._new_http())
        return self._service.files()

    def _new_http(self) -> Any:
        import google_auth_httplib2
        from googleapiclient.http import build_http

        http = build_http()  # an httplib2.Http that does not follow Drive's 308 "resume incomplete"
        http.timeout = self.timeout
        return google_auth_httplib2.AuthorizedHttp(self._credentials, http=http)

    def with_http(self, fn: Callable[[Any], T]) -> T:
        """``fn(http)`` with an authorized connection of its own, borrowed from a small pool (kept alive)."""
        self.files()
        with self._lock:
            http = self._idle.pop() if self._idle else None
        if http is None:
            http = self._new_http()
        try:
            return fn(http)
        finally:
            with self._lock:
                if len(self._idle) < _POOL:
                    self._idle.append(http)

    def call(self, make: Callable[[Any], Any], what: str, on_retry: Callable[[retry.Failure], None] | None = None) -> Any:
        """``make(files()).execute()`` with retries; a one-line StorageError when it fails."""
        return retry.call(
            lambda: self.with_http(lambda http: make(self.files()).execute(http=http)), what, self.policy, on_retry=on_retry
        )

    def _drive_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"supportsAllDrives": True, "includeItemsFromAllDrives": True}
        if self.drive_id:
            args.update(corpora="drive", driveId=self.drive_id)
        return args

    # ------------------------------------------------------------------ folders and lookups

    def children(
        self, parent: str, query: str = "", fields: str = LIST_FIELDS, page_size: int | None = None, what: str = "list folder"
    ) -> Iterator[dict[str, Any]]:
        """Every non-trashed child of ``parent`` matching ``query``, page by page."""
        q = f"{_q(parent)} in parents and trashed = false" + (f" and {query}" if query else "")
        token: str | None = None
        while True:
            page = self.call(
                lambda f, token=token: f.list(
                    q=q, fields=fields, pageSize=page_size or self.page_size, pageToken=token, **self._drive_args()
                ),
                what,
            )
            yield from page.get("files", [])
            token = page.get("nextPageToken")
            if not token:
                return

    def _find_folder(self, parent: str, name: str) -> str | None:
        found = list(
            self.children(
                parent, f"name = {_q(name)} and mimeType = {_q(FOLDER)}", "nextPageToken,files(id,createdTime)",
                what=f"look up folder {name!r}",
            )
        )
        if not found:
            return None
        return min(found, key=lambda f: (f.get("createdTime", ""), f["id"]))["id"]  # duplicates: the oldest

    def folder(self, parts: tuple[str, ...], create: bool = False) -> str | None:
        """The id of the folder at ``parts`` below the storage root; ``None`` if missing (and not created)."""
        full = self.root_parts + tuple(parts)
        parent = self._base_id()
        start = 0
        for i in range(len(full), 0, -1):
            if full[:i] in self._folders:
                parent, start = self._folders[full[:i]], i
                break
        for i in range(start, len(full)):
            name = full[i]
            fid = None if parent in self._created else self._find_folder(parent, name)
            if fid is None:
                if not create:
                    return None
                with self._create_lock:
                    fid = self._folders.get(full[: i + 1])
                    if fid is None and parent not in self._created:
                        fid = self._find_folder(parent, name)
                    if fid is None:
                        fid = self._create_folder(parent, name)
                    self._folders[full[: i + 1]] = fid
            self._folders[full[: i + 1]] = fid
            parent = fid
        return parent

    def _create_folder(self, parent: str, name: str) -> str:
        body = {"name": name, "mimeType": FOLDER, "parents": [parent]}
        created = self.call(lambda f: f.create(body=body, fields="id", supportsAllDrives=True), f"create folder {name!r}")
        self._created.add(created["id"])
        return created["id"]

    def find_files(self, parent: str, name: str) -> list[dict[str, Any]]:
        """The files named ``name`` in ``parent``, newest first."""
        found = [
            f
            for f in self.children(parent, f"name = {_q(name)}", f"nextPageToken,files({FILE_FIELDS.replace('md5Checksum,', '')})")
            if f.get("mimeType") != FOLDER
        ]
        return sorted(found, key=lambda f: (f.get("createdTime", ""), f["id"]), reverse=True)

    def _split(self, key: str) -> tuple[tuple[str, ...], str]:
        parts = tuple(p for p in key.split("/") if p)
        if not parts or any(p in (".", "..") for p in parts):
            raise StorageError(f"bad key {key!r}")
        return parts[:-1], parts[-1]

    def _lookup(self, key: str) -> dict[str, Any] | None:
        folder_parts, name = self._split(key)
        parent = self.folder(folder_parts)
        if parent is None:
            return None
        found = self.find_files(parent, name)
        return found[0] if found else None

    def remove(self, file_id: str, what: str, mode: str | None = None) -> None:
        """Trash or delete one file or folder; a missing one is fine."""
        mode = mode or self.delete_mode
        try:
            if mode == "trash":
                self.call(lambda f: f.update(fileId=file_id, body={"trashed": True}, fields="id", supportsAllDrives=True), what)
            else:
                self.call(lambda f: f.delete(fileId=file_id, supportsAllDrives=True), what)
        except NotFoundError:
            pass

    # ------------------------------------------------------------------ the Storage contract

    def check(self) -> None:
        base = self._base_id()
        try:
            meta = self.call(
                lambda f: f.get(fileId=base, fields="id,name,mimeType,trashed,capabilities(canAddChildren)", supportsAllDrives=True),
                "open the root folder",
            )
        except NotFoundError:
            raise StorageError(f"Google Drive: {self.location()}: root folder not found (or not shared with this account)") from None
        if meta.get("mimeType") != FOLDER:
            raise StorageError(f"Google Drive: {self.location()}: {base} is not a folder")
        if meta.get("trashed"):
            raise StorageError(f"Google Drive: {self.location()}: the root folder is in the trash")
        if meta.get("capabilities", {}).get("canAddChildren") is False:
            raise StorageError(f"Google Drive: {self.location()}: permission denied (cannot add files to the root folder)")
        self.folder(())  # resolve the root path now (it is created on the first write)

    def open_write(self, key: str) -> ObjectWriter:
        folder_parts, name = self._split(key)
        return _DriveWriter(self, key, folder_parts, name)

    def open_write_deferred(self, key: str, attrs: FileAttributes | None = None) -> ObjectWriter:
        """Durable at commit, as every write here; ``attrs``: the file's mtime becomes the Drive file's
        ``modifiedTime`` (what Drive's pages and rclone show), its mode and digest public ``properties``."""
        folder_parts, name = self._split(key)
        return _DriveWriter(self, key, folder_parts, name, _drive_fields(attrs) if attrs is not None else None)

    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        meta = self._lookup(key)
        if meta is None:
            raise NotFoundError(f"Google Drive: {key}: not found")
        size = int(meta.get("size") or 0)
        end = size if length is None else min(size, offset + length)
        return io.BufferedReader(_DriveReader(self, key, meta["id"], offset, end), buffer_size=1 << 16)  # type: ignore[return-value]

    def list(self, prefix: str) -> Iterator[Entry]:
        parts = tuple(p for p in prefix.split("/") if p)
        if any(p in (".", "..") for p in parts):
            raise StorageError(f"bad key {prefix!r}")
        parent = self.folder(parts)
        if parent is None:
            return
        seen_dirs: set[str] = set()
        files: dict[str, dict[str, Any]] = {}
        for f in self.children(parent, what=f"list {prefix or '/'}"):
            name = f["name"]
            if f.get("mimeType") == FOLDER:
                if name not in seen_dirs:
                    seen_dirs.add(name)
                    yield Entry(name, True, None, _parse_time(f.get("modifiedTime")))
            elif not _is_partial(name):
                old = files.get(name)
                if old is None or (f.get("createdTime", ""), f["id"]) > (old.get("createdTime", ""), old["id"]):
                    files[name] = f
        for name, f in files.items():
            yield Entry(name, False, int(f.get("size") or 0), _parse_time(f.get("modifiedTime")))

    def exists(self, key: str) -> bool:
        return self._lookup(key) is not None

    def delete(self, key: str) -> None:
        folder_parts, name = self._split(key)
        parent = self.folder(folder_parts)
        if parent is None:
            return
        for f in self.find_files(parent, name):
            self.remove(f["id"], f"delete {key}")
        # Drop folders left empty, up to the root, so deleted backups leave no husks behind.
        for depth in range(len(folder_parts), 0, -1):
            folder_id = self.folder(folder_parts[:depth])
            if folder_id is None or next(self.children(folder_id, fields="files(id)", page_size=1), None) is not None:
                break
            self.remove(folder_id, f"delete folder {'/'.join(folder_parts[:depth])}")
            gone = self.root_parts + folder_parts[:depth]
            for cached in [k for k in self._folders if k[: len(gone)] == gone]:
                del self._folders[cached]

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for http in idle:
            http.close()


class _PushMedia:
    """The bytes of an upload not yet acknowledged by the server, fed by ``write`` and read by the client.

    Implements the ``googleapiclient.http.MediaUpload`` interface for a stream of unknown length: the
    client asks for ``getbytes(offset, chunksize)`` from the server's last acknowledged offset, so only that
    tail is kept (at most one chunk plus one write).
    """

    def __init__(self, chunk_size: int) -> None:
        self._chunk = chunk_size
        self._buf = bytearray()
        self._start = 0  # stream offset of _buf[0]
        self._size: int | None = None

    # -- MediaUpload interface
    def chunksize(self) -> int:
        return self._chunk

    def mimetype(self) -> str:
        return "application/octet-stream"

    def size(self) -> int | None:
        return self._size  # None until commit: "bytes a-b/*"

    def resumable(self) -> bool:
        return True

    def has_stream(self) -> bool:
        return False

    def stream(self) -> None:
        return None

    def getbytes(self, begin: int, length: int) -> bytes:
        self.acknowledged(begin)
        return bytes(self._buf[:length])

    def to_json(self) -> str:  # part of the interface; this upload cannot be serialised
        raise NotImplementedError

    # -- ours
    def append(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def pending(self) -> int:
        return len(self._buf)

    def set_size(self, size: int) -> None:
        self._size = size

    def acknowledged(self, offset: int) -> None:
        """The server has the bytes before ``offset``: forget them."""
        if offset < self._start:
            raise StorageError(f"Google Drive lost {self._start - offset} bytes of an upload it had acknowledged")
        del self._buf[: offset - self._start]
        self._start = offset

    def whole(self) -> bytes:
        assert self._start == 0
        return bytes(self._buf)


_media_class: type | None = None


def _new_media(chunk_size: int) -> _PushMedia:
    """A :class:`_PushMedia` that is also a ``MediaUpload`` (the client checks), importing the client lazily."""
    global _media_class
    if _media_class is None:
        from googleapiclient.http import MediaUpload

        _media_class = type("PushMediaUpload", (_PushMedia, MediaUpload), {})
    return _media_class(chunk_size)  # type: ignore[no-any-return]


def _drive_fields(attrs: FileAttributes) -> dict[str, Any]:
    """A mirrored file's attributes as Drive file fields (``modifiedTime`` keeps milliseconds)."""
    properties = {"mode": f"{attrs.mode & 0o7777:o}"}
    if attrs.blake3:
        properties["blake3"] = attrs.blake3
    fields: dict[str, Any] = {"properties": properties}
    sec, ns = divmod(attrs.mtime_ns, 10**9)
    if 0 <= sec < 253402300800:  # 1970 to 9999: a time Drive takes as RFC 3339; else Drive's own "now"
        when = datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        fields["modifiedTime"] = f"{when}.{ns // 10**6:03d}Z"
    return fields


class _DriveWriter(ObjectWriter):
    def __init__(self, storage: GDriveStorage, key: str, folder_parts: tuple[str, ...], name: str,
                 fields: dict[str, Any] | None = None) -> None:
        self._s = storage
        self._fields = fields or {}  # set with the file (a mirrored file's attributes)
        self._key = key
        self._folder_parts = folder_parts
        self._name = name
        self._media = _new_media(storage.chunk_size)
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._size = 0
        self._request: Any = None  # the resumable upload, once started
        self._uploaded: str | None = None  # id of the complete file under its temporary name
        self._parent: str | None = None
        self._retried = False
        self._done = False

    def _note_retry(self, failure: retry.Failure) -> None:
        self._retried = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self._done, "write after commit/abort"
        self._md5.update(data)
        self._size += len(data)
        self._media.append(data)
        # Strictly more than a chunk: the last byte always waits for commit, which sends the real length.
        while self._media.pending() > self._s.chunk_size:
            self._send_chunk()

    def _start(self) -> None:
        self._parent = self._s.folder(self._folder_parts, create=True)
        tmp = f".{self._name}.part-{secrets.token_hex(4)}"
        body = {"name": tmp, "parents": [self._parent], **self._fields}
        self._request = self._s.files().create(body=body, media_body=self._media, fields=FILE_FIELDS, supportsAllDrives=True)

    def _send_chunk(self) -> dict[str, Any] | None:
        if self._request is None:
            self._start()
        request = self._request
        try:
            _, done = retry.call(
                lambda: self._s.with_http(lambda http: request.next_chunk(http=http)),
                f"upload {self._key}",
                self._s.policy,
                on_retry=self._note_retry,
            )
        except NotFoundError:
            raise StorageError(
                f"Google Drive: upload {self._key}: the upload session or its folder is gone (HTTP 404); run again"
            ) from None
        if done is None:
            self._media.acknowledged(request.resumable_progress)
        return done

    def commit(self) -> None:
        assert not self._done, "commit after commit/abort"
        try:
            if self._request is None and self._size <= self._s.simple_max:
                resource = self._simple_upload()
            else:
                self._media.set_size(self._size)
                resource = None
                while resource is None:
                    resource = self._send_chunk()
                self._uploaded = resource["id"]
                self._check(resource)
                self._s.call(
                    lambda f: f.update(fileId=resource["id"], body={"name": self._name, **self._fields}, fields="id",
                                       supportsAllDrives=True),  # a rename would set modifiedTime to now
                    f"commit {self._key}",
                )
            self._uploaded = None
            self._drop_older(resource["id"])
        except BaseException:
            self.abort()
            raise
        self._done = True

    def _simple_upload(self) -> dict[str, Any]:
        """One multipart request: Drive creates the file, complete, under its final name."""
        from googleapiclient.http import MediaIoBaseUpload

        self._parent = self._s.folder(self._folder_parts, create=True)
        data = self._media.whole()
        body = {"name": self._name, "parents": [self._parent], **self._fields}

        def make(f: Any) -> Any:
            media = MediaIoBaseUpload(io.BytesIO(data), mimetype="application/octet-stream", resumable=False)
            return f.create(body=body, media_body=media, fields=FILE_FIELDS, supportsAllDrives=True)

        resource = self._s.call(make, f"upload {self._key}", on_retry=self._note_retry)
        try:
            self._check(resource)
        except StorageError:
            self._s.remove(resource["id"], f"remove corrupt upload {self._key}", "permanent")
            raise
        return resource

    def _check(self, resource: dict[str, Any]) -> None:
        md5 = resource.get("md5Checksum")
        if md5 is None:  # Drive may omit it in the upload answer; ask once
            md5 = self._s.call(
                lambda f: f.get(fileId=resource["id"], fields="md5Checksum", supportsAllDrives=True), f"check {self._key}"
            ).get("md5Checksum")
        size = int(resource.get("size", self._size))
        if size != self._size or (md5 is not None and md5 != self._md5.hexdigest()):
            raise StorageError(
                f"Google Drive: upload {self._key}: Drive holds {size} bytes with md5 {md5}, "
                f"{self._size} bytes with md5 {self._md5.hexdigest()} were sent"
            )

    def _drop_older(self, keep: str) -> None:
        """Remove other files of the same name: the replaced object, duplicates from a retried request."""
        assert self._parent is not None
        written = (self._parent, self._name)
        fresh = self._parent in self._s._created and written not in self._s._written
        self._s._written.add(written)
        if fresh and not self._retried:
            return  # a folder we made holds nothing we did not write: no older file to remove, one call saved
        for f in self._s.find_files(self._parent, self._name):
            if f["id"] != keep:
                self._s.remove(f["id"], f"replace {self._key}")

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        request, self._request = self._request, None
        if request is not None and request.resumable_uri and self._uploaded is None:
            try:  # cancel the upload session (best effort: an abandoned one expires after a week anyway)
                self._s.with_http(lambda http: http.request(request.resumable_uri, "DELETE", headers={"content-length": "0"}))
            except Exception:
                pass
        if self._uploaded is not None:
            uploaded, self._uploaded = self._uploaded, None
            try:
                self._s.remove(uploaded, f"abort {self._key}", "permanent")
            except StorageError:
                pass  # left as a hidden .part file, never listed
        self._media = _new_media(self._s.chunk_size)


class _DriveReader(io.RawIOBase):
    """The bytes [pos, end) of a Drive file, fetched a chunk at a time with ``Range`` requests."""

    def __init__(self, storage: GDriveStorage, key: str, file_id: str, start: int, end: int) -> None:
        super().__init__()
        self._s = storage
        self._key = key
        self._id = file_id
        self._pos = start
        self._end = end
        self._buf = b""
        self._off = 0

    def readable(self) -> bool:
        return True

    def _fetch(self) -> None:
        first, last = self._pos, min(self._end, self._pos + self._s.chunk_size) - 1

        def get() -> bytes:
            request = self._s.files().get_media(fileId=self._id, supportsAllDrives=True)
            request.headers["range"] = f"bytes={first}-{last}"
            data = self._s.with_http(lambda http: request.execute(http=http))
            if len(data) != last - first + 1:  # a cut answer: try again
                raise ConnectionError(f"got {len(data)} of {last - first + 1} bytes")
            return data

        self._buf = retry.call(get, f"read {self._key}", self._s.policy)
        self._off = 0

    def readinto(self, b: Any) -> int:
        if self._off >= len(self._buf):
            if self._pos >= self._end:
                return 0
            self._fetch()
        n = min(len(b), len(self._buf) - self._off)
        b[:n] = self._buf[self._off : self._off + n]
        self._off += n
        self._pos += n
        return n
