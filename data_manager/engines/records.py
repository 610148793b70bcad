"""The metadata every engine records and the core reads: artifacts, sources, backups.

These are the human-readable part of a backup (``backup.json`` in the ``worm`` engine, the decrypted
snapshot in ``dedup``). The core reads them for ``list``, ``restore`` and ``verify``; what an engine
needs to find an artifact's bytes again (a stored file name, a list of chunks) lives in
:attr:`ArtifactRecord.location`, which only that engine reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from blake3 import blake3

from ..timestamps import parse_timestamp

MANIFEST = "backup.json"
SOURCE_MANIFEST = "source.json"
RESERVED_NAMES = {MANIFEST, SOURCE_MANIFEST}


@dataclass
class ArtifactRecord:
    """One artifact: its original size and BLAKE3 digest, and how and where its engine stored it."""

    name: str
    size: int
    digest: str
    stored_size: int
    compression: str  # worm: zstd | none; dedup: chunks (each chunk compressed or not on its own)
    algorithm: str = "blake3"  # of ``digest``; "sha256" in format-1 worm backups; dedup: mostly "blake3-chunks"
    location: dict[str, Any] = field(default_factory=dict)  # engine-specific (dedup: its chunk lists)

    @property
    def stored_name(self) -> str:
        return self.name + (".zst" if self.compression == "zstd" else "")

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name,
            "file": self.stored_name,
            "size": self.size,
            self.algorithm: self.digest,
            "stored_size": self.stored_size,
            "compression": self.compression,
        }
        if self.location:
            doc["location"] = self.location
        return doc

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ArtifactRecord:
        # worm format 1 wrote sha256; dedup writes blake3-chunks unless a source asked for the plain digest
        algorithm = next((a for a in ("blake3", "sha256", "blake3-chunks") if a in d), "blake3")
        return cls(d["name"], d["size"], d[algorithm], d["stored_size"], d["compression"], algorithm,
                   dict(d.get("location") or {}))

    def hasher(self) -> Any:
        """A fresh hasher of :attr:`algorithm`."""
        return blake3() if self.algorithm == "blake3" else hashlib.sha256()


@dataclass
class SourceRecord:
    """One source's part of the metadata."""

    name: str
    type: str
    plugin: dict[str, str]
    settings: dict[str, Any]
    describe: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    started_at: str = ""
    finished_at: str = ""
    duration_seconds: float = 0.0

    @property
    def size(self) -> int:
        return sum(a.size for a in self.artifacts)

    @property
    def stored_size(self) -> int:
        return sum(a.stored_size for a in self.artifacts)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "plugin": self.plugin,
            "describe": self.describe,
            "settings": self.settings,
            "info": self.info,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_seconds": self.duration_seconds,
            "size": self.size,
            "stored_size": self.stored_size,
            "artifacts": [a.to_json() for a in self.artifacts],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SourceRecord:
        return cls(
            name=d["name"],
            type=d["type"],
            plugin=dict(d.get("plugin", {})),
            settings=dict(d.get("settings", {})),
            describe=d.get("describe", ""),
            info=dict(d.get("info", {})),
            artifacts=[ArtifactRecord.from_json(a) for a in d.get("artifacts", [])],
            started_at=d.get("started_at", ""),
            finished_at=d.get("finished_at", ""),
            duration_seconds=d.get("duration_seconds", 0.0),
        )


