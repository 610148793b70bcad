"""Built-in storage ``filesystem``: backups under a local (or mounted) directory.

An object is written to a hidden temporary file beside its final name, fsynced, then renamed: a reader never
sees a partial object, and a crash leaves only a ``.*.part`` file that listing ignores (and ``delete_tree``
removes). A deferred write (``open_write_deferred``: a mirror's files) skips both fsyncs; ``persist`` then
makes all of them durable with one ``syncfs`` per filesystem (on a network filesystem every write is
synced). Every write writes all its bytes or raises: a full disk is a one-line ``StorageError``. Objects
are created 0600 and directories 0700: a backup of private data stays private to the storage's owner.

``shared = true``: a storage several users write to, e.g. append-only clients beside an admin. Directories are
created ``3770`` (setgid: the group of the root directory carries down; sticky: only an object's owner, the
directory's owner or root may remove or replace an object) and objects ``0640``. So a member of the group
adds objects and reads everything, but cannot delete or overwrite what another user wrote: the filesystem's
counterpart of an S3 policy denying ``s3:DeleteObject``, with one limit: a user can still remove its own
objects. The admin who prunes runs as root or as the owner of the directories. Set the root up once:
``install -d -m 3770 -g backup /srv/backups``.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from ..durable import fsync_dir, on_network_fs, os_reason, sync_filesystem, write_all
from ..errors import NotFoundError, StorageError
from ..hookspecs import hookimpl
from ..types import Entry, FileAttributes, ObjectWriter, Settings, Storage, StorageType

log = logging.getLogger(__name__)


def _os_error(what: str, exc: OSError) -> StorageError:
    return StorageError(f"{what}: {os_reason(exc)}")


FILE_MODE = 0o600
DIR_MODE = 0o700


SHARED_FILE_MODE = 0o640
SHARED_DIR_MODE = 0o3770


def _makedirs(path: Path, mode: int = DIR_MODE) -> None:
    """``mkdir -p`` with every directory it creates private (``os.makedirs`` applies a mode to the last
    one only), or ``mode`` exactly (the umask would drop a shared directory's group write)."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for p in reversed(missing):
        try:
            os.mkdir(p, mode)
        except FileExistsError:
            if not p.is_dir():
                raise
            continue
        if mode != DIR_MODE:
            os.chmod(p, mode)


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
    """The temporary file is created at the first write (or commit), on the thread that writes: an engine
    opening a writer per file on the source's thread (a mirror) leaves the directory and file creation to
    its upload threads. ``deferred``: neither fsync at commit; the directory is handed to it instead (see
    ``persist``)."""

    def __init__(self, final: Path, shared: bool = False, deferred: Callable[[Path], None] | None = None,
                 mtime_ns: int | None = None) -> None:
        self._deferred = deferred
        self._mtime_ns = mtime_ns  # the mirrored file's, set before the rename (see Storage.open_write_deferred)
        self._shared = shared
        self._unflushed = 0
        self._written = 0
        self._flushing: Future[None] | None = None
        self._final = final
        self._tmp = final
        self._fd: int | None = None
        self._done = False

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        assert not self._done, "write after commit/abort"
        mode = SHARED_FILE_MODE if self._shared else FILE_MODE
        for attempt in range(3):
            # a random name (not secrets': a getrandom call per object), O_EXCL: a clash is tried again
            self._tmp = self._final.with_name(f".{self._final.name}.{random.getrandbits(32):08x}.part")
            try:
                _makedirs(self._final.parent, SHARED_DIR_MODE if self._shared else DIR_MODE)
                fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
                if self._shared:
                    os.fchmod(fd, SHARED_FILE_MODE)  # whatever the umask
                self._fd = fd
                return fd
            except (FileNotFoundError, FileExistsError) as exc:
                # A concurrent delete() removed the directory, left empty, between mkdir and open; or a
                # name clash.
                if attempt == 2:
                    raise _os_error(f"cannot write {self._final}", exc) from None
            except OSError as exc:
                raise _os_error(f"cannot write {self._final}", exc) from None
        raise AssertionError("unreachable")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        fd = self._open()
        try:
            write_all(fd, data)
        except OSError as exc:
            raise _os_error(f"cannot write {self._final}", exc) from None
        n = memoryview(data).nbytes
        self._written += n
        self._unflushed += n
        if self._deferred is not None:
            return
        if self._unflushed >= _FLUSH_EVERY and (self._flushing is None or self._flushing.done()):
            self._flushing = _start_flush(fd)
            self._unflushed = 0

    def _wait_flush(self) -> None:
        if self._flushing is not None:
            flushing, self._flushing = self._flushing, None
            flushing.result()

    def commit(self) -> None:
        assert not self._done, "commit after commit/abort"
        fd = self._open()  # opened here for an empty object
        try:
            self._wait_flush()
            if self._deferred is None:
                os.fsync(fd)
            # What reached the disk is what was written: a bug or a filesystem that drops bytes fails here,
            # not at the next verify.
            size = os.fstat(fd).st_size
            if size != self._written:
                raise OSError(errno.EIO, f"{size} bytes on disk, {self._written} written")
            if self._mtime_ns is not None:
                try:
                    os.utime(fd, ns=(self._mtime_ns, self._mtime_ns))
                except (OSError, OverflowError):  # a time this filesystem cannot hold: the object still counts
                    log.debug("%s: cannot set mtime %d ns", self._final, self._mtime_ns)
            os.close(fd)
            self._fd = None
            os.replace(self._tmp, self._final)
            self._done = True  # from here abort() leaves the object alone
            if self._deferred is None:
                fsync_dir(self._final.parent)
            else:
                self._deferred(self._final.parent)
        except OSError as exc:
            self.abort()
            raise _os_error(f"cannot commit {self._final}", exc) from None

    def abort(self) -> None:
        try:
            self._wait_flush()
        except OSError:
            pass
        done, self._done = self._done, True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        elif done or self._tmp == self._final:
            return  # committed (the temporary file is the object now), or never created
        try:
            self._tmp.unlink()
        except FileNotFoundError:
            pass


class FilesystemStorage(Storage):
    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        settings.check_known({"root", "shared"})
        self.root = settings.get_path("root").resolve()
        self.shared = settings.get_bool("shared", False)
        self._unsynced: set[Path] = set()  # directories of deferred objects committed since the last persist()
        self._unsynced_lock = threading.Lock()

    @functools.cached_property
    def consistent_listing(self) -> bool:  # type: ignore[override]
        """A local filesystem lists what was renamed into place at once; a network one may serve a
        cached directory listing (NFS's attribute cache), so locks keep their settle time there."""
        return not on_network_fs(self.root)

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
        return _FileWriter(self._path(key), self.shared)

    def open_write_deferred(self, key: str, attrs: FileAttributes | None = None) -> ObjectWriter:
        """``attrs``: the file gets the mirrored file's mtime (so ``ls -l``, rsync and rclone see it); its mode
        stays the storage's private one."""
        mtime_ns = attrs.mtime_ns if attrs is not None else None
        # a network filesystem's syncfs need not reach the server's disk: each object synced there
        if not self.consistent_listing:
            return _FileWriter(self._path(key), self.shared, mtime_ns=mtime_ns)
        return _FileWriter(self._path(key), self.shared, self._committed_unsynced, mtime_ns)

    def _committed_unsynced(self, directory: Path) -> None:
        with self._unsynced_lock:
            self._unsynced.add(directory)

    def persist(self) -> None:
        """One ``syncfs`` per filesystem holding deferred objects (a mount point inside the root is
        another): their data and their directory entries. Since Linux 5.8 it also reports a writeback
        error of any file of that filesystem since the last call, as ``fsync`` would have."""
        with self._unsynced_lock:
            dirs, self._unsynced = self._unsynced, set()
        filesystems: dict[int, Path] = {}
        for d in dirs:
            try:
                filesystems.setdefault(d.stat().st_dev, d)
            except FileNotFoundError:
                continue  # its objects were deleted since
            except OSError as exc:
                with self._unsynced_lock:
                    self._unsynced |= dirs
                raise _os_error(f"cannot sync {d}", exc) from None
        try:
            for d in filesystems.values():
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    sync_filesystem(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            with self._unsynced_lock:
                self._unsynced |= dirs  # not durable: a later persist() tries again
            raise _os_error(f"cannot sync {d}", exc) from None

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
        except (FileNotFoundError, NotADirectoryError):  # a key below an object is missing too, as list() says
            return
        except OSError as exc:
            raise _os_error(f"cannot delete {path}", exc) from None
        self._prune(path.parent)

    def delete_tree(self, prefix: str) -> None:
        """Everything below ``prefix``, the ``.part`` files of interrupted writes too (listing hides them)."""
        path = self._path(prefix)
        if path == self.root:
            raise StorageError(f"refusing to delete the whole storage {self.root}")
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            return
        except NotADirectoryError:
            self.delete(prefix)
            return
        except OSError as exc:
            raise _os_error(f"cannot delete {path}", exc) from None
        self._prune(path.parent)

    def sweep_unfinished(self, prefix: str, older_than: float, *, remove: bool) -> list[str]:
        """The ``.NAME.XXXX.part`` files of writes killed before commit or abort."""
        top = self._path(prefix)
        cutoff = time.time() - older_than
        found = []
        for dirpath, _, names in os.walk(top):
            for name in names:
                if not (name.startswith(".") and name.endswith(".part")):
                    continue
                path = Path(dirpath) / name
                try:
                    if path.lstat().st_mtime >= cutoff:
                        continue
                    if remove:
                        path.unlink()
                except FileNotFoundError:
                    continue  # committed or aborted meanwhile
                except OSError as exc:
                    raise _os_error(f"cannot delete {path}", exc) from None
                found.append(str(path.relative_to(self.root)))
        return sorted(found)

    def _prune(self, parent: Path) -> None:
        """Drop directories left empty, up to the root, so deleted backups leave no husks."""
        while parent != self.root and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError as exc:
                # EPERM/EACCES: another user's directory in a shared (sticky) storage: it stays
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.EPERM, errno.EACCES):
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
