"""Source ``minio``: the objects of a bucket (or of a prefix in it), from MinIO or any S3 server.

Backup lists the objects (recursively, paginated, over libcurl by :mod:`.listing`; the SDK lists what that
could not, and resumes a broken listing after its last key). Objects up to ``small_size`` are fetched
whole, ``parallel`` at a time, over libcurl (:mod:`.fetch`); larger ones (and any small one the fast path
hands back) go to ``parallel`` worker threads, which stream them through the SDK, 1 MiB at a time and in
ranges of ``range_size``. Each fetching thread writes volumes of its own: plain concatenations of object
bytes, one stream compressed with zstd and one stored as is (:func:`~data_manager.volumes.incompressible`),
rolling over at ``volume_size``; an object of half that or more has a volume to itself. ``objects.jsonl``
lists every object: its key relative to the prefix, size, ETag, last-modified, content type and other
content headers, user metadata, storage class, BLAKE3 digest, and the volume and offset of its bytes.
Artifact names are numbers (``vol-000001``), never derived from keys, so any key (unicode, spaces, ``..``)
is safe.

Restore reads each volume once, in parallel over volumes, and writes every object to the target bucket
and prefix (created if missing): each object's digest is checked before its upload is completed, so no
damaged object ever becomes visible. Objects not in the backup are left alone unless ``delete_extra``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import queue
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import TYPE_CHECKING, Any

from blake3 import blake3

from data_manager.checkpoints import Checkpoints
from data_manager.errors import CorruptBackupError, DataManagerError, SourceError
from data_manager.threads import put_unless_stopped
from data_manager.types import ArtifactSet, ArtifactSink, Settings, Source
from data_manager.volumes import SAMPLE, Volumes, incompressible, numbering

from .connection import CONNECTION_KEYS, Connection, ConnectionSettings
from .download import ObjectChanged, ObjectGone, ObjectReader
from .multipart import DEFAULT_PART, MIN_PART, ObjectUpload
from .storage import normalize_prefix

if TYPE_CHECKING:
    from .fetch import SmallObjects
    from .listing import Lister

log = logging.getLogger(__name__)

INDEX = "objects.jsonl"
CHUNK = 1 << 20
BATCH_OBJECTS = 20_000  # a checkpoint after this many objects at most (see backup())
_VOLUME = re.compile(r"vol-(\d{6})")
# Content headers kept with an object, besides Content-Type and user metadata.
_CONTENT_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language", "expires")
_META = "x-amz-meta-"


# What an index line may hold, checked on restore before anything is written: the index comes back from
# the storage, and whoever can write there must not get headers applied that the backup never records
# (x-amz-acl, x-amz-website-redirect-location...), nor odd keys or sizes.
MAX_KEY_BYTES = 1024  # S3's limit on a key, in UTF-8 bytes (with the target prefix)
MAX_SIZE = 5 << 40  # S3's largest object, 5 TiB
MAX_METADATA_BYTES = 2048  # S3's limit on user metadata, names and values in UTF-8
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # an HTTP header name (RFC 9110 token)
_HEX = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class _Stopped(Exception):
    pass


def check_entry(e: Any, prefix: str) -> dict[str, Any]:
    """An index line, once every value the restore uses is what a backup writes; ValueError otherwise."""
    if not isinstance(e, dict):
        raise ValueError("is not an object")
    key = e.get("key")
    if not isinstance(key, str) or not key:
        raise ValueError(f"key {key!r} is not a non-empty string")
    try:
        size = len((prefix + key).encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"key {key!r} is not valid UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise ValueError(f"key {key[:40]!r}... is {size} bytes with the prefix (S3 takes {MAX_KEY_BYTES})")
    if "\0" in key or any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"key {key!r} holds a NUL or a '.'/'..' segment (never backed up)")
    for name, limit in (("size", MAX_SIZE), ("offset", None)):
        v = e.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (limit is not None and v > limit):
            raise ValueError(f"{name} {v!r} of {key!r} is not a byte count" + (" up to 5 TiB" if limit else ""))
    if not isinstance(e.get("volume"), str) or not isinstance(e.get("changed", False), bool):
        raise ValueError(f"volume or changed of {key!r} is not what a backup writes")
    if not any(isinstance(e.get(a), str) and _HEX.fullmatch(e[a]) for a in ("blake3", "sha256")):
        raise ValueError(f"{key!r} has no blake3 or sha256 digest of 64 hex digits")

    def header_value(what: str, v: Any) -> None:
        if not isinstance(v, str) or _CONTROL.search(v) or len(v) > 8192:
            raise ValueError(f"{what} of {key!r} is not a header value: {str(v)[:40]!r}")

    if e.get("content_type") is not None:
        header_value("content_type", e["content_type"])
    headers, metadata = e.get("headers") or {}, e.get("metadata") or {}
    if not isinstance(headers, dict) or not isinstance(metadata, dict):
        raise ValueError(f"headers or metadata of {key!r} is not an object")
    for h, v in headers.items():
        if h not in _CONTENT_HEADERS:  # the allow-list of the backup
            raise ValueError(f"header {h!r} of {key!r} is not one a backup keeps ({', '.join(_CONTENT_HEADERS)})")
        header_value(h, v)
    for m, v in metadata.items():
        if not isinstance(m, str) or not _TOKEN.fullmatch(m):
            raise ValueError(f"metadata name {m!r} of {key!r} is not a header name")
        header_value(f"metadata {m}", v)
    if sum(len(m.encode()) + len(v.encode("utf-8", "replace")) for m, v in metadata.items()) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata of {key!r} exceeds S3's {MAX_METADATA_BYTES} bytes")
    return e


def object_digest(entry: dict[str, Any]) -> tuple[str, Any, str]:
    """The digest an index entry records: (algorithm, a fresh hasher, expected hex).

    Backups since blake3 record ``blake3``; older ones ``sha256``, which restore still checks.
    """
    if "blake3" in entry:
        return "blake3", blake3(), entry["blake3"]
    if "sha256" in entry:
        return "sha256", hashlib.sha256(), entry["sha256"]
    raise CorruptBackupError(f"index entry of {entry.get('key')!r} has no digest")


class MinioSource(Source):
    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        settings.check_known(
            CONNECTION_KEYS
            | {"bucket", "prefix", "include", "exclude", "parallel", "volume_size", "range_size", "part_size",
               "small_size", "delete_extra", "verify_first", "check_etag"}
        )
        self.cs = ConnectionSettings.read(settings)
        self.bucket = settings.get_str("bucket")
        self.prefix = normalize_prefix(settings.get_str("prefix", ""))
        self.include = settings.get_list("include", [])
        self.exclude = settings.get_list("exclude", [])
        self.parallel = settings.get_int("parallel", 8, minimum=1)
        self.volume_size = settings.get_size("volume_size", 128 << 20)
        self.range_size = settings.get_size("range_size", 64 << 20, minimum=CHUNK)
        # Fetched whole, in memory: parallel x small_size bytes at most. 0 sends every object through the SDK.
        self.small_size = min(settings.get_size("small_size", 1 << 20, minimum=0), self.range_size)
        self.part_size = settings.get_size("part_size", DEFAULT_PART, minimum=MIN_PART)
        self.delete_extra = settings.get_bool("delete_extra", False)
        self.verify_first = settings.get_bool("verify_first", True)
        self.check_etag = settings.get_bool("check_etag", True)
        self.conn = Connection(self.cs, f"source {name!r} ({self.describe()})", SourceError, 2 * self.parallel + 4)
        self._curl: bool | None = None

    def describe(self) -> str:
        return self.cs.url(self.bucket, self.prefix)

    def selected(self, rel: str) -> bool:
        """Is the object ``rel`` (its key below the prefix) backed up? Globs as in fnmatch: ``*`` crosses ``/``."""
        if self.include and not any(fnmatch.fnmatchcase(rel, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(rel, p) for p in self.exclude)

    def check(self) -> None:
        if not self.conn.call("checking the bucket", self.conn.client.bucket_exists, self.bucket):
            raise SourceError(f"{self.conn.label}: bucket {self.bucket!r} does not exist")
        self.conn.call("listing the bucket", lambda: next(iter(
            self.conn.client.list_objects(self.bucket, prefix=self.prefix or None)), None))

    def _resumable(self, state: dict[str, Any]) -> bool:
        """Whether a checkpoint's state is one backup() saves for this bucket and prefix (the storage's word)."""
        return (isinstance(state.get("after"), str) and state["after"].startswith(self.prefix)
                and all(type(state.get(k)) is int and state[k] >= 0 for k in ("number", "objects", "bytes"))
                and all(isinstance(state.get(k), list) and all(isinstance(x, str) for x in state[k])
                        for k in ("changed", "vanished", "unreadable")))

    def _objects(self, prefix: str, start_after: str | None = None) -> Iterator[Any]:
        """Every object below ``prefix`` (current versions; after the key ``start_after``), paginated: over
        libcurl where it loads (:mod:`.listing`), then through the SDK from the last key that got, which also
        resumes a broken listing after its last key."""
        lister = self._lister()
        if lister is not None:
            for obj in lister.objects(prefix, start_after):
                start_after = obj.object_name
                yield obj
            if lister.complete:
                return
        attempt = 0
        while True:
            try:
                for obj in self.conn.client.list_objects(
                    self.bucket, prefix=prefix or None, recursive=True, start_after=start_after
                ):
                    attempt = 0
                    start_after = obj.object_name
                    yield obj
                return
            except DataManagerError:
                raise
            except Exception as exc:
                if not self.conn.known(exc):
                    raise
                if not self.conn.backoff(attempt, "listing the bucket", exc):
                    raise self.conn.error("listing the bucket", exc) from None
                attempt += 1

    # ------------------------------------------------------------------ backup

    def _libcurl(self) -> bool:
        """Can pycurl be loaded here (for :mod:`.fetch` and :mod:`.listing`)? Imported on first use, not at
        registration: every CLI command registers plugins. Where it cannot, the SDK does all the work."""
        if self._curl is None:
            try:
                import pycurl  # noqa: F401
            except ImportError as exc:
                log.info("source %s: libcurl (pycurl) cannot be loaded here (%s); the SDK lists and fetches every "
                         "object", self.name, exc)
                self._curl = False
            else:
                self._curl = True
        return self._curl

    def _lister(self) -> Lister | None:
        if not self._libcurl():
            return None
        from .listing import Lister

        return Lister(self.cs, self.bucket, self.conn.region(self.bucket))

    def _small_objects(self) -> SmallObjects | None:
        """The libcurl fetcher of small objects (None: every object goes through the SDK)."""
        if not self.small_size or not self._libcurl():
            return None
        from .fetch import SmallObjects

        return SmallObjects(self.cs, self.bucket, self.conn.region(self.bucket), self.parallel, self.small_size)

    def backup(self, sink: ArtifactSink) -> None:
        self.check()
        # On an engine that offers a stopped run's artifacts (worm), a checkpoint after every batch of objects
        # (data_manager.checkpoints): --resume lists the bucket after the batch's last key.
        checkpoints = Checkpoints.start(sink, _VOLUME)
        resumed = checkpoints.resume(self._resumable) if checkpoints is not None else None
        lock = threading.Condition()
        names = numbering("vol-{:06d}", resumed.next_volume if resumed else 1)
        todo: queue.Queue[tuple[int, Any] | None] = queue.Queue(self.parallel * 16)
        small: queue.Queue[tuple[int, Any] | None] = queue.Queue(self.parallel * 16)
        stop = threading.Event()
        errors: list[BaseException] = []
        stats: dict[str, Any] = {"objects": 0, "bytes": 0, "changed": [], "vanished": [], "unreadable": []}
        done = [0]  # objects written (or found deleted), of those handed to the fetching threads
        since: list[bytes] = []  # index lines since the last checkpoint
        after, number = None, 0
        if resumed is not None:
            stats.update({k: resumed.state[k] for k in stats})
            after, number = resumed.state["after"], resumed.state["number"]
        index = sink.open(INDEX, compression="auto")
        if resumed is not None:
            index.write(resumed.index)
        fetcher = self._small_objects()
        # One (compressed, stored) pair of volumes per fetching thread: the SDK workers, then the fetcher.
        volumes = [
            # digest: an object alone in its volume takes the volume's digest as its own
            (Volumes(sink, "zstd", self.volume_size, names, digest=True),
             Volumes(sink, "none", self.volume_size, names, digest=True))
            for _ in range(self.parallel + 1)
        ]

        def write_entry(entry: dict[str, Any]) -> None:
            line = (json.dumps(entry, ensure_ascii=True, separators=(",", ":")) + "\n").encode()
            with lock:
                index.write(line)
                if checkpoints is not None:
                    since.append(line)
                if entry.get("changed"):
                    stats["changed"].append(entry["key"])
                else:
                    stats["objects"] += 1
                    stats["bytes"] += entry["size"]
                done[0] += 1
                lock.notify_all()

        def put(q: queue.Queue[tuple[int, Any] | None], item: tuple[int, Any] | None) -> bool:
            return put_unless_stopped(q, item, stop)

        def work(packed: Volumes, stored: Volumes) -> None:
            while not stop.is_set():
                try:
                    item = todo.get(timeout=0.2)
                except queue.Empty:
                    continue
                if item is None:
                    return
                entry = self._copy(item[0], item[1], packed, stored, stop)
                if entry is None:
                    with lock:
                        stats["vanished"].append(item[1].object_name[len(self.prefix):])
                        done[0] += 1
                        lock.notify_all()
                else:
                    write_entry(entry)

        def fetch(packed: Volumes, stored: Volumes) -> None:
            assert fetcher is not None
            fetcher.run(
                small,
                lambda item, headers, body: write_entry(self._store(item, headers, body, packed, stored)),
                lambda item: put(todo, item),
                stop,
            )

        def thread(fill: Callable[[Volumes, Volumes], None], packed: Volumes, stored: Volumes) -> None:
            """A fetching thread: ``fill`` its volumes, then close them; its first error stops every thread."""
            try:
                fill(packed, stored)
                if not stop.is_set():
                    packed.close()
                    stored.close()
            except BaseException as exc:
                errors.append(exc)
                stop.set()

        workers = [threading.Thread(target=thread, args=(work, *v), name=f"dm-minio-{i}", daemon=True)
                   for i, v in enumerate(volumes[:-1])]
        fetching = [threading.Thread(target=thread, args=(fetch, *volumes[-1]), name="dm-minio-small", daemon=True)
                    ] if fetcher else []

        def checkpoint(last: str, handed: int) -> bool:
            """Once every object handed over is written, close every volume and save a checkpoint after the
            key ``last``; False if the backup stopped meanwhile."""
            assert checkpoints is not None
            with lock:
                while done[0] < handed and not stop.is_set():
                    lock.wait(0.2)
            if stop.is_set():
                return False
            for packed, stored in volumes:  # every fetching thread waits for work: nothing writes to them
                packed.close()
                stored.close()
            known = set(checkpoints.volumes)
            new = [n for p, s in volumes for n in p.names + s.names if n not in known]
            with lock:
                text = b"".join(since)
                since.clear()
                state = {**stats, "after": last, "number": number}
            checkpoints.save(state, new, text)
            return True

        # a batch: what all fetching threads fill their volumes with about once, or many small objects
        batch, batched, listed = self.volume_size * (self.parallel + 1), 0, 0
        for t in workers + fetching:
            t.start()
        try:
            handed = 0  # objects given to the fetching threads by this run
            for obj in self._objects(self.prefix, after):
                rel = obj.object_name[len(self.prefix):]
                if not rel or not self.selected(rel):
                    continue
                if {".", ".."} & set(obj.object_name.split("/")):
                    stats["unreadable"].append(rel)  # some S3 servers allow such keys; the minio SDK refuses them
                    continue
                number += 1
                if not put(small if fetcher and (obj.size or 0) <= self.small_size else todo, (number, obj)):
                    break
                handed += 1
                batched += obj.size or 0
                listed += 1
                if checkpoints is not None and (batched >= batch or listed >= BATCH_OBJECTS):
                    if not checkpoint(obj.object_name, handed):
                        break
                    batched = listed = 0
            if fetching:
                put(small, None)
                fetching[0].join()  # its hand-backs go to the workers' queue, so it ends first
            for _ in workers:
                put(todo, None)
            for t in workers:
                t.join()
            if errors:
                raise errors[0]
            index.close()
            if checkpoints is not None:
                checkpoints.finish()
        except BaseException:
            stop.set()
            for t in workers + fetching:
                t.join()
            for packed, stored in volumes:
                packed.abort()
                stored.abort()
            index.abort()
            raise
        if fetcher is not None:
            log.debug("source %s: %d small objects fetched over libcurl, %d handed to the SDK path",
                      self.name, fetcher.fetched, fetcher.handed_back)
        if stats["changed"]:
            log.warning("source %s: %d objects changed while being read, not backed up: %s",
                        self.name, len(stats["changed"]), stats["changed"][:5])
        if stats["unreadable"]:
            log.warning("source %s: %d objects with '.' or '..' key segments cannot be read with the minio SDK, "
                        "not backed up: %s", self.name, len(stats["unreadable"]), stats["unreadable"][:5])
        if stats["vanished"]:
            log.warning("source %s: %d objects deleted while the backup ran", self.name, len(stats["vanished"]))
        sink.set_info(
            index=INDEX,
            bucket=self.bucket,
            prefix=self.prefix,
            objects=stats["objects"],
            bytes=stats["bytes"],
            volumes=sorted([*(resumed.volumes if resumed else []), *(n for p, s in volumes for n in p.names + s.names)]),
            changed_during_backup=stats["changed"][:100],
            deleted_during_backup=stats["vanished"][:100],
            not_backed_up_dot_segments=stats["unreadable"][:100],
        )

    def _entry(self, number: int, obj: Any, headers: dict[str, str], etag: str | None, size: int, digest: str,
               volume: str, offset: int) -> dict[str, Any]:
        """An object's index line, from its listing and the headers of its GET."""
        return {
            "n": number,
            "key": obj.object_name[len(self.prefix):],
            "size": size,
            "etag": etag,
            "last_modified": obj.last_modified.isoformat() if obj.last_modified else headers.get("last-modified"),
            "content_type": headers.get("content-type", ""),
            "headers": {h: headers[h] for h in _CONTENT_HEADERS if h in headers},
            "metadata": {k[len(_META):]: v for k, v in headers.items() if k.startswith(_META)},
            "storage_class": headers.get("x-amz-storage-class") or obj.storage_class or "STANDARD",
            "blake3": digest,
            "volume": volume,
            "offset": offset,
        }

    def _store(self, item: tuple[int, Any], headers: dict[str, str], body: bytearray, packed: Volumes,
               stored: Volumes) -> dict[str, Any]:
        """A small object fetched whole (by :mod:`.fetch`) into a volume; its index line."""
        number, obj = item
        size = len(body)
        incompressible_ = size >= SAMPLE and incompressible(obj.object_name, body, headers.get("content-type", ""))
        volume = stored if incompressible_ else packed
        name, offset = volume.start()
        volume.write(body)
        volume.roll()
        etag = headers.get("etag", "").strip('"') or None
        return self._entry(number, obj, headers, etag, size, blake3(body).hexdigest(), name, offset)

    def _copy(self, number: int, obj: Any, packed: Volumes, stored: Volumes, stop: threading.Event) -> dict[str, Any] | None:
        """An object streamed through the SDK into a volume; its index line (None: deleted since the listing)."""
        key = obj.object_name
        try:
            reader = ObjectReader(self.conn, self.bucket, key, range_size=self.range_size, label=f"s3://{self.bucket}/{key}")
        except ObjectGone:
            return None  # deleted since the listing
        except ObjectChanged:  # cannot happen on the first request; kept for clarity
            return None
        with closing(reader):
            headers = reader.headers
            size = reader.size or 0
            first = reader.read(CHUNK) if size else b""
            big = size >= SAMPLE
            volume = stored if big and incompressible(key, first, headers.get("content-type", "")) else packed
            # An object of half a volume or more gets a volume of its own, whose digest (the core's BLAKE3 of
            # it) is the object's: its bytes are hashed once, not twice. Smaller ones are hashed here.
            alone = size >= self.volume_size // 2
            if alone:
                volume.close()
            name, offset = volume.start()
            if big and not alone:
                volume.cut()  # a chunking engine starts a chunk here: the object dedups wherever it lands
            digest = None if alone else blake3()
            written = 0
            changed = False
            data = first
            try:
                while data:
                    if digest is not None:
                        digest.update(data)
                    volume.write(data)
                    written += len(data)
                    if stop.is_set():
                        raise _Stopped
                    data = reader.read(CHUNK)
            except ObjectChanged:
                changed = True
            if written != size:
                if not changed:
                    raise SourceError(f"{self.conn.label}: {key}: read {written} bytes, expected {size}")
                zeros = bytes(min(CHUNK, size - written))
                while written < size:  # keep the volume's layout; the entry says not to restore this
                    part = zeros[: size - written]
                    volume.write(part)
                    written += len(part)
        if big and not alone:
            volume.cut()
        hexdigest = volume.close() if digest is None else digest.hexdigest()
        volume.roll()
        entry = self._entry(number, obj, headers, reader.etag, size, hexdigest, name, offset)
        if changed:
            entry["changed"] = True
        return entry

    # ------------------------------------------------------------------ restore

    def _read_index(self, artifacts: ArtifactSet) -> dict[str, list[dict[str, Any]]]:
        by_volume: dict[str, list[dict[str, Any]]] = {}
        name = artifacts.info.get("index", INDEX)
        keys: set[str] = set()
        with artifacts.open(name) as f:
            for number, line in enumerate(f, 1):
                try:
                    e = json.loads(line)
                except ValueError:
                    raise CorruptBackupError(f"{self.name}/{name}: unreadable line {number}") from None
                try:
                    check_entry(e, self.prefix)
                except ValueError as exc:
                    raise CorruptBackupError(f"{self.name}/{name}: line {number}: {exc} (corrupt or tampered "
                                             "backup)") from None
                if e["key"] in keys:
                    raise CorruptBackupError(f"{self.name}/{name}: line {number}: key {e['key']!r} listed twice")
                keys.add(e["key"])
                by_volume.setdefault(e["volume"], []).append(e)
        for entries in by_volume.values():
            entries.sort(key=lambda e: e["offset"])
        return by_volume

    def restore(self, artifacts: ArtifactSet) -> None:
        client = self.conn.client
        if self.verify_first:
            artifacts.verify()
        # the whole index is read and checked before anything is written, the bucket included
        by_volume = self._read_index(artifacts)
        volumes = list(artifacts.info.get("volumes") or sorted(by_volume))
        missing = set(by_volume) - set(volumes)
        if missing or not all(isinstance(v, str) for v in volumes):
            raise CorruptBackupError(f"{self.name}/{INDEX}: names volumes not in the backup: {sorted(missing)[:3]}")
        if not self.conn.call("checking the bucket", client.bucket_exists, self.bucket):
            self.conn.call(f"creating bucket {self.bucket!r}", client.make_bucket, self.bucket)
        stop = threading.Event()
        errors: list[BaseException] = []
        todo: queue.Queue[str] = queue.Queue()
        for v in volumes:
            todo.put(v)
        workers = min(self.parallel, max(1, len(volumes)))
        # With several volumes restored at once each thread sends its part before filling the next (no
        # overlap): the other threads keep the server busy, and memory is parallel x part_size, not twice that.
        overlap = workers == 1

        def work() -> None:
            try:
                while not stop.is_set():
                    try:
                        volume = todo.get_nowait()
                    except queue.Empty:
                        return
                    self._restore_volume(artifacts, volume, by_volume.get(volume, []), stop, overlap)
            except BaseException as exc:
                errors.append(exc)
                stop.set()

        threads = [threading.Thread(target=work, name=f"dm-minio-restore-{i}", daemon=True)
                   for i in range(workers)]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException:
            stop.set()
            for t in threads:
                t.join()
            raise
        if errors:
            raise errors[0]
        if self.delete_extra:
            keep = {e["key"] for entries in by_volume.values() for e in entries}
            self._delete_extra(keep)

    def _restore_volume(self, artifacts: ArtifactSet, volume: str, entries: list[dict[str, Any]], stop: threading.Event,
                        overlap: bool) -> None:
        with artifacts.open(volume) as stream:
            pos = 0

            def skip(n: int) -> None:
                nonlocal pos
                while n > 0:
                    data = stream.read(min(n, CHUNK))
                    if not data:
                        raise CorruptBackupError(f"{self.name}/{volume}: ends before the objects it holds")
                    n -= len(data)
                    pos += len(data)

            for e in entries:
                if stop.is_set():
                    raise _Stopped
                skip(e["offset"] - pos)
                if e.get("changed"):
                    skip(e["size"])
                    continue
                self._restore_object(stream, volume, e, overlap)
                pos += e["size"]
            while stream.read(CHUNK):  # to EOF: the volume's own checksum is checked there
                pass

    def _restore_object(self, stream: Any, volume: str, e: dict[str, Any], overlap: bool) -> None:
        key = self.prefix + e["key"]
        headers = {"Content-Type": e.get("content_type") or "application/octet-stream"}
        # the backup's allow-list again (check_entry refused others already)
        headers.update({h.title(): v for h, v in (e.get("headers") or {}).items() if h in _CONTENT_HEADERS})
        headers.update({_META + k: v for k, v in (e.get("metadata") or {}).items()})
        upload = ObjectUpload(self.conn, self.bucket, key, part_size=self.part_size, headers=headers,
                              check_etag=self.check_etag, label=f"s3://{self.bucket}/{key}",
                              size=e["size"], overlap=overlap)
        try:
            algorithm, digest, expected = object_digest(e)
            left = e["size"]
            while left:
                data = stream.read(min(left, CHUNK))
                if not data:
                    raise CorruptBackupError(f"{self.name}/{volume}: ends inside object {e['key']!r}")
                digest.update(data)
                upload.write(data)
                left -= len(data)
            if digest.hexdigest() != expected:
                raise CorruptBackupError(f"{self.name}/{volume}: object {e['key']!r} does not match its {algorithm}")
            upload.commit()
        except BaseException:
            upload.abort()
            raise

    def _delete_extra(self, keep: set[str]) -> None:
        from minio.deleteobjects import DeleteObject

        extra = [
            obj.object_name for obj in self._objects(self.prefix)
            if obj.object_name[len(self.prefix):] not in keep and self.selected(obj.object_name[len(self.prefix):])
        ]
        for i in range(0, len(extra), 1000):
            batch = [DeleteObject(k) for k in extra[i : i + 1000]]

            def remove(batch: list[DeleteObject] = batch) -> None:
                failed = list(self.conn.client.remove_objects(self.bucket, batch))
                if failed:
                    raise SourceError(f"{self.conn.label}: cannot delete {failed[0].name}: {failed[0].code}")

            self.conn.call("deleting objects not in the backup", remove)
        if extra:
            log.info("source %s: deleted %d objects not in the backup", self.name, len(extra))
