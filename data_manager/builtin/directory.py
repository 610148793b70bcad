"""Built-in source ``directory``: a directory tree as size-bounded tar volumes, plus a file index.

Backup walks the tree once and writes each file into one of two volume streams: a zstd-compressed one, or
a stored-as-is one for content that does not compress (decided per file from a 64 KiB sample), so images
and archives cost no CPU. A volume closes once it passes ``volume_size``; a file is never split, so a
file larger than that has a volume of its own. ``files.jsonl`` lists every entry with its volume, the
offset of its data in the volume, size and BLAKE3 (``sha256`` in backups before December 2026), so a
single file can later be fetched alone. Before it opens a file the source asks the engine whether it holds
that file unchanged (``recall``): on ``sync`` an unchanged file is then only stat'ed (on ``dedup``, one of
64 KiB or more).

Volumes are POSIX pax tar: ``zstd -dc vol-000001.tar.zst | tar -x`` extracts one by hand.

Restore extracts every volume into a hidden directory beside the target (never through a symlink, whatever
the volumes hold), checks every volume's digest and that ``files.jsonl`` lists exactly what they held,
syncs it to disk, then swaps it in for the target atomically: a failed restore leaves the target as it was.
setuid/setgid bits are dropped unless ``keep_setuid = true``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator, Mapping
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any, BinaryIO

from blake3 import blake3

from ..checkpoints import Checkpoints, Resumed
from ..durable import exchange, fsync_dir, os_reason, sync_filesystem, write_all
from ..errors import CorruptBackupError, SourceError
from ..hookspecs import hookimpl
from ..types import ArtifactSet, ArtifactSink, Settings, Source, SourceType
from ..volumes import Volumes, incompressible, numbering, stored_by_name
from .tarheaders import (
    AREG,
    DIR,
    MEMBER_DATA_AT,
    PAX_MTIME_BLOCK,
    REG,
    SYM,
    FileMembers,
    Member,
    TarFormatError,
    TarReader,
    ustar_header,
)

log = logging.getLogger(__name__)

CHUNK = 1 << 20
INDEX = "files.jsonl"
_SMALL = 64 << 10  # below this a file joins the compressed stream without a test
_ZERO = bytes(512)
_PAX_MTIME = "mtime"


_VOLUME = re.compile(r"vol-(\d{6})\.tar")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_json_str = encode_basestring_ascii  # what json.dumps(ensure_ascii=True) writes for a str, in C


def _entry_name(entry: os.DirEntry[str]) -> str:
    return entry.name


class _TarVolumes(Volumes):
    """Volumes that are pax tar archives, written in blocks of about CHUNK: small files' headers, data and
    padding are gathered here, not handed to the engine (hashing, progress, staging) a few bytes at a time.

    Pieces are kept in a list and joined once a CHUNK is reached: one copy of every byte, where growing a
    bytearray copied each twice and faulted in fresh pages for every block."""

    trailer = b""  # written by close() below, through the buffer

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._parts: list[bytes] = []
        self._pending = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._out is None:
            self.start()
        self._parts.append(data if isinstance(data, bytes) else bytes(data))
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        self._pending += n
        self.offset += n
        if self._pending >= CHUNK:
            self.flush()

    def member(self, data: bytes, data_at: int) -> int:
        """Append one whole member (pax header, header, data, padding); the offset of its data, which
        starts ``data_at`` bytes into ``data``, in the volume :attr:`name` names right after this call.
        Closes the volume when it reached its limit, as :meth:`roll` does."""
        if self._out is None:
            self.start()
        offset = self.offset
        n = len(data)
        self._parts.append(data)
        self._pending += n
        self.offset = offset + n
        if self._pending >= CHUNK:
            self.flush()
        if offset + n >= self._limit:
            self.close()
        return offset + data_at

    def flush(self) -> None:
        if self._parts:
            assert self._out is not None
            parts = self._parts
            self._out.write(parts[0] if len(parts) == 1 else b"".join(parts))
            parts.clear()
            self._pending = 0

    def cut(self) -> None:
        self.flush()
        super().cut()

    def roll(self) -> None:
        if self._out is not None and self.offset >= self._limit:
            self.close()

    def close(self) -> str:
        if self._out is None:
            return ""
        self.write(_ZERO * 2)  # end-of-archive marker
        self.flush()
        return super().close()

    def abort(self) -> None:
        self._parts.clear()
        self._pending = 0
        super().abort()

    def header(self, name: str, mode: int, st: os.stat_result, kind: bytes, size: int = 0, linkname: str = "") -> None:
        self.write(_header(name, mode, st, kind, size, linkname))

    def pad(self, size: int) -> None:
        if size % 512:
            self.write(_ZERO[: 512 - size % 512])


def _header(name: str, mode: int, st: os.stat_result, kind: bytes, size: int = 0, linkname: str = "") -> bytes:
    """A member header carrying the exact mtime (nanoseconds) in a pax record: built by
    :func:`~.tarheaders.ustar_header` where ustar holds the member, else by tarfile's pax path."""
    sec, ns = divmod(st.st_mtime_ns, 10**9)
    if kind == DIR:
        name += "/"  # as tarfile writes directories
    if 10**9 <= sec < 10**10 and name.isascii() and linkname.isascii():
        ustar = ustar_header(name.encode(), mode, st.st_uid, st.st_gid, size, sec, kind, linkname.encode())
        if ustar is not None:
            record = b"30 mtime=%d.%09d\n" % (sec, ns)
            return b"".join((PAX_MTIME_BLOCK, record, _ZERO[len(record) :], ustar))
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, linkname
    info.uid, info.gid, info.mtime = st.st_uid, st.st_gid, sec
    info.pax_headers = {_PAX_MTIME: f"{sec}.{ns:09d}"}
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _fingerprint(source: str, rel: str, st: os.stat_result) -> str:
    """A file's identity for an engine's files cache: any change of size, mtime, inode, ctime or mode (a
    rewrite, a replacement by rename, a touch that keeps the mtime) makes it another item."""
    return "\0".join(map(str, (source, rel, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_mode)))


