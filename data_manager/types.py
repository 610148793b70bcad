"""The small types a plugin sees: the base classes it implements and the objects the core hands it.

A plugin knows the core only through these and the hooks in :mod:`data_manager.hookspecs`:

* a **source** plugin implements :class:`Source` and registers a :class:`SourceType`;
* a **storage** plugin implements :class:`Storage` (and its :class:`ObjectWriter`) and registers a
  :class:`StorageType`;
* during a backup a source writes named artifacts to an :class:`ArtifactSink`; during a restore it reads
  them back from an :class:`ArtifactSet`. Both belong to the storage's repository engine
  (:mod:`data_manager.engines`), which owns layout, compression, encryption and checksums, so a source
  never hashes, compresses or names storage keys itself.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal, Protocol

from . import units
from .errors import ConfigError

Compression = Literal["auto", "zstd", "none"]
_MISSING: Any = object()
_SECRET_WORDS = re.compile(r"password|secret|token|credential|private|passwd|api_key", re.I)


# --------------------------------------------------------------------------- settings


class Settings:
    """One source's or storage's table from the config, with typed, self-explaining accessors.

    Values are already expanded (``${VAR}`` read from the environment). Every accessor raises a
    :class:`~data_manager.errors.ConfigError` that names the file, the dataset and the key, so a plugin
    validates its settings in ``__init__`` by simply reading them.
    """

    def __init__(
        self,
        values: Mapping[str, Any],
        *,
        where: str = "settings",
        raw: Mapping[str, Any] | None = None,
        secret_keys: Iterable[str] = (),
    ) -> None:
        self._values = dict(values)
        self._raw = dict(raw if raw is not None else values)
        self.where = where
        self.secret_keys = frozenset(secret_keys)

    # -- reading
    def __contains__(self, key: str) -> bool:
        return key in self._values

    def keys(self) -> list[str]:
        return list(self._values)

    def get(self, key: str, default: Any = None) -> Any:
        """The value as written, or ``default``."""
        return self._values.get(key, default)

    def error(self, key: str, problem: str) -> ConfigError:
        """A config error about ``key``, for a plugin's own checks (``raise settings.error(...)``)."""
        return ConfigError(f"{self.where}: key {key!r}: {problem}", key=key)

    def _typed(self, key: str, default: Any, kinds: tuple[type, ...], label: str) -> Any:
        if key not in self._values:
            if default is _MISSING:
                raise self.error(key, "missing (required)")
            return default
        value = self._values[key]
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(key, f"must be {label}, not {value!r}")
        if not isinstance(value, kinds):
            raise self.error(key, f"must be {label}, not {value!r}")
        return value

    def get_str(self, key: str, default: Any = _MISSING) -> str:
        value = self._typed(key, default, (str,), "a string")
        if value is not default and value == "":
            raise self.error(key, "must not be empty")
        return value

    def get_int(self, key: str, default: Any = _MISSING, *, minimum: int | None = None) -> int:
        value = self._values.get(key)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)  # "${PORT}" expands to a string
            self._values[key] = value
        value = self._typed(key, default, (int,), "an integer")
        if value is not default and minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, not {value}")
        return value

    def get_bool(self, key: str, default: Any = _MISSING) -> bool:
        value = self._values.get(key)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            self._values[key] = value = value.lower() == "true"
        return self._typed(key, default, (bool,), "true or false")

    def get_list(self, key: str, default: Any = _MISSING) -> list[str]:
        """A list of strings; a single string is taken as a list of one."""
        value = self._values.get(key, _MISSING)
        if isinstance(value, str):
            return [value]
        value = self._typed(key, default, (list,), "a list of strings")
        if value is not default and not all(isinstance(v, str) for v in value):
            raise self.error(key, "must be a list of strings")
        return list(value) if value is not None else value

    def get_size(self, key: str, default: Any = _MISSING, *, minimum: int = 1) -> int:
        """A size in bytes: ``128MiB``, ``"64 MB"``, ``1GiB`` or a number (see :mod:`data_manager.units`)."""
        if key not in self._values:
            return self._typed(key, default, (int,), "a size")
        n = units.parse_size(self._values[key])
        if n is None:
            raise self.error(key, f"must be {units.SIZE_HINT}, not {self._values[key]!r}")
        if n < minimum:
            raise self.error(key, f"must be a size of at least {minimum} bytes, not {n}")
        return n

    def get_duration(self, key: str, default: Any = _MISSING) -> float:
        """A duration in seconds: ``90s``, ``30m``, ``6h``, ``2d`` or a number of seconds."""
        if key not in self._values:
            return self._typed(key, default, (int, float), "a duration")
        seconds = units.parse_duration(self._values[key])
        if seconds is None:
            raise self.error(key, f"must be {units.DURATION_HINT}, not {self._values[key]!r}")
        return seconds

    def get_path(self, key: str, default: Any = _MISSING) -> Path:
        value = self.get_str(key, default)
        return Path(value).expanduser() if isinstance(value, str) else value

    def check_known(self, allowed: Iterable[str]) -> None:
        """Reject keys the plugin does not know (a typo must not be ignored silently)."""
        unknown = sorted(set(self._values) - set(allowed))
        if unknown:
            raise self.error(unknown[0], f"unknown key (known: {', '.join(sorted(allowed))})")

    # -- deriving
    def is_secret(self, key: str) -> bool:
        return key in self.secret_keys or bool(_SECRET_WORDS.search(key))

    def public(self) -> dict[str, Any]:
        """The settings safe to record in metadata and logs.

        Values are recorded as written in the config (``${VAR}`` not expanded), secret keys as ``"***"``,
        and passwords inside URLs removed.
        """
        out: dict[str, Any] = {}
        for key, value in self._raw.items():
            out[key] = "***" if self.is_secret(key) else redact_urls(value)
        return out

    def overridden(self, overrides: Mapping[str, Any], *, where: str | None = None) -> Settings:
        """A copy with some values replaced (restore to another place)."""
        values = {**self._values, **overrides}
        raw = {**self._raw, **overrides}
        return Settings(values, where=where or self.where, raw=raw, secret_keys=self.secret_keys)


