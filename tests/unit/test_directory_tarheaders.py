"""The directory source's own tar header code (data_manager.builtin.tarheaders) against tarfile: the headers
it writes are tarfile's bytes, and it reads what tarfile (and GNU tar) write as tarfile reads it."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from data_manager.builtin.tarheaders import AREG, DIR, REG, SYM, TarFormatError, TarReader, ustar_header

KINDS = {tarfile.REGTYPE: REG, tarfile.DIRTYPE: DIR, tarfile.SYMTYPE: SYM}


def random_fields(rng: random.Random) -> tuple[str, int, int, int, int, int, bytes, str]:
    kind = rng.choice([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE])
    alphabet = "abcxyz0129._- /"
    name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 99))).strip("/") or "n"
    if kind == tarfile.DIRTYPE:
        name += "/"
    link = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 100))) if kind == tarfile.SYMTYPE else ""
    size = rng.choice([0, 1, 511, 512, 513, rng.randint(0, 0o77777777777)]) if kind == tarfile.REGTYPE else 0
    return (name, rng.randint(0, 0o7777), rng.choice([0, 1000, 0o7777777]), rng.randint(0, 0o7777777), size,
            rng.choice([0, 1_700_000_000, 0o77777777777]), kind, link)


@pytest.mark.parametrize("seed", range(20))
def test_ustar_header_is_tarfiles_bytes(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        name, mode, uid, gid, size, mtime, kind, link = random_fields(rng)
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uid, info.gid, info.size, info.mtime, info.linkname = (
            kind, mode, uid, gid, size, mtime, link)
        expected = info.tobuf(tarfile.USTAR_FORMAT, "ascii", "strict")
        assert ustar_header(name.encode(), mode, uid, gid, size, mtime, kind, link.encode()) == expected


@pytest.mark.parametrize("fields", [
    dict(name=b"x" * 101), dict(linkname=b"y" * 101), dict(uid=0o7777777 + 1), dict(gid=-1),
    dict(size=0o77777777777 + 1), dict(mtime=-1), dict(mtime=0o77777777777 + 1),
])
def test_ustar_header_declines_what_ustar_cannot_hold(fields: dict) -> None:
    args = dict(name=b"n", mode=0o644, uid=0, gid=0, size=0, mtime=0, kind=REG, linkname=b"") | fields
    assert ustar_header(**args) is None


def pax_archive(fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """Members of every shape the directory source (or a crafted volume) can hold."""
    buf = io.BytesIO()
    rng = random.Random(7)
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        names = ["a", "dir/sub/" + "long" * 40, "é/ü/ñ.txt", "raw-\udcff\udcfe.bin", "x" * 99, "p/" + "q" * 120]
        for i, name in enumerate(names):
            for size in (0, 1, 511, 512, 513, 70_000):
                info = tarfile.TarInfo(f"{name}.{size}")
                info.size, info.mode = size, 0o4755 if i % 2 else 0o640
                info.uid, info.gid = (3_000_000, 5) if i == 2 and fmt != tarfile.USTAR_FORMAT else (1000, 1000)
                info.mtime = 1_700_000_000.123456789 if fmt == tarfile.PAX_FORMAT else 1_700_000_000
                tar.addfile(info, io.BytesIO(rng.randbytes(size)))
        for name in ("d", "d/e" * 50):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for link in ("t", "../" * 60 + "far"):
            info = tarfile.TarInfo(f"link-{len(link)}")
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
    return buf.getvalue()


def as_tarfile_reads(data: bytes) -> list[tuple]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
        for m in tar:
            body = tar.extractfile(m).read() if m.isfile() else b""  # type: ignore[union-attr]
            out.append((m.type, m.name, m.linkname, m.mode, m.uid, m.gid, m.size, m.pax_headers.get("mtime"),
                        int(m.mtime), body))
    return out


def as_reader_reads(data: bytes, read_size: int) -> list[tuple]:
    out = []
    reader = TarReader(io.BytesIO(data), read_size)
    for m in reader:
        body = reader.data(m.size) if m.kind in (REG, AREG) else b""
        out.append((m.kind, m.name.decode("utf-8", "surrogateescape"), m.linkname.decode("utf-8", "surrogateescape"),
                    m.mode, m.uid, m.gid, m.size, m.pax_mtime.decode() or None, m.mtime, body))
    return out


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT],
                         ids=["pax", "gnu", "ustar"])
@pytest.mark.parametrize("read_size", [1, 700, 1 << 20])
def test_the_reader_reads_what_tarfile_reads(fmt: int, read_size: int) -> None:
    if fmt == tarfile.GNU_FORMAT:
        # GNU long names come as ././@LongLink members: refused by the restore, named as such here.
        data = tarfile.TarInfo("short").tobuf(tarfile.GNU_FORMAT) + bytes(1024)
        [member] = TarReader(io.BytesIO(data), read_size)
        assert (member.kind, member.name) == (REG, b"short")
        long = tarfile.TarInfo("l" * 200).tobuf(tarfile.GNU_FORMAT) + bytes(1024)
        assert [m.kind for m in TarReader(io.BytesIO(long), read_size)][0] == b"L"
        return
    if fmt == tarfile.USTAR_FORMAT:  # no pax: names split into prefix and name, no fractions, no long links
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            for name in ("a/" * 60 + "b", "c", "d" * 100):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = 3, 1_600_000_000
                tar.addfile(info, io.BytesIO(b"abc"))
        data = buf.getvalue()
    else:
        data = pax_archive(fmt)
    expected = [(KINDS[t], *rest) for t, *rest in as_tarfile_reads(data)]
    assert as_reader_reads(data, read_size) == expected


def test_base256_numbers_as_gnu_tar_writes_them() -> None:
    info = tarfile.TarInfo("big-ids")
    info.uid, info.gid, info.size = 0o7777777 + 5, 2**40, 3
    data = info.tobuf(tarfile.GNU_FORMAT) + b"abc".ljust(512, b"\0") + bytes(1024)
    reader = TarReader(io.BytesIO(data))
    [member] = list(reader)
    assert (member.uid, member.gid, member.size) == (0o7777777 + 5, 2**40, 3)


@pytest.mark.parametrize("field, value", [
    (b"0000644\0", 0o644),  # octal, NUL-terminated
    (b" 755 \0", 0o755),  # space-padded
    (b"\0\0\0\0\0\0\0\0", 0),  # empty: 0
    (b"\x80\x01" + bytes(10), 1 << 80),  # base-256, the first byte after the marker counts
    (b"\x80" + (2**40).to_bytes(11, "big"), 2**40),
    (b"\xff" * 12, -1),  # base-256 negative (GNU tar's mtime before 1970): two's complement over the field
    (b"\xff" * 11 + b"\xfe", -2),
    (b"\xff" + bytes(11), -(1 << 88)),
])
def test_numbers_in_every_encoding_tar_uses(field: bytes, value: int) -> None:
    from data_manager.builtin.tarheaders import _number

    assert _number(field) == value


def test_pax_records_split_at_the_first_equals_sign() -> None:
    from data_manager.builtin.tarheaders import _pax_records

    assert _pax_records(b"12 path=a=b\n14 uid=123456\n") == {b"path": b"a=b", b"uid": b"123456"}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("data", [
    b"0" * 21 + b"33 path=abc\n",  # a length field longer than any real one: its space not within 20 bytes
    b"0 path=a\n",  # a zero length (would never advance)
    b"-3 path=a\n",
    b"9 path=abcdefgh\n",  # the length does not end at the newline
    b"11 pathabc\n",  # no '='
])
def test_bad_pax_records_are_format_errors(data: bytes) -> None:
    from data_manager.builtin.tarheaders import _pax_records

    with pytest.raises(TarFormatError) as e:
        _pax_records(data)
    assert str(e.value) == "bad pax extended header record"


def test_an_archive_cut_inside_data_that_is_skipped_says_so() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("big")
        info.size = 70_000
        tar.addfile(info, io.BytesIO(bytes(70_000)))
    data = buf.getvalue()[:512 + 1000]  # its header, then a part of its data
    with pytest.raises(TarFormatError) as e:
        for _ in TarReader(io.BytesIO(data), 512):
            pass  # the data not read: skipped
    assert str(e.value) == "the archive ends inside a member's data"


@pytest.mark.parametrize("read_size", [512, 4096, 1 << 20])
def test_member_offsets_are_where_their_data_starts(read_size: int) -> None:
    data = pax_archive()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = [ti.offset_data for ti in tar.getmembers()]
    reader = TarReader(io.BytesIO(data), read_size)
    offsets = []
    for i, m in enumerate(reader):
        offsets.append(m.offset)
        if i % 2:
            reader.data(m.size)  # read some members' data, skip the others'
    assert offsets == expected


def test_an_old_tars_signed_checksum_is_accepted_and_a_wrong_one_refused() -> None:
    """Some old tars summed the header as signed chars: bytes above 127 (here 0x7f, 0x80 and UTF-8) count
    negative. tarfile accepts either sum; so does the reader."""
    info = tarfile.TarInfo("\x7f-À-é-" + "ü" * 20)
    hdr = bytearray(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")[:512])
    hdr[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in hdr)
    assert signed != sum(hdr)
    hdr[148:156] = b"%06o\0 " % signed
    [member] = list(TarReader(io.BytesIO(bytes(hdr) + bytes(1024))))
    assert member.name.decode() == info.name
    hdr[148:156] = b"%06o\0 " % (signed + 1)
    with pytest.raises(TarFormatError, match="bad tar header checksum"):
        list(TarReader(io.BytesIO(bytes(hdr) + bytes(1024))))


def test_the_fast_pax_header_path_takes_only_the_mtime_record() -> None:
    """The directory source's own pax header block with another 30-byte record in it (a crafted volume):
    read as a pax record like any other, not as an mtime."""
    from data_manager.builtin.tarheaders import PAX_MTIME_BLOCK

    body = (b"30 path=" + b"p" * 21 + b"\n").ljust(512, b"\0")
    info = tarfile.TarInfo("short")
    data = PAX_MTIME_BLOCK + body + info.tobuf(tarfile.USTAR_FORMAT) + bytes(1024)
    [member] = list(TarReader(io.BytesIO(data)))
    assert (member.name, member.pax_mtime) == (b"p" * 21, b"")


def test_another_tars_30_byte_mtime_record_keeps_its_fraction() -> None:
    """A pax header of another writer (not the directory source's own block) holding only an mtime."""
    info = tarfile.TarInfo("f")
    info.pax_headers = {"mtime": "1700000000.123456789"}  # "30 mtime=1700000000.123456789\n": 30 bytes
    data = bytearray(info.tobuf(tarfile.PAX_FORMAT) + bytes(1024))
    data[0:100] = b"PaxHeaders.4711/f".ljust(100, b"\0")  # as GNU tar names it: not the source's own block
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\0 " % sum(data[:512])
    [member] = list(TarReader(io.BytesIO(bytes(data))))
    assert (member.name, member.pax_mtime) == (b"f", b"1700000000.123456789")


def test_an_old_tars_regular_file_named_with_a_slash_is_a_directory() -> None:
    info = tarfile.TarInfo("d/")
    info.type = tarfile.AREGTYPE  # "\0": pre-POSIX tars marked directories only by the trailing slash
    [member] = list(TarReader(io.BytesIO(info.tobuf(tarfile.USTAR_FORMAT) + bytes(1024))))
    assert (member.kind, member.name) == (DIR, b"d")


def test_a_negative_size_and_a_cut_pax_header_are_named() -> None:
    info = tarfile.TarInfo("neg")
    hdr = bytearray(info.tobuf(tarfile.GNU_FORMAT)[:512])
    hdr[124:136] = b"\xff" * 12  # base-256 -1
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    with pytest.raises(TarFormatError) as e:
        list(TarReader(io.BytesIO(bytes(hdr) + bytes(1024))))
    assert str(e.value) == "negative member size"
    pax = tarfile.TarInfo("p" * 120).tobuf(tarfile.PAX_FORMAT)  # a long name: a pax header block first
    with pytest.raises(TarFormatError) as e:
        list(TarReader(io.BytesIO(pax[:512 + 100])))
    assert str(e.value) == "the archive ends inside a pax extended header"


def test_pax_numbers_override_the_header_and_bad_ones_are_named() -> None:
    info = tarfile.TarInfo("ids")
    info.uid, info.gid = 5, 3_000_000  # past ustar's 7 octal digits: a pax record
    [member] = list(TarReader(io.BytesIO(info.tobuf(tarfile.PAX_FORMAT) + bytes(1024))))
    assert (member.uid, member.gid) == (5, 3_000_000)
    for records, message in (({"uid": "abc"}, "bad number in a pax extended header"),
                             ({"size": "-5"}, "negative member size")):
        bad = tarfile.TarInfo("bad")
        bad.pax_headers = records
        with pytest.raises(TarFormatError) as e:
            list(TarReader(io.BytesIO(bad.tobuf(tarfile.PAX_FORMAT) + bytes(1024))))
        assert str(e.value) == message


def test_a_number_that_is_not_octal_is_a_format_error() -> None:
    from data_manager.builtin.tarheaders import _number

    with pytest.raises(TarFormatError, match="bad number b'12x"):
        _number(b"12x\0")


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar")
def test_the_reader_reads_gnu_tars_pax_output(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "e" / ("f" * 150)).write_bytes(b"data" * 300)
    (src / "empty").write_bytes(b"")
    os.symlink("d/e", src / "link")
    out = tmp_path / "t.tar"
    subprocess.run(["tar", "--format=pax", "-cf", str(out), "-C", str(src), "."], check=True)
    data = out.read_bytes()
    ours = as_reader_reads(data, 4096)
    theirs = [(KINDS[t], *rest) for t, *rest in as_tarfile_reads(data)]
    assert [r[:7] + r[9:] for r in ours] == [r[:7] + r[9:] for r in theirs]  # GNU tar's pax times: atime too
    assert {r[1] for r in ours} >= {"./d/e/" + "f" * 150, "./empty", "./link"}


def damaged(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x20
    return bytes(b)


@pytest.mark.parametrize("data, message", [
    (b"", "empty archive"),
    (b"\0not a tar volume" * 100, "checksum|bad number"),
    (pax_archive()[:300], "ends inside a header"),
    (damaged(pax_archive(), 5), "checksum"),  # in the first header's name
    (pax_archive()[:1024 + 512 + 100], "ends inside"),
])
def test_damage_is_an_error_not_an_end(data: bytes, message: str) -> None:
    with pytest.raises(TarFormatError, match=message):
        reader = TarReader(io.BytesIO(data), 512)
        for m in reader:
            reader.data(m.size)


# --------------------------------------------------------------------------- through the directory source


def edge_tree(root: Path) -> Path:
    """Entries on every side of the fast header path's limits."""
    (root / ("deep/" * 30).rstrip("/")).mkdir(parents=True)
    (root / ("deep/" * 30) / "leaf.txt").write_bytes(b"at the bottom")  # a path of > 100 bytes: pax path
    (root / ("n" * 100)).write_bytes(b"100-byte name")
    (root / "old").write_bytes(b"before 2001")
    os.utime(root / "old", ns=(999_999_999_500_000_000, 999_999_999_500_000_000))  # 9-digit seconds: pax
    (root / "epoch").write_bytes(b"")
    os.utime(root / "epoch", ns=(0, 0))
    for size in (511, 512, 513, 65_535, 65_536, 65_537):
        (root / f"size-{size}").write_bytes(random.Random(size).randbytes(size))
    os.symlink("x" * 150, root / "long-link")
    os.symlink("é", root / "unicode-link")
    (root / "ünï").mkdir()
    (root / "ünï" / "çödé.txt").write_text("non-ASCII: tarfile's pax path")
    (root / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "setuid", 0o4755)
    (root / "many").mkdir()
    for i in range(300):
        (root / "many" / f"f{i:03d}").write_bytes(b"%d" % i * (i % 7))
    return root


def test_edge_entries_round_trip_and_the_volumes_are_tar(tmp_path: Path) -> None:
    from data_manager.api import DataManager
    from tests.helpers import snapshot

    src = edge_tree(tmp_path / "src")
    dm = DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "datasets": {"d": {"sources": [{"name": "raw", "type": "directory", "path": str(src),
                                        "volume_size": "64KiB"}]}},
    })
    before = snapshot(src)
    ts = dm.backup("d").timestamp
    backup = tmp_path / "backups" / "d" / ts / "raw"
    index = {e["path"]: e for e in map(json.loads, (backup / "files.jsonl").read_text().splitlines())}
    volumes = sorted(backup.glob("vol-*"))
    assert len(volumes) > 2
    seen = 0
    for vol in volumes:
        raw = vol.read_bytes()
        if vol.name.endswith(".zst"):
            raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
            for m in tar:
                entry = index[m.name]
                seen += 1
                mtime = m.pax_headers["mtime"]
                assert int(mtime.replace(".", "")) == entry["mtime_ns"], m.name
                assert m.mode == entry["mode"]
                if m.isfile():
                    assert raw[entry["offset"] : entry["offset"] + m.size] == tar.extractfile(m).read()  # type: ignore[union-attr]
                    assert m.size == entry["size"]
                elif m.issym():
                    assert m.linkname == entry["target"]
    assert seen == len(index)
    shutil.rmtree(src)
    dm.restore("d")
    after = snapshot(src)
    setuid = os.fsencode("setuid")
    assert after.pop(setuid)[1] == before.pop(setuid)[1] & ~0o4000  # setuid dropped on restore
    assert after == before


