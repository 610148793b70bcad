"""Durable local file operations: every byte written or an error, fsync where it matters, atomic swaps.

The core's one place for the system calls that its guarantees rest on ("a backup that exits 0 is on
disk", "a restore completes or leaves the target as it was"): used by the filesystem storage and by the
sources that restore into local files.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sqlite3
from pathlib import Path

from .retry import Backoff, call

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write every byte of ``data`` to ``fd``, or raise ``OSError``.

    ``os.write`` (like an unbuffered ``FileIO.write``) may write fewer bytes than asked, e.g. when the
    filesystem fills up part-way; the remainder is retried, so the second attempt reports ENOSPC.
    """
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        if n <= 0:  # never for a regular file, but a zero-byte write must not loop forever
            raise OSError(errno.EIO, "write wrote nothing")
        view = view[n:]


def fsync_dir(path: Path | str) -> None:
    """Make a rename or a create in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _libc() -> ctypes.CDLL | None:
    try:
        # the C library already loaded into this process (find_library would run ldconfig: 14 ms a start)
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def sync_filesystem(fd: int) -> None:
    """Write out everything dirty on the filesystem that holds ``fd`` (Linux ``syncfs``).

    One call instead of an fsync per file: a restore of 20,000 small files pays one flush, not 20,000.
    Without ``syncfs`` (not Linux), falls back to ``sync()``.
    """
    syncfs = getattr(_LIBC, "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    if syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (``renameat2(RENAME_EXCHANGE)``); False where the kernel or the
    filesystem cannot, so the caller falls back to two renames."""
    renameat2 = getattr(_LIBC, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def os_reason(exc: OSError) -> str:
    """The one-line reason of an ``OSError``: ``No space left on device``, never a traceback."""
    return exc.strerror or str(exc) or type(exc).__name__


_NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "glusterfs", "fuse.sshfs", "fuse.s3fs",
               "fuse.rclone", "fuse.gcsfuse"}


def on_network_fs(path: Path) -> bool:
    """Whether ``path`` lies on a network filesystem (NFS, SMB, a FUSE mount of a remote), by the longest
    mount point of /proc/self/mounts above it; True when that cannot be read."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) > 2]
    except OSError:
        return True  # cannot tell: assume the cautious case
    best, kind = "", ""
    text = os.path.abspath(path)
    for point, fstype in mounts:
        point = point.replace("\\040", " ")
        if (text == point or text.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fstype
    return kind in _NETWORK_FS


def use_wal(con: sqlite3.Connection, path: Path) -> None:
    """Put the SQLite database at ``path``, open as ``con``, in WAL mode (readers never wait for a writer),
    unless it lies on a network filesystem, where WAL's shared memory is not shared between hosts.

    The switch needs the database alone, and SQLite fails it at once instead of waiting out the busy
    timeout: two processes opening a new database together (two backups started by cron on a fresh
    machine) made one exit with "database is locked" in 13 of 20 tries. Retried, for 3 s at most."""
    if on_network_fs(path):
        return

    def switch() -> None:
        if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            con.execute("PRAGMA journal_mode = WAL")

    call(switch, _WAL_SWITCH, transient=lambda e: isinstance(e, sqlite3.OperationalError) and "locked" in str(e))


_WAL_SWITCH = Backoff(retries=10, base=0.01, cap=0.5)
