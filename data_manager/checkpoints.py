"""Checkpoints inside a source that writes volumes, so ``backup --resume`` continues where it stopped.

A source such as ``directory`` may take hours: when a backup window closes or the process is killed, an
engine that offers what an interrupted run committed (:attr:`~data_manager.types.ArtifactSink.resumable`,
``worm``) lets it keep the volumes written up to its last checkpoint instead of starting over.

A checkpoint is an artifact ``checkpoint-NNNNNN.jsonl``, committed only after every volume it names: a
first line of JSON (its number, every volume written so far, the source's own state, e.g. the last path
walked) and then the index lines written since the previous one. When the source finishes, its whole index
is written as usual and every checkpoint discarded: a finished source's artifacts are those of a run that
never stopped. A checkpoint read back is the storage's word, so everything in it is checked before use:
a number out of order, a volume the engine does not offer or a malformed state ends the chain there.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import CorruptBackupError, DataManagerError, first_line
from .types import ArtifactSink

log = logging.getLogger(__name__)

_NAME = re.compile(r"checkpoint-(\d{6})\.jsonl")


def _name(number: int) -> str:
    return f"checkpoint-{number:06d}.jsonl"


@dataclass
class Resumed:
    """What the last usable checkpoint of an interrupted run holds."""

    state: dict[str, Any]  # the source's own, as it saved it
    volumes: list[str]  # kept: part of this run's backup now
    index: bytes  # the index lines of every kept checkpoint, in order
    next_volume: int  # the number the next volume takes


@dataclass
class Checkpoints:
    """One source's checkpoints in one run: :meth:`resume` at the start, :meth:`save` at volume boundaries,
    :meth:`finish` once the source's index is committed. Only for a sink that is :attr:`resumable`."""

    sink: ArtifactSink
    volume: re.Pattern[str]  # the source's volume names (``vol-(\\d{6})\\.tar``): group 1 is the number
    count: int = 0  # checkpoints kept or written
    volumes: list[str] = field(default_factory=list)  # every volume so far that a checkpoint names
    names: list[str] = field(default_factory=list)  # the checkpoint artifacts, to discard at the end

    @classmethod
    def start(cls, sink: ArtifactSink, volume: re.Pattern[str]) -> Checkpoints | None:
        """Checkpoints for this sink, or None where an engine keeps nothing of a stopped source for it (the
        source starts over then, and writes none)."""
        return cls(sink, volume) if getattr(sink, "resumable", False) else None

    def resume(self, check: Callable[[dict[str, Any]], bool]) -> Resumed | None:
        """Keep the volumes and checkpoints up to the last usable checkpoint the interrupted run committed;
        None when there is none (not resuming, or it stopped before its first). ``check`` says whether a
        saved state is one the source can continue from. Call it before the source opens any artifact: the
        engine deletes whatever else the interrupted run left."""
        offered = self.sink.resumed()
        chain: list[tuple[str, dict[str, Any], bytes]] = []
        for name in offered:
            if not _NAME.fullmatch(name):
                continue
            head, index = self._read(name, len(chain) + 1, chain[-1][1]["volumes"] if chain else [], offered)
            if head is None or not check(head["state"]):
                log.warning("source %s: %s is not a checkpoint this source wrote (damaged, or naming volumes "
                            "that are gone): resuming from checkpoint %d", self.sink.source_name, name, len(chain))
                break
            chain.append((name, head, index))
        if not chain:
            return None
        last = chain[-1][1]
        for name, _, _ in chain:  # the checkpoints too: kept until the source's index is committed
            self.sink.keep(name)
        for vol in last["volumes"]:
            self.sink.keep(vol)
        self.count, self.volumes, self.names = len(chain), list(last["volumes"]), [c[0] for c in chain]
        numbers = [int(m.group(1)) for v in self.volumes if (m := self.volume.fullmatch(v))]
        log.info("source %s: resuming after checkpoint %d (%d volumes kept)", self.sink.source_name, self.count,
                 len(self.volumes))
        return Resumed(last["state"], list(self.volumes), b"".join(c[2] for c in chain), max(numbers, default=0) + 1)

    def _read(self, name: str, number: int, before: list[str],
              offered: Mapping[str, int]) -> tuple[dict[str, Any] | None, bytes]:
        """Checkpoint ``number``'s head and index lines, or None where it is not as this class writes them:
        its volumes must extend the previous checkpoint's (``before``) with ones the engine offers."""
        try:
            with self.sink.open_resumed(name) as f:
                data = f.read()  # to EOF: size and digest checked against the interrupted run's record
        except CorruptBackupError:
            return None, b""
        line, _, index = data.partition(b"\n")
        try:
            head = json.loads(line)
        except ValueError:
            return None, b""
        ok = (isinstance(head, dict) and head.get("checkpoint") == number and name == _name(number)
              and isinstance(head.get("state"), dict) and isinstance(vols := head.get("volumes"), list)
              and vols[:len(before)] == before and len(set(vols)) == len(vols)
              and all(isinstance(v, str) and self.volume.fullmatch(v) and v in offered for v in vols)
              and (not index or index.endswith(b"\n")))
        return (head, index) if ok else (None, b"")

    def save(self, state: Mapping[str, Any], new_volumes: list[str], index: bytes) -> None:
        """A checkpoint after ``new_volumes`` (every volume since the last one, all committed already):
        ``state`` is what the source needs to continue (JSON), ``index`` its index lines since the last."""
        self.count += 1
        self.volumes += new_volumes
        name = _name(self.count)
        head = json.dumps({"checkpoint": self.count, "volumes": self.volumes, "state": dict(state)},
                          ensure_ascii=True, separators=(",", ":")).encode()
        with self.sink.open(name, compression="zstd") as w:
            w.write(head + b"\n")
            w.write(index)
        self.names.append(name)

    def finish(self) -> None:
        """The source's index is committed: its checkpoints are no part of the backup any more."""
        for name in self.names:
            try:
                self.sink.discard(name)
            except DataManagerError as exc:  # e.g. credentials that may not delete: out of the record anyway
                log.info("source %s: %s not deleted (%s); no backup refers to it", self.sink.source_name, name,
                         first_line(exc))
        self.names = []
