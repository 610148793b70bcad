"""POSIX tar headers built and parsed with ``struct`` and bytes formatting, for the directory source.

tarfile spends ~30 µs a member in pure-Python header code (``_create_header``, ``calc_chksums``, ``nti``,
``_proc_pax``), which is most of the cost of backing up and restoring many small files. The volumes'
format is unchanged: :func:`ustar_header` writes the bytes tarfile's ``USTAR_FORMAT`` writes (tests compare
them), and :class:`TarReader` reads what tarfile's ``PAX_FORMAT`` writes: ustar headers, pax ``x``
extended headers, base-256 numbers. Anything else (GNU long names, global or sparse headers, hard links,
devices) is reported as a member of that type and refused by the caller, so restore stays as strict as it
was with tarfile, and stricter about damage: a bad checksum anywhere is an error, not an end of archive.
"""

from __future__ import annotations

import struct
import tarfile
import zlib
from zlib import adler32
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

BLOCK = 512
READ_SIZE = 1 << 20

REG, AREG, DIR, SYM, PAX = b"0", b"\0", b"5", b"2", b"x"
_GNU = (b"L", b"K", b"S")

_MAGIC = b"ustar\x0000"
# name mode uid gid size mtime chksum type linkname magic+version uname gname devmajor devminor prefix
_FIELDS = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
# After the magic, a header tarfile writes for a member with no uname, gname or device holds only zeros.
_TAIL = bytes(32 + 32 + 8 + 8 + 155 + 12)
_CONSTANT_SUM = 8 * 0x20 + sum(_MAGIC)  # the checksum field counted as spaces, and the magic
_ZERO_BLOCK = bytes(BLOCK)
_MAX_ID = 0o7777777
_MAX_SIZE = 0o77777777777
_ADLER_MOD = 65521
_MAX_PAX = 1 << 20  # a pax header is read whole: a crafted size must not make it hold a volume in memory


def _byte_sum(data: bytes) -> int:
    """The sum of ``data``'s bytes, exact below 65521 (252 bytes): Adler-32's first half, in C (sum() is
    ten times slower, and a tar header is checksummed twice per member)."""
    return (zlib.adler32(data) & 0xFFFF) - 1


def _pax_mtime_block() -> bytes:
    """The pax header block announcing a 30-byte ``mtime=SSSSSSSSSS.NNNNNNNNN`` record: the same for every
    member whose mtime has 10 digits of seconds, so the directory source writes it as a constant and
    :class:`TarReader` recognises it by comparison."""
    info = tarfile.TarInfo("x")
    info.pax_headers = {"mtime": "1000000000.000000000"}
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")[:BLOCK]


PAX_MTIME_BLOCK = _pax_mtime_block()


class TarFormatError(ValueError):
    """The bytes are not a tar archive the directory source reads (bad checksum, truncated, bad number)."""


def ustar_header(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, kind: bytes,
                 linkname: bytes = b"") -> bytes | None:
    """The 512-byte ustar header tarfile writes for these fields, or None where ustar cannot hold them
    (a name or link of more than 100 bytes, a number out of range): the caller then uses tarfile.

    Names are bytes already encoded (ASCII in the volumes' fast path), so the result does not depend on
    an encoding."""
    if len(name) > 100 or len(linkname) > 100 or not (0 <= uid <= _MAX_ID and 0 <= gid <= _MAX_ID
                                                     and 0 <= size <= _MAX_SIZE and 0 <= mtime <= _MAX_SIZE):
        return None
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode & 0o7777, uid, gid, size, mtime)
    # At most 100 + 48 + 100 bytes: their sum stays below Adler-32's modulus, so it is exact.
    chksum = _CONSTANT_SUM + _byte_sum(name + numbers + linkname) + kind[0]
    return b"".join((name, bytes(100 - len(name)), numbers, b"%06o\0 " % chksum, kind, linkname,
                     bytes(100 - len(linkname)), _MAGIC, _TAIL))


MEMBER_DATA_AT = 3 * BLOCK  # where a file's data starts in what FileMembers.build returns
_PAX_RECORD_PAD = bytes(BLOCK - 30)
# A regular file's header after its checksum field when it has no link name, uname, gname or device.
_REG_TAIL = REG + bytes(100) + _MAGIC + _TAIL
_REG_SUM = _CONSTANT_SUM + REG[0]


