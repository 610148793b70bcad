"""The ``dedup`` repository engine: backups as content-defined chunks, deduplicated across every backup
in the repository, compressed, encrypted in packs, listed by signed and sealed snapshot pointers.

Writing a backup (order matters for crash safety; no repository-wide lock)::

    writers/<id>            heartbeat, first (refreshed every minute, removed at commit or abort)
    packs/data/..           chunks, 16 MiB packs uploaded on a background thread as they fill
    packs/meta/..           chunk lists and, at commit, the snapshot blob
    index/<id>              every few packs, and last, once the packs they list are committed
    snapshots/<id>          the pointer, last of all: from now on the backup counts

Killed anywhere, a backup leaves only objects nothing points to (reported by check as orphans); what it
indexed is reused by the next backup. Two writers never write the same key (random ids) and never
change an object; duplicates are harmless. The format: docs/engines.md.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import random
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blake3 import blake3

from ...errors import CorruptBackupError, DataManagerError, NotFoundError, RefusedError, UsageError
from ...timestamps import format_timestamp, iso, now_utc
from ...types import Compression, Settings, Storage
from ..base import ArtifactStreamBase, BackupWriter, Progress, RepositoryEngine, SourceSink
from ..records import ArtifactRecord, BackupInfo, CheckReport, SourceRecord, checked_sources
from ..streams import ReadAhead, StoredArtifacts
from .cache import IndexCache, Located, default_cache_root
from .chunker import Chunker, ChunkerParams
from .index import INDEX_PREFIX, PackRecord, read_index, write_index
from .packs import (
    CHUNK_LIST, DATA, FOOTER, FOOTER_MAGIC, KIND_OF_TYPE, NONE, SNAPSHOT, ZSTD, BlobEntry, PackBuilder,
    PackHeader, open_blob, pack_key, parse_pack_header, parse_pack_key, parse_trailer, walk_blobs,
)
from .snapshots import (
    FORMAT, LIST_MAX, SNAPSHOT_PREFIX, WRITERS_PREFIX, decode_chunk_list, decode_pointer, decode_snapshot,
    encode_chunk_list, encode_pointer, encode_snapshot, encode_writer, new_pointer_key,
)

log = logging.getLogger(__name__)

DEFAULT_PACK_SIZE = 16 << 20
ZSTD_LEVEL = 3  # as restic's 'auto' (and zstd's default): stored bytes on par with it
_INCOMPRESSIBLE = 0.92  # stored ratio above which a chunk is stored raw
INDEX_EVERY = 8  # packs per index file while a backup runs: what a killed backup leaves reusable
# ...or once this many blobs wait for one: their ids stay in memory until then (8 packs of 256-byte chunks
# held 400,000 of them)
INDEX_BLOBS = 100_000
INDEX_SECONDS = 300.0  # ...or this long after the last one
HEARTBEAT_SECONDS = 60.0
_RANGE_MAX = 8 << 20  # one ranged read (coalesced adjacent chunks) at most: half a pack
_META_PREFIX = b"dm-meta\0"  # metadata blob ids never equal a data chunk's id


def meta_id(ring: Any, data: bytes) -> bytes:
    return ring.chunk_id(_META_PREFIX + data)


def _compressor() -> Any:
    import zstandard

    return zstandard.ZstdCompressor(level=ZSTD_LEVEL)


def _compress(cctx: Any, data: memoryview | bytes) -> tuple[int, bytes | memoryview]:
    out = cctx.compress(data)
    if len(out) > _INCOMPRESSIBLE * len(data):
        return NONE, data
    return ZSTD, out


def decompress(payload: bytes, entry: BlobEntry, where: str) -> bytes:
    if entry.compression == NONE:
        return payload
    if entry.compression != ZSTD:
        raise CorruptBackupError(f"{where}: unknown compression {entry.compression}")
    import zstandard

    try:
        return zstandard.ZstdDecompressor().decompress(payload, max_output_size=entry.raw)
    except zstandard.ZstdError as exc:
        raise CorruptBackupError(f"{where}: cannot be decompressed ({exc})") from None


# --------------------------------------------------------------------------- reports


@dataclass
class _CheckTally:
    """What :meth:`DedupEngine.check_repository` counts on the way. ``errors`` make it fail; ``info``
    (orphans, leftovers of killed writers) never does."""

    errors: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    packs: int = 0
    index_files: int = 0
    snapshots: int = 0
    blobs: int = 0
    packs_read: int = 0
    bytes_read: int = 0
    orphan_packs: int = 0
    unused_blobs: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **vars(self)}


@dataclass
class RepairReport:
    """What a repair did."""

    what: str
    packs_scanned: int = 0
    blobs_found: int = 0
    damaged: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return vars(self).copy()


# --------------------------------------------------------------------------- writing: blobs into packs


class BlobStore:
    """Puts the blobs of one backup into packs, uploads full packs on its own thread, and writes an index
    file every few committed packs (so a killed backup's chunks are reused by the next).

    Thread-safe: every artifact's worker adds to it. Never holds more packs being filled than blobs were
    ever added at once, plus one queued and one uploading, whatever the backup's size.
    Never writes an index entry for a pack before that pack is committed.
    """

    def __init__(self, engine: DedupEngine, pack_size: int) -> None:
        self.storage = engine.storage
        self.ring = engine.ring
        self.cache = engine.cache
        self.pack_size = pack_size
        self.index_every = engine.index_every
        self._lock = threading.Lock()
        self._idle: dict[str, list[PackBuilder]] = {"data": [], "meta": []}  # being filled, no adder holds them
        self._stopped = False
        self._pending: set[bytes] = set()  # added by us, not in the cache yet
        self._located: dict[bytes, tuple[BlobEntry, bytes]] = {}  # snapshot blobs: where they went
        self._queue: queue.Queue[PackBuilder | threading.Event | None] = queue.Queue(maxsize=1)
        self._unindexed: list[PackRecord] = []
        self._unindexed_blobs = 0
        self._last_index = time.monotonic()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dm-packs", daemon=True)
        self._thread.start()
        self.stored = 0
        self.packs_written = 0
        self.index_files: list[str] = []
        # Set by the backup's prune guard (retention.BackupGuard): blobs a pending prune plan marked dead
        # count as absent (written again, once), and every blob the backup uses is noted.
        self.marked: Callable[[bytes], bool] | None = None
        self.refs: Any = None
        self._revived: set[bytes] = set()

    def known(self, blob_id: bytes) -> bool:
        """Stored already: in this backup, or in the index (and not marked dead by a pending prune plan)."""
        if blob_id in self._pending or blob_id in self._revived:
            return True
        return self.cache.has(blob_id) and (self.marked is None or not self.marked(blob_id))

    def known_many(self, blob_ids: list[bytes]) -> set[bytes]:
        """Which of ``blob_ids`` are :meth:`known`, with one query of the index for all of them."""
        found = {b for b in blob_ids if b in self._pending or b in self._revived}
        rest = [b for b in blob_ids if b not in found]
        if rest:
            marked = self.marked
            found.update(b for b in self.cache.has_many(rest) if marked is None or not marked(b))
        return found

    def uses(self, blob_id: bytes, chunks: list[tuple[bytes, int]]) -> None:
        """The backup uses this chunk list and its chunks (for the prune guard's check at commit)."""
        if self.refs is not None:
            self.refs.add_many([blob_id, *(cid for cid, _ in chunks)])

    def add(self, typ: int, blob_id: bytes, compression: int, raw: int, payload: bytes | memoryview) -> int:
        """Store one blob (unless a concurrent adder just did); the bytes it added to the repository."""
        self._raise()
        kind = KIND_OF_TYPE[typ]
        with self._lock:
            if blob_id in self._pending:
                return 0
            self._pending.add(blob_id)
            if self.marked is not None and self.marked(blob_id):
                self._revived.add(blob_id)
            # A pack being filled that no other adder holds: the packers encrypt and write side by side
            # (one shared pack's lock made their writes, and their system time, take turns), and there are
            # never more such packs than adders at once.
            idle = self._idle[kind]
            b = idle.pop() if idle else PackBuilder(self.ring, kind, self.storage.open_write)
        try:
            before = b.size
            entry = b.add(blob_id, typ, compression, raw, payload)
        except BaseException:
            b.abort()  # a pack that missed a write is never committed
            with self._lock:
                self._pending.discard(blob_id)
            raise
        added = b.size - before
        full = b.size >= self.pack_size
        with self._lock:
            if typ == SNAPSHOT:
                self._located[blob_id] = (entry, b.pack_id)
            self.stored += added
            stopped = self._stopped
            if not full and not stopped:
                self._idle[kind].append(b)
        if stopped:
            b.abort()
        elif full:
            self._put(b)  # outside the lock: waits while the uploader is busy (backpressure)
        return added

    def located(self, blob_id: bytes) -> tuple[BlobEntry, bytes]:
        return self._located[blob_id]

    def _take(self, kind: str) -> list[PackBuilder]:
        """The packs of ``kind`` being filled (every adder is done with them)."""
        with self._lock:
            taken, self._idle[kind] = self._idle[kind], []
        return taken

    def flush(self, kind: str) -> None:
        """Send the packs of ``kind`` being filled to the uploader (data before meta: the order of writes).
        Called once no adder is at work on that kind."""
        for b in self._take(kind):
            self._put(b)

    def finish(self) -> None:
        """Upload everything, write the last index file, wait until all is committed."""
        self.flush("data")
        self.flush("meta")
        done = threading.Event()
        self._put(done)
        while not done.wait(0.2):
            self._raise()
            if not self._thread.is_alive():
                break
        self._raise()
        self._queue.put(None)
        self._thread.join()
        self._raise()

    def abort(self) -> None:
        """Stop; committed packs and index files stay (the next backup reuses them)."""
        with self._lock:
            self._stopped = True  # an adder still at work drops its pack instead of keeping it
        building = self._take("data") + self._take("meta")
        if self._error is None:
            self._error = DataManagerError("backup aborted")
        while True:  # unblock the uploader and let it see the stop
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, PackBuilder):
                building.append(item)
        for b in building:
            try:
                b.abort()
            except Exception as exc:  # what a writer leaves is cleanup's
                log.debug("abort %s: %s", b.key, exc)
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=60)
        if not self._thread.is_alive():
            # Index what was committed: a stopped backup (Ctrl-C, a closing backup window) leaves a
            # checkpoint, and the resumed one uploads none of it again.
            try:
                self._write_index()
            except Exception as exc:
                log.debug("index of a stopped backup's packs: %s", exc)

    def _put(self, item: PackBuilder | threading.Event) -> None:
        while True:
            self._raise()
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                if isinstance(item, PackBuilder):
                    item.abort()  # its partial object must not linger
                continue
            try:
                if isinstance(item, PackBuilder):
                    self._upload(item)
                    if (len(self._unindexed) >= self.index_every or self._unindexed_blobs >= INDEX_BLOBS
                            or time.monotonic() - self._last_index > INDEX_SECONDS):
                        self._write_index()
                else:
                    self._write_index()
                    item.set()
            except BaseException as exc:  # re-raised in the adding threads
                self._error = exc

    def _upload(self, b: PackBuilder) -> None:
        try:
            b.finish()
            assert b.out is not None
            b.out.commit()
        except BaseException:
            b.abort()
            raise
        self.packs_written += 1
        self._unindexed.append(PackRecord(b.pack_id, b.kind, b.size, b.header, b.entries))
        self._unindexed_blobs += len(b.entries)

    def _write_index(self) -> None:
        if not self._unindexed:
            return
        packs, self._unindexed, self._unindexed_blobs = self._unindexed, [], 0
        key = write_index(self.storage, self.ring, packs)
        self.index_files.append(key)
        self._last_index = time.monotonic()
        self.cache.add(key.rpartition("/")[2], packs)
        with self._lock:  # the cache has them now: the pending set stays small
            for p in packs:
                for e in p.entries:
                    self._pending.discard(e.id)


