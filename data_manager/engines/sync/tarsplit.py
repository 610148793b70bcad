"""A tar stream taken apart as it is written (push parsing), and put back together from its parts.

The directory source writes its volumes as pax tar streams. The ``sync`` engine splits each into

* the **files' contents**, each going to its own mirror object (or, unchanged, to nowhere), and
* the **skeleton**: everything else (headers, pax records, padding, the end-of-archive blocks), stored as
  a small zstd stream of records, with a record for each file's content in its place:

  ``"L" u32 n`` + n literal bytes | ``"F" u32 n`` + n bytes of JSON ``{"path", "size", "blake3"}`` | ``"E"``.

Reading the skeleton back and putting each file's mirror object (checked against its ``blake3``) in place
of its ``F`` record gives the volume again, byte for byte. The volume's digest is the BLAKE3 of, in order,
``"L" || u64 n || the literal bytes`` per L record and ``"F" || u64 size || the 32-byte BLAKE3`` per file
(recorded as ``blake3-chunks``: the bytes of unchanged files never pass through the writer).

Names are parsed as the directory source writes them: POSIX pax (``path``, ``linkpath``, ``size``,
``mtime`` records), ustar, and GNU long names, decoded as UTF-8 with ``surrogateescape``.
"""

from __future__ import annotations

import struct
import tarfile
from dataclasses import dataclass
from typing import Any

from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]

from blake3 import blake3

from ...builtin.tarheaders import PAX_MTIME_BLOCK
from ...errors import DataManagerError

BLOCK = 512
ZERO = bytes(BLOCK)
LITERAL_MAX = 1 << 20  # an L record holds at most this much (the reader refuses more than 4x)
FILE_RECORD_MAX = 64 << 10

_HEADER, _META, _DATA, _SKIP, _END = range(5)
_json_str = encode_basestring_ascii  # json.dumps(ensure_ascii=True) of a str, in C


@dataclass
class Member:
    """One tar member as the splitter saw its header."""

    name: str
    kind: str  # file | dir | symlink | other
    size: int
    mode: int
    mtime_ns: int