class FileMembers:
    """Whole tar members (pax mtime header, ustar header, data, padding) for small regular files: the bytes
    ``PAX_MTIME_BLOCK``, the 30-byte mtime record and :func:`ustar_header` give, built with one format and
    one join per file. The mode, uid and gid fields and their byte sum are cached: a tree has few of them.
    """

    def __init__(self) -> None:
        self._ids: dict[tuple[int, int, int], tuple[bytes, int]] = {}

    def build(self, path: str, mode: int, uid: int, gid: int, mtime_ns: int, data: bytes) -> bytes | None:
        """The member of a file of ``len(data)`` bytes, its data at :data:`MEMBER_DATA_AT`; None where this
        form cannot hold it (a path that is not ASCII or longer than 100 bytes, an mtime before 2001 or
        past ustar's 11 octal digits (2242), an id out of range): the caller then builds it field by field."""
        sec, ns = divmod(mtime_ns, 1_000_000_000)
        if len(path) > 100 or not path.isascii() or not 1_000_000_000 <= sec <= _MAX_SIZE:
            return None
        key = (mode, uid, gid)
        ids = self._ids.get(key)
        if ids is None:
            if not (0 <= uid <= _MAX_ID and 0 <= gid <= _MAX_ID):
                return None
            field = b"%07o\0%07o\0%07o\0" % (mode & 0o7777, uid, gid)
            ids = self._ids[key] = (field, _byte_sum(field))
        name = path.encode("ascii")
        size = len(data)
        numbers = b"%011o\0%011o\0" % (size, sec)
        # An ASCII name and these numbers sum to less than 65521: the Adler-32 half is exact.
        chksum = _REG_SUM - 1 + ids[1] + (adler32(name + numbers) & 0xFFFF)  # _byte_sum, inline
        return b"".join((PAX_MTIME_BLOCK, b"30 mtime=%d.%09d\n" % (sec, ns), _PAX_RECORD_PAD, name,
                         _ZERO_BLOCK[len(name) : 100], ids[0], numbers, b"%06o\0 " % chksum, _REG_TAIL, data,
                         _ZERO_BLOCK[: -size % BLOCK]))


def _checksum_ok(header: bytes, field: bytes) -> bool:
    """tarfile's test: the stored checksum is the sum of the header's bytes, the field counted as spaces,
    as unsigned or (some old tars) signed chars. The unsigned sum is tested modulo 65521 (Adler-32's
    first half, in C): damage that shifts it by exactly 65521 passes, and is still caught by the volume's
    digest, which restore always checks."""
    try:
        stored = int(field[:6], 8)  # "%06o\0 ", as tarfile writes it
    except ValueError:
        stored = _number(field)
    if 0 <= stored <= 255 * BLOCK and (stored + sum(field) - 255) % _ADLER_MOD == zlib.adler32(header) & 0xFFFF:
        return True
    signed = sum(b - 256 if b > 127 else b for b in header) - sum(b - 256 if b > 127 else b for b in field) + 256
    return stored == signed


class Member(NamedTuple):
    """One archive member as the directory source restores it. ``name`` and ``linkname`` are raw bytes:
    the caller decodes them (UTF-8, surrogateescape, as tarfile did)."""

    kind: bytes  # the typeflag: REG, AREG, DIR, SYM, or another one the caller refuses
    name: bytes
    linkname: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int  # whole seconds from the ustar header
    pax_mtime: bytes  # the pax ``mtime`` record's value ("" if none): seconds with a fraction
    offset: int  # of the member's data in the archive


def _number(field: bytes) -> int:
    """A numeric header field: octal (NUL- or space-terminated) or base-256 (first byte 0x80 or 0xff)."""
    if field and field[0] in (0x80, 0xFF):
        n = int.from_bytes(field[1:], "big")
        return n - (1 << (8 * len(field) - 8)) if field[0] == 0xFF else n
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError(f"bad number {field!r} in a tar header") from None


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """``LENGTH KEY=VALUE\\n`` records of a pax extended header."""
    records: dict[bytes, bytes] = {}
    pos, end = 0, len(data)
    while pos < end and data[pos] != 0:
        space = data.find(b" ", pos, pos + 20)
        try:
            length = int(data[pos:space]) if space > pos else 0
        except ValueError:
            length = 0
        if length <= 0 or space < 0 or pos + length > end or data[pos + length - 1] != 0x0A:
            raise TarFormatError("bad pax extended header record")
        key, eq, value = data[space + 1 : pos + length - 1].partition(b"=")
        if not eq:
            raise TarFormatError("bad pax extended header record")
        records[key] = value
        pos += length
    return records


