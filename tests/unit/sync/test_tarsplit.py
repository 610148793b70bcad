"""The push parser of tar streams: whatever the write sizes and tar dialect, it sees the members tarfile sees,
and the skeleton plus the files' contents give the stream back byte for byte."""

from __future__ import annotations

import io
import json
import os
import random
import struct
import tarfile
from typing import Any

import pytest
import zstandard
from blake3 import blake3

from data_manager.engines.sync.tarsplit import Skeleton, TarSplitter
from data_manager.errors import DataManagerError


def make_tar(rng: random.Random, fmt: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for i in range(40):
            kind = rng.choice(["file", "file", "file", "dir", "symlink"])
            name = rng.choice([f"f{i}", f"dir {i}/ünï {i}.txt", "x" * 150 + f"/long{i}",
                               os.fsdecode(b"bad-\xff-" + str(i).encode()), f"{'d/' * 60}deep{i}"])
            info = tarfile.TarInfo(name)
            info.mtime = rng.choice([1_700_000_000, 1_700_000_000.5])
            info.mode = 0o640
            if kind == "file":
                data = rng.randbytes(rng.choice([0, 1, 511, 512, 513, 70_000]))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.type = tarfile.DIRTYPE if kind == "dir" else tarfile.SYMTYPE
                info.linkname = "target" if kind == "symlink" else ""
                tar.addfile(info)
    return out.getvalue()


class Collect:
    def __init__(self, skeleton: Skeleton) -> None:
        self.skeleton = skeleton
        self.members: list[tuple[str, str, int]] = []
        self.contents: dict[str, bytes] = {}
        self._cur: Any = None
        self._data = bytearray()

    def literal(self, data: bytes) -> None:
        self.skeleton.literal(data)

    def other_member(self, m: Any) -> None:
        self.members.append((m.kind, m.name, m.size))

    def file_start(self, m: Any) -> None:
        self._cur, self._data = m, bytearray()

    def file_data(self, view: memoryview) -> None:
        self._data += view

    def file_end(self) -> None:
        self.members.append(("file", self._cur.name, self._cur.size))
        self.contents[self._cur.name] = bytes(self._data)
        self.skeleton.file(self._cur.name, self._cur.size, blake3(bytes(self._data)).hexdigest())


def rebuild(skeleton: bytes, contents: dict[str, bytes]) -> bytes:
    data = zstandard.ZstdDecompressor().stream_reader(skeleton, read_across_frames=True).read()
    out, pos = bytearray(), 0
    while data[pos:pos + 1] != b"E":
        kind = data[pos:pos + 1]
        (n,) = struct.unpack("<I", data[pos + 1:pos + 5])
        body = data[pos + 5:pos + 5 + n]
        pos += 5 + n
        out += body if kind == b"L" else contents[json.loads(body)["path"]]
    return bytes(out)


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
@pytest.mark.parametrize("seed", range(4))
def test_members_and_bytes_survive_any_write_sizes(fmt: int, seed: int) -> None:
    rng = random.Random(seed)
    blob = make_tar(rng, fmt)
    stored = bytearray()
    skeleton = Skeleton(stored.extend)
    got = Collect(skeleton)
    split = TarSplitter(got)
    pos = 0
    while pos < len(blob):
        n = rng.choice([1, 7, 512, 1000, 65536])
        split.feed(blob[pos:pos + n])
        pos += n
    skeleton.finish()
    assert split.ended and skeleton.size == len(blob)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
        want = [("file" if m.isfile() else "dir" if m.isdir() else "symlink", m.name, m.size if m.isfile() else 0)
                for m in tar]
    assert got.members == want
    assert rebuild(bytes(stored), got.contents) == blob


def test_not_a_tar_stream_is_one_line() -> None:
    split = TarSplitter(Collect(Skeleton(lambda b: None)))
    with pytest.raises(DataManagerError, match="not a tar stream"):
        split.feed(b"PK\x03\x04" + bytes(508))


def test_the_directory_sources_members_parse_alike_whole_or_in_pieces() -> None:
    """Its pax mtime header, record and ustar header, taken in one step when they arrive together (the fast
    path), give what the byte-by-byte states give."""
    from data_manager.builtin.tarheaders import PAX_MTIME_BLOCK, ustar_header

    rng = random.Random(5)
    blob = bytearray()
    for i in range(30):
        data = rng.randbytes(rng.choice([0, 1, 511, 512, 5000]))
        record = b"30 mtime=%d.%09d\n" % (1_700_000_000 + i, i * 7)
        blob += PAX_MTIME_BLOCK + record + bytes(512 - len(record))
        blob += ustar_header(f"d/f {i}".encode(), 0o644, 0, 0, len(data), 1_700_000_000 + i, b"0", b"")
        blob += data + bytes(-len(data) % 512)
    blob += bytes(1024)
    results = []
    for sizes in ([len(blob)], [1, 7, 512, 1000], [1536, 4096]):
        stored = bytearray()
        skeleton = Skeleton(stored.extend)
        got = Collect(skeleton)
        mtimes: list[int] = []
        start = got.file_start
        got.file_start = lambda m: (mtimes.append(m.mtime_ns), start(m))  # type: ignore[method-assign]
        split = TarSplitter(got)
        pos = 0
        while pos < len(blob):
            n = rng.choice(sizes)
            split.feed(bytes(blob[pos:pos + n]))
            pos += n
        skeleton.finish()
        assert split.ended and rebuild(bytes(stored), got.contents) == bytes(blob)
        results.append((got.members, mtimes))
    assert results[0] == results[1] == results[2]
    assert results[0][1][3] == (1_700_000_003) * 10**9 + 21