def _file_line(rel: str, st: os.stat_result, digest: str, volume: str, offset: int) -> str:
    """A file's files.jsonl line."""
    return (f'{{"path": {_json_str(rel)}, "mode": {st.st_mode & 0o7777}, "mtime_ns": {st.st_mtime_ns}, '
            f'"type": "file", "size": {st.st_size}, "blake3": "{digest}", "volume": "{volume}", '
            f'"offset": {offset}}}\n')


class DirectorySource(Source):
    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        settings.check_known({"path", "volume_size", "exclude", "keep_setuid"})
        self.path = settings.get_path("path")
        self.volume_size = settings.get_size("volume_size", 128 << 20)
        self.exclude = settings.get_list("exclude", [])

    def describe(self) -> str:
        return str(self.path)

    def check(self) -> None:
        if not self.path.is_dir():
            raise SourceError(f"source {self.name!r}: {self.path} is not a directory")
        if not os.access(self.path, os.R_OK | os.X_OK):
            raise SourceError(f"source {self.name!r}: {self.path} is not readable")

    # ------------------------------------------------------------------ backup

    def backup(self, sink: ArtifactSink) -> None:
        self.check()
        try:
            root_fd = os.open(self.path, _DIR_FLAGS & ~os.O_NOFOLLOW)  # a root that is a symlink is followed
        except OSError as exc:
            raise SourceError(f"source {self.name!r}: cannot read {self.path}: {exc.strerror}") from None
        try:
            checkpoints = Checkpoints.start(sink, _VOLUME)
            resumed = checkpoints.resume(_Walk.resumable) if checkpoints is not None else None
            walk = _Walk(self, sink, checkpoints, resumed)
            try:
                walk.directory(root_fd, "")
                walk.finish()
            except BaseException:
                walk.abort()
                raise
        finally:
            os.close(root_fd)
        if walk.skipped:
            log.warning("source %s: skipped %d special files (sockets, fifos, devices)", self.name, len(walk.skipped))
        if walk.changed:
            log.warning("source %s: %d files changed while being read: %s", self.name, len(walk.changed),
                        walk.changed[:5])
        root = os.stat(self.path)
        sink.set_info(
            index=INDEX,
            root_mode=stat.S_IMODE(root.st_mode),
            root_mtime_ns=root.st_mtime_ns,
            volumes=sorted(walk.kept + walk.packed.names + walk.stored.names),
            files=walk.files,
            directories=walk.dirs,
            symlinks=walk.links,
            bytes=walk.total,
            skipped=walk.skipped[:100],
            changed_during_backup=walk.changed[:100],
        )

    def _pack_file(
        self,
        dir_fd: int,
        name: str,
        rel: str,
        st: os.stat_result,
        packed: _TarVolumes,
        stored: _TarVolumes,
        changed: list[str],
        ask: bool = False,
    ) -> str:
        """Header, data and padding of one file of 64 KiB or more into a volume; its files.jsonl line.

        With ``ask``, the engine's files cache is asked first (:meth:`Volumes.recall`): a file it recalls
        goes to the volume remembered with it, and when the engine then appends it itself (``reuse``) the
        file is never opened. Else opened relative to its directory with O_NOFOLLOW (a file replaced by a
        symlink since the walk is not followed)."""
        size = st.st_size
        padded = size + (-size % 512)
        fingerprint = _fingerprint(self.name, rel, st)
        placed: tuple[_TarVolumes, str, int, bool] | None = None
        recalled = packed.recall(fingerprint, padded, {"path": rel, "size": size, "mtime_ns": st.st_mtime_ns}) \
            if ask else None
        if recalled is not None:
            flag = recalled.get("stored")
            if not isinstance(flag, bool):  # an engine that keeps no flag (sync), or a cache entry from before
                flag = stored_by_name(rel) is True
            target = stored if flag else packed
            target.header(rel, st.st_mode & 0o7777, st, REG, size)
            volume, offset = target.name, target.offset
            target.cut()
            extra = target.reuse(fingerprint, padded)
            if extra is not None and isinstance(extra.get("blake3"), str):
                target.roll()
                return _file_line(rel, st, str(extra["blake3"]), volume, offset)
            placed = (target, volume, offset, flag)  # stale since recall: read into the volume chosen
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            raise SourceError(f"source {self.name!r}: cannot read {self.path / rel}: {exc.strerror}") from None
        try:
            volume, offset, digest = self._pack_large(fd, rel, st, packed, stored, changed, fingerprint, placed)
        finally:
            os.close(fd)
        return _file_line(rel, st, digest, volume, offset)

    def _pack_large(
        self,
        fd: int,
        rel: str,
        st: os.stat_result,
        packed: _TarVolumes,
        stored: _TarVolumes,
        changed: list[str],
        fingerprint: str,
        placed: tuple[_TarVolumes, str, int, bool] | None = None,
    ) -> tuple[str, int, str]:
        """A file of 64 KiB or more: sampled for compressibility, offered to the engine's files cache,
        read a CHUNK at a time. Returns its volume, offset and BLAKE3. ``placed``: its header is written
        already (target volume, volume name, offset, whether stored as-is) and the engine did not reuse it."""
        size = st.st_size
        # A fresh bytes object per read, handed on as it is: reading into one reused buffer cost a copy of
        # every byte in _TarVolumes.write, made holding the GIL (the kernel's copy in read() is not).
        block = os.read(fd, min(size, CHUNK))
        padded = size + (-size % 512)
        if placed is not None:
            target, volume, offset, flag = placed
        else:
            # sampled with zstd (0.5 s for 9143 files of random data) only where the engine compresses
            flag = incompressible(rel, block) if packed.compresses else stored_by_name(rel) is True
            target = stored if flag else packed
            target.header(rel, st.st_mode & 0o7777, st, REG, size)
            volume, offset = target.name, target.offset
            target.cut()  # the file's bytes start a chunk: an unchanged file dedups wherever it moves
            # An engine with a files cache appends an unchanged file's bytes itself: not read again.
            extra = target.reuse(fingerprint, padded)
            if extra is not None and isinstance(extra.get("blake3"), str):
                target.roll()
                return volume, offset, extra["blake3"]
        # 4x less CPU than sha256 (6 vs 1.4 GB/s here), which older backups recorded. An engine that hashes
        # each file itself (sync) hands its digest over at the end: the bytes are hashed once.
        digest = None if target.hashes_files else blake3()
        left = size
        while block:
            if digest is not None:
                digest.update(block)
            target.write(block)
            left -= len(block)
            if not left:
                break
            block = os.read(fd, min(left, CHUNK))
        if left or os.read(fd, 1):
            changed.append(rel)
            fingerprint = ""  # never offered for reuse
            if left:  # the file shrank: keep the tar stream consistent
                target.write(bytes(left))
        target.pad(size)
        target.cut()
        if digest is not None:
            hexdigest = digest.hexdigest()
        elif (engines := target.file_digest(rel)) is not None:
            hexdigest = engines
        else:  # a broken promise of the engine's: never record a digest nobody computed
            raise SourceError(f"source {self.name!r}: the engine did not hash {self.path / rel}")
        if fingerprint:
            # "stored": the volume it went to, so that a later backup recalling it need not sample it again
            target.remember(fingerprint, padded, {"blake3": hexdigest, "stored": flag})
        target.roll()
        return volume, offset, hexdigest

    def _pack_recalled(self, dir_fd: int, name: str, rel: str, st: os.stat_result, packed: _TarVolumes,
                       changed: list[str], fingerprint: str, recalled: Mapping[str, Any]) -> str:
        """A small file the engine recalls (``sync``): its header, then the engine appends its bytes itself
        (``reuse``) and the file is never opened; read after all if the engine no longer can. Its line."""
        size = st.st_size
        padded = size + (-size % 512)
        perm = st.st_mode & 0o7777
        packed.header(rel, perm, st, REG, size)
        volume, offset = packed.name, packed.offset
        extra: Mapping[str, Any] | None = recalled  # an empty file: nothing to append
        if size:
            packed.cut()  # the header reaches the engine: reuse() applies to the member it opened
            extra = packed.reuse(fingerprint, padded)
        if extra is not None and isinstance(extra.get("blake3"), str):
            digest = str(extra["blake3"])
        else:
            try:
                fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
                try:
                    data = os.read(fd, size + 1)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise SourceError(f"source {self.name!r}: cannot read {self.path / rel}: {exc.strerror}") from None
            if len(data) != size:
                changed.append(rel)
                data = data[:size]
                data += bytes(size - len(data))  # zeros for what a shrunk file lacks: the stream stays whole
            digest = blake3(data).hexdigest()
            packed.write(data)
            packed.pad(size)
        packed.roll()
        return _file_line(rel, st, digest, volume, offset)

    # ------------------------------------------------------------------ restore

    def restore(self, artifacts: ArtifactSet) -> None:
        target = self.path
        if target.is_symlink():
            # Restore into the directory the link points at, so the target stays a symlink.
            target = Path(os.path.realpath(target))
        if target.exists() and not target.is_dir():
            raise SourceError(f"source {self.name!r}: {target} exists and is not a directory")
        parent = target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            _recover(parent, target.name)
            tag = secrets.token_hex(4)
            staging = parent / f".{target.name}{_STAGING}{tag}"
            os.mkdir(staging, 0o700)
        except OSError as exc:
            raise SourceError(f"source {self.name!r}: cannot restore into {target}: {os_reason(exc)}") from None
        try:
            self._extract_all(artifacts, staging)
            _swap(staging, target, tag)
        except OSError as exc:
            # A full disk, a read-only filesystem, a permission: one line, the target as it was.
            raise SourceError(f"source {self.name!r}: cannot restore into {target}: {os_reason(exc)}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def restore_leftovers(self, remove: bool) -> list[str]:
        """Staging and old copies that an interrupted restore left beside the target."""
        target = Path(os.path.realpath(self.path)) if self.path.is_symlink() else self.path
        found = _leftovers(target.parent, target.name)
        if remove:
            for path in found:
                shutil.rmtree(path, ignore_errors=True)
        return [str(p) for p in found]

    def _extract_all(self, artifacts: ArtifactSet, staging: Path) -> None:
        """Every volume into ``staging``, checked against the index, made durable; raises before any swap."""
        info = artifacts.info
        volumes = info.get("volumes") or [n for n in artifacts.names() if n.startswith("vol-")]
        root_mode = info.get("root_mode", 0o755)
        if not (isinstance(volumes, list) and all(isinstance(v, str) for v in volumes)):
            raise CorruptBackupError(f"{self.name}: the recorded volume list is not a list of names")
        if not (isinstance(root_mode, int) and 0 <= root_mode <= 0o7777):
            raise CorruptBackupError(f"{self.name}: bad recorded root mode {root_mode!r}")
        keep_setid = self.settings.get_bool("keep_setuid", False)
        root_fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        tree = _Tree(root_fd, self.name, keep_setid)
        try:
            for volume in volumes:
                with artifacts.open(volume) as stream:
                    tree.extract(stream, volume)
            if info.get("index"):
                self._check_index(artifacts, str(info["index"]), tree)
            tree.finish_directories()
            os.fchmod(root_fd, _safe_mode(root_mode, keep_setid))
            mtime = info.get("root_mtime_ns")
            if isinstance(mtime, int):
                os.utime(root_fd, ns=(mtime, mtime))
            # Durable before it becomes the target: one syncfs, not one fsync per file.
            sync_filesystem(root_fd)
        finally:
            tree.close()

    def _check_index(self, artifacts: ArtifactSet, index: str, tree: _Tree) -> None:
        """``files.jsonl`` must list exactly what the volumes held (read to EOF: its digest is checked)."""
        listed = _Tally()
        with artifacts.open(index) as f:
            n = 0
            while lines := f.readlines(CHUNK):
                for entry in _entries(lines):
                    n += 1
                    try:
                        if isinstance(entry, Exception):
                            raise entry
                        listed.add(entry["type"], entry["path"], entry.get("size", 0), entry.get("target", ""))
                    except (ValueError, KeyError, TypeError, AttributeError) as exc:
                        raise CorruptBackupError(f"{self.name}/{index}: line {n} is not an index entry ({exc})") from None
        if listed != tree.tally:
            raise CorruptBackupError(
                f"{self.name}/{index}: lists {listed.count} entries that differ from the {tree.tally.count} in the volumes"
            )


_IFMT = 0o170000


class _Walk:
    """One backup's walk of the tree: both volume streams, ``files.jsonl``, and the counts.

    :meth:`directory` handles a directory's entries in one loop, small files inline (one open, one read of
    one byte more than the size, which also tells whether the file grew, one close; the whole member built
    by :class:`~.tarheaders.FileMembers`; one BLAKE3 call): a function call, generator step or tuple less
    per file shows in the time of a tree of small files. Where the engine has a files cache it is asked
    first (:meth:`Volumes.recall`, before any open): a file it recalls is not read (small ones only where
    each is stored alone, ``sync``; a chunking engine groups small files into shared chunks)."""

    def __init__(self, source: DirectorySource, sink: ArtifactSink, checkpoints: Checkpoints | None,
                 resumed: Resumed | None) -> None:
        self.source = source
        names = numbering("vol-{:06d}.tar", resumed.next_volume if resumed else 1)
        self.packed = _TarVolumes(sink, "zstd", source.volume_size, names)
        self.stored = _TarVolumes(sink, "none", source.volume_size, names)
        # Plain where people may read it as a file (worm); a chunking engine stores it encrypted anyway.
        self.index = sink.open(INDEX, compression="zstd" if self.packed.chunked else "none")
        # A checkpoint after every volume (see data_manager.checkpoints): the index lines since the last one,
        # and the number of volumes closed then.
        self.checkpoints = checkpoints
        self.since: list[bytes] = []
        self.seen = 0
        self.kept: list[str] = []  # volumes a stopped run wrote before its last checkpoint
        self.after: list[str] | None = None  # resuming: the last path that checkpoint holds, as its parts
        self.packed.probe = self.stored.probe = self.index  # what recall() asks before any volume is open
        # Whether to ask the engine before opening a file: it has a files cache (recall); small files only
        # where one is stored alone (sync), not grouped into shared chunks (dedup: a group is read whole).
        self.ask = callable(getattr(self.index, "recall", None))
        self.ask_small = self.ask and not self.packed.chunked
        self.lines: list[str] = []  # files.jsonl, written some thousand lines at a time
        self.members = FileMembers()
        self.files = self.dirs = self.links = self.total = 0
        self.skipped: list[str] = []
        self.changed: list[str] = []
        if resumed is not None:
            state = resumed.state
            self.kept = list(resumed.volumes)
            self.after = state["after"].split("/")
            self.files, self.dirs, self.links, self.total = state["files"], state["dirs"], state["links"], state["bytes"]
            self.skipped, self.changed = list(state["skipped"]), list(state["changed"])
            self.index.write(resumed.index)

    @staticmethod
    def resumable(state: Mapping[str, Any]) -> bool:
        """Whether a checkpoint's state is one :meth:`checkpoint` writes (the storage's word: checked)."""
        return (isinstance(state.get("after"), str) and bool(state["after"])
                and all(type(state.get(k)) is int and state[k] >= 0 for k in ("files", "dirs", "links", "bytes"))
                and all(isinstance(state.get(k), list) and all(isinstance(x, str) for x in state[k])
                        for k in ("skipped", "changed")))

    def checkpoint(self, after: str, files: int, total: int) -> None:
        """Every volume closed, then a checkpoint: a stopped run resumes after ``after`` (the last entry
        written; ``files`` and ``total`` count the current directory's files not yet added to the totals)."""
        assert self.checkpoints is not None
        self.packed.close()
        self.stored.close()
        self.write_lines()
        known = set(self.checkpoints.volumes)
        new = [v for v in self.packed.names + self.stored.names if v not in known]
        state = {"after": after, "files": self.files + files, "dirs": self.dirs, "links": self.links,
                 "bytes": self.total + total, "skipped": self.skipped, "changed": self.changed}
        self.checkpoints.save(state, new, b"".join(self.since))
        self.since.clear()
        self.seen = self.packed.closed + self.stored.closed

    def write_lines(self) -> None:
        """The index lines gathered so far, to the index (and the next checkpoint)."""
        text = "".join(self.lines).encode()
        self.lines.clear()
        self.index.write(text)
        if self.checkpoints is not None:
            self.since.append(text)

    def skip_walked(self, dir_fd: int, rel: str, entries: list[os.DirEntry[str]]) -> list[os.DirEntry[str]]:
        """Resuming: leave out the entries the last checkpoint holds (the walk's order is the order of their
        paths' parts), after walking the rest of the directory it stopped in; the entries still to walk."""
        after = self.after
        assert after is not None
        prefix = f"{rel}/" if rel else ""
        rest = []
        inside = None  # the entry of the directory the checkpoint stopped in, at this level
        for e in entries:
            parts = (prefix + e.name).split("/")
            if parts > after:
                rest.append(e)
            elif parts == after[: len(parts)] and e.is_dir(follow_symlinks=False):
                inside = e
        if inside is None:
            self.after = None  # passed it: from here on every entry is new
        else:
            path = prefix + inside.name
            try:
                fd = os.open(inside.name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                raise self._unreadable(path, exc) from None
            try:
                self.directory(fd, path)
            finally:
                os.close(fd)
        return rest

    def _unreadable(self, rel: str, exc: OSError) -> SourceError:
        return SourceError(f"source {self.source.name!r}: cannot read {self.source.path / rel}: {exc.strerror}")

    def directory(self, dir_fd: int, rel: str) -> None:
        """Every entry below the directory ``dir_fd`` (``rel`` below the root), parents before children, in
        a stable order. Directories and files are opened relative to their parent with O_NOFOLLOW, so the
        walk never leaves the tree, whatever is renamed or replaced by a symlink meanwhile."""
        try:
            with os.scandir(dir_fd) as it:
                entries = sorted(it, key=_entry_name)
        except OSError as exc:
            raise self._unreadable(rel, exc) from None
        if self.after is not None:
            entries = self.skip_walked(dir_fd, rel, entries)
        source, packed, stored, lines, changed, ask, ask_small = (
            self.source, self.packed, self.stored, self.lines, self.changed, self.ask, self.ask_small)
        checkpoints = self.checkpoints is not None
        exclude, build, append = source.exclude, self.members.build, lines.append
        os_open, os_read, os_close = os.open, os.read, os.close
        prefix = f"{rel}/" if rel else ""
        files = total = 0
        for e in entries:
            name = e.name
            path = prefix + name
            if exclude and any(Path(path).match(p) for p in exclude):
                continue
            st = e.stat(follow_symlinks=False)
            mode = st.st_mode
            kind = mode & _IFMT
            if kind == stat.S_IFREG:
                size = st.st_size
                files += 1
                total += size
                if size >= _SMALL:
                    append(source._pack_file(dir_fd, name, path, st, packed, self.stored, changed, ask))
                elif ask_small and (recalled := packed.recall(
                        fingerprint := _fingerprint(source.name, path, st), size + (-size % 512),
                        {"path": path, "size": size, "mtime_ns": st.st_mtime_ns})) is not None:
                    append(source._pack_recalled(dir_fd, name, path, st, packed, changed, fingerprint, recalled))
                else:
                    try:
                        fd = os_open(name, _READ_FLAGS, dir_fd=dir_fd)
                    except OSError as exc:
                        raise self._unreadable(path, exc) from None
                    try:
                        data = os_read(fd, size + 1)
                    except OSError as exc:  # e.g. replaced by a directory since the walk
                        raise self._unreadable(path, exc) from None
                    finally:
                        os_close(fd)
                    if len(data) == size:
                        digest = blake3(data).hexdigest()
                    else:
                        changed.append(path)
                        data = data[:size]
                        digest = blake3(data).hexdigest()
                        data += bytes(size - len(data))  # zeros for what a shrunk file lacks: the stream stays whole
                    perm = mode & 0o7777
                    mtime_ns = st.st_mtime_ns
                    member = build(path, perm, st.st_uid, st.st_gid, mtime_ns, data)
                    if member is None:
                        member = b"".join((_header(path, perm, st, REG, size), data, _ZERO[: -size % 512]))
                        at = len(member) - size - (-size % 512)
                    else:
                        at = MEMBER_DATA_AT
                    offset = packed.member(member, at)
                    if packed.chunked and digest[-2:] < "18":
                        # groups of ~11 small files for a chunking engine, ended after a file whose digest ends
                        # in 00-17 (hex, 3 in 32): one edited file changes its group's chunk, not the ~1,000
                        # files' around it. Groups of 16 stored 1.1% more than restic after 1% of 200,000 files
                        # changed; groups of 8 cost 20% more CPU (bench_dedup, docs/engines.md).
                        packed.cut()
                    append(f'{{"path": {_json_str(path)}, "mode": {perm}, "mtime_ns": {mtime_ns}, "type": "file", '
                           f'"size": {size}, "blake3": "{digest}", "volume": "{packed.name}", "offset": {offset}}}\n')
            elif kind == stat.S_IFDIR:
                perm = mode & 0o7777
                packed.header(path, perm, st, DIR)
                append(f'{{"path": {_json_str(path)}, "mode": {perm}, "mtime_ns": {st.st_mtime_ns}, '
                       f'"type": "dir", "volume": "{packed.name}"}}\n')
                self.dirs += 1
                self.files += files  # the totals a checkpoint below records
                self.total += total
                files = total = 0
                try:
                    fd = os_open(name, _DIR_FLAGS, dir_fd=dir_fd)
                except OSError as exc:
                    raise self._unreadable(path, exc) from None
                try:
                    self.directory(fd, path)
                finally:
                    os_close(fd)
            elif kind == stat.S_IFLNK:
                perm = mode & 0o7777
                target = os.readlink(name, dir_fd=dir_fd)
                packed.header(path, perm, st, SYM, linkname=target)
                append(f'{{"path": {_json_str(path)}, "mode": {perm}, "mtime_ns": {st.st_mtime_ns}, '
                       f'"type": "symlink", "target": {_json_str(target)}, "volume": "{packed.name}"}}\n')
                self.links += 1
            else:
                self.skipped.append(path)  # sockets, fifos, devices: not data
                continue
            if checkpoints and kind != stat.S_IFDIR and packed.closed + stored.closed != self.seen:
                self.checkpoint(path, files, total)  # not after a directory: a stopped run would walk it again
            elif len(lines) >= 4096:
                self.write_lines()
        self.files += files
        self.total += total

    def finish(self) -> None:
        self.write_lines()
        self.packed.close()
        self.stored.close()
        self.index.close()
        if self.checkpoints is not None:
            self.checkpoints.finish()

    def abort(self) -> None:
        self.packed.abort()
        self.stored.abort()
        self.index.abort()


_STAGING = ".dm-restore-"
_OLD = ".dm-old-"
_SETID = stat.S_ISUID | stat.S_ISGID


def _safe_mode(mode: int, keep_setid: bool) -> int:
    mode &= 0o7777
    return mode if keep_setid else mode & ~_SETID


def _leftovers(parent: Path, name: str) -> list[Path]:
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    prefixes = (f".{name}{_STAGING}", f".{name}{_OLD}")
    return sorted(Path(e.path) for e in entries if e.name.startswith(prefixes))


def _recover(parent: Path, name: str) -> None:
    """Undo what an interrupted restore left: a target moved aside but not replaced is put back (the swap
    without an atomic exchange has that window); staging copies are removed."""
    target = parent / name
    for path in _leftovers(parent, name):
        if path.name.startswith(f".{name}{_OLD}") and not os.path.lexists(target):
            log.warning("putting back %s, moved aside by an interrupted restore", target)
            os.rename(path, target)
        else:
            log.info("removing %s, left by an interrupted restore", path)
            shutil.rmtree(path, ignore_errors=True)


def _swap(staging: Path, target: Path, tag: str) -> None:
    """Make ``staging`` the target: one atomic exchange where the kernel has it, else two renames."""
    parent = target.parent
    if not os.path.lexists(target):
        os.rename(staging, target)
    elif exchange(staging, target):
        pass  # ``staging`` now holds the old tree; the caller removes it
    else:
        old = parent / f".{target.name}{_OLD}{tag}"
        os.rename(target, old)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(parent)


def _entries(lines: list[bytes]) -> list[Any]:
    """The JSON values of ``lines``, parsed in one call as one array (json.loads per line costs more than
    the line); where that fails, or the count differs (a line like ``1, 2``), line by line, an exception
    standing for each line that is not JSON."""
    try:
        values = json.loads(b"[" + b",".join(lines) + b"]")
        if isinstance(values, list) and len(values) == len(lines):
            return values
    except ValueError:
        pass
    out: list[Any] = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError as exc:
            out.append(exc)
    return out


class _Tally:
    """An order-independent digest of a set of entries (a sum of BLAKE3 hashes), in constant memory: the
    volumes' members and the index's lines arrive in different orders."""

    def __init__(self) -> None:
        self.count = 0
        self._sum = 0

    def add(self, kind: str, path: str, size: int, target: str) -> None:
        key = f"{kind}\0{path}\0{size}\0{target}".encode("utf-8", "surrogatepass")
        self._sum += int.from_bytes(blake3(key).digest(), "big")  # reduced mod 2**256 when compared
        self.count += 1

    def __eq__(self, other: object) -> bool:
        mask = (1 << 256) - 1
        return isinstance(other, _Tally) and (self.count, self._sum & mask) == (other.count, other._sum & mask)

    __hash__ = None  # type: ignore[assignment]


_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_OPEN_DIRS = 128


class _Tree:
    """Extracts tar members below a directory fd, across all volumes of a restore.

    Every path component is opened relative to its parent's fd with ``O_NOFOLLOW``, and every file,
    directory and symlink is created with ``O_EXCL`` semantics: nothing is ever written through a symlink
    (whichever volume made it), and a name that comes twice is a corrupt backup, whatever the storage holds.
    """

    def __init__(self, root_fd: int, source: str, keep_setid: bool) -> None:
        self._source = source
        self._keep_setid = keep_setid
        self._chown = os.geteuid() == 0
        self._dirs: dict[str, int] = {"": root_fd}
        self._root_fd = root_fd
        self._dir_meta: list[tuple[str, int, int]] = []
        self.tally = _Tally()
        self._label = source
        self._umask = _umask()
        # Files take the owner and group of the process (no chown needed for those) unless the staging
        # directory's group or setgid bit says otherwise.
        root = os.fstat(root_fd)
        euid, egid = os.geteuid(), os.getegid()
        self._owner = (euid, egid) if root.st_gid == egid and not root.st_mode & stat.S_ISGID else None

    def _corrupt(self, text: str) -> CorruptBackupError:
        return CorruptBackupError(f"{self._label}: {text}")

    def _dir_fd(self, rel: str) -> int:
        """An fd of the directory ``rel`` below the root, created (0700) if missing, never through a link."""
        fd = self._dirs.get(rel)
        if fd is not None:
            return fd
        parent, _, leaf = rel.rpartition("/")
        pfd = self._dir_fd(parent)
        try:
            try:
                fd = os.open(leaf, _DIR_FLAGS, dir_fd=pfd)
            except FileNotFoundError:
                os.mkdir(leaf, 0o700, dir_fd=pfd)  # a file can come in a volume before its directory's entry
                fd = os.open(leaf, _DIR_FLAGS, dir_fd=pfd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
                raise self._corrupt(f"{rel!r} is a symlink or a file, and a member leads through it") from None
            raise
        if len(self._dirs) >= _MAX_OPEN_DIRS:
            self._close_dirs()
        self._dirs[rel] = fd
        return fd

    def _close_dirs(self) -> None:
        for rel, fd in self._dirs.items():
            if rel:
                os.close(fd)
        self._dirs = {"": self._root_fd}

    def close(self) -> None:
        self._close_dirs()
        os.close(self._root_fd)

    def extract(self, stream: BinaryIO, volume: str) -> None:
        self._label = f"{self._source}/{volume}"
        reader = TarReader(stream)
        try:
            for member in reader:
                self._member(reader, member)
        except TarFormatError as exc:
            raise self._corrupt(f"not a valid tar volume ({exc})") from None
        # Read to the end, so the artifact's checksum is checked before anything is swapped in.
        while stream.read(CHUNK):
            pass

    def _member(self, reader: TarReader, member: Member) -> None:
        name = member.name.decode("utf-8", "surrogateescape")
        parts = name.split("/")
        if name.startswith("/") or "\0" in name or "" in parts or "." in parts or ".." in parts:
            raise self._corrupt(f"unsafe path {name!r}")
        parent, _, leaf = name.rpartition("/")
        pfd = self._dir_fd(parent)
        mtime = member.pax_mtime
        try:
            mtime_ns = _parse_ns(mtime.decode("ascii")) if mtime else member.mtime * 10**9
        except ValueError:
            raise self._corrupt(f"bad mtime {mtime.decode('ascii', 'replace')!r} for {name!r}") from None
        mode = member.mode & 0o7777
        if not self._keep_setid:
            mode &= ~_SETID
        kind = member.kind
        try:
            if kind == REG or kind == AREG:
                self.tally.add("file", name, member.size, "")
                self._file(reader, member, name, pfd, leaf, mode, mtime_ns)
            elif kind == DIR:
                self.tally.add("dir", name, 0, "")
                try:
                    os.mkdir(leaf, 0o700, dir_fd=pfd)
                except FileExistsError:
                    if not stat.S_ISDIR(os.stat(leaf, dir_fd=pfd, follow_symlinks=False).st_mode):
                        raise self._corrupt(f"{name!r} is both a directory and something else") from None
                self._dir_meta.append((name, mode, mtime_ns))
            elif kind == SYM:
                link = member.linkname.decode("utf-8", "surrogateescape")
                self.tally.add("symlink", name, 0, link)
                os.symlink(link, leaf, dir_fd=pfd)
                os.utime(leaf, ns=(mtime_ns, mtime_ns), dir_fd=pfd, follow_symlinks=False)
                if self._chown:
                    os.chown(leaf, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
            else:
                raise self._corrupt(f"unexpected member type for {name!r}")
        except FileExistsError:
            raise self._corrupt(f"{name!r} appears twice") from None
        except ValueError as exc:  # e.g. an embedded NUL the OS refuses
            raise self._corrupt(f"unusable member {name!r} ({exc})") from None

    def _file(self, reader: TarReader, member: Member, name: str, pfd: int, leaf: str, mode: int,
              mtime_ns: int) -> None:
        """One file: created (O_EXCL, O_NOFOLLOW) with its final mode where the umask lets it, written, its
        owner and mtime set on the open fd. A staging directory is 0700: no one else sees a file early."""
        chown = self._chown and (member.uid, member.gid) != self._owner
        # The mode at creation is the final one when the umask keeps it and no chown follows (which would
        # clear setuid bits); else the file starts 0600 and fchmod sets it.
        direct = not chown and not mode & 0o7000 and not mode & self._umask
        fd = os.open(leaf, _FILE_FLAGS, mode if direct else 0o600, dir_fd=pfd)
        try:
            size, written = member.size, 0
            while written < size:
                data = reader.data(min(size - written, CHUNK))
                if not data:
                    break
                write_all(fd, data)  # every byte or an error (a filling disk); a step the fault tests count
                written += len(data)
            if written != size:
                raise self._corrupt(f"{name!r}: {written} bytes in the volume, {size} in its header")
            if chown:
                os.fchown(fd, member.uid, member.gid)
            if not direct:
                os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)

    def finish_directories(self) -> None:
        """Modes and mtimes of directories last, deepest first: writing into them changed their mtimes, and a
        read-only directory must still be writable while its children are made."""
        for rel, mode, mtime_ns in sorted(self._dir_meta, key=lambda d: -d[0].count("/")):
            fd = self._dir_fd(rel)
            os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread); 0o777 if unknown,
    which makes every restored file get its mode by fchmod."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777


def _parse_ns(text: str) -> int:
    """Nanoseconds of a pax time, ``SECONDS[.FRACTION]``."""
    if len(text) == 20 and text[10] == "." and text[:10].isdigit() and text[11:].isdigit():
        return int(text[:10]) * 10**9 + int(text[11:])  # SSSSSSSSSS.NNNNNNNNN, as the backup writes it
    sec, _, frac = text.partition(".")
    return int(sec) * 10**9 + int((frac + "000000000")[:9])


@hookimpl
def register_source_types(register: Callable[[SourceType], None]) -> None:
    register(SourceType("directory", DirectorySource, "a directory tree: files, empty directories, symlinks, modes, mtimes",
                        target_keys=("path",), resumes=True))