class TarReader:
    """The members of a tar stream, read in large blocks. A member's data is read with :meth:`data` before
    the next member is asked for; what is left of it is skipped.

    A block of zeros ends the archive, as for tar and tarfile; an empty stream, a bad checksum or a
    stream that ends inside a header or a member's data raises :class:`TarFormatError`."""

    def __init__(self, stream: BinaryIO, read_size: int = READ_SIZE) -> None:
        self._stream = stream
        self._read_size = read_size
        self._buf = b""
        self._pos = 0
        self.consumed = 0  # bytes of the archive handed out so far
        self._left = 0  # bytes of the current member's data and padding not yet handed out

    def _take(self, n: int) -> bytes:
        """The next ``n`` bytes of the archive; fewer only at its end."""
        pos = self._pos
        if pos + n <= len(self._buf):
            self._pos = pos + n
            self.consumed += n
            return self._buf[pos : pos + n]
        parts = [self._buf[pos:]]
        have = len(parts[0])
        self._buf, self._pos = b"", 0
        while have < n:
            block = self._stream.read(max(self._read_size, n - have))
            if not block:
                break
            take = min(len(block), n - have)
            parts.append(block[:take] if take < len(block) else block)
            have += take
            if take < len(block):
                self._buf, self._pos = block, take
        self.consumed += have
        return b"".join(parts)

    def data(self, size: int) -> bytes:
        """The current member's next ``size`` bytes of data (fewer at the end of the stream)."""
        data = self._take(min(size, self._left))
        self._left -= len(data)
        return data

    def _skip(self) -> None:
        while self._left > 0:
            n = min(self._left, self._read_size)
            if len(self._take(n)) < n:
                raise TarFormatError("the archive ends inside a member's data")
            self._left -= n

    def __iter__(self) -> Iterator[Member]:
        pax: dict[bytes, bytes] = {}
        while True:
            if self._left:
                self._skip()
            empty = self.consumed == 0
            header = self._take(BLOCK)
            if len(header) < BLOCK:
                raise TarFormatError("empty archive" if empty and not header else "the archive ends inside a header")
            if header == PAX_MTIME_BLOCK:  # the directory source's pax header: its checksum and fields known
                body = self._take(BLOCK)
                if len(body) == BLOCK and body.startswith(b"30 mtime=") and body[29] == 0x0A:
                    pax = {b"mtime": body[9:29]}
                    continue
                if len(body) < BLOCK:
                    raise TarFormatError("the archive ends inside a pax extended header")
                pax = _pax_records(body[:30])
                continue
            if header == _ZERO_BLOCK:
                if pax:
                    raise TarFormatError("a pax extended header at the end of the archive")
                return
            (name, mode, uid, gid, size, mtime, chksum, kind, linkname, _magic, _uname, _gname, _major, _minor,
             prefix) = _FIELDS.unpack(header)
            if not _checksum_ok(header, chksum):
                raise TarFormatError("bad tar header checksum")
            try:  # the numbers as tarfile and this module write them: octal digits and a NUL
                mode_n, uid_n, gid_n = int(mode[:-1], 8), int(uid[:-1], 8), int(gid[:-1], 8)
                size_n, mtime_n = int(size[:-1], 8), int(mtime[:-1], 8)
            except ValueError:  # other tars' spaces, NULs or base-256
                mode_n, uid_n, gid_n, size_n, mtime_n = map(_number, (mode, uid, gid, size, mtime))
            if size_n < 0:
                raise TarFormatError("negative member size")
            if kind == PAX:
                if size_n > _MAX_PAX:
                    raise TarFormatError(f"a pax extended header of {size_n} bytes")
                padded = size_n + (-size_n % BLOCK)
                body = self._take(padded)
                if len(body) < padded:
                    raise TarFormatError("the archive ends inside a pax extended header")
                if size_n == 30 and body.startswith(b"30 mtime=") and body[29] == 0x0A:
                    pax = {b"mtime": body[9:29]}  # what the directory source writes for every member
                else:
                    pax = _pax_records(body[:size_n])
                continue
            name = name.split(b"\0", 1)[0]
            if kind == AREG and name.endswith(b"/"):
                kind = DIR  # old tars' way of saying directory, as tarfile reads it
            prefix = prefix.split(b"\0", 1)[0]
            if prefix and kind not in _GNU:
                name = prefix + b"/" + name
            link = linkname.split(b"\0", 1)[0]
            pax_mtime = b""
            if pax:
                name = pax.get(b"path", name)
                link = pax.get(b"linkpath", link)
                pax_mtime = pax.get(b"mtime", b"")
                try:
                    size_n = int(pax.get(b"size", size_n))
                    uid_n = int(pax.get(b"uid", uid_n))
                    gid_n = int(pax.get(b"gid", gid_n))
                except ValueError:
                    raise TarFormatError("bad number in a pax extended header") from None
                if size_n < 0:
                    raise TarFormatError("negative member size")
                pax = {}
            if kind == DIR:
                name = name.rstrip(b"/")
            if kind in (DIR, SYM):
                size_n = 0  # tarfile skips no data after these, whatever their size field says
            self._left = size_n + (-size_n % BLOCK)
            yield Member(kind, name, link, mode_n, uid_n, gid_n, size_n, mtime_n, pax_mtime,
                         self.consumed)
