"""Which items volumes store as-is (not compressed)."""

from __future__ import annotations

import os

from data_manager.volumes import incompressible


def test_incompressible_by_suffix_type_or_sample() -> None:
    assert incompressible("a.jpg", b"a" * 1000)
    assert incompressible("dir.zip/a.GZ", b"a" * 1000)
    assert incompressible("a", b"a" * 1000, "video/mp4")
    assert incompressible("a.bin", os.urandom(1 << 16))
    assert not incompressible("a.bin", b"1,2,3\n" * 10000)
    assert not incompressible(".gz", b"a" * 1000)  # a dot file has no suffix, as in pathlib


def test_text_is_compressed_without_a_sample() -> None:
    # Text formats are compressed whatever their first bytes say: no sample is compressed to decide.
    noise = os.urandom(1 << 16)
    assert not incompressible("data/table.CSV", noise)
    assert not incompressible("events", noise, "application/json")
    assert not incompressible("notes", noise, "text/plain; charset=utf-8")
