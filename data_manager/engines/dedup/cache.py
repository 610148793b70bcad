"""The local cache of a ``dedup`` repository: the index on disk (SQLite), and decrypted snapshot pointers.

Why SQLite: a 10,000,000-chunk index is ~500 MB; restic and kopia hold theirs in memory and their users
report OOMs. A B-tree on disk with a bounded page cache answers a lookup in microseconds, far below the
cost of hashing the 1 MiB chunk it is asked about, and keeps RSS flat however big the repository grows.

The cache is only a cache: it is rebuilt from the index files when it is missing, and reset when an index
file it had read disappeared (a repair or a retention rewrote the index). Deleting it loses nothing. It
must never be trusted for more than locating blobs: every blob read is checked against its id.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ...durable import use_wal
from ...errors import CorruptBackupError
from .index import INDEX_PREFIX, PackRecord, read_index
from .packs import KINDS, BlobEntry

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen(name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS packs(n INTEGER PRIMARY KEY, id BLOB UNIQUE NOT NULL, kind INTEGER NOT NULL,
                                 size INTEGER NOT NULL, header BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blobs(id BLOB PRIMARY KEY, pack INTEGER NOT NULL, offset INTEGER NOT NULL,
                                 stored INTEGER NOT NULL, raw INTEGER NOT NULL, type INTEGER NOT NULL,
                                 comp INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pointers(name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots(id BLOB PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files(key BLOB PRIMARY KEY, size INTEGER NOT NULL, refs BLOB NOT NULL,
                                 extra TEXT NOT NULL, used REAL NOT NULL) WITHOUT ROWID;
"""


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "data-manager" / "dedup"


class Located:
    """A blob found in the index: its entry, and its pack."""

    __slots__ = ("entry", "pack_id", "kind", "pack_header")

    def __init__(self, entry: BlobEntry, pack_id: bytes, kind: str, pack_header: bytes) -> None:
        self.entry = entry
        self.pack_id = pack_id
        self.kind = kind
        self.pack_header = pack_header


