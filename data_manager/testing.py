"""Checks a storage plugin's tests can call to show it honours the :class:`~data_manager.types.Storage` contract.

    from data_manager.testing import check_storage_contract

    def test_contract(my_storage):
        check_storage_contract(my_storage)

Every storage (the built-in filesystem one included) runs the same checks, so the repository engines can
rely on them: streamed writes appear only on commit, aborts leave nothing, ranges, listing, deletion.
"""

from __future__ import annotations

import hashlib
import os

from .errors import NotFoundError
from .types import FileAttributes, Storage


def _read_all(storage: Storage, key: str, offset: int = 0, length: int | None = None) -> bytes:
    with storage.open_read(key, offset, length) as f:
        chunks = []
        while data := f.read(1 << 16):
            chunks.append(data)
    return b"".join(chunks)


def check_storage_contract(storage: Storage, prefix: str = "contract-test", big: int = 3 * (1 << 20) + 17) -> None:
    """Exercise ``storage`` under ``prefix`` (which must be empty) and clean up. Raises AssertionError."""
    assert storage.location(), "location() must say where backups go"
    storage.check()
    assert list(storage.list(prefix)) == [], f"{prefix!r} must be empty for the contract test"

    # A streamed, multi-chunk write is invisible until commit, then whole.
    payload = os.urandom(big)
    w = storage.open_write(f"{prefix}/a/big.bin")
    for i in range(0, len(payload), 1 << 20):
        w.write(payload[i : i + (1 << 20)])
    assert not storage.exists(f"{prefix}/a/big.bin"), "an object must not be visible before commit"
    assert [e.name for e in storage.list(f"{prefix}/a")] == [], "an unfinished write must not be listed"
    w.commit()
    assert storage.exists(f"{prefix}/a/big.bin")
    assert hashlib.sha256(_read_all(storage, f"{prefix}/a/big.bin")).digest() == hashlib.sha256(payload).digest()

    # Ranges.
    assert _read_all(storage, f"{prefix}/a/big.bin", 5, 10) == payload[5:15]
    assert _read_all(storage, f"{prefix}/a/big.bin", big - 3) == payload[-3:]

    # Empty objects, and names with spaces and unicode.
    with storage.open_write(f"{prefix}/a/empty") as w:
        pass
    assert _read_all(storage, f"{prefix}/a/empty") == b""
    odd = f"{prefix}/b c/ünïcødé name.txt"
    with storage.open_write(odd) as w:
        w.write(b"odd")
    assert _read_all(storage, odd) == b"odd"

    # An aborted write leaves nothing, also via the context manager on error.
    w = storage.open_write(f"{prefix}/a/aborted")
    w.write(b"x" * 1000)
    w.abort()
    w.abort()  # idempotent
    try:
        with storage.open_write(f"{prefix}/a/failed") as w:
            w.write(b"y" * 1000)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert not storage.exists(f"{prefix}/a/aborted") and not storage.exists(f"{prefix}/a/failed")

    # Replacing an object on commit.
    with storage.open_write(f"{prefix}/a/empty") as w:
        w.write(b"now full")
    assert _read_all(storage, f"{prefix}/a/empty") == b"now full"

    # Listing: immediate children only, directories marked, sizes of objects.
    top = {e.name: e for e in storage.list(prefix)}
    assert set(top) == {"a", "b c"} and all(e.is_dir for e in top.values()), top
    inner = {e.name: e for e in storage.list(f"{prefix}/a")}
    assert set(inner) == {"big.bin", "empty"}, inner
    assert inner["big.bin"].size == big and not inner["big.bin"].is_dir
    assert sorted(k for k, _ in storage.walk(prefix)) == sorted(
        [f"{prefix}/a/big.bin", f"{prefix}/a/empty", odd]
    )
    assert list(storage.list(f"{prefix}/missing")) == []

    # A deferred write (a mirror's object) with the file's attributes: whole once committed, durable once
    # persisted; attributes a storage cannot keep are ignored, never an error.
    with storage.open_write_deferred(f"{prefix}/m/file.txt", FileAttributes(1_600_000_000_123_456_789, 0o640)) as w:
        w.write(b"mirrored")
    storage.persist()
    assert _read_all(storage, f"{prefix}/m/file.txt") == b"mirrored"

    # Missing objects.
    try:
        storage.open_read(f"{prefix}/missing").read()
    except NotFoundError:
        pass
    else:
        raise AssertionError("reading a missing key must raise NotFoundError")

    # Deletion.
    storage.delete(f"{prefix}/a/empty")
    storage.delete(f"{prefix}/a/empty")  # missing is fine
    assert not storage.exists(f"{prefix}/a/empty")
    storage.delete_tree(prefix)
    assert list(storage.walk(prefix)) == []