# --------------------------------------------------------------------------- writing: the files cache


class FilesCache:
    """What a source's unchanged items were stored as: ``item`` (a fingerprint the source builds: path, size,
    mtime, inode...) -> its chunks and what the source attached. Local, in the index cache; only a hint:
    every chunk is looked up in the index before it is reused, and restores check every chunk by its id.
    Entries are saved when the backup commits (their chunks are indexed then) and dropped after
    :data:`FILES_TTL` seconds unused."""

    def __init__(self, cache: IndexCache) -> None:
        self._cache = cache
        self.remembered: list[tuple[str, int, list[tuple[bytes, int]], dict[str, Any]]] = []
        self._used: list[bytes] = []

    @staticmethod
    def key(item: str) -> bytes:
        return blake3(item.encode("utf-8", "surrogateescape")).digest()

    def lookup(self, item: str, size: int, use: bool = True) -> tuple[list[tuple[bytes, int]], dict[str, Any]] | None:
        """``item``'s chunks and extra, if remembered with this ``size``; ``use``: kept from expiry (reused)."""
        key = self.key(item)
        found = self._cache.file(key)
        if found is None or found[0] != size:
            return None
        try:
            refs = list(decode_chunk_list(found[1], "files cache"))
            extra = json.loads(found[2])
        except (CorruptBackupError, ValueError):
            return None
        if use:
            self._used.append(key)
        return refs, extra if isinstance(extra, dict) else {}

    def save(self) -> None:
        rows = [(self.key(item), size, encode_chunk_list(refs), json.dumps(extra))
                for item, size, refs, extra in self.remembered]
        self._cache.put_files(rows, self._used, max_age=FILES_TTL)
        self.remembered, self._used = [], []


FILES_TTL = 30 * 86400


# --------------------------------------------------------------------------- writing: artifacts


CHUNKS_DIGEST = "blake3-chunks"  # an artifact's digest, over its chunk ids and lengths (see docs/engines.md)
# Threads compressing and encrypting one artifact's new chunks: zstd and AES-GCM release the GIL, and on the
# 628 MB set of bench_dedup one such thread was the pipeline's slowest step (zstd alone 0.8 s of CPU).
PACKERS = 2
_ITEM_MAX = 1 << 16  # chunks of one item the files cache remembers (64 GiB at 1 MiB): bounded memory