def test_a_huge_pax_header_is_refused_before_it_is_read() -> None:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, 1 << 30
    data = info.tobuf(tarfile.USTAR_FORMAT) + bytes(4096)
    with pytest.raises(TarFormatError, match="pax extended header of"):
        list(TarReader(io.BytesIO(data)))


def test_a_huge_member_size_fails_at_the_end_of_the_data_not_in_memory() -> None:
    info = tarfile.TarInfo("big")
    info.size = 1 << 40
    data = info.tobuf(tarfile.PAX_FORMAT) + b"x" * 1000
    reader = TarReader(io.BytesIO(data), 256)
    member = next(iter(reader))
    assert member.size == 1 << 40
    assert len(reader.data(1 << 20)) == 1000  # what there is, then the caller reports the shortfall


def test_a_source_path_that_is_a_symlink_is_followed(tmp_path: Path) -> None:
    """The walk opens directories with O_NOFOLLOW below the root, not the root itself."""
    from data_manager.api import DataManager
    from tests.helpers import snapshot

    real = tmp_path / "real"
    real.mkdir()
    (real / "a.txt").write_text("a")
    link = tmp_path / "link"
    link.symlink_to(real)
    dm = DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "datasets": {"d": {"sources": [{"name": "raw", "type": "directory", "path": str(link)}]}},
    })
    before = snapshot(real)
    dm.backup("d")
    (real / "a.txt").unlink()
    dm.restore("d")
    assert link.is_symlink() and snapshot(real) == before


def test_pax_records_stop_at_the_padding_and_refuse_a_record_past_the_end() -> None:
    """The records of a pax header block end at its NUL padding; a record whose length runs past the block
    is a format error, never an IndexError."""
    from data_manager.builtin.tarheaders import TarFormatError, _pax_records

    assert _pax_records(b"11 path=ab\n" + bytes(501)) == {b"path": b"ab"}
    for bad in (b"99 path=ab\n", b"12 path=ab\n", b"11 path=ab\n7 x=y\n"):
        with pytest.raises(TarFormatError, match="bad pax extended header record"):
            _pax_records(bad)