class IndexCache:
    """One repository's cache directory. Thread-safe (one connection behind a lock); several processes
    may share it (SQLite's own locking, WAL)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory = directory
        self.path = directory / "index.sqlite"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        os.chmod(self.path, 0o600)  # it holds decrypted snapshot metadata
        use_wal(self._db, self.path)
        self._db.execute("PRAGMA synchronous=NORMAL")  # a cache: losing the last commit costs a re-read
        self._db.execute("PRAGMA cache_size=-32768")  # 32 MiB of pages at most, whatever the index size
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
        if row is None:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES('schema', ?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            self.reset()
            self._db.execute("INSERT OR REPLACE INTO meta VALUES('schema', ?)", (SCHEMA_VERSION,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def reset(self) -> None:
        """Forget the index (it is read again from the index files), and the files cache with it."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            for table in ("seen", "packs", "blobs", "files"):
                self._db.execute(f"DELETE FROM {table}")
            self._db.execute("COMMIT")

    # ---- the index

    def sync(self, storage: Any, ring: Any) -> list[str]:
        """Read the index files not read yet; reset first if one read before is gone. The keys of index
        files that could not be read (damaged: left out, reported by check)."""
        listed = {e.name for e in storage.list(INDEX_PREFIX) if not e.is_dir}
        with self._lock:
            seen = {r[0] for r in self._db.execute("SELECT name FROM seen")}
        if seen - listed:
            log.info("index files were removed: the local index cache is rebuilt")
            self.reset()
            seen = set()
        bad = []
        for name in sorted(listed - seen):
            key = f"{INDEX_PREFIX}/{name}"
            try:
                packs = read_index(storage, ring, key)
            except CorruptBackupError as exc:
                log.warning("%s", exc)
                bad.append(key)
                continue
            except Exception as exc:  # a file deleted meanwhile: read again next time
                log.info("%s: %s", key, exc)
                continue
            self.add(name, packs)
        return bad

    def add(self, name: str | None, packs: Iterable[PackRecord]) -> None:
        """Record packs (from the index file ``name``, marked as read)."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for p in packs:
                    db.execute("INSERT OR IGNORE INTO packs(id, kind, size, header) VALUES(?,?,?,?)",
                               (p.pack_id, KINDS[p.kind], p.size, p.header))
                    (n,) = db.execute("SELECT n FROM packs WHERE id=?", (p.pack_id,)).fetchone()
                    db.executemany("INSERT OR IGNORE INTO blobs VALUES(?,?,?,?,?,?,?)",
                                   [(e.id, n, e.offset, e.stored, e.raw, e.type, e.compression) for e in p.entries])
                if name is not None:
                    db.execute("INSERT OR IGNORE INTO seen VALUES(?)", (name,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def has(self, blob_id: bytes) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM blobs WHERE id=?", (blob_id,)).fetchone() is not None

    def has_many(self, blob_ids: list[bytes]) -> set[bytes]:
        """Which of ``blob_ids`` the index holds (one query per 500 of them)."""
        found: set[bytes] = set()
        with self._lock:
            for i in range(0, len(blob_ids), 500):
                part = blob_ids[i:i + 500]
                rows = self._db.execute(f"SELECT id FROM blobs WHERE id IN ({','.join('?' * len(part))})", part)
                found.update(r[0] for r in rows)
        return found

    def locate(self, blob_id: bytes) -> Located | None:
        with self._lock:
            row = self._db.execute(
                "SELECT b.offset, b.stored, b.raw, b.type, b.comp, p.id, p.kind, p.header "
                "FROM blobs b JOIN packs p ON p.n = b.pack WHERE b.id=?", (blob_id,)).fetchone()
        if row is None:
            return None
        offset, stored, raw, typ, comp, pid, kind, header = row
        return Located(BlobEntry(blob_id, typ, comp, raw, stored, offset), pid,
                       "data" if kind == KINDS["data"] else "meta", header)

    def packs(self) -> Iterator[tuple[bytes, str, int, int]]:
        """Every indexed pack: (id, kind, size, blobs)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT p.id, p.kind, p.size, (SELECT count(*) FROM blobs b WHERE b.pack = p.n) FROM packs p"
            ).fetchall()
        for pid, kind, size, count in rows:
            yield pid, "data" if kind == KINDS["data"] else "meta", size, count

    def blob_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM blobs").fetchone()[0]

    # ---- pointers and snapshots (decrypted: the cache directory is private to its user)

    def pointer(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT doc FROM pointers WHERE name=?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def put_pointer(self, name: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO pointers VALUES(?,?)", (name, json.dumps(doc)))

    def forget_pointers(self, keep: set[str]) -> None:
        with self._lock:
            names = [r[0] for r in self._db.execute("SELECT name FROM pointers")]
            gone = [(n,) for n in names if n not in keep]
            if gone:
                self._db.executemany("DELETE FROM pointers WHERE name=?", gone)

    def snapshot(self, blob_id: bytes) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT doc FROM snapshots WHERE id=?", (blob_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def put_snapshot(self, blob_id: bytes, doc: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO snapshots VALUES(?,?)", (blob_id, json.dumps(doc)))

    # ---- the files cache (engine.FilesCache)

    def file(self, key: bytes) -> tuple[int, bytes, str] | None:
        with self._lock:
            row = self._db.execute("SELECT size, refs, extra FROM files WHERE key=?", (key,)).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def put_files(self, rows: list[tuple[bytes, int, bytes, str]], used: list[bytes], max_age: float) -> None:
        """Add or refresh entries, mark ``used`` ones as used now, drop those unused for ``max_age`` s."""
        import time

        now = time.time()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT OR REPLACE INTO files VALUES(?,?,?,?,?)", [(*r, now) for r in rows])
                db.executemany("UPDATE files SET used=? WHERE key=?", [(now, k) for k in used])
                db.execute("DELETE FROM files WHERE used < ?", (now - max_age,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