def checked_sources(manifest: Mapping[str, Any], where: str) -> list[SourceRecord]:
    """The sources of a backup's metadata read back from a storage, once everything that may become a
    key, a path or a count is known safe: the backup's own DATA_ID and TIMESTAMP, source names as the
    config allows them (each once), artifact names as a sink allows them (each once per source), sizes
    non-negative integers, digests strings. Anything else: :class:`CorruptBackupError` naming ``where``."""
    from ..config import NAME_RE
    from ..errors import CorruptBackupError
    from ..timestamps import is_timestamp

    data_id, timestamp = manifest.get("data_id"), manifest.get("timestamp")
    if not isinstance(data_id, str) or not NAME_RE.match(data_id) or not is_timestamp(timestamp):
        raise CorruptBackupError(f"{where}: bad data_id or timestamp")
    docs = manifest.get("sources")
    if not isinstance(docs, list):
        raise CorruptBackupError(f"{where}: no sources")
    out: list[SourceRecord] = []
    for doc in docs:
        try:
            rec = SourceRecord.from_json(doc)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptBackupError(f"{where}: unreadable source record ({exc})") from None
        if not isinstance(rec.name, str) or not NAME_RE.match(rec.name) or any(r.name == rec.name for r in out):
            raise CorruptBackupError(f"{where}: bad or duplicate source name {rec.name!r}")
        names: set[str] = set()
        for art in rec.artifacts:
            try:
                check_artifact_name(art.name)
            except (ValueError, TypeError, AttributeError):
                raise CorruptBackupError(f"{where}: source {rec.name!r}: bad artifact name {art.name!r}") from None
            if art.name in names:
                raise CorruptBackupError(f"{where}: source {rec.name!r}: artifact {art.name!r} twice")
            names.add(art.name)
            if any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in (art.size, art.stored_size)):
                raise CorruptBackupError(f"{where}: artifact {art.name!r}: bad size or stored_size")
            if not isinstance(art.digest, str) or not isinstance(art.compression, str):
                raise CorruptBackupError(f"{where}: artifact {art.name!r}: bad digest or compression")
        out.append(rec)
    return out


def check_artifact_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a safe relative artifact name (``a/b.tar``, no dot parts)."""
    parts = name.split("/")
    if (
        not name
        or name in RESERVED_NAMES
        or any(p in ("", ".", "..") or p.startswith(".") for p in parts)
        or "\\" in name
        or "\x00" in name
    ):
        raise ValueError(f"bad artifact name {name!r}")


@dataclass
class BackupInfo:
    """One backup as ``list`` shows it."""

    data_id: str
    timestamp: str
    complete: bool
    size: int | None = None
    stored_size: int | None = None
    sources: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    damaged: str | None = None  # why its metadata cannot be used (it is then not complete)
    storages: list[str] = field(default_factory=list)  # where it is complete (``list backup``: copies too)
    incomplete_in: list[str] = field(default_factory=list)  # where an incomplete or damaged copy of it is
    verified: str | None = None  # when it last passed a verify here (from the state database), if ever
    verified_sample: float | None = None  # the fraction of its bytes that verify read; None: all

    @property
    def when(self) -> datetime:
        return parse_timestamp(self.timestamp)

    def to_json(self) -> dict[str, Any]:
        return {
            "data_id": self.data_id,
            "timestamp": self.timestamp,
            "complete": self.complete,
            "size": self.size,
            "stored_size": self.stored_size,
            "sources": self.sources,
            "damaged": self.damaged,
            "storages": self.storages,
            "incomplete_in": self.incomplete_in,
            "verified": self.verified,
            "verified_sample": self.verified_sample,
        }


@dataclass
class CopiedBackup:
    """What a copy did (or, in a dry run, would do) with one backup."""

    timestamp: str
    state: str  # copied | already complete | would copy
    artifacts: int = 0  # artifacts copied (or to copy)
    skipped: int = 0  # artifacts the target already had
    bytes: int = 0  # stored bytes copied (or to copy)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return vars(self).copy()


@dataclass
class CheckReport:
    """What ``data-manager check`` found in one repository: errors make it fail (exit 4); notes (orphans,
    leftovers of interrupted runs) are information."""

    storage: str
    engine: str
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # backups, artifacts, packs, chunks... as found
    read_fraction: float = 0.0  # of the stored data decrypted/decompressed and verified
    read_bytes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "ok": self.ok}