def parse_pax(data: bytes) -> dict[str, str]:
    """``"%d key=value\\n"`` records -> {key: value} (values decoded UTF-8, surrogateescape)."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            raise DataManagerError("not a tar stream: a bad pax record") from None
        if length <= 0 or pos + length > len(data):
            raise DataManagerError("not a tar stream: a bad pax record length")
        record = data[space + 1 : pos + length - 1]
        key, eq, value = record.partition(b"=")
        if not eq:
            raise DataManagerError("not a tar stream: a pax record without '='")
        out[key.decode("ascii", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


@dataclass
class _Header:
    name: str
    type: bytes
    size: int
    mode: int
    mtime: int


def _octal(field: bytes) -> int | None:
    digits = field.split(b"\0", 1)[0].strip()
    if not digits:
        return 0
    try:
        return int(digits, 8)
    except ValueError:
        return None


def _ustar(block: bytes) -> _Header | None:
    """A POSIX ustar header with octal numbers, parsed as tarfile would (3x faster than its ``frombuf``,
    which was a third of an unchanged backup's CPU); None for anything else (tarfile then decides)."""
    if block[257:265] != b"ustar\x0000":
        return None
    fields = [_octal(block[a:b]) for a, b in ((100, 108), (124, 136), (136, 148), (148, 156))]
    mode, size, mtime, chksum = fields
    if None in fields or chksum != sum(block[:148]) + 256 + sum(block[156:]):
        return None
    name = block[:100].split(b"\0", 1)[0]
    prefix = block[345:500].split(b"\0", 1)[0]
    if prefix:
        name = prefix + b"/" + name
    kind = block[156:157]
    text = name.decode("utf-8", "surrogateescape")
    if kind == tarfile.AREGTYPE and text.endswith("/"):
        kind = tarfile.DIRTYPE
    if kind == tarfile.DIRTYPE:
        text = text.rstrip("/")
    return _Header(text, kind, size, mode, mtime)  # type: ignore[arg-type]


def parse_mtime_ns(text: str) -> int:
    sec, _, frac = text.partition(".")
    return int(sec) * 10**9 + int((frac + "000000000")[:9])


class TarSplitter:
    """Feed it a tar stream with :meth:`feed`; it calls, in stream order:

    * ``literal(bytes)`` for every byte that is not a file's content;
    * ``file_start(member)`` at a regular file's header (before its content);
    * ``file_data(view)`` with its content;
    * ``file_end()`` once its content is complete (its padding follows as literal bytes).

    :meth:`skip_file` (right after ``file_start``): the file's content and padding will not be fed (the
    engine takes them from elsewhere); the padding is given to ``literal`` as zeros.
    """

    def __init__(self, handler: Any) -> None:
        self._h = handler
        self._state = _HEADER
        self._hdr = bytearray()
        self._left = 0
        self._meta = bytearray()
        self._meta_kind = ""
        self._pad = 0
        self._pax: dict[str, str] = {}
        self._longname: str | None = None
        self._longlink: str | None = None
        self.member: Member | None = None  # the file whose content is being fed
        self.data_started = False

    @property
    def ended(self) -> bool:
        return self._state == _END

    @property
    def between_members(self) -> bool:
        return self._state in (_HEADER, _END) and not self._hdr

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            state = self._state
            if state == _HEADER:
                if (not self._hdr and len(view) >= 3 * BLOCK and view[:BLOCK] == PAX_MTIME_BLOCK
                        and view[BLOCK : BLOCK + 9] == b"30 mtime=" and view[BLOCK + 29] == 0x0A):
                    # The directory source's usual member start, whole in this block: its pax mtime header,
                    # record and ustar header taken in one step (one literal, no state changes between).
                    self._h.literal(bytes(view[: 3 * BLOCK]))
                    self._pax = {"mtime": str(view[BLOCK + 9 : BLOCK + 29], "ascii")}
                    block = bytes(view[2 * BLOCK : 3 * BLOCK])
                    view = view[3 * BLOCK :]
                    self._header(block)
                    continue
                take = min(BLOCK - len(self._hdr), len(view))
                self._hdr += view[:take]
                view = view[take:]
                if len(self._hdr) == BLOCK:
                    block = bytes(self._hdr)
                    self._hdr.clear()
                    self._h.literal(block)
                    self._header(block)
            elif state == _META:
                take = min(self._left, len(view))
                self._meta += view[:take]
                self._h.literal(bytes(view[:take]))
                view = view[take:]
                self._left -= take
                if not self._left:
                    self._end_meta()
            elif state == _DATA:
                take = min(self._left, len(view))
                self.data_started = True
                self._h.file_data(view[:take])
                view = view[take:]
                self._left -= take
                if not self._left:
                    self._file_done()
            elif state == _SKIP:
                take = min(self._left, len(view))
                self._h.literal(bytes(view[:take]))
                view = view[take:]
                self._left -= take
                if not self._left:
                    self._state = _HEADER
            else:  # after the end-of-archive block: whatever follows is kept as it is
                self._h.literal(bytes(view))
                view = view[len(view):]

    def skip_file(self) -> None:
        """See the class docstring. Only right after ``file_start``, before any content."""
        assert self._state == _DATA and not self.data_started
        self._h.file_end()
        self.member = None
        if self._pad:
            self._h.literal(bytes(self._pad))
        self._pad = 0
        self._state = _HEADER

    def _header(self, block: bytes) -> None:
        if block == ZERO:
            self._state = _END
            return
        if block == PAX_MTIME_BLOCK:  # the directory source's pax header of one 30-byte mtime record: known
            self._meta_kind = "x"
            self._meta.clear()
            self._left = BLOCK
            self._meta_size = 30
            self._state = _META
            return
        info: Any = _ustar(block)
        if info is None:  # not plain POSIX ustar with octal fields: tarfile's general (slower) parser
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.TarError as exc:
                raise DataManagerError(f"not a tar stream ({exc}): the sync engine mirrors directory sources "
                                       f"only") from None
        size = info.size
        padded = size + (-size % BLOCK)
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            if size > 1 << 20:
                raise DataManagerError("tar stream: an extended header larger than 1 MiB")
            self._meta_kind = info.type.decode()
            self._meta.clear()
            self._left = padded
            self._meta_size = size
            self._state = _META if padded else _HEADER
            if not padded:
                self._end_meta()
            return
        pax, self._pax = self._pax, {}
        longname, self._longname = self._longname, None
        self._longlink = None
        name = pax.get("path") or longname or info.name
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise DataManagerError(f"tar stream: bad pax size for {name!r}") from None
            padded = size + (-size % BLOCK)
        try:
            mtime_ns = parse_mtime_ns(pax["mtime"]) if "mtime" in pax else int(info.mtime) * 10**9
        except ValueError:
            raise DataManagerError(f"tar stream: bad mtime for {name!r}") from None
        if info.type in tarfile.REGULAR_TYPES:
            kind = "file"
        elif info.type == tarfile.DIRTYPE:
            kind = "dir"
            name = name.rstrip("/")
        elif info.type == tarfile.SYMTYPE:
            kind = "symlink"
        else:
            kind = "other"
        member = Member(name, kind, size, info.mode, mtime_ns)
        if kind == "file":
            self.member = member
            self.data_started = False
            self._pad = padded - size
            self._left = size
            self._state = _DATA
            self._h.file_start(member)
            if not size:
                self._file_done()
        else:
            self._h.other_member(member)
            self._left = padded
            self._state = _SKIP if padded else _HEADER

    def _end_meta(self) -> None:
        data = bytes(self._meta[: self._meta_size])
        kind = self._meta_kind
        self._state = _HEADER
        if kind == "x":
            if len(data) == 30 and data.startswith(b"30 mtime=") and data[29] == 0x0A:  # the usual one record
                self._pax = {"mtime": data[9:29].decode("ascii")}
            else:
                self._pax = parse_pax(data)
        elif kind == "L":
            self._longname = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif kind == "K":
            self._longlink = data.rstrip(b"\0").decode("utf-8", "surrogateescape")

    def _file_done(self) -> None:
        self._h.file_end()
        self.member = None
        self._left = self._pad
        self._pad = 0
        self._state = _SKIP if self._left else _HEADER


class Skeleton:
    """Writes skeleton records (see the module docstring) into a zstd stream, and the volume's digest."""

    def __init__(self, write: Any) -> None:
        import zstandard

        self._write = write
        self._z = zstandard.ZstdCompressor(level=3).compressobj()
        self._lit = bytearray()
        self._raw = bytearray()  # records not compressed yet: handed to zstd about LITERAL_MAX at a time
        self.tree = blake3()  # read it after finish()
        self._hashing = bytearray()
        self.size = 0  # bytes of the volume described so far

    def _out(self, data: bytes) -> None:
        # One compress() call per record was 18,000 calls per 9,000 files: batching them costs one buffer.
        self._raw += data
        if len(self._raw) >= LITERAL_MAX:
            self._compress()

    def _compress(self) -> None:
        if self._raw:
            out = self._z.compress(bytes(self._raw))
            self._raw.clear()
            if out:
                self._write(out)

    def literal(self, data: bytes) -> None:
        self._lit += data
        self.size += len(data)
        if len(self._lit) >= LITERAL_MAX:
            self.flush()

    def _digest(self, data: bytes | bytearray) -> None:
        # The digest input is a concatenation: gathered and hashed about LITERAL_MAX at a time (the same
        # digest as one update per piece, a few calls per file fewer).
        self._hashing += data
        if len(self._hashing) >= LITERAL_MAX:
            self.tree.update(self._hashing)
            self._hashing.clear()

    def flush(self) -> None:
        lit = self._lit
        if lit:
            n = len(lit)
            self._out(b"L%b%b" % (struct.pack("<I", n), lit))
            self._digest(b"L%b%b" % (struct.pack("<Q", n), lit))
            lit.clear()

    def file(self, path: str, size: int, digest: str) -> None:
        self.flush()
        # What json.dumps(ensure_ascii=True) writes, without its per-call overhead (a record per file).
        doc = f'{{"path": {_json_str(path)}, "size": {size}, "blake3": "{digest}"}}'.encode()
        self._out(b"F%b%b" % (struct.pack("<I", len(doc)), doc))
        self._digest(b"F%b%b" % (struct.pack("<Q", size), bytes.fromhex(digest)))
        self.size += size

    def finish(self) -> None:
        self.flush()
        self.tree.update(self._hashing)
        self._hashing.clear()
        self._out(b"E")
        self._compress()
        out = self._z.flush()
        if out:
            self._write(out)
