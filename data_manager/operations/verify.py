"""Verifying backups: every artifact read back and checked (size and digest), or a random sample of them.

``--sample 5%`` reads a random subset of a backup's artifacts holding about 5% of its bytes (at least one
artifact), like restic's ``--read-data-subset``: repeated samples cover the whole backup over time, at a
fraction of the cost of a full read each time. What :class:`VerifyResult` reports is what was read.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from .. import progress as progress_mod
from ..errors import DataManagerError, UsageError, error_code
from ..engines.base import RepositoryEngine
from ..engines.records import ArtifactRecord, BackupInfo
from ..scrub import scrub
from ..units import parse_percent


def parse_sample(text: str, option: str = "--sample") -> float:
    """``"5%"`` -> 0.05 (more than 0, at most 100%); errors name ``option``."""
    share = parse_percent(text)
    if share:
        return share
    raise UsageError(f"{option} {text!r}: expected a percentage of the stored data, like 5% or 0.5%")


def choose_sample(artifacts: list[tuple[str, ArtifactRecord]], fraction: float,
                  rng: random.Random | None = None) -> list[tuple[str, ArtifactRecord]]:
    """A random subset of ``(source, artifact)`` holding at least ``fraction`` of the bytes (at least one
    artifact when there is any), in the backup's order (so each source's artifacts are read together)."""
    if fraction >= 1 or not artifacts:
        return list(artifacts)
    rng = rng or random.SystemRandom()
    order = list(range(len(artifacts)))
    rng.shuffle(order)
    want = fraction * sum(a.size for _, a in artifacts)
    chosen: set[int] = set()
    got = 0
    for i in order:
        if chosen and got >= want:
            break
        chosen.add(i)
        got += artifacts[i][1].size
    return [artifacts[i] for i in sorted(chosen)]


@dataclass
class VerifyResult:
    """One backup verified: what was read, and whether it was intact."""

    data_id: str
    timestamp: str
    ok: bool = True
    sample: float | None = None  # the fraction asked for; None: every artifact
    bytes: int = 0  # original bytes read and checked
    artifacts: int = 0
    total_bytes: int = 0  # of the whole backup
    total_artifacts: int = 0
    seconds: float = 0.0
    error: str | None = None  # why not ok (scrubbed, one line)
    code: str | None = None  # error_code() of the failure
    exit_code: int = 0

    def to_json(self) -> dict[str, Any]:
        return vars(self).copy()


def verify_backup(repo: RepositoryEngine, info: BackupInfo, *, sample: float | None = None,
                  progress: Any = None) -> VerifyResult:
    """Read ``info``'s artifacts (all, or a sample) back through the checking reader. Raises the first
    failure (:class:`~data_manager.errors.CorruptBackupError` for damage, exit 4)."""
    t0 = time.monotonic()
    records = list(repo.source_records(info))
    everything = [(r.name, a) for r in records for a in r.artifacts]
    chosen = choose_sample(everything, sample) if sample is not None else everything
    result = VerifyResult(info.data_id, info.timestamp, sample=sample, total_bytes=sum(a.size for _, a in everything),
                          total_artifacts=len(everything))
    progress_mod.begin(progress, f"verify {info.data_id}/{info.timestamp}", sum(a.size for _, a in chosen), len(chosen))
    try:
        for record in records:
            names = [a.name for source, a in chosen if source == record.name]
            if names:
                repo.artifacts(info, record.name, progress(record.name) if progress else None).verify(names)
                result.artifacts += len(names)
                result.bytes += sum(a.size for source, a in chosen if source == record.name)
    finally:
        if isinstance(progress, progress_mod.Progress):
            progress.done()
    result.seconds = round(time.monotonic() - t0, 3)
    return result


def failed(info: BackupInfo, exc: DataManagerError, sample: float | None) -> VerifyResult:
    """The result of a backup whose verify failed with ``exc`` (a damaged backup.json included)."""
    return VerifyResult(info.data_id, info.timestamp, ok=False, sample=sample, error=scrub((str(exc).splitlines() or [type(exc).__name__])[0]),
                        code=error_code(exc), exit_code=exc.exit_code)