_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]*)@")
_KV_PASSWORD = re.compile(r"(?P<key>\bpassword\s*=\s*)(?P<pw>'[^']*'|\S+)", re.I)


def redact_urls(value: Any) -> Any:
    """Remove passwords from URLs and libpq ``password=...`` pairs inside a value (recursively)."""
    if isinstance(value, str):
        value = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", value)
        return _KV_PASSWORD.sub(lambda m: f"{m['key']}***", value)
    if isinstance(value, list):
        return [redact_urls(v) for v in value]
    if isinstance(value, dict):
        return {k: redact_urls(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- the repository engine, as sources see it


class ArtifactWriter(Protocol):
    """A file-like sink for one artifact. Closing it commits it; ``abort`` discards it.

    Optional ``recall(item, size, header) -> Mapping | None``: what :meth:`reuse` would return, asked before the
    source opens the item, changing nothing (see :meth:`data_manager.volumes.Volumes.recall`).

    Optional ``file_digest(path) -> str | None``, for a sink that :attr:`~ArtifactSink.hashes_files`: right
    after the :meth:`cut` that follows a tar file member's data and padding, the BLAKE3 (hex) of the data of
    that member, if it was named ``path``; ``None`` otherwise. It covers exactly the bytes the stream held
    (a source that padded a shrunk file with zeros gets the digest with the zeros)."""

    #: Once closed, for a writer opened with ``digest=True`` (:meth:`ArtifactSink.open`): the BLAKE3 (hex) of
    #: the bytes written. A source whose item fills an artifact alone can take it as the item's digest rather
    #: than hash the same bytes again. ``""`` when the engine appended reused items (:meth:`reuse`), and may be
    #: ``""`` for a writer opened without ``digest=True``.
    digest: str

    def write(self, data: bytes | bytearray | memoryview) -> int: ...

    def cut(self) -> None:
        """A hint: a file (or row group) boundary here. A chunking engine ends a chunk at this point,
        so an unchanged file dedups whatever precedes it; other engines ignore it."""
        ...

    def reuse(self, item: str, size: int) -> Mapping[str, Any] | None:
        """Right after :meth:`cut`: the next ``size`` bytes are ``item``, a fingerprint of unchanged content
        (e.g. ``path, size, mtime_ns, inode, ctime_ns``). If the engine stored exactly that item before (see
        :meth:`remember`), it appends those bytes itself and returns what the source attached then: the source
        writes nothing for the item (and must not count on :attr:`digest`, which is then ``""``). ``None``:
        write the bytes as usual. Engines without a files cache always return ``None``."""
        ...

    def remember(self, item: str, size: int, extra: Mapping[str, Any]) -> None:
        """Right after the :meth:`cut` that ends an item: the ``size`` bytes written since the cut before it
        were ``item``; a later backup may :meth:`reuse` them, getting ``extra`` (JSON-serialisable, e.g. the
        item's own digest) back. Never call it for an item that changed while it was read."""
        ...

    def close(self) -> None: ...
    def abort(self) -> None: ...
    def __enter__(self) -> ArtifactWriter: ...
    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class ArtifactSink(Protocol):
    """Where a source writes its backup. Given to :meth:`Source.backup`."""

    source_name: str

    #: True when the engine stores artifacts as deduplicated chunks, encrypted (``dedup``):
    #: :meth:`ArtifactWriter.cut` ends a chunk, so a source may cut between small items too (in groups, so
    #: that one changed item changes one chunk, not every chunk of the thousand items around it), and nobody
    #: reads an artifact in the storage directly (an index a source keeps plain for people elsewhere may as
    #: well be compressed). False (``worm``, ``sync``): cuts change nothing; artifacts may be read as files.
    chunked: bool

    #: False when the engine stores every artifact's bytes as they are, whatever ``compression`` says
    #: (``sync``: a mirror of plain files): a source need not sample its data to choose a compression.
    compresses: bool

    #: True when the engine hashes the data of every file member of a tar volume itself (``sync``: the
    #: digest travels with the file's object): a source that writes such volumes may skip its own hash of a
    #: file and take :meth:`ArtifactWriter.file_digest` instead. False: hash what you need yourself.
    hashes_files: bool

    #: True when a later ``backup --resume`` is offered what this run commits (:meth:`resumed`; ``worm``): a
    #: source that can continue from a checkpoint of its own should write them (see
    #: :mod:`data_manager.checkpoints`). False (``dedup``, ``sync``): the engine keeps what a stopped run
    #: stored in its own way, and a source that starts over costs reading time only.
    resumable: bool

    def open(self, name: str, *, compression: Compression = "auto", digest: bool = False) -> ArtifactWriter:
        """Start the artifact ``name`` (a relative path like ``"schema.sql"`` or ``"tables/t1.copy"``).

        ``compression``: ``"auto"`` compresses with zstd unless the first bytes show the data does not
        compress; ``"zstd"`` and ``"none"`` force the choice (use ``"none"`` for already compressed data).
        ``digest``: the source will read :attr:`ArtifactWriter.digest`, so the engine must hash the bytes
        written. Without it an engine that checks its artifacts another way may skip that pass (``dedup``
        checks every chunk against its keyed id: one BLAKE3 pass less over all the data).
        Several artifacts may be open at once. Each must be closed (committed) or aborted.
        """
        ...

    def set_info(self, **info: Any) -> None:
        """Record JSON-serialisable facts the restore will need (server version, file index name...)."""
        ...

    # ---- continuing a source an interrupted run left half done (``backup --resume``)
    #
    # A source that writes its data as several artifacts (e.g. an export as parts) may adopt those an
    # interrupted run of this same backup committed, instead of writing them again; it calls :meth:`resumed`
    # before it opens any artifact. What an engine must do: record each artifact durably as it commits it (a
    # run may be killed at any byte), at least for a source that called :meth:`resumed` (others need not pay
    # for it); offer only artifacts that run committed whole and that it still finds as recorded (object
    # present, stored size equal), in commit order; make each readable (:meth:`open_resumed`, size and digest
    # checked at EOF); delete, when the source finishes, every offered one that was not kept; treat an
    # :meth:`open` of an offered name as replacing it. What it must never do: offer an artifact of another
    # backup or source, or one a write cut short; keep an offered one in the record unless :meth:`keep` was
    # called. An engine that cannot keep artifacts offers none (``{}``): the source then starts over.

    def resumed(self) -> Mapping[str, int]:
        """Resuming: the artifacts of this source an interrupted run of this backup committed and the engine
        kept, name -> size (original bytes), in the order they were committed. ``{}`` when not resuming, when
        the interrupted run committed none, or when the engine cannot keep them (the source starts over).
        None of them is part of this backup unless :meth:`keep` adopts it. Calling it (before the first
        :meth:`open`, in every run) also asks the engine to record what this run commits for a later one."""
        ...

    def keep(self, name: str) -> None:
        """Adopt the offered artifact ``name`` (one of :meth:`resumed`) into this run's record, after those
        adopted or committed before it. Check it first (read it back with :meth:`open_resumed`) where a wrong
        byte matters: the engine checked only that it is there with the size it had."""
        ...

    def open_resumed(self, name: str) -> BinaryIO:
        """The original bytes of an offered or kept artifact; reading it to EOF checks its size and digest
        against what the interrupted run recorded (:class:`~data_manager.errors.CorruptBackupError`)."""
        ...

    def discard(self, name: str) -> None:
        """Remove an artifact this run committed or kept (a source that must start over, e.g. an export
        that changed while it was read): it is no longer part of this backup, and its data is deleted
        where the engine can (else left for ``prune``)."""
        ...



class ArtifactSet(Protocol):
    """One source's artifacts in a backup. Given to :meth:`Source.restore` and :meth:`Source.verify`."""

    source_name: str
    info: Mapping[str, Any]  # what the source recorded with set_info()
    settings: Mapping[str, Any]  # the source's public settings at backup time

    def names(self) -> list[str]:
        """The artifact names, in the order they were committed."""
        ...

    def size(self, name: str) -> int:
        """The artifact's uncompressed size in bytes."""
        ...

    def open(self, name: str) -> BinaryIO:
        """A stream of the artifact's original bytes (decompressed).

        Reading it to the end checks size and digest (BLAKE3) and raises
        :class:`~data_manager.errors.CorruptBackupError` on a mismatch, so a source must read every
        artifact to EOF before it makes its restore visible.
        """
        ...

    def verify(self, names: Iterable[str] | None = None) -> None:
        """Read artifacts back and check them (all by default), raising ``CorruptBackupError``.

        For sources that cannot roll back a restore: call this before changing anything.
        """
        ...


# --------------------------------------------------------------------------- sources


class Source(ABC):
    """One data source of a dataset: a database, a keyspace, a bucket, a directory.

    Subclasses are created once per operation as ``cls(name, settings)`` and must:

    * validate their settings in ``__init__`` (through the :class:`Settings` accessors) and do no I/O there;
    * stream: never hold a whole table, object or file in memory, never write a temporary copy of the data;
    * raise :class:`~data_manager.errors.SourceError` with one clear line for expected failures
      (unreachable server, wrong password, missing database); never put a secret in a message;
    * import heavy client libraries inside methods, not at module import.
    """

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings

    def describe(self) -> str:
        """Where the data lives, for humans (no secrets), e.g. ``"postgresql://db1:5432/exp"``."""
        return ""

    def check(self) -> None:
        """Make sure the source is reachable and readable; raise ``SourceError`` with one clear line if not.

        Called by ``status``, ``--dry-run``, and before every backup on a thread of its own while the core
        asks the guards and takes the lock. It must only read: never write, lock or hold a connection open.
        """

    @abstractmethod
    def backup(self, sink: ArtifactSink) -> None:
        """Write the source's data as artifacts to ``sink``: a consistent copy, streamed.

        If this raises, the backup is incomplete and never used; the core discards what was written.
        """

    def restore_leftovers(self, remove: bool) -> list[str]:
        """What interrupted restores of this source left beside its target (staging copies, a target moved
        aside), as strings for humans; removed first when ``remove``. ``cleanup`` calls this while it holds
        the dataset's lock, so no restore of it is running. Look only where this source's own restore
        stages, never elsewhere. The default: nothing to clean.
        """
        return []

    @abstractmethod
    def restore(self, artifacts: ArtifactSet) -> None:
        """Put the data back where ``self.settings`` says, replacing what is there.

        Complete it, or leave the target as it was: stage beside the target and swap, or restore in one
        transaction. Read every artifact to EOF (checksums are checked there) before the result becomes
        visible. Where a store cannot promise this, call ``artifacts.verify()`` first and document exactly
        what a failed restore leaves.
        """


@dataclass(frozen=True)
class SourceType:
    """A kind of data source a plugin provides, e.g. ``postgres``."""

    name: str
    factory: Callable[[str, Settings], Source]
    description: str = ""
    secret_keys: tuple[str, ...] = ()
    #: The settings that say where a restore writes (``("path",)`` for a directory). A backup's recorded
    #: values of these are never used: a source missing from the config is restored only where the user
    #: says (``--set NAME.KEY=...``), so a storage's content cannot choose where data is written. A type
    #: that names none needs at least one ``--set`` for such a source.
    target_keys: tuple[str, ...] = ()
    #: Whether the source continues a stopped backup from what it committed (``ArtifactSink.resumed``, e.g.
    #: checkpoints between volumes) on an engine that offers it, rather than starting over: ``status`` and the
    #: service tell people whose sources must fit in one backup window.
    resumes: bool = False


# --------------------------------------------------------------------------- storages


@dataclass(frozen=True)
class Entry:
    """A child of a storage prefix: an object or a "directory" (a prefix with objects below it)."""

    name: str
    is_dir: bool
    size: int | None = None
    modified: datetime | None = None


class ObjectWriter(ABC):
    """A streaming write of one object. The object exists under its key only after :meth:`commit`."""

    @abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes. Must not keep more than a bounded buffer (e.g. one upload part) in memory."""

    @abstractmethod
    def commit(self) -> None:
        """Make the object visible, complete, under its key (rename, complete multipart upload...)."""

    @abstractmethod
    def abort(self) -> None:
        """Discard everything written. Idempotent; called after a failed write or commit."""

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is None:
            self.commit()
        else:
            self.abort()


@dataclass(frozen=True)
class FileAttributes:
    """The file an object mirrors (the ``sync`` engine): given to :meth:`Storage.open_write_deferred` so that
    a storage can keep them with the object, where people and other tools look. Never read back: the
    engine's manifest is the record."""

    mtime_ns: int
    mode: int  #: permission bits (``st_mode & 0o7777``)
    blake3: str = ""  #: the BLAKE3 of the content; "" when not known before it is written (a streamed file)


class Storage(ABC):
    """A place backups are kept: a filesystem root, a bucket prefix, a Drive folder.

    Keys are ``/``-separated relative paths (``"exp42/20261123T072900Z/raw/vol-000001.tar.zst"``);
    the storage maps them below its root. A storage must:

    * stream both ways with bounded memory;
    * never make a partly written object visible under its final key (write under a temporary name or as
      an unfinished multipart upload, then commit);
    * retry transient errors itself, and raise :class:`~data_manager.errors.StorageError` with one clear
      line (never a secret) once it gives up; :class:`~data_manager.errors.NotFoundError` for a missing key;
    * import heavy client libraries inside methods, not at module import.
    """

    #: True only when every ``list()`` shows every object whose writer committed before that listing
    #: began, from any client (read-after-write consistent listings: a local filesystem, AWS S3 since 2020,
    #: MinIO). Dataset locks then need no settle time when a contender finds itself alone. Leave it False
    #: when a listing may lag a commit (Google Drive, an NFS client's attribute cache).
    consistent_listing: bool = False

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings

    @abstractmethod
    def location(self) -> str:
        """Where backups go, for humans (no secrets), e.g. ``"/srv/backups"``, ``"s3://bucket/prefix"``."""

    def check(self) -> None:
        """Make sure the storage is reachable and usable; raise ``StorageError`` if not."""

    @abstractmethod
    def open_write(self, key: str) -> ObjectWriter:
        """Start writing the object ``key`` (replacing it on commit if it exists). Once the writer's commit
        returns, the object is durable: it survives a crash of the machine."""

    def open_write_deferred(self, key: str, attrs: FileAttributes | None = None) -> ObjectWriter:
        """As :meth:`open_write`, for an engine writing many objects that become part of a backup together
        (a mirror of a tree): the object must be complete and visible under its key once committed, as
        always, but need only be durable once a later :meth:`persist` returns; a storage that flushes once
        for many objects (a filesystem: one ``syncfs`` instead of two ``fsync`` per object) saves most of
        its time on small objects. The caller must :meth:`persist` before it records anywhere that the
        object is stored. The default: :meth:`open_write` (each commit durable).

        ``attrs``: the file the object mirrors. A storage that can keep them with the object does, where
        other tools read them (``s3``: user metadata as rclone writes it; ``filesystem``: the file's mtime,
        never its mode, since objects stay private); the default ignores them. Never fail a write for them."""
        return self.open_write(key)

    def persist(self) -> None:
        """Make every object committed so far by a writer of :meth:`open_write_deferred` durable, or raise
        :class:`~data_manager.errors.StorageError` (some of them may then be lost to a crash: the caller
        must not count them stored). The default: nothing to do (each commit was durable)."""

    @abstractmethod
    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        """A stream of the object's bytes from ``offset``, ``length`` bytes or to the end."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[Entry]:
        """The immediate children of ``prefix`` (``""`` is the root), in any order.

        Unfinished writes are never listed. A missing prefix lists nothing.
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object. A missing object is not an error."""

    def exists(self, key: str) -> bool:
        parent, _, name = key.rpartition("/")
        return any(e.name == name and not e.is_dir for e in self.list(parent))

    def walk(self, prefix: str) -> Iterator[tuple[str, Entry]]:
        """Every object below ``prefix``, recursively, as ``(key, entry)``."""
        for entry in self.list(prefix):
            key = f"{prefix}/{entry.name}" if prefix else entry.name
            if entry.is_dir:
                yield from self.walk(key)
            else:
                yield key, entry

    def delete_tree(self, prefix: str) -> None:
        """Delete every object below ``prefix``."""
        for key, _ in list(self.walk(prefix)):
            self.delete(key)

    def sweep_unfinished(self, prefix: str, older_than: float, *, remove: bool) -> list[str]:
        """What killed writers left below ``prefix`` (temporary objects a writer never committed nor aborted)
        whose last change is more than ``older_than`` seconds ago, as keys for humans; removed first when
        ``remove``. Never touches a committed object or a write younger than ``older_than``. The default:
        nothing (a storage whose unfinished writes are invisible and expire by themselves).
        """
        return []

    def close(self) -> None:
        """Release connections."""


@dataclass(frozen=True)
class StorageType:
    """A kind of backup storage a plugin provides, e.g. ``filesystem`` or ``s3``."""

    name: str
    factory: Callable[[str, Settings], Storage]
    description: str = ""
    secret_keys: tuple[str, ...] = ()


# --------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class SourceSpec:
    """A source as configured: its name in the dataset, its type, its settings."""

    name: str
    type: str
    settings: Settings


@dataclass(frozen=True)
class Dataset:
    """A DATA_ID and what it is made of. Guards receive this; no secrets are reachable from ``str()``."""

    data_id: str
    storage: str
    sources: tuple[SourceSpec, ...]
    options: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.data_id


Operation = Literal["backup", "restore"]


__all__ = [
    "ArtifactSet",
    "ArtifactSink",
    "ArtifactWriter",
    "Compression",
    "Dataset",
    "Entry",
    "FileAttributes",
    "ObjectWriter",
    "Operation",
    "Settings",
    "Source",
    "SourceSpec",
    "SourceType",
    "Storage",
    "StorageType",
    "redact_urls",
]