class DedupArtifactWriter(ArtifactStreamBase):
    """The writable stream a source gets from ``sink.open(name)`` (see
    :class:`~data_manager.types.ArtifactWriter`).

    The source's thread stages, chunks and hashes (FastCDC 2020 and BLAKE3 release the GIL); :data:`PACKERS`
    workers compress, encrypt and pack the chunks not stored yet (zstd and AES-GCM release it too), behind
    a bounded queue, so both cores work. Chunking on a thread of its own cost more than it gained: every
    hand-over of the GIL between it and the source's thread (at each system call of the source, each
    native call of the worker) is a futex wake and a context switch, 440,000 of them for 200,000 small
    files (first backup 5.0 s, 3.8 s without that thread; 628 MB of large files: the same 1.7 s). After a
    packer's error it takes nothing more, and the next hand-over raises it in the source's thread. The
    artifact is durable once the backup commits (dedup backups cannot be resumed, so no earlier point is
    needed); ``close()`` records it in the source.
    """

    BLOCK = 1 << 20

    def __init__(self, sink: DedupSourceSink, name: str, compression: Compression, digest: bool) -> None:
        super().__init__()
        self._sink = sink
        self.name = name
        self._store = sink.store
        self._ring = sink.ring
        self._compress = compression != "none"
        self._progress = sink.progress
        # Memory per artifact, bounded: the block being staged (about 1 MiB), the chunker's buffer (2 x max
        # chunk, plus a tail), and one batch of new chunks per packer queued and one in work.
        self._chunker = Chunker(sink.chunker_params, sink.chunker_seed, window=2 * sink.chunker_params.max_size)
        # The artifact's digest is over (chunk id, length) of every chunk (CHUNKS_DIGEST): each chunk is checked
        # against its keyed id as it is read. The BLAKE3 of the plain bytes, a third pass over them beside the
        # source's own digests and the chunk ids (5% of a 628 MB first backup), only for a source that asks.
        self._hash = blake3() if digest else None
        self._refs_hash = blake3()
        self._reused = False
        self._at_cut = False  # nothing written since the last cut(): reuse() may append here
        self._item: list[tuple[bytes, int]] | None = []  # chunks since the last cut (None: too many)
        self._last_item: list[tuple[bytes, int]] | None = None
        self.remembered: list[tuple[str, int, list[tuple[bytes, int]], dict[str, Any]]] = []
        self._size = 0
        self._stored = 0
        self._stored_lock = threading.Lock()  # added to by the source's thread and every packer
        self._chunks: list[tuple[bytes, int]] = []
        self._lists: list[str] = []
        self._count = 0
        # Small writes (a tree of small files writes a member of a few KiB at a time) are gathered into
        # blocks of about BLOCK bytes before the chunker sees them.
        self._staged = bytearray()
        self._cuts: list[int] = []  # where cut() was called in the staged block (made by _emit)
        # New chunks go to the packers in batches of about BLOCK bytes (one chunk, or many small ones).
        self._new: queue.Queue[list[tuple[bytes, bytes]] | None] = queue.Queue(maxsize=PACKERS)
        self._fresh: dict[bytes, bytes] = {}  # the batch being gathered, by chunk id
        self._fresh_bytes = 0
        self._error: BaseException | None = None
        self._done = False
        self.digest = ""
        self._packers = [threading.Thread(target=self._pack_run, name="dm-pack", daemon=True) for _ in range(PACKERS)]
        for t in self._packers:
            t.start()

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self._done:
            raise ValueError(f"artifact {self.name} is closed")
        n = memoryview(data).nbytes
        if not n:
            return 0
        self._at_cut = False
        self._size += n
        if n >= self.BLOCK and not self._staged:
            self._feed(data)  # large: chunked where it is (the chunker copies what it keeps)
        else:
            self._staged += data
            if len(self._staged) >= self.BLOCK:
                self._emit()
        if self._progress is not None:
            self._progress(n)
        return n

    def cut(self) -> None:
        if self._done:
            return
        if self._staged:
            # Noted, and made when the block is chunked: a tree of small files cuts every ~11 files, and
            # chunking, hashing and looking up each group at once cost ~40 us a cut (bench_dedup).
            if not self._cuts or self._cuts[-1] != len(self._staged):
                self._cuts.append(len(self._staged))
        else:
            self._cut_now()
        self._at_cut = True

    def _cut_now(self) -> None:
        for c in self._chunker.cut():
            self._chunk(c)
        self._last_item, self._item = self._item, []

    def reuse(self, item: str, size: int) -> Mapping[str, Any] | None:
        """The files cache: an unchanged item's chunks appended without its bytes (see ArtifactWriter)."""
        if self._done or not self._at_cut or size <= 0:
            return None
        self._emit()  # the chunks before it first
        found = self._sink.files.lookup(item, size)
        if found is None:
            return None
        refs, extra = found
        if sum(n for _, n in refs) != size or not all(self._store.known(cid) for cid, _ in refs):
            return None  # stale (a repair or prune since): the bytes are read again
        self._reused = True
        for cid, n in refs:
            self._ref(cid, n)
        self._size += size
        if self._progress is not None:
            self._progress(size)
        return extra

    def recall(self, item: str, size: int, header: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """What :meth:`reuse` of ``item`` would return now (the files cache, every chunk still known), asked
        before the source opens the file; nothing is queued or marked used. ``header`` is not needed: the
        fingerprint is the key."""
        if self._done or size <= 0:
            return None
        found = self._sink.files.lookup(item, size, use=False)
        if found is None:
            return None
        refs, extra = found
        if sum(n for _, n in refs) != size or not all(self._store.known(cid) for cid, _ in refs):
            return None
        return extra

    def remember(self, item: str, size: int, extra: Mapping[str, Any]) -> None:
        """The item between the last two cuts, for the files cache (kept once the backup commits)."""
        if not self._done and self._at_cut and size > 0:
            self._emit()  # the cuts noted so far made
            last = self._last_item
            if last is not None and sum(n for _, n in last) == size:
                self.remembered.append((item, size, last, dict(extra)))

    def _emit(self) -> None:
        """Chunk the staged block, making the cuts noted in it: hashed in one call; a group between two cuts
        no longer than the chunker's minimum is one chunk (FastCDC never cuts before it), looked up with the
        others of the block in one query; the rest goes through the chunker."""
        if not self._staged:
            return
        if self._error is not None:
            raise self._error
        staged, cuts = self._staged, self._cuts
        if self._hash is not None:
            self._hash.update(staged)
        chunker = self._chunker
        small = chunker.params.min_size
        groups: list[memoryview] = []  # whole chunks of the block, each followed by a cut, not looked up yet
        with memoryview(staged) as view:
            start = 0
            for end in cuts:
                if chunker.holding or end - start > small:
                    self._chunk_all(groups)  # in order: what was before first
                    for c in chunker.feed(view[start:end]):
                        self._chunk(c)
                    self._cut_now()
                else:
                    groups.append(view[start:end])
                start = end
            self._chunk_all(groups)
            for c in chunker.feed(view[start:]):
                self._chunk(c)
        staged.clear()  # the chunker copied what it keeps
        cuts.clear()

    def _feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        if self._hash is not None:
            self._hash.update(data)
        for c in self._chunker.feed(data):
            self._chunk(c)

    def _chunk_all(self, groups: list[memoryview]) -> None:
        """Each of ``groups`` a whole chunk (small files between two cuts), in order, looked up at once."""
        if not groups:
            return
        ids = [self._ring.chunk_id(g) for g in groups]
        known = self._store.known_many(ids)
        for cid, g in zip(ids, groups):
            self._add(cid, g, cid in known or cid in self._fresh)
            self._last_item, self._item = self._item, []  # the cut after it
            g.release()
        groups.clear()

    def _handover(self, q: queue.Queue[Any], item: Any, consumers: list[threading.Thread]) -> None:
        while True:
            if self._error is not None:
                raise self._error
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                if not any(t.is_alive() for t in consumers):
                    raise DataManagerError(f"artifact {self.name}: worker stopped") from self._error

    def _chunk(self, chunk: memoryview) -> None:
        cid = self._ring.chunk_id(chunk)
        self._add(cid, chunk, cid in self._fresh or self._store.known(cid))

    def _add(self, cid: bytes, chunk: memoryview, known: bool) -> None:
        """The next chunk; ``known``: stored already or on its way to a pack (else it is packed)."""
        n = len(chunk)
        if not known:
            # A copy: the view is of a buffer the next chunk overwrites.
            self._fresh[cid] = bytes(chunk)
            self._fresh_bytes += n
            if self._fresh_bytes >= self.BLOCK:
                self._pack_fresh()
        self._ref(cid, n)

    def _pack_fresh(self) -> None:
        if self._fresh:
            batch, self._fresh, self._fresh_bytes = list(self._fresh.items()), {}, 0
            self._handover(self._new, batch, self._packers)

    def _ref(self, cid: bytes, n: int) -> None:
        """The next chunk of the artifact (stored already, or on its way to a pack)."""
        self._chunks.append((cid, n))
        self._count += 1
        self._refs_hash.update(cid + n.to_bytes(4, "little"))
        if self._item is not None:
            self._item.append((cid, n))
            if len(self._item) > _ITEM_MAX:
                self._item = None
        if len(self._chunks) >= LIST_MAX:
            self._flush_list()

    def _pack_run(self) -> None:
        cctx = _compressor()  # one per thread: a compression context is not thread-safe
        while True:
            batch = self._new.get()
            if batch is None or self._error is not None:
                return
            try:
                for cid, chunk in batch:
                    comp, payload = _compress(cctx, chunk) if self._compress else (NONE, chunk)
                    self._count_stored(self._store.add(DATA, cid, comp, len(chunk), payload))
            except BaseException as exc:  # re-raised in the source's thread
                self._error = exc

    def _count_stored(self, n: int) -> None:
        with self._stored_lock:
            self._stored += n

    def _flush_list(self) -> None:
        chunks, self._chunks = self._chunks, []
        blob = encode_chunk_list(chunks)
        lid = meta_id(self._ring, blob)
        self._store.uses(lid, chunks)
        self._lists.append(lid.hex())
        if not self._store.known(lid):  # an unchanged artifact's lists are stored once for all backups
            self._count_stored(self._store.add(CHUNK_LIST, lid, NONE, len(blob), blob))

    # -- closing

    def close(self) -> None:
        """Chunk what is left and record the artifact in its source."""
        if self._done:
            return
        try:
            self._emit()
            for c in self._chunker.finish():
                self._chunk(c)
            self._pack_fresh()
            for _ in self._packers:
                self._handover(self._new, None, self._packers)
            for t in self._packers:
                t.join()
            if self._error is not None:
                raise self._error
            if self._chunks:
                self._flush_list()
        except BaseException:
            self.abort()
            raise
        self._done = True
        super().close()
        location = {"lists": self._lists, "chunks": self._count}
        if self._reused or self._hash is None:  # some bytes never passed here, or the source did not ask
            self.digest = ""
            rec = ArtifactRecord(self.name, self._size, self._refs_hash.hexdigest(), self._stored, "chunks",
                                 CHUNKS_DIGEST, location)
        else:
            self.digest = self._hash.hexdigest()
            rec = ArtifactRecord(self.name, self._size, self.digest, self._stored, "chunks", location=location)
        self._sink.files.remembered.extend(self.remembered)
        self._sink.committed(rec)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if self._error is None:
            self._error = DataManagerError("aborted")
        # One end marker per packer that may wait on an empty queue; a packer of a full queue takes an item,
        # sees the error and ends.
        for _ in range(PACKERS):
            try:
                self._new.put_nowait(None)
            except queue.Full:
                break
        self._sink.aborted(self.name)
        super().close()



class DedupSourceSink(SourceSink):
    """One source's sink in a ``dedup`` backup. ``cut()`` is passed to every artifact it has open."""

    chunked = True

    def __init__(self, writer: DedupBackupWriter, record: SourceRecord, progress: Progress | None) -> None:
        super().__init__(record, progress)
        self.store = writer.store
        self.files = writer.files
        self.ring = writer.engine.ring
        self.chunker_params = writer.engine.chunker_params
        self.chunker_seed = self.ring.chunker_seed()
        self._writers: dict[str, DedupArtifactWriter] = {}

    def open_artifact(self, name: str, compression: Compression, digest: bool) -> DedupArtifactWriter:
        w = DedupArtifactWriter(self, name, compression, digest)
        self._writers[name] = w
        return w

    def cut(self) -> None:
        for w in list(self._writers.values()):
            w.cut()

    def committed(self, rec: Any) -> None:
        self._writers.pop(rec.name, None)
        super().committed(rec)

    def aborted(self, name: str) -> None:
        self._writers.pop(name, None)
        super().aborted(name)


class DedupBackupWriter(BackupWriter):
    """A ``dedup`` backup being written: invisible until :meth:`commit` wrote its pointer, last."""

    def __init__(self, engine: DedupEngine, data_id: str, timestamp: str, extra: Mapping[str, Any]) -> None:
        super().__init__(data_id, timestamp, extra)
        self.engine = engine
        self.store = BlobStore(engine, engine.pack_size)
        self.files = FilesCache(engine.cache)
        self._writer_key = f"{WRITERS_PREFIX}/{secrets.token_hex(16)}"
        self._stop = threading.Event()
        self._finished = False
        self._guard: Any = None  # what keeps this backup's data safe from a concurrent prune
        try:
            self._heartbeat()
            self._guard = engine.retention().guard(self)
        except BaseException:
            self.store.abort()
            self._drop_heartbeat()
            raise
        self._beat = threading.Thread(target=self._beating, name="dm-heartbeat", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        doc = {"host": socket.gethostname(), "pid": os.getpid(), "started": iso(self.started),
               "refreshed": iso(now_utc()), "key_id": self.engine.ring.key_id}
        if self._guard is not None:
            doc["prune_plans"] = self._guard.names()
        with self.engine.storage.open_write(self._writer_key) as w:
            w.write(encode_writer(self.engine.ring, doc))

    def _beating(self) -> None:
        while not self._stop.wait(self.engine.heartbeat_seconds):
            try:
                self._heartbeat()
            except Exception as exc:  # a missed beat only makes a later prune more careful
                log.warning("heartbeat %s: %s", self._writer_key, exc)

    def source(self, record: SourceRecord, progress: Progress | None = None) -> DedupSourceSink:
        return DedupSourceSink(self, record, progress)

    def manifest(self) -> dict[str, Any]:
        return {"format": FORMAT, **super().manifest(), "key_id": self.engine.ring.key_id}

    def commit(self) -> dict[str, Any]:
        """Data packs, the snapshot into the last meta pack, index files, then the pointer."""
        ring = self.engine.ring
        self.store.flush("data")
        manifest = self.manifest()
        plain = encode_snapshot(manifest)
        sid = meta_id(ring, plain)
        comp, payload = _compress(_compressor(), plain)
        self.store.add(SNAPSHOT, sid, comp, len(plain), payload)
        self.store.finish()
        moved = self._guard.before_pointer(sid) if self._guard is not None else None
        entry, pack_id = moved or self.store.located(sid)
        doc = {"data_id": self.data_id, "timestamp": self.timestamp, "snapshot": sid.hex(),
               "pack": pack_id.hex(), "offset": entry.offset, "stored": entry.stored, "raw": entry.raw,
               "compression": entry.compression, "key_id": ring.key_id, "created": iso(now_utc())}
        key = new_pointer_key()
        with self.engine.storage.open_write(key) as w:
            w.write(encode_pointer(ring, doc))
        self._finished = True
        self.engine.cache.put_pointer(key.rpartition("/")[2], doc)
        self.engine.cache.put_snapshot(sid, manifest)
        try:
            self.files.save()  # only now: every chunk it names is committed and indexed
        except Exception as exc:  # a cache: the next backup reads those files again
            log.warning("files cache not updated: %s", exc)
        self._end()
        return manifest

    def abort(self) -> None:
        if not self._finished:
            self._finished = True
            self.store.abort()
        self._end()

    def _end(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._beat.join(timeout=10)
        if self._guard is not None:
            self._guard.close()
        self._drop_heartbeat()

    def _drop_heartbeat(self) -> None:
        """Remove the heartbeat; credentials that may not delete (append-only) seal a ``finished`` one over
        it instead, which a sweep skips and an admin's sweep removes."""
        storage = self.engine.storage
        try:
            storage.delete(self._writer_key)
            return
        except NotFoundError:
            return
        except Exception as exc:
            why = exc
        try:
            doc = {"host": socket.gethostname(), "pid": os.getpid(), "started": iso(self.started),
                   "finished": iso(now_utc()), "key_id": self.engine.ring.key_id}
            with storage.open_write(self._writer_key) as w:
                w.write(encode_writer(self.engine.ring, doc))
            log.info("%s: marked finished (cannot delete: %s)", self._writer_key, why)
        except Exception as exc:  # left for prune to judge by its age
            log.warning("cannot remove %s: %s; nor mark it finished: %s", self._writer_key, why, exc)


# --------------------------------------------------------------------------- reading


class ChunkStream(ReadAhead):
    """The original bytes of one artifact, fetched chunk by chunk on a second thread (a bounded queue of
    decoded chunks), adjacent chunks of one pack coalesced into one ranged read. Every chunk is decrypted
    and checked against its id; at EOF the artifact's size and BLAKE3 digest. Any damage, missing pack or
    missing chunk: :class:`CorruptBackupError` naming the artifact, raised in the reader's thread."""

    def __init__(self, engine: DedupEngine, rec: ArtifactRecord, label: str, depth: int = 8) -> None:
        self._engine = engine
        self._rec = rec
        self._label = label
        super().__init__(depth, "dm-restore")

    def failed(self, exc: BaseException) -> BaseException:
        if isinstance(exc, CorruptBackupError):
            return CorruptBackupError(f"{self._label}: {exc}")
        if isinstance(exc, NotFoundError):
            return CorruptBackupError(f"{self._label}: missing from the storage ({exc})")
        return exc

    def _refs(self) -> Iterator[tuple[bytes, int]]:
        loc = self._rec.location
        lists = loc.get("lists")
        if not isinstance(lists, list) or not isinstance(loc.get("chunks"), int):
            raise CorruptBackupError("no chunk lists in its record")
        count = 0
        for hexid in lists:
            try:
                lid = bytes.fromhex(hexid)
            except (TypeError, ValueError):
                raise CorruptBackupError("bad chunk list id in its record") from None
            data = self._engine.read_blob(lid, "chunk list")
            for ref in decode_chunk_list(data, "chunk list"):
                count += 1
                yield ref
        if count != loc["chunks"]:
            raise CorruptBackupError(f"{count} chunks listed, {loc['chunks']} recorded")

    def produce(self, put: Callable[[bytes], bool]) -> None:
        engine = self._engine
        h = blake3()
        by_chunks = self._rec.algorithm == CHUNKS_DIGEST
        refs_hash = blake3()
        size = 0
        group: list[tuple[bytes, int, Located]] = []

        def flush() -> bool:
            nonlocal size
            for plain in engine.read_run(group):
                if not by_chunks:
                    h.update(plain)
                size += len(plain)
                if size > self._rec.size:
                    raise CorruptBackupError(f"longer than the {self._rec.size} bytes recorded")
                if not put(plain):
                    return False
            group.clear()
            return True

        for cid, raw in self._refs():
            if by_chunks:
                refs_hash.update(cid + raw.to_bytes(4, "little"))
            loc = engine.cache.locate(cid)
            if loc is None:
                raise CorruptBackupError(f"chunk {cid.hex()} is not in the index (repo repair index?)")
            if group:
                last = group[-1][2]
                end = last.entry.offset + engine.sealed_header_size(last) + last.entry.stored
                span = end - group[0][2].entry.offset
                if loc.pack_id != last.pack_id or loc.entry.offset != end or span > _RANGE_MAX:
                    if not flush():
                        return
            group.append((cid, raw, loc))
        if group and not flush():
            return
        if size != self._rec.size:
            raise CorruptBackupError(f"{size} bytes, {self._rec.size} recorded (truncated?)")
        if (refs_hash if by_chunks else h).hexdigest() != self._rec.digest:
            raise CorruptBackupError("blake3 mismatch, the stored data is corrupt")


class DedupArtifacts(StoredArtifacts):
    """The :class:`~data_manager.types.ArtifactSet` of one source in a complete ``dedup`` backup."""

    def __init__(self, engine: DedupEngine, prefix: str, record: SourceRecord, progress: Progress | None) -> None:
        super().__init__(prefix, record, progress)
        self._engine = engine

    def reader(self, rec: ArtifactRecord, label: str) -> io.RawIOBase:
        return ChunkStream(self._engine, rec, label)


# --------------------------------------------------------------------------- the engine


class DedupEngine(RepositoryEngine):
    """Backups of all datasets in one storage, deduplicated and encrypted (docs/engines.md).

    Must never: write an object twice under one key (but the heartbeat), make a backup visible before its
    pointer, trust the cache or the storage for more than locating bytes (every blob is checked against its
    id), hold the index in memory, or put plaintext of the source in a stored object.
    """

    kind = "dedup"
    settings_keys = ("passphrase", "key_id", "pack_size", "cache_dir")
    secret_keys = ("passphrase",)
    keeps_partial_sources = True  # a stopped backup's committed packs are indexed (PackUploader.abort)
    heartbeat_seconds = HEARTBEAT_SECONDS
    index_every = INDEX_EVERY

    def __init__(self, storage: Storage, settings: Settings | None = None, *, ring: Any = None,
                 cache_dir: Path | str | None = None) -> None:
        super().__init__(storage, settings)
        self.pack_size = self.settings.get_size("pack_size", DEFAULT_PACK_SIZE, minimum=1 << 16)
        if cache_dir is None and "cache_dir" in self.settings:
            cache_dir = self.settings.get_path("cache_dir")
        self._cache_root = Path(cache_dir) if cache_dir is not None else default_cache_root()
        self._ring = ring
        self._cache: IndexCache | None = None
        self._synced = 0.0
        self._openers: dict[bytes, Any] = {}
        self._lock = threading.Lock()
        self._retention: Any = None

    # ---- keys, cache

    @classmethod
    def create(cls, storage: Storage, settings: Settings | None = None, *,
                        chunker: ChunkerParams | None = None, kdf: Any = None,
                        cache_dir: Path | str | None = None) -> DedupEngine:
        """Create the repository (the key layer refuses if one exists) with these chunker parameters."""
        from .keys import init_repository

        settings = settings or Settings({}, where=f"storage {storage.name!r}")
        params = (chunker or ChunkerParams()).to_json()
        ring = init_repository(storage, _passphrase(settings), params=params, kdf=kdf)
        return cls(storage, settings, ring=ring, cache_dir=cache_dir)

    def init_repository(self) -> dict[str, Any]:
        made = type(self).create(self.storage, self.settings, cache_dir=self._cache_root)
        self._ring = made.ring
        return {"engine": self.kind, "id": self._ring.repo_id, "location": self.location(),
                "key_id": self._ring.key_id, "role": self._ring.role, "params": dict(self._ring.params or {})}

    def add_key(self, role: str, passphrase: str) -> str:
        from .keys import add_key

        return add_key(self.ring, self.storage, passphrase, role)

    def list_keys(self) -> list[dict[str, Any]]:
        from .keys import list_keys

        self.ring  # only a key holder may list the keys: the passphrase is checked first
        return [k.to_json() for k in list_keys(self.storage)]

    def revoke_key(self, key_id: str) -> None:
        from .keys import revoke_key

        revoke_key(self.ring, self.storage, key_id)

    def repair(self, what: str) -> dict[str, Any]:
        if what == "index":
            report = self.repair_index()
        elif what == "snapshots":
            report = self.repair_snapshots()
        else:
            raise UsageError(f"repo repair {what!r}: expected index or snapshots")
        doc = report.to_json()
        doc["errors"] = list(report.damaged)
        return doc

    # ---- retention (tombstones, holds, prune: retention.py)

    def retention(self) -> Any:
        """This repository's :class:`~data_manager.engines.dedup.retention.DedupRetention`."""
        with self._lock:
            if self._retention is None:
                from .retention import DedupRetention

                self._retention = DedupRetention(self)
            return self._retention

    def holds(self, data_id: str) -> dict[str, str]:
        return self.retention().holds(data_id)

    def set_hold(self, data_id: str, timestamp: str, reason: str | None) -> None:
        self.retention().set_hold(data_id, timestamp, reason)

    def forget(self, data_id: str, timestamps: Collection[str]) -> list[str]:
        """A signed tombstone per backup (admin keys only); ``prune`` frees the space later."""
        return self.retention().forget(data_id, timestamps)

    def prune(self, *, dry_run: bool, delete_delay: float, progress: Progress | None = None,
              max_unused: float | None = None) -> dict[str, Any]:
        """Sweep the pending plan once ``delete_delay`` passed, then mark (admin keys only)."""
        return self.retention().prune(dry_run=dry_run, delete_delay=delete_delay, progress=progress,
                                      max_unused=max_unused)

    def retention_times(self, data_id: str) -> dict[str, Any]:
        """The storage's time for backups written by non-admin keys whose TIMESTAMP is implausible (the
        pointer stored more than 6 h after it, or more than 10 minutes before it)."""
        return self.retention().times(data_id)

    @property
    def ring(self) -> Any:
        if self._ring is None:
            from .keys import open_repository

            self._ring = open_repository(self.storage, _passphrase(self.settings),
                                         key_id=self.settings.get("key_id"))
        return self._ring

    @property
    def chunker_params(self) -> ChunkerParams:
        try:
            return ChunkerParams.from_json(dict(self.ring.params or {}))
        except (TypeError, ValueError) as exc:  # the config is signed: written so by another version
            raise CorruptBackupError(f"repository config of storage {self.storage.name!r}: {exc} (made by a "
                                     "newer data-manager?)") from None

    @property
    def cache(self) -> IndexCache:
        with self._lock:
            if self._cache is None:
                self._cache = IndexCache(self._cache_root / self.ring.repo_id)
            return self._cache

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def sync_index(self) -> list[str]:
        """Read the index files this machine has not read yet into the local cache."""
        return self.cache.sync(self.storage, self.ring)

    def check(self) -> None:
        self.storage.check()
        self.ring  # unlocks the key: a wrong passphrase fails here, before anything is written

    def _need_reader(self, what: str) -> None:
        if not self.ring.can_read:
            raise RefusedError(f"{what}: the {self.ring.role} key {self.ring.key_id} cannot read this repository "
                               "(its backups can only be read with an admin or append key)")

    # ---- listing

    def _pointers(self) -> list[tuple[str, dict[str, Any] | None, str | None, Any]]:
        """Every pointer: (name, document or None, why not, its listing entry). Documents are cached."""
        out = []
        entries = [e for e in self.storage.list(SNAPSHOT_PREFIX) if not e.is_dir]
        cache = self.cache
        for e in entries:
            doc = cache.pointer(e.name)
            why = None
            if doc is None:
                key = f"{SNAPSHOT_PREFIX}/{e.name}"
                try:
                    with self.storage.open_read(key) as f:
                        data = f.read(1 << 20)
                    doc = decode_pointer(self.ring, data, key)
                    cache.put_pointer(e.name, doc)
                except NotFoundError:
                    continue
                except CorruptBackupError as exc:
                    why = str(exc)
            out.append((e.name, doc, why, e))
        cache.forget_pointers({e.name for e in entries})
        return out

    def data_ids(self) -> list[str]:
        self._need_reader("list backups")
        hidden = self.retention().hidden()  # forgotten (tombstoned) backups are not listed
        return sorted({doc["data_id"] for _, doc, _, _ in self._pointers()
                       if doc is not None and doc["snapshot"] not in hidden})

    def timestamps(self, data_id: str) -> list[str]:
        if not self.ring.can_read:
            return []  # a write-only key cannot see backups; new ones take the current time
        return sorted({b.timestamp for b in self.backups(data_id)})

    def backups(self, data_id: str) -> list[BackupInfo]:
        self._need_reader("list backups")
        out: list[tuple[str, str, BackupInfo]] = []
        seen: set[str] = set(self.retention().hidden())  # forgotten (tombstoned) backups are not listed
        for name, doc, why, entry in self._pointers():
            if doc is None:
                # Its dataset is sealed inside it: shown under every dataset, never hiding the others.
                when = format_timestamp(entry.modified or now_utc())
                out.append((when, "", BackupInfo(data_id, when, False, damaged=why)))
                continue
            if doc["data_id"] != data_id or doc["snapshot"] in seen:
                continue
            seen.add(doc["snapshot"])
            created = str(doc.get("created", ""))
            try:
                manifest = self.snapshot(doc, f"{SNAPSHOT_PREFIX}/{name}")
            except CorruptBackupError as exc:
                out.append((doc["timestamp"], created, BackupInfo(data_id, doc["timestamp"], False, damaged=str(exc))))
                continue
            out.append((doc["timestamp"], created,
                        BackupInfo(data_id, doc["timestamp"], True, manifest.get("size"), manifest.get("stored_size"),
                                   [s["name"] for s in manifest["sources"]], manifest)))
        # Two writers may pick one TIMESTAMP (a write-only key cannot see the others'): the later commit
        # sorts last, so it is "latest".
        out.sort(key=lambda t: (t[0], t[1]))
        return [b for _, _, b in out]

    def snapshot(self, doc: dict[str, Any], where: str) -> dict[str, Any]:
        """The manifest a pointer document names, checked against it (cached once read)."""
        sid = bytes.fromhex(doc["snapshot"])
        manifest = self.cache.snapshot(sid)
        if manifest is None:
            try:
                entry = BlobEntry(sid, SNAPSHOT, int(doc["compression"]), int(doc["raw"]), int(doc["stored"]),
                                  int(doc["offset"]))
                pack_id = bytes.fromhex(doc["pack"])
            except (KeyError, TypeError, ValueError):
                raise CorruptBackupError(f"{where}: unreadable pointer") from None
            loc = Located(entry, pack_id, "meta", b"")
            plain = self._read_one(loc, f"{where}: snapshot", expect_meta=True)
            manifest = decode_snapshot(plain, where)
            checked_sources(manifest, where)  # whoever could write a snapshot: names safe, or this one line
            self.cache.put_snapshot(sid, manifest)
        if (manifest.get("data_id"), manifest.get("timestamp")) != (doc["data_id"], doc["timestamp"]):
            raise CorruptBackupError(f"{where}: its snapshot is of another backup")
        return manifest

    # ---- writing

    def start_backup(self, data_id: str, extra: Mapping[str, Any] | None = None,
                     timestamp: str | None = None) -> DedupBackupWriter:
        self.sync_index()
        return DedupBackupWriter(self, data_id, timestamp or self.new_timestamp(data_id), extra or {})

    # ---- reading

    def artifacts(self, info: BackupInfo, source: str, progress: Progress | None = None) -> DedupArtifacts:
        self._need_reader("restore")
        if info.manifest is None:
            raise UsageError(f"backup {info.data_id}/{info.timestamp} is incomplete; it cannot be used")
        self._maybe_sync()
        for s in info.manifest["sources"]:
            if s["name"] == source:
                return DedupArtifacts(self, f"{info.data_id}/{info.timestamp}", SourceRecord.from_json(s), progress)
        raise UsageError(f"backup {info.data_id}/{info.timestamp} has no source {source!r}")

    def _maybe_sync(self) -> None:
        if time.monotonic() - self._synced > 5:
            self.sync_index()
            self._synced = time.monotonic()

    def _opener(self, pack_id: bytes, header: PackHeader) -> Any:
        with self._lock:
            op = self._openers.get(pack_id)
            if op is None:
                if len(self._openers) > 256:
                    self._openers.clear()
                op = self._openers[pack_id] = self.ring.pack_opener(header.sealer_header)
            return op

    def _pack_header(self, loc: Located) -> PackHeader:
        key = pack_key(loc.kind, loc.pack_id)
        if loc.pack_header:
            return parse_pack_header(loc.pack_header, key)
        with self.storage.open_read(key, 0, 4096) as f:
            return parse_pack_header(f.read(4096), key)

    def sealed_header_size(self, loc: Located) -> int:
        return parse_pack_header(loc.pack_header, "index").sealed_header_size if loc.pack_header else 0

    def read_run(self, run: list[tuple[bytes, int, Located]]) -> Iterator[bytes]:
        """The plaintexts of adjacent blobs of one pack, fetched with one ranged read, each checked."""
        first = run[0][2]
        header = self._pack_header(first)
        opener = self._opener(first.pack_id, header)
        key = pack_key(first.kind, first.pack_id)
        start = first.entry.offset
        last = run[-1][2].entry
        length = last.offset + header.sealed_header_size + last.stored - start
        with self.storage.open_read(key, start, length) as f:
            data = f.read(length)
        if len(data) != length:
            raise CorruptBackupError(f"{key}: truncated (wanted {length} bytes at {start}, got {len(data)})")
        view = memoryview(data)
        for cid, raw, loc in run:
            rel = loc.entry.offset - start
            entry, payload = open_blob(opener, header, view[rel:], loc.entry.offset, key, expected=loc.entry)
            plain = decompress(payload, entry, key)
            if len(plain) != raw or len(plain) != entry.raw or self.ring.chunk_id(plain) != cid:
                raise CorruptBackupError(f"{key}: chunk {cid.hex()} does not match its id")
            yield plain

    def _read_one(self, loc: Located, where: str, expect_meta: bool = False) -> bytes:
        key = pack_key(loc.kind, loc.pack_id)
        try:
            header = self._pack_header(loc)
            opener = self._opener(loc.pack_id, header)
            length = header.sealed_header_size + loc.entry.stored
            with self.storage.open_read(key, loc.entry.offset, length) as f:
                data = f.read(length)
        except NotFoundError:
            raise CorruptBackupError(f"{where}: pack {key} is missing") from None
        entry, payload = open_blob(opener, header, data, loc.entry.offset, f"{where}: {key}", expected=loc.entry)
        plain = decompress(payload, entry, key)
        if len(plain) != entry.raw or meta_id(self.ring, plain) != loc.entry.id:
            raise CorruptBackupError(f"{where}: {key}: blob {loc.entry.id.hex()} does not match its id")
        return plain

    def read_blob(self, blob_id: bytes, what: str) -> bytes:
        """A metadata blob by id (through the index), checked."""
        loc = self.cache.locate(blob_id)
        if loc is None:
            raise CorruptBackupError(f"{what} {blob_id.hex()} is not in the index (repo repair index?)")
        return self._read_one(loc, what, expect_meta=True)

    # ---- maintenance

    def pack_entries(self, key: str, kind: str, size: int | None = None,
                     whole: bytes | None = None) -> tuple[PackHeader, list[BlobEntry], str | None]:
        """A pack's header and blobs, from its trailer (three small reads) or, if that is damaged, by walking
        its blob headers (one whole read); the third value says what was damaged, if anything."""
        if whole is None:
            with self.storage.open_read(key, 0, 4096) as f:
                head = f.read(4096)
        else:
            head = whole[:4096]
        header = parse_pack_header(head, key)
        opener = self.ring.pack_opener(header.sealer_header)
        try:
            if whole is not None:
                tail = whole[-FOOTER.size:]
                total = len(whole)
            else:
                total = size if size is not None else self._size_of(key)
                if total < header.size + FOOTER.size:
                    raise CorruptBackupError(f"{key}: truncated ({total} bytes)")
                with self.storage.open_read(key, total - FOOTER.size, FOOTER.size) as f:
                    tail = f.read(FOOTER.size)
            tlen, magic = FOOTER.unpack(tail)
            if magic != FOOTER_MAGIC or tlen > total - FOOTER.size - header.size:
                raise CorruptBackupError(f"{key}: footer is damaged")
            start = total - FOOTER.size - tlen
            if whole is not None:
                sealed = whole[start:start + tlen]
            else:
                with self.storage.open_read(key, start, tlen) as f:
                    sealed = f.read(tlen)
            return header, parse_trailer(opener, kind, sealed, key), None
        except NotFoundError:
            raise
        except (CorruptBackupError, ValueError, struct.error, OverflowError) as exc:
            # a damaged footer or trailer: walk the blob headers instead
            reason = str(exc) if isinstance(exc, CorruptBackupError) else f"{key}: footer is damaged"
            if whole is None:
                with self.storage.open_read(key) as f:
                    whole = f.read()
            entries, stop = walk_blobs(opener, header, whole, key)
            return header, entries, reason + (f"; walk stopped: {stop}" if stop else "")

    def _size_of(self, key: str) -> int:
        parent, _, name = key.rpartition("/")
        for e in self.storage.list(parent):
            if e.name == name and e.size is not None:
                return e.size
        raise NotFoundError(f"{key}: not found")

    def _walk_packs(self) -> Iterator[tuple[str, str, bytes, int]]:
        for kind in ("data", "meta"):
            for key, entry in self.storage.walk(f"packs/{kind}"):
                parsed = parse_pack_key(key)
                if parsed is None:
                    continue
                yield key, kind, parsed[1], entry.size or 0

    def repair_index(self) -> RepairReport:
        """Rebuild the index from the packs alone: read every pack's trailer (or walk its blob headers),
        write new index files, then remove the old ones (admin keys only; other keys leave them: duplicates
        are harmless). Needs a key that can read packs."""
        self._need_reader("repair index")
        t0 = time.monotonic()
        report = RepairReport("index")
        old = [f"{INDEX_PREFIX}/{e.name}" for e in self.storage.list(INDEX_PREFIX) if not e.is_dir]
        batch: list[PackRecord] = []
        for key, kind, pack_id, size, header, entries in self._scan_packs(report):
            # an entry whose blob ends past the pack is a lie: leave it out
            entries = [e for e in entries if e.offset + header.sealed_header_size + e.stored <= size]
            report.blobs_found += len(entries)
            batch.append(PackRecord(pack_id, kind, size, header.raw, entries))
            if len(batch) >= 256:
                report.written.append(write_index(self.storage, self.ring, batch))
                batch = []
        if batch:
            report.written.append(write_index(self.storage, self.ring, batch))
        if self.ring.can_delete:
            for key in old:
                self.storage.delete(key)
                report.removed.append(key)
        self.cache.reset()
        self.sync_index()
        report.seconds = round(time.monotonic() - t0, 3)
        return report

    def _scan_packs(self, report: RepairReport, meta_only: bool = False) -> Iterator[tuple[str, str, bytes, int, Any, Any]]:
        """Every pack (or metadata pack) with its blobs as its trailer, or a walk of its blob headers, lists
        them: ``(key, kind, pack id, size, header, entries)``. Damage goes into ``report``."""
        for key, kind, pack_id, size in self._walk_packs():
            if meta_only and kind != "meta":
                continue
            report.packs_scanned += 1
            try:
                header, entries, damage = self.pack_entries(key, kind, size)
            except (CorruptBackupError, NotFoundError) as exc:
                report.damaged.append(str(exc))
                continue
            if damage:
                report.damaged.append(damage)
            yield key, kind, pack_id, size, header, entries

    def repair_snapshots(self) -> RepairReport:
        """Write a pointer for every snapshot blob in the meta packs that no readable pointer names (signed
        by this key). Needs a key that can read."""
        self._need_reader("repair snapshots")
        t0 = time.monotonic()
        report = RepairReport("snapshots")
        named = {doc["snapshot"] for _, doc, _, _ in self._pointers() if doc is not None}
        for key, kind, pack_id, size, header, entries in self._scan_packs(report, meta_only=True):
            for e in entries:
                if e.type != SNAPSHOT:
                    continue
                report.blobs_found += 1
                if e.id.hex() in named:
                    continue
                try:
                    plain = self._read_one(Located(e, pack_id, "meta", header.raw), key, expect_meta=True)
                    manifest = decode_snapshot(plain, key)
                except CorruptBackupError as exc:
                    report.damaged.append(str(exc))
                    continue
                doc = {"data_id": manifest["data_id"], "timestamp": manifest["timestamp"], "snapshot": e.id.hex(),
                       "pack": pack_id.hex(), "offset": e.offset, "stored": e.stored, "raw": e.raw,
                       "compression": e.compression, "key_id": self.ring.key_id, "created": iso(now_utc()),
                       "repaired": True}
                pkey = new_pointer_key()
                with self.storage.open_write(pkey) as w:
                    w.write(encode_pointer(self.ring, doc))
                named.add(e.id.hex())
                report.written.append(pkey)
        report.seconds = round(time.monotonic() - t0, 3)
        return report

    def check_repository(self, read_fraction: float = 0.0, progress: Progress | None = None) -> CheckReport:
        tally = self._check(read_fraction, progress)
        counts = {k: getattr(tally, k) for k in ("snapshots", "packs", "index_files", "blobs", "packs_read",
                                                  "orphan_packs", "unused_blobs")}
        return CheckReport(self.storage.name, self.kind, tally.errors, tally.info, counts, read_fraction,
                           tally.bytes_read, tally.seconds)

    def _check(self, read_data: float, progress: Progress | None) -> _CheckTally:
        """Check the structure, the index against the packs (each indexed pack exists, with its size), the
        snapshots against the index (every chunk they use is indexed), the pointers' signatures, and
        decrypt and verify ``read_data`` of the packs (0.0 none, 1.0 all). Orphans are information."""
        t0 = time.monotonic()
        report = _CheckTally()
        ring = self.ring
        from .retention import TOP_LEVEL_NAMES

        known_top = {"packs", "index", SNAPSHOT_PREFIX, WRITERS_PREFIX, *_key_layer_names(), *TOP_LEVEL_NAMES}
        for e in self.storage.list(""):
            if e.name not in known_top:
                report.info.append(f"{e.name}: not part of a dedup repository")
        # index files: each readable
        index_names = [e.name for e in self.storage.list(INDEX_PREFIX) if not e.is_dir]
        report.index_files = len(index_names)
        for name in index_names:
            try:
                read_index(self.storage, ring, f"{INDEX_PREFIX}/{name}")
            except CorruptBackupError as exc:
                report.errors.append(str(exc))
            except NotFoundError:
                pass
        # Never reset the cache here: a restore or a backup on this machine may be using it right now; the
        # index files were each read above, and sync rebuilds the cache itself if one it had read is gone.
        self.sync_index()
        # the index against the packs: what was indexed *before* the walk must be in it (a pack is committed
        # before any index names it); packs indexed since, by a backup running now, are not judged
        indexed_packs = list(self.cache.packs())
        listed: dict[bytes, tuple[str, str, int]] = {}
        for key, kind, pack_id, size in self._walk_packs():
            listed[pack_id] = (key, kind, size)
        report.packs = len(listed)
        indexed: dict[bytes, int] = {}
        for pack_id, kind, size, count in indexed_packs:
            indexed[pack_id] = size
            report.blobs += count
            got = listed.get(pack_id)
            if got is None:
                report.errors.append(f"{pack_key(kind, pack_id)}: indexed but missing")
            elif got[2] != size:
                report.errors.append(f"{got[0]}: {got[2]} bytes, the index says {size}")
        orphans = [v[0] for k, v in listed.items() if k not in indexed]
        report.orphan_packs = len(orphans)
        if orphans:
            report.info.append(f"{len(orphans)} pack(s) in no index (left by interrupted backups, or repo "
                               f"repair index): {', '.join(sorted(orphans)[:5])}{' ...' if len(orphans) > 5 else ''}")
        # writers
        for e in self.storage.list(WRITERS_PREFIX):
            report.info.append(f"{WRITERS_PREFIX}/{e.name}: a backup running or killed (last beat {e.modified})")
        # snapshots against the index (readers only)
        pointers = self._pointers() if ring.can_read else []
        self.sync_index()  # a backup committed since the first sync: its pointer is listed, so its index too
        if ring.can_read:  # forgotten backups are not checked (prune may have swept their data)
            hidden = self.retention().check(report.errors, report.info)
            pointers = [p for p in pointers if p[1] is None or p[1]["snapshot"] not in hidden]
        if not ring.can_read:
            report.info.append(f"the {ring.role} key cannot read snapshots: snapshots and data not checked")
        report.snapshots = len(pointers)
        used = _UsedSet(self.cache.directory)
        try:
            for name, doc, why, _ in pointers:
                where = f"{SNAPSHOT_PREFIX}/{name}"
                if doc is None:
                    report.errors.append(why or f"{where}: unreadable")
                    continue
                try:
                    manifest = self.snapshot(doc, where)
                    used.add(bytes.fromhex(doc["snapshot"]))
                    self._check_snapshot(manifest, where, used, report)
                except CorruptBackupError as exc:
                    report.errors.append(str(exc))
            if ring.can_read:
                report.unused_blobs = max(0, report.blobs - used.count())
                if report.unused_blobs:
                    report.info.append(f"{report.unused_blobs} indexed blob(s) used by no snapshot")
        finally:
            used.close()
        # read data
        if read_data > 0 and ring.can_read:
            keys = sorted(listed.items())
            n = len(keys) if read_data >= 1 else min(len(keys), max(1, round(read_data * len(keys))))
            for pack_id, (key, kind, size) in random.sample(keys, n):
                report.packs_read += 1
                report.bytes_read += size
                report.errors.extend(self._verify_pack(key, kind, pack_id))
                if progress is not None:
                    progress(size)
        report.seconds = round(time.monotonic() - t0, 3)
        return report

    def _check_snapshot(self, manifest: dict[str, Any], where: str, used: _UsedSet, report: _CheckTally) -> None:
        for s in manifest["sources"]:
            for a in SourceRecord.from_json(s).artifacts:
                label = f"{manifest['data_id']}/{manifest['timestamp']}/{s['name']}/{a.name}"
                missing = 0
                for hexid in a.location.get("lists", []):
                    lid = bytes.fromhex(hexid)
                    if used.add(lid):
                        continue  # this list was checked already (an unchanged artifact)
                    try:
                        data = self.read_blob(lid, "chunk list")
                    except CorruptBackupError as exc:
                        report.errors.append(f"{label}: {exc}")
                        continue
                    for cid, _ in decode_chunk_list(data, label):
                        if not used.add(cid) and not self.cache.has(cid):
                            missing += 1
                if missing:
                    report.errors.append(f"{label}: {missing} chunk(s) not in the index")

    def _verify_pack(self, key: str, kind: str, pack_id: bytes) -> list[str]:
        """Read a whole pack, decrypt every blob and check it against its id and the index."""
        try:
            with self.storage.open_read(key) as f:
                whole = f.read()
        except NotFoundError:
            return [f"{key}: missing"]
        errors = []
        try:
            header, entries, damage = self.pack_entries(key, kind, whole=whole)
        except CorruptBackupError as exc:
            return [str(exc)]
        if damage:
            errors.append(damage)
        opener = self.ring.pack_opener(header.sealer_header)
        view = memoryview(whole)
        for e in entries:
            try:
                entry, payload = open_blob(opener, header, view[e.offset:], e.offset, key, expected=e)
                plain = decompress(payload, entry, key)
                ok = len(plain) == e.raw and (self.ring.chunk_id(plain) if e.type == DATA
                                              else meta_id(self.ring, plain)) == e.id
                if not ok:
                    errors.append(f"{key}: blob {e.id.hex()} does not match its id")
                loc = self.cache.locate(e.id)
                if loc is not None and loc.pack_id == pack_id and loc.entry != e:
                    errors.append(f"{key}: blob {e.id.hex()} is not where the index says")
            except CorruptBackupError as exc:
                errors.append(str(exc))
        return errors


class _UsedSet:
    """A set of blob ids on disk (a temporary SQLite file): check never holds the repository's ids in memory."""

    def __init__(self, directory: Path) -> None:
        import sqlite3
        import tempfile

        fd, self._path = tempfile.mkstemp(prefix="check-", suffix=".sqlite", dir=directory)
        os.close(fd)
        self._db = sqlite3.connect(self._path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE used(id BLOB PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("BEGIN")

    def add(self, blob_id: bytes) -> bool:
        """Add; True if it was there already."""
        return self._db.execute("INSERT OR IGNORE INTO used VALUES(?)", (blob_id,)).rowcount == 0

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM used").fetchone()[0]

    def close(self) -> None:
        self._db.close()
        try:
            os.unlink(self._path)
        except OSError:
            pass


def _passphrase(settings: Settings) -> str:
    if "passphrase" not in settings:
        raise settings.error("passphrase", "missing: a dedup repository is unlocked with a passphrase")
    return settings.get_str("passphrase")


def _key_layer_names() -> tuple[str, ...]:
    """The top-level names the key layer stores (config, keys)."""
    try:
        from . import keys

        return tuple(getattr(keys, "TOP_LEVEL_NAMES", ("config", "keys")))
    except ImportError:
        return ("config", "keys")
