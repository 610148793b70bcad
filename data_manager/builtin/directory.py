"""Built-in source ``directory``: a directory tree as size-bounded tar volumes, plus a file index.

Backup walks the tree once and writes each file into one of two volume streams: a zstd-compressed one, or
a stored-as-is one for content that does not compress (decided per file from a 64 KiB sample), so images
and archives cost no CPU. A volume closes once it passes ``volume_size``; a file is never split, so a
file larger than that has a volume of its own. ``files.jsonl`` lists every entry with its volume, the
offset of its data in the volume, size and sha256, so a single file can later be fetched alone.

Volumes are POSIX pax tar: ``zstd -dc vol-000001.tar.zst | tar -x`` extracts one by hand.

Restore extracts every volume into a hidden directory beside the target, checks every volume's sha256,
then swaps it in for the target: a failed restore leaves the target as it was.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import CorruptBackupError, SourceError
from ..hookspecs import hookimpl
from ..types import ArtifactSet, ArtifactSink, Settings, Source, SourceType
from ..volumes import Volumes, incompressible, numbering

log = logging.getLogger(__name__)

CHUNK = 1 << 20
INDEX = "files.jsonl"
_SMALL = 64 << 10  # below this a file joins the compressed stream without a test
_ZERO = bytes(512)
_PAX_MTIME = "mtime"


def _pax_mtime_block() -> bytes:
    """The pax header block announcing a 30-byte ``mtime=SSSSSSSSSS.NNNNNNNNN`` record: the same for every
    member whose mtime has 10 digits of seconds, so it is built once (tarfile's generic path costs ~30 µs
    a member, which dominates the backup of many small files)."""
    info = tarfile.TarInfo("x")
    info.pax_headers = {_PAX_MTIME: "1000000000.000000000"}
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")[:512]


_PAX_MTIME_BLOCK = _pax_mtime_block()


def _parse_size(settings: Settings, key: str, default: int) -> int:
    value = settings.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
        text = value.strip().lower().removesuffix("ib").removesuffix("b")
        if text and text[-1] in units and text[:-1].isdigit():
            return int(text[:-1]) * units[text[-1]]
        if text.isdigit():
            return int(text)
    raise settings.error(key, f"must be a size like 128MiB or a number of bytes, not {value!r}")


class _TarVolumes(Volumes):
    """Volumes that are pax tar archives."""

    trailer = _ZERO * 2  # end-of-archive marker

    def header(self, info: tarfile.TarInfo, mtime_ns: int) -> None:
        """A member header carrying the exact mtime (nanoseconds) in a pax record."""
        sec, ns = divmod(mtime_ns, 10**9)
        if 10**9 <= sec < 10**10 and info.name.isascii() and info.linkname.isascii():
            try:
                ustar = info.tobuf(tarfile.USTAR_FORMAT, "ascii", "strict")
            except ValueError:  # name too long for ustar: the general path below
                pass
            else:
                record = f"30 mtime={sec}.{ns:09d}\n".encode()
                self.write(_PAX_MTIME_BLOCK + record + _ZERO[len(record) :] + ustar)
                return
        info.pax_headers = {_PAX_MTIME: f"{sec}.{ns:09d}"}
        self.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def pad(self, size: int) -> None:
        if size % 512:
            self.write(_ZERO[: 512 - size % 512])


class DirectorySource(Source):
    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        settings.check_known({"path", "volume_size", "exclude"})
        self.path = settings.get_path("path")
        self.volume_size = _parse_size(settings, "volume_size", 128 << 20)
        self.exclude = settings.get_list("exclude", [])

    def describe(self) -> str:
        return str(self.path)

    def check(self) -> None:
        if not self.path.is_dir():
            raise SourceError(f"source {self.name!r}: {self.path} is not a directory")
        if not os.access(self.path, os.R_OK | os.X_OK):
            raise SourceError(f"source {self.name!r}: {self.path} is not readable")

    # ------------------------------------------------------------------ backup

    def _walk(self, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
        """Every entry below the root, parents before children, in a stable order."""
        base = self.path / rel if rel else self.path
        try:
            entries = sorted(os.scandir(base), key=lambda e: e.name)
        except OSError as exc:
            raise SourceError(f"source {self.name!r}: cannot read {base}: {exc.strerror}") from None
        for e in entries:
            name = f"{rel}/{e.name}" if rel else e.name
            if any(Path(name).match(p) for p in self.exclude):
                continue
            st = e.stat(follow_symlinks=False)
            yield name, st
            if stat.S_ISDIR(st.st_mode):
                yield from self._walk(name)

    def backup(self, sink: ArtifactSink) -> None:
        self.check()
        names = numbering("vol-{:06d}.tar")
        packed = _TarVolumes(sink, "zstd", self.volume_size, names)
        stored = _TarVolumes(sink, "none", self.volume_size, names)
        buf = bytearray(CHUNK)
        files = dirs = links = total = 0
        skipped: list[str] = []
        changed: list[str] = []
        index = sink.open(INDEX, compression="none")
        try:
            for rel, st in self._walk():
                mode = st.st_mode
                info = tarfile.TarInfo(rel)
                info.mode = stat.S_IMODE(mode)
                info.uid, info.gid = st.st_uid, st.st_gid
                info.mtime = st.st_mtime_ns // 10**9
                entry: dict[str, Any] = {"path": rel, "mode": info.mode, "mtime_ns": st.st_mtime_ns}
                if stat.S_ISDIR(mode):
                    info.type = tarfile.DIRTYPE
                    packed.header(info, st.st_mtime_ns)
                    entry.update(type="dir", volume=packed.name)
                    dirs += 1
                elif stat.S_ISLNK(mode):
                    info.type = tarfile.SYMTYPE
                    info.linkname = os.readlink(self.path / rel)
                    packed.header(info, st.st_mtime_ns)
                    entry.update(type="symlink", target=info.linkname, volume=packed.name)
                    links += 1
                elif stat.S_ISREG(mode):
                    entry.update(self._pack_file(rel, info, st, packed, stored, buf, changed))
                    files += 1
                    total += st.st_size
                else:
                    skipped.append(rel)  # sockets, fifos, devices: not data
                    continue
                index.write((json.dumps(entry, ensure_ascii=True) + "\n").encode())
            packed.close()
            stored.close()
            index.close()
        except BaseException:
            packed.abort()
            stored.abort()
            index.abort()
            raise
        if skipped:
            log.warning("source %s: skipped %d special files (sockets, fifos, devices)", self.name, len(skipped))
        if changed:
            log.warning("source %s: %d files changed while being read: %s", self.name, len(changed), changed[:5])
        root = os.stat(self.path)
        sink.set_info(
            index=INDEX,
            root_mode=stat.S_IMODE(root.st_mode),
            root_mtime_ns=root.st_mtime_ns,
            volumes=sorted(packed.names + stored.names),
            files=files,
            directories=dirs,
            symlinks=links,
            bytes=total,
            skipped=skipped[:100],
            changed_during_backup=changed[:100],
        )

    def _pack_file(
        self,
        rel: str,
        info: tarfile.TarInfo,
        st: os.stat_result,
        packed: _TarVolumes,
        stored: _TarVolumes,
        buf: bytearray,
        changed: list[str],
    ) -> dict[str, Any]:
        import hashlib

        path = self.path / rel
        size = st.st_size
        try:
            f = open(path, "rb", buffering=0)
        except OSError as exc:
            raise SourceError(f"source {self.name!r}: cannot read {path}: {exc.strerror}") from None
        with f:
            view = memoryview(buf)
            n = f.readinto(view[: min(size, CHUNK)]) if size else 0
            first = view[:n]
            target = packed
            if size >= _SMALL and incompressible(rel, first):
                target = stored
            info.size = size
            info.type = tarfile.REGTYPE
            target.header(info, st.st_mtime_ns)
            volume, offset = target.name, target.offset
            digest = hashlib.sha256()
            left = size
            while n and left:
                chunk = first if n <= left else first[:left]
                digest.update(chunk)
                target.write(chunk)
                left -= len(chunk)
                if not left:
                    break
                n = f.readinto(view[: min(left, CHUNK)])
                first = view[:n]
            if left or f.read(1):
                changed.append(rel)
                if left:  # the file shrank: keep the tar stream consistent
                    target.write(bytes(left))
        target.pad(size)
        target.roll()
        return {"type": "file", "size": size, "sha256": digest.hexdigest(), "volume": volume, "offset": offset}

    # ------------------------------------------------------------------ restore

    def restore(self, artifacts: ArtifactSet) -> None:
        target = self.path
        if target.exists() and not target.is_dir():
            raise SourceError(f"source {self.name!r}: {target} exists and is not a directory")
        parent = target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SourceError(f"source {self.name!r}: cannot create {parent}: {exc.strerror}") from None
        tag = secrets.token_hex(4)
        staging = parent / f".{target.name}.dm-restore-{tag}"
        staging.mkdir()
        try:
            dir_meta: list[tuple[Path, int, int]] = []
            volumes = artifacts.info.get("volumes") or [n for n in artifacts.names() if n.startswith("vol-")]
            for volume in volumes:
                with artifacts.open(volume) as stream:
                    self._extract(stream, staging, dir_meta, volume)
            # Directories last, deepest first: writing into them changed their mtimes.
            for path, mode, mtime_ns in sorted(dir_meta, key=lambda d: -len(d[0].parts)):
                os.chmod(path, mode)
                os.utime(path, ns=(mtime_ns, mtime_ns))
            os.chmod(staging, artifacts.info.get("root_mode", 0o755))
            if "root_mtime_ns" in artifacts.info:
                os.utime(staging, ns=(artifacts.info["root_mtime_ns"], artifacts.info["root_mtime_ns"]))
            self._swap(staging, target, tag)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _swap(self, staging: Path, target: Path, tag: str) -> None:
        if not target.exists():
            os.rename(staging, target)
            return
        old = target.parent / f".{target.name}.dm-old-{tag}"
        os.rename(target, old)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)

    def _extract(self, stream: BinaryIO, root: Path, dir_meta: list[tuple[Path, int, int]], volume: str) -> None:
        chown = os.geteuid() == 0
        made: set[str] = {""}  # directories known to exist, relative to root
        links: set[str] = set()  # symlinks created: nothing may be extracted through one
        try:
            tar = tarfile.open(fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape")
        except tarfile.TarError as exc:
            raise CorruptBackupError(f"{self.name}/{volume}: not a tar volume ({exc})") from None
        with tar:
            for member in tar:
                name = member.name
                parts = name.split("/")
                if name.startswith("/") or ".." in parts or "" in parts:
                    raise CorruptBackupError(f"{self.name}/{volume}: unsafe path {name!r}")
                parent = name.rpartition("/")[0]
                if parent not in made:
                    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts))]
                    if links.intersection(prefixes):
                        raise CorruptBackupError(f"{self.name}/{volume}: {name!r} leads through a symlink")
                    # A file can come in a volume before the one holding its directory's entry.
                    os.makedirs(root / parent, exist_ok=True)
                    made.update(prefixes)
                path = root / name
                mtime = member.pax_headers.get(_PAX_MTIME)
                mtime_ns = _parse_ns(mtime) if mtime else int(member.mtime) * 10**9
                if member.isdir():
                    if name in links:
                        raise CorruptBackupError(f"{self.name}/{volume}: {name!r} is a symlink and a directory")
                    if name not in made:
                        path.mkdir(exist_ok=True)
                        made.add(name)
                    dir_meta.append((path, member.mode, mtime_ns))
                elif member.issym():
                    os.symlink(member.linkname, path)
                    links.add(name)
                    os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
                    if chown:
                        os.lchown(path, member.uid, member.gid)
                elif member.isfile():
                    src = tar.extractfile(member)
                    assert src is not None
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                    try:
                        with open(fd, "wb", buffering=0, closefd=False) as out:
                            while data := src.read(CHUNK):
                                out.write(data)
                        if chown:
                            os.fchown(fd, member.uid, member.gid)
                        os.fchmod(fd, member.mode)
                        os.utime(fd, ns=(mtime_ns, mtime_ns))
                    finally:
                        os.close(fd)
                else:
                    raise CorruptBackupError(f"{self.name}/{volume}: unexpected member type for {name!r}")
            # Read to the end, so the artifact's checksum is checked before anything is swapped in.
            while stream.read(CHUNK):
                pass


def _parse_ns(text: str) -> int:
    sec, _, frac = text.partition(".")
    return int(sec) * 10**9 + int((frac + "000000000")[:9])


@hookimpl
def register_source_types(register: Callable[[SourceType], None]) -> None:
    register(SourceType("directory", DirectorySource, "a directory tree: files, empty directories, symlinks, modes, mtimes"))
