"""Built-in storage ``filesystem``: backups under a local (or mounted) directory.

An object is written to a hidden temporary file beside its final name, fsynced, then renamed: a reader never
sees a partial object, and a crash leaves only a ``.*.part`` file that listing ignores.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from ..errors import NotFoundError, StorageError
from ..hookspecs import hookimpl
from ..types import Entry, ObjectWriter, Settings, Storage, StorageType


def _os_error(what: str, exc: OSError) -> StorageError:
    return StorageError(f"{what}: {exc.strerror or exc}")


_FLUSH_EVERY = 32 << 20
_flusher: ThreadPoolExecutor | None = None


def _start_flush(fd: int) -> Future[None]:
    """Start writing dirty pages out in the background, so the fsync at commit finds little left to do
    (the kernel would otherwise hold gigabytes in the page cache and flush them all at once)."""
    global _flusher
    if _flusher is None:
        _flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dm-flush")
    return _flusher.submit(os.fdatasync, fd)


class _FileWriter(ObjectWriter):
    def __init__(self, final: Path) -> None:
        self._unflushed = 0
        self._flushing: Future[None] | None = None
        self._final = final
        self._tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.part")
        for attempt in range(3):
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                self._f: BinaryIO | None = open(self._tmp, "xb", buffering=0)
                break
            except FileNotFoundError as exc:
                # A concurrent delete() removed the directory, left empty, between mkdir and open.
                if attempt == 2:
                    raise _os_error(f"cannot write {final}", exc) from None
            except OSError as exc:
                raise _os_error(f"cannot write {final}", exc) from None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self._f is not None, "write after commit/abort"
        try:
            self._f.write(data)
        except OSError as exc:
            raise _os_error(f"cannot write {self._final}", exc) from None
        self._unflushed += len(data)
        if self._unflushed >= _FLUSH_EVERY and (self._flushing is None or self._flushing.done()):
            self._flushing = _start_flush(self._f.fileno())
            self._unflushed = 0

    def _wait_flush(self) -> None:
        if self._flushing is not None:
            flushing, self._flushing = self._flushing, None
            flushing.result()

    def commit(self) -> None:
        assert self._f is not None, "commit after commit/abort"
        try:
            self._wait_flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None
            os.replace(self._tmp, self._final)
            _fsync_dir(self._final.parent)
        except OSError as exc:
            self.abort()
            raise _os_error(f"cannot commit {self._final}", exc) from None

    def abort(self) -> None:
        try:
            self._wait_flush()
        except OSError:
            pass
        if self._f is not None:
            self._f.close()
            self._f = None
        try:
            self._tmp.unlink()
        except FileNotFoundError:
            pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemStorage(Storage):
    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        settings.check_known({"root"})
        self.root = settings.get_path("root").resolve()

    def location(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise StorageError(f"bad key {key!r}")
        return self.root.joinpath(*parts)

    def check(self) -> None:
        if not self.root.exists():
            parent = next((p for p in self.root.parents if p.exists()), None)
            if parent is None or not os.access(parent, os.W_OK):
                raise StorageError(f"{self.root} does not exist and cannot be created")
            return
        if not self.root.is_dir():
            raise StorageError(f"{self.root} is not a directory")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"{self.root} is not writable")

    def open_write(self, key: str) -> ObjectWriter:
        return _FileWriter(self._path(key))

    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        path = self._path(key)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise NotFoundError(f"{path}: not found") from None
        except OSError as exc:
            raise _os_error(f"cannot read {path}", exc) from None
        if offset:
            f.seek(offset)
        if length is None:
            return f
        return _Limited(f, length)  # type: ignore[return-value]

    def list(self, prefix: str) -> Iterator[Entry]:
        path = self._path(prefix)
        try:
            it = os.scandir(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise _os_error(f"cannot list {path}", exc) from None
        with it:
            for e in it:
                if e.name.startswith(".") and e.name.endswith(".part"):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                    is_dir = e.is_dir(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted while we listed
                yield Entry(
                    e.name,
                    is_dir,
                    None if is_dir else st.st_size,
                    datetime.fromtimestamp(st.st_mtime, timezone.utc),
                )

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _os_error(f"cannot delete {path}", exc) from None
        # Drop directories left empty, up to the root, so deleted backups leave no husks.
        parent = path.parent
        while parent != self.root and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    break
                raise _os_error(f"cannot delete {parent}", exc) from None
            parent = parent.parent


class _Limited:
    """A file limited to ``length`` bytes from its current position (range reads)."""

    def __init__(self, f: BinaryIO, length: int) -> None:
        self._f = f
        self._left = length

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _Limited:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@hookimpl
def register_storage_types(register: Callable[[StorageType], None]) -> None:
    register(StorageType("filesystem", FilesystemStorage, "a directory on a local or mounted filesystem"))
