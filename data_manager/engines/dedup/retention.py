"""Retention on the ``dedup`` engine: signed tombstones (``forget``), holds, and the two-phase ``prune``
(mark, then sweep in a later run), with the guard every backup runs so that a prune never deletes what a
backup is about to use. The format is in docs/engines.md ("Retention objects").

Objects (names random, 32 hex digits; nothing is ever changed once written)::

    tombstones/<id>        a forgotten backup: sealed, signed by an admin key; hides it from listings
    holds/<tag>-<id>       a hold: sealed, signed; <tag> = keyed id of (DATA_ID, TIMESTAMP), so a hold that
                           cannot be read still holds its backup
    prune/<id>             a prune plan (the mark): encrypted with the index key (every role reads it),
                           signed by an admin key: the packs to delete or repack and the blobs that die
    prune/<id>.done        written when that plan was swept

Who may do what: only an admin key forgets, releases holds and prunes (others: :class:`RefusedError`, exit
3); readers (admin, append) hold. Everything read back is untrusted: a tombstone or plan not signed by a
trusted admin key is ignored (and reported by ``check`` and ``prune``); a hold that cannot be checked still
holds. Liveness is never taken from a listing alone: every pointer that can be unsealed keeps its data,
signed or not, unless a valid tombstone names its snapshot (and no hold is on its backup).

Why a backup never loses data to a prune (docs/retention.md walks through it):

* a backup lists the plans when it starts (after its heartbeat) and treats the blobs of pending plans as
  absent (they are written again), and its heartbeat names the plans it knows;
* a sweep runs only ``delete_delay`` after its mark and while no live heartbeat lacks its plan (a backup
  that started before the mark and is still beating);
* a sweep deletes only blobs that its plan marked dead *and* that are still dead (liveness recomputed):
  what a backup committed after the mark survives;
* a backup that was paused past its heartbeat (a suspended laptop) checks at commit, before its pointer,
  every plan that appeared since it started: each blob it uses that such a plan marked dead is written again
  (read back, so an admin or append key), or the backup fails without a pointer. Plans carry a sequence
  number and the newest is never deleted, so a plan swept and removed while the backup slept is noticed.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import secrets
import socket
import sqlite3
import struct
import tempfile
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import CorruptBackupError, DataManagerError, NotFoundError, RefusedError, UsageError
from ...retention import check_timestamp, clean_text
from ...timestamps import is_timestamp, iso, now_utc, parse_timestamp
from ..records import SourceRecord
from .index import INDEX_PREFIX, PackRecord, read_index, write_index
from .packs import DATA, BlobEntry, open_blob, pack_key, parse_pack_header
from .snapshots import (POINTER_CONTEXT, POINTER_MAGIC, SNAPSHOT_PREFIX, WRITERS_PREFIX, decode_chunk_list,
                        decode_pointer, decode_writer)

if TYPE_CHECKING:
    from .engine import BlobStore, DedupBackupWriter, DedupEngine

log = logging.getLogger(__name__)

TOMBSTONES_PREFIX = "tombstones"
HOLDS_PREFIX = "holds"
PRUNE_PREFIX = "prune"
#: the top-level names this module stores (check knows them)
TOP_LEVEL_NAMES = (TOMBSTONES_PREFIX, HOLDS_PREFIX, PRUNE_PREFIX)

TOMBSTONE_MAGIC = b"DMTOMB01"
HOLD_MAGIC = b"DMHOLD01"
PLAN_MAGIC = b"DMPRUNE1"
DONE_MAGIC = b"DMPDONE1"
TOMBSTONE_FORMAT = "data-manager-dedup-tombstone/1"
HOLD_FORMAT = "data-manager-dedup-hold/1"
PLAN_FORMAT = "data-manager-dedup-prune/1"
DONE_FORMAT = "data-manager-dedup-prune-done/1"
# Sealing contexts and signature labels: one per kind, so no object passes for another.
TOMBSTONE_CONTEXT = b"dm-tombstone"
HOLD_CONTEXT = b"dm-hold"
PLAN_CONTEXT = b"dm-prune"
DONE_CONTEXT = b"dm-prune-done"

SMALL_LIMIT = 256 << 10  # a tombstone, hold or done record read back: at most this
PLAN_LIMIT = 512 << 20  # a plan: 16 million dead blob ids
POINTER_LIMIT = 1 << 20
ID_SIZE = 32

DEFAULT_DELETE_DELAY = 86400.0
#: a heartbeat older than this is a backup killed or paused: it no longer holds a sweep back
WRITER_STALE_SECONDS = 600.0
#: partly dead packs are rewritten (deadest first) until the unused bytes left are at most this share of the
#: repository (restic's --max-unused default)
DEFAULT_MAX_UNUSED = 0.05
#: a TIMESTAMP claimed by a non-admin key is believed when the storage wrote its pointer no more than this
#: after (a backup's duration: the default job time limit), nor more than SKEW before (clocks). A longer
#: backup only counts at its commit time; a forger can claim no more than this into the past.
PLAUSIBLE_LAG = timedelta(hours=6)
PLAUSIBLE_SKEW = timedelta(minutes=10)

_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HOLD_NAME = re.compile(r"([0-9a-f]{32})-([0-9a-f]{32})")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


# --------------------------------------------------------------------------- small helpers


class DiskSet:
    """A set of blob ids in a temporary SQLite file (journal off): memory stays flat however many ids.
    Thread-safe."""

    def __init__(self, directory: Path) -> None:
        fd, self.path = tempfile.mkstemp(prefix="retention-", suffix=".sqlite", dir=directory)
        os.close(fd)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE s(id BLOB PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("BEGIN")
        self._count = 0

    def add(self, blob_id: bytes) -> bool:
        """Add; True if it was not there yet."""
        with self._lock:
            new = self._db.execute("INSERT OR IGNORE INTO s VALUES(?)", (blob_id,)).rowcount == 1
            self._count += new
            return new

    def add_many(self, ids: Iterable[bytes]) -> None:
        with self._lock:
            before = self._db.total_changes
            self._db.executemany("INSERT OR IGNORE INTO s VALUES(?)", ((i,) for i in ids))
            self._count += self._db.total_changes - before

    def __contains__(self, blob_id: object) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM s WHERE id=?", (blob_id,)).fetchone() is not None

    def __len__(self) -> int:
        return self._count

    def ids(self) -> list[bytes]:
        """Every id, sorted."""
        with self._lock:
            return [bytes(i) for (i,) in self._db.execute("SELECT id FROM s ORDER BY id")]

    def close(self) -> None:
        with self._lock:
            self._db.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _frame(magic: bytes, ring: Any, body: bytes, label: bytes) -> bytes:
    """``magic | u16 key id length | key id | u16 signature length | signature | body``; the signature is
    the key's over ``label || 0x00 || body``."""
    signature = ring.sign(label + b"\0" + body)
    kid = ring.key_id.encode("ascii")
    return magic + _U16.pack(len(kid)) + kid + _U16.pack(len(signature)) + signature + body


def _unframe(magic: bytes, data: bytes, where: str) -> tuple[str, bytes, bytes]:
    try:
        if data[:8] != magic:
            raise ValueError("bad magic")
        (klen,) = _U16.unpack_from(data, 8)
        kid = data[10:10 + klen].decode("ascii")
        (slen,) = _U16.unpack_from(data, 10 + klen)
        at = 12 + klen
        signature = data[at:at + slen]
        body = data[at + slen:]
        if len(signature) != slen or not body or not _HEX32.fullmatch(kid):
            raise ValueError("truncated")
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise CorruptBackupError(f"{where}: not a {magic.decode(errors='replace')} object ({exc})") from None
    return kid, signature, body


def _read(storage: Any, key: str, limit: int) -> bytes:
    with storage.open_read(key) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise CorruptBackupError(f"{key}: larger than {limit} bytes")
    return bytes(data)


def _json(data: bytes, where: str, fmt: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise CorruptBackupError(f"{where}: unreadable ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise CorruptBackupError(f"{where}: not a {fmt} document")
    return doc


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "?"


def _when(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n}"


# --------------------------------------------------------------------------- what is read back


@dataclass
class Tombstone:
    """``tombstones/<name>``: ``doc`` once unsealed; ``valid`` only if signed by a trusted admin key."""

    name: str
    key_id: str = ""
    doc: dict[str, Any] | None = None
    valid: bool = False
    problem: str | None = None

    @property
    def snapshots(self) -> list[str]:
        return list(self.doc["snapshots"]) if self.doc else []


@dataclass
class Hold:
    """``holds/<tag>-<id>``: ``doc`` when it could be read; ``problem`` when not (it still holds ``tag``)."""

    name: str
    tag: str
    doc: dict[str, Any] | None = None
    verified: bool = False
    problem: str | None = None


@dataclass
class Plan:
    """A valid prune plan (signed by a trusted admin key): its document and its dead blob ids."""

    name: str
    doc: dict[str, Any]
    dead: bytes  # n x 32-byte blob ids
    done: bool = False

    @property
    def seq(self) -> int:
        return int(self.doc["seq"])

    @property
    def created(self) -> datetime:
        return _when(self.doc["created"]) or now_utc()

    def dead_ids(self) -> Iterator[bytes]:
        for at in range(0, len(self.dead), ID_SIZE):
            yield self.dead[at:at + ID_SIZE]


@dataclass
class Pointer:
    """``snapshots/<name>`` as prune sees it: verified (signature, unsealed), or only unsealed (a key since
    revoked, a forgery): both keep their data. ``doc`` None: it cannot even be unsealed."""

    name: str
    entry: Any
    doc: dict[str, Any] | None
    verified: bool
    problem: str | None = None


@dataclass
class Phase:
    """What one phase of prune did, or would do (``status``), in packs and bytes."""

    phase: str
    status: str
    plan: str | None = None
    reason: str = ""
    packs_deleted: int = 0
    bytes_deleted: int = 0
    packs_repacked: int = 0
    bytes_rewritten: int = 0
    bytes_freed_by_repack: int = 0
    blobs_dead: int = 0
    index_files: int = 0
    snapshots: int = 0
    tombstones: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))

    def describe(self) -> str:
        """One line, for people."""
        if self.status in ("waiting", "skipped", "nothing to do"):
            return f"{self.phase}: {self.status}" + (f": {self.reason}" if self.reason else "")
        would = self.status.startswith("would")
        delete, repack = ("would delete", "would rewrite") if would else (
            ("marked to delete", "marked to rewrite") if self.phase == "mark" else ("deleted", "rewrote"))
        text = (f"{self.phase}{f' (plan {self.plan})' if self.plan else ''}: {delete} {self.packs_deleted} pack(s) "
                f"({_size(self.bytes_deleted)}); {repack} {self.packs_repacked} pack(s) ({_size(self.bytes_rewritten)} "
                f"copied, {_size(self.bytes_freed_by_repack)} freed); {self.blobs_dead} dead blob(s); "
                f"{self.snapshots} forgotten backup(s)")
        if self.phase == "sweep":
            text += f", {self.index_files} index file(s) replaced"
        return text + (f"; {self.reason}" if self.reason else "")


# --------------------------------------------------------------------------- the engine's retention


class DedupRetention:
    """Tombstones, holds, plans and the two prune phases of one :class:`DedupEngine`."""

    def __init__(self, engine: DedupEngine) -> None:
        self.engine = engine
        self._tombstones: dict[str, Tombstone] = {}  # by name: objects never change
        self._holds: dict[str, Hold] = {}
        self._plans: dict[str, tuple[Plan | None, str | None]] = {}
        self._roles: dict[str, str] | None = None
        self._roles_read = 0.0
        self._lock = threading.Lock()

    @property
    def storage(self) -> Any:
        return self.engine.storage

    @property
    def ring(self) -> Any:
        return self.engine.ring

    # ---- signatures

    def role(self, key_id: str, refresh: bool = False) -> str | None:
        """The role of a trusted key (None: unknown, untrusted or revoked)."""
        from .keys import list_keys

        with self._lock:
            stale = key_id not in (self._roles or {}) and time.monotonic() - self._roles_read > 60
            if self._roles is None or refresh or stale:
                self._roles = {k.key_id: k.role for k in list_keys(self.storage) if k.signed_ok and not k.revoked}
                self._roles_read = time.monotonic()
            return self._roles.get(key_id)

    def _signed(self, kid: str, label: bytes, body: bytes, signature: bytes, admin: bool) -> bool:
        if not self.ring.verify_signature(kid, label + b"\0" + body, signature):
            return False
        return not admin or self.role(kid) == "admin"

    def need_admin(self, what: str) -> None:
        ring = self.ring
        if not ring.can_delete or self.role(ring.key_id, refresh=True) != "admin":
            raise RefusedError(f"key {ring.key_id} is {ring.role}: only an admin key may {what}")

    # ---- tombstones

    def tombstones(self) -> list[Tombstone]:
        out = []
        names = [e.name for e in self.storage.list(TOMBSTONES_PREFIX) if not e.is_dir]
        for name in sorted(names):
            t = self._tombstones.get(name)
            if t is None:
                t = self._read_tombstone(name)
                if t is None:
                    continue
                if t.valid or t.problem:
                    self._tombstones[name] = t
            out.append(t)
        return out

    def _read_tombstone(self, name: str) -> Tombstone | None:
        key = f"{TOMBSTONES_PREFIX}/{name}"
        t = Tombstone(name)
        try:
            data = _read(self.storage, key, SMALL_LIMIT)
            t.key_id, signature, sealed = _unframe(TOMBSTONE_MAGIC, data, key)
            if not self._signed(t.key_id, TOMBSTONE_CONTEXT, sealed, signature, admin=True):
                t.problem = f"{key}: not signed by a trusted admin key (key {t.key_id}); ignored"
                return t
            doc = _json(self.ring.unseal(sealed, TOMBSTONE_CONTEXT), key, TOMBSTONE_FORMAT)
            snaps, pointers = doc.get("snapshots"), doc.get("pointers")
            if (doc.get("key_id") != t.key_id or not isinstance(doc.get("data_id"), str)
                    or not is_timestamp(doc.get("timestamp"))
                    or not isinstance(snaps, list) or not all(isinstance(s, str) and _HEX64.fullmatch(s) for s in snaps)
                    or not isinstance(pointers, list)
                    or not all(isinstance(p, str) and _HEX32.fullmatch(p) for p in pointers)):
                raise CorruptBackupError(f"{key}: malformed tombstone")
            t.doc, t.valid = doc, True
        except NotFoundError:
            return None
        except RefusedError:
            raise
        except CorruptBackupError as exc:
            t.problem = f"{exc}; ignored"
        return t

    # ---- holds

    def tag(self, data_id: str, timestamp: str) -> str:
        """The name prefix of the holds of one backup: keyed, so only key holders can tell which it is."""
        return self.ring.chunk_id(HOLD_CONTEXT + b"\0" + data_id.encode() + b"\0" + timestamp.encode())[:16].hex()

    def all_holds(self) -> list[Hold]:
        out = []
        for e in self.storage.list(HOLDS_PREFIX):
            if e.is_dir:
                continue
            m = _HOLD_NAME.fullmatch(e.name)
            if m is None:
                if not e.name.startswith("."):
                    log.warning("%s/%s: not a hold (expected TAG-ID); ignored", HOLDS_PREFIX, clean_text(e.name, 80))
                continue
            h = self._holds.get(e.name)
            if h is None:
                h = self._read_hold(e.name, m.group(1))
                if h is None:
                    continue
                self._holds[e.name] = h
            out.append(h)
        return out

    def _read_hold(self, name: str, tag: str) -> Hold | None:
        key = f"{HOLDS_PREFIX}/{name}"
        h = Hold(name, tag)
        try:
            data = _read(self.storage, key, SMALL_LIMIT)
            kid, signature, sealed = _unframe(HOLD_MAGIC, data, key)
            doc = _json(self.ring.unseal(sealed, HOLD_CONTEXT), key, HOLD_FORMAT)
            if not isinstance(doc.get("data_id"), str) or not is_timestamp(doc.get("timestamp")):
                raise CorruptBackupError(f"{key}: malformed hold")
            if self.tag(doc["data_id"], doc["timestamp"]) != tag:
                raise CorruptBackupError(f"{key}: names {clean_text(doc['data_id'], 80)}/{doc['timestamp']}, "
                                         f"not the backup its name says")
            h.doc = doc
            h.verified = doc.get("key_id") == kid and self._signed(kid, HOLD_CONTEXT, sealed, signature, admin=False)
        except NotFoundError:
            return None
        except RefusedError:
            raise
        except CorruptBackupError as exc:
            h.problem = str(exc)
        return h

    def holds(self, data_id: str) -> dict[str, str]:
        """TIMESTAMP -> why, for people. Unreadable hold objects still hold the backup their name's tag
        names (matched against this dataset's backups, forgotten ones too)."""
        self.engine._need_reader("list holds")
        found = self.all_holds()
        if not found:
            return {}
        stamps = {d["timestamp"] for d in self._docs(data_id)}
        stamps |= {t.doc["timestamp"] for t in self.tombstones() if t.valid and t.doc and t.doc["data_id"] == data_id}
        by_tag = {self.tag(data_id, ts): ts for ts in stamps}
        best: dict[str, tuple[str, str]] = {}
        for h in found:
            if h.doc is not None:
                if h.doc["data_id"] != data_id:
                    continue
                ts = h.doc["timestamp"]
                reason = h.doc.get("reason") if isinstance(h.doc.get("reason"), str) else ""
                who = f"{h.doc.get('user', '?')}@{h.doc.get('host', '?')}, {h.doc.get('created', '?')}"
                text = f"{reason} ({who})" if reason else f"({who})"
                if not h.verified:
                    text += " [hold object not signed by a trusted key; still a hold]"
                created = str(h.doc.get("created", ""))
            elif h.tag in by_tag:
                ts, created = by_tag[h.tag], "~"  # sorts after any date: a damaged hold is never hidden
                text = f"unreadable hold object, still a hold ({h.problem})"
            else:
                continue
            if ts not in best or created >= best[ts][0]:
                best[ts] = (created, clean_text(text))
        return {ts: why for ts, (_, why) in sorted(best.items())}

    def _held_tags(self) -> set[str]:
        return {h.tag for h in self.all_holds()}

    def set_hold(self, data_id: str, timestamp: str, reason: str | None) -> None:
        check_timestamp(timestamp)
        tag = self.tag(data_id, timestamp)
        mine = [h for h in self.all_holds() if h.tag == tag]
        if reason is None:
            self.need_admin("release holds (unhold)")
            if not mine:
                raise UsageError(f"backup {data_id}/{timestamp} is not held in {self.engine.location()}")
            for h in mine:
                self.storage.delete(f"{HOLDS_PREFIX}/{h.name}")
                self._holds.pop(h.name, None)
            return
        self.engine._need_reader("hold backups")
        self.engine.resolve(data_id, timestamp)  # complete, not damaged (CorruptBackupError), or UsageError
        doc = {"format": HOLD_FORMAT, "data_id": data_id, "timestamp": timestamp, "reason": reason,
               "user": _user(), "host": socket.gethostname(), "created": iso(now_utc()), "key_id": self.ring.key_id}
        sealed = self.ring.seal(json.dumps(doc, sort_keys=True).encode(), HOLD_CONTEXT)
        key = f"{HOLDS_PREFIX}/{tag}-{secrets.token_hex(16)}"
        with self.storage.open_write(key) as w:
            w.write(_frame(HOLD_MAGIC, self.ring, sealed, HOLD_CONTEXT))
        if self.ring.can_delete:  # the new reason replaces the old ones (others' keys only add: the newest wins)
            for h in mine:
                self.storage.delete(f"{HOLDS_PREFIX}/{h.name}")
                self._holds.pop(h.name, None)

    # ---- what listings hide

    def hidden(self) -> set[str]:
        """Snapshot blob ids (hex) a valid tombstone names and no hold keeps: not listed, not live."""
        tombs = [t for t in self.tombstones() if t.valid and t.doc]
        if not tombs:
            return set()
        held = self._held_tags()
        out: set[str] = set()
        for t in tombs:
            assert t.doc is not None
            if self.tag(t.doc["data_id"], t.doc["timestamp"]) not in held:
                out.update(t.snapshots)
        return out

    def _docs(self, data_id: str) -> list[dict[str, Any]]:
        return [doc for _, doc, _, _ in self.engine._pointers() if doc is not None and doc["data_id"] == data_id]

    # ---- forget

    def forget(self, data_id: str, timestamps: Collection[str]) -> list[str]:
        """One tombstone per backup, each written whole (an interrupted forget leaves each backup listed and
        whole, or forgotten); everything checked first. Admin keys only."""
        self.need_admin("delete backups (forget)")
        stamps = list(dict.fromkeys(timestamps))
        for ts in stamps:
            check_timestamp(ts)
        held = self.holds(data_id)
        complete = {b.timestamp for b in self.engine.backups(data_id) if b.complete}
        for ts in stamps:
            if ts in held:
                raise UsageError(f"backup {data_id}/{ts} is held ({held[ts]}); not forgotten")
            if ts not in complete:
                raise UsageError(f"backup {data_id}/{ts} is not a complete backup in {self.engine.location()}")
        hidden = self.hidden()
        named: dict[str, tuple[set[str], list[str]]] = {}
        for name, doc, _, _ in self.engine._pointers():
            if doc is not None and doc["data_id"] == data_id and doc["timestamp"] in stamps \
                    and doc["snapshot"] not in hidden:
                snaps, pointers = named.setdefault(doc["timestamp"], (set(), []))
                snaps.add(doc["snapshot"])
                pointers.append(name)
        gone = []
        for ts in stamps:
            snaps, pointers = named.get(ts, (set(), []))
            doc = {"format": TOMBSTONE_FORMAT, "data_id": data_id, "timestamp": ts, "snapshots": sorted(snaps),
                   "pointers": sorted(pointers), "key_id": self.ring.key_id, "created": iso(now_utc()),
                   "user": _user(), "host": socket.gethostname()}
            sealed = self.ring.seal(json.dumps(doc, sort_keys=True).encode(), TOMBSTONE_CONTEXT)
            with self.storage.open_write(f"{TOMBSTONES_PREFIX}/{secrets.token_hex(16)}") as w:
                w.write(_frame(TOMBSTONE_MAGIC, self.ring, sealed, TOMBSTONE_CONTEXT))
            gone.append(ts)
        return gone

    # ---- the times retention buckets by

    def times(self, data_id: str) -> dict[str, datetime]:
        """TIMESTAMP -> the time to bucket it by, for the backups whose claimed time is implausible: written
        by a non-admin key, and the storage wrote its pointer more than :data:`PLAUSIBLE_LAG` after, or more
        than :data:`PLAUSIBLE_SKEW` before, that time. Those count at the storage's time (the latest of
        their pointers), so forged old or future dates cannot push real backups out of a rule. A TIMESTAMP
        that one plausible snapshot has keeps its own time."""
        hidden = self.hidden()
        plausible: set[str] = set()
        late: dict[str, datetime] = {}
        for _, doc, _, entry in self.engine._pointers():
            if doc is None or doc["data_id"] != data_id or doc["snapshot"] in hidden:
                continue
            ts = doc["timestamp"]
            if not is_timestamp(ts):
                continue
            claimed = parse_timestamp(ts)
            stored = getattr(entry, "modified", None)
            if (stored is None or self.role(str(doc.get("key_id"))) == "admin"
                    or stored - PLAUSIBLE_LAG <= claimed <= stored + PLAUSIBLE_SKEW):
                plausible.add(ts)
            else:
                late[ts] = max(late.get(ts, stored), stored)
        return {ts: when for ts, when in late.items() if ts not in plausible}

    # ---- plans

    def plans(self, notes: list[str] | None = None) -> list[Plan]:
        """The valid plans (signed by a trusted admin key), oldest first; what is wrong with the others in
        ``notes``."""
        entries = [e.name for e in self.storage.list(PRUNE_PREFIX) if not e.is_dir]
        done_names = {n[:-len(".done")] for n in entries if n.endswith(".done")}
        out = []
        for name in sorted(n for n in entries if _HEX32.fullmatch(n)):
            cached = self._plans.get(name)
            if cached is None:
                cached = self._read_plan(name)
                self._plans[name] = cached
            plan, problem = cached
            if plan is None:
                if notes is not None and problem:
                    notes.append(problem)
                continue
            if not plan.done and name in done_names:
                plan.done = self._read_done(name)
            out.append(plan)
        for n in entries:
            if not _HEX32.fullmatch(n) and not (n.endswith(".done") and _HEX32.fullmatch(n[:-5])):
                if notes is not None and not n.startswith("."):
                    notes.append(f"{PRUNE_PREFIX}/{clean_text(n, 80)}: not a prune plan; ignored")
        out.sort(key=lambda p: (p.seq, p.doc["created"], p.name))
        return out

    def _read_plan(self, name: str) -> tuple[Plan | None, str | None]:
        key = f"{PRUNE_PREFIX}/{name}"
        try:
            data = _read(self.storage, key, PLAN_LIMIT)
            kid, signature, body = _unframe(PLAN_MAGIC, data, key)
            if not self._signed(kid, PLAN_CONTEXT, body, signature, admin=True):
                return None, f"{key}: prune plan not signed by a trusted admin key (key {kid}); ignored"
            plain = self.ring.index_decrypt(body, PLAN_CONTEXT + key.encode())
            (jlen,) = _U32.unpack_from(plain, 0)
            doc = _json(plain[4:4 + jlen], key, PLAN_FORMAT)
            dead = plain[4 + jlen:]
            if (doc.get("id") != name or doc.get("key_id") != kid or not isinstance(doc.get("seq"), int)
                    or _when(doc.get("created")) is None or not isinstance(doc.get("packs"), list)
                    or len(dead) % ID_SIZE or doc.get("dead") != len(dead) // ID_SIZE):
                raise CorruptBackupError(f"{key}: malformed prune plan")
            for p in doc["packs"]:
                if not (isinstance(p, dict) and isinstance(p.get("pack"), str) and _HEX32.fullmatch(p["pack"])
                        and p.get("kind") in ("data", "meta") and p.get("action") in ("delete", "repack")):
                    raise CorruptBackupError(f"{key}: malformed prune plan (packs)")
            for k in ("tombstones", "snapshots"):
                if not isinstance(doc.get(k), list) or not all(isinstance(x, str) for x in doc[k]):
                    raise CorruptBackupError(f"{key}: malformed prune plan ({k})")
            return Plan(name, doc, bytes(dead)), None
        except NotFoundError:
            return None, None
        except (CorruptBackupError, struct.error) as exc:
            return None, f"{exc}; ignored" if isinstance(exc, CorruptBackupError) else f"{key}: malformed; ignored"

    def _read_done(self, name: str) -> bool:
        key = f"{PRUNE_PREFIX}/{name}.done"
        try:
            data = _read(self.storage, key, SMALL_LIMIT)
            kid, signature, body = _unframe(DONE_MAGIC, data, key)
            if not self._signed(kid, DONE_CONTEXT, body, signature, admin=True):
                return False
            doc = _json(self.ring.index_decrypt(body, DONE_CONTEXT + key.encode()), key, DONE_FORMAT)
            return doc.get("plan") == name
        except (NotFoundError, CorruptBackupError):
            return False

    def _write_plan(self, doc: dict[str, Any], dead: DiskSet | list[bytes]) -> str:
        key = f"{PRUNE_PREFIX}/{doc['id']}"
        ids = b"".join(sorted(dead) if isinstance(dead, list) else dead.ids())
        doc["dead"] = len(ids) // ID_SIZE
        raw = json.dumps(doc, sort_keys=True).encode()
        body = self.ring.index_encrypt(_U32.pack(len(raw)) + raw + ids, PLAN_CONTEXT + key.encode())
        with self.storage.open_write(key) as w:
            w.write(_frame(PLAN_MAGIC, self.ring, body, PLAN_CONTEXT))
        return key

    def _write_done(self, plan: Plan, phase: Phase) -> None:
        key = f"{PRUNE_PREFIX}/{plan.name}.done"
        doc = {"format": DONE_FORMAT, "plan": plan.name, "swept": iso(now_utc()), "key_id": self.ring.key_id,
               "host": socket.gethostname(), "packs_deleted": phase.packs_deleted, "bytes_deleted": phase.bytes_deleted,
               "packs_repacked": phase.packs_repacked}
        body = self.ring.index_encrypt(json.dumps(doc, sort_keys=True).encode(), DONE_CONTEXT + key.encode())
        with self.storage.open_write(key) as w:
            w.write(_frame(DONE_MAGIC, self.ring, body, DONE_CONTEXT))
        plan.done = True

    # ---- liveness

    def pointers(self) -> list[Pointer]:
        """Every pointer, read now (not from the cache): verified, unsealed only, or unreadable."""
        out = []
        for e in self.storage.list(SNAPSHOT_PREFIX):
            if e.is_dir:
                continue
            key = f"{SNAPSHOT_PREFIX}/{e.name}"
            try:
                data = _read(self.storage, key, POINTER_LIMIT)
            except NotFoundError:
                continue
            except CorruptBackupError as exc:
                out.append(Pointer(e.name, e, None, False, str(exc)))
                continue
            try:
                out.append(Pointer(e.name, e, decode_pointer(self.ring, data, key), True))
                continue
            except CorruptBackupError as exc:
                problem = str(exc)
            try:  # not verified (a revoked key, a forgery): if it unseals, its data is still kept
                _, _, sealed = _unframe(POINTER_MAGIC, data, key)
                doc = json.loads(self.ring.unseal(sealed, POINTER_CONTEXT))
                if not isinstance(doc, dict) or not isinstance(doc.get("snapshot"), str) \
                        or not _HEX64.fullmatch(doc["snapshot"]) or not isinstance(doc.get("data_id"), str) \
                        or not isinstance(doc.get("timestamp"), str):
                    raise ValueError("malformed")
                out.append(Pointer(e.name, e, doc, False, problem))
            except (CorruptBackupError, ValueError):
                out.append(Pointer(e.name, e, None, False, problem))
        return out

    def live(self, pointers: list[Pointer], hidden: set[str], notes: list[str]) -> tuple[DiskSet, set[bytes]]:
        """Every blob reachable from a pointer that is not hidden (snapshots, chunk lists, chunks), and the
        packs holding a live snapshot blob (kept whole: pointers name their pack). A verified backup whose
        chunk list cannot be read stops the prune (CorruptBackupError): which chunks it uses is unknown."""
        engine = self.engine
        live = DiskSet(engine.cache.directory)
        snap_packs: set[bytes] = set()
        try:
            for p in pointers:
                doc = p.doc
                if doc is None or doc["snapshot"] in hidden:
                    continue
                where = f"{SNAPSHOT_PREFIX}/{p.name}"
                sid = bytes.fromhex(doc["snapshot"])
                try:
                    snap_packs.add(bytes.fromhex(str(doc.get("pack"))))
                except ValueError:
                    pass
                loc = engine.cache.locate(sid)
                if loc is not None:
                    snap_packs.add(loc.pack_id)
                if not live.add(sid):
                    continue
                try:
                    manifest = engine.snapshot(doc, where)
                    records = [SourceRecord.from_json(s) for s in manifest["sources"]]
                except (CorruptBackupError, NotFoundError, KeyError, TypeError, ValueError) as exc:
                    notes.append(f"{where}: its snapshot cannot be read ({clean_text(exc)}); nothing of it kept")
                    continue
                for rec in records:
                    for art in rec.artifacts:
                        label = f"{manifest['data_id']}/{manifest['timestamp']}/{rec.name}/{art.name}"
                        for hexid in art.location.get("lists", []) if isinstance(art.location, dict) else []:
                            try:
                                lid = bytes.fromhex(hexid)
                            except (TypeError, ValueError):
                                lid = b""
                            if not lid or not live.add(lid):
                                continue
                            try:
                                data = engine.read_blob(lid, "chunk list")
                                live.add_many(cid for cid, _ in decode_chunk_list(data, label))
                            except (CorruptBackupError, NotFoundError) as exc:
                                if p.verified:
                                    raise CorruptBackupError(
                                        f"{label}: {exc}: prune cannot tell which data this backup uses; run "
                                        f"data-manager check, repo repair index, or forget the backup, then prune"
                                    ) from None
                                notes.append(f"{where} (not verified): {clean_text(exc)}")
        except BaseException:
            live.close()
            raise
        return live, snap_packs

    def _index(self) -> list[tuple[str, list[PackRecord]]]:
        """Every index file now (the cache synced first): a damaged one stops the prune, since the packs it
        lists would look unused."""
        bad = self.engine.sync_index()
        if bad:
            raise CorruptBackupError(f"{bad[0]}: damaged index file: run data-manager repo repair index, then prune")
        out = []
        for e in sorted(self.storage.list(INDEX_PREFIX), key=lambda e: e.name):
            if e.is_dir:
                continue
            key = f"{INDEX_PREFIX}/{e.name}"
            try:
                out.append((key, read_index(self.storage, self.ring, key)))
            except NotFoundError:
                continue
        return out

    # ---- prune

    def prune(self, *, dry_run: bool, delete_delay: float, progress: Any = None,
              max_unused: float | None = None) -> dict[str, Any]:
        t0 = time.monotonic()
        engine = self.engine
        if dry_run:
            engine._need_reader("prune --dry-run")
        else:
            self.need_admin("delete data (prune)")
        self._roles = None
        notes: list[str] = []
        phases: list[Phase] = []
        plans = self.plans(notes)
        for t in self.tombstones():
            if not t.valid and t.problem:
                notes.append(t.problem)
        pending = [p for p in plans if not p.done]
        for plan in pending:
            phases.append(self._sweep(plan, plans, dry_run, delete_delay, notes))
        still = [p for p in pending if not p.done]
        if still:
            phases.append(Phase("mark", "skipped", reason=f"plan {still[-1].name} is not swept yet"))
        else:
            phases.append(self._mark(plans, dry_run, delete_delay, notes,
                                     DEFAULT_MAX_UNUSED if max_unused is None else max_unused))
        return {"storage": self.storage.name, "location": engine.location(), "engine": engine.kind,
                "needed": True, "dry_run": dry_run, "delete_delay": delete_delay,
                "phases": [p.to_json() for p in phases], "describe": [p.describe() for p in phases],
                "notes": notes, "seconds": round(time.monotonic() - t0, 3)}

    def _mark(self, plans: list[Plan], dry_run: bool, delete_delay: float, notes: list[str],
              max_unused: float) -> Phase:
        t0 = time.monotonic()
        engine = self.engine
        phase = Phase("mark", "would mark" if dry_run else "done")
        index = self._index()
        pointers = self.pointers()
        for p in pointers:
            if p.doc is None:
                notes.append(f"{SNAPSHOT_PREFIX}/{p.name}: unreadable ({p.problem}); not counted")
            elif not p.verified:
                notes.append(f"{SNAPSHOT_PREFIX}/{p.name}: {p.problem}; its data is kept")
        held = self._held_tags()
        tombs = [t for t in self.tombstones() if t.valid and t.doc
                 and self.tag(t.doc["data_id"], t.doc["timestamp"]) not in held]
        hidden = self.hidden()
        live, snap_packs = self.live(pointers, hidden, notes)
        kept = DiskSet(engine.cache.directory)
        dead = DiskSet(engine.cache.directory)
        try:
            existing = {pid: (key, kind, size) for key, kind, pid, size in engine._walk_packs()}
            seen: set[bytes] = set()
            doomed: list[dict[str, Any]] = []
            candidates: list[tuple[bytes, list[BlobEntry]]] = []
            partial: list[tuple[PackRecord, list[BlobEntry], int, int]] = []
            used = 0  # bytes of the packs that stay, live blobs only
            for _, records in index:
                for rec in records:
                    if rec.pack_id in seen or rec.pack_id not in existing:
                        continue
                    seen.add(rec.pack_id)
                    hs = parse_pack_header(rec.header, "index").sealed_header_size
                    gone = [e for e in rec.entries if e.id not in live]
                    if not gone or rec.pack_id in snap_packs:
                        kept.add_many(e.id for e in rec.entries)
                        used += rec.size
                        continue
                    live_bytes = sum(hs + e.stored for e in rec.entries if e.id in live)
                    dead_bytes = sum(hs + e.stored for e in gone)
                    if live_bytes:
                        partial.append((rec, gone, live_bytes, dead_bytes))
                        used += live_bytes
                        continue
                    doomed.append({"pack": rec.pack_id.hex(), "kind": rec.kind, "size": rec.size,
                                   "action": "delete", "live": 0, "dead": dead_bytes, "orphan": False})
                    candidates.append((rec.pack_id, gone))
            repack = choose_repacks([(rec.size, dead) for rec, _, _, dead in partial], used, max_unused)
            for i, (rec, gone, live_bytes, dead_bytes) in enumerate(partial):
                if i not in repack:
                    kept.add_many(e.id for e in rec.entries)
                    continue
                doomed.append({"pack": rec.pack_id.hex(), "kind": rec.kind, "size": rec.size, "action": "repack",
                               "live": live_bytes, "dead": dead_bytes, "orphan": False})
                candidates.append((rec.pack_id, gone))
            for pid, (key, kind, size) in sorted(existing.items()):  # packs in no index: killed backups' leftovers
                if pid in seen:
                    continue
                try:
                    header, entries, damage = engine.pack_entries(key, kind, size)
                except (CorruptBackupError, NotFoundError) as exc:
                    notes.append(f"{key}: in no index and unreadable ({clean_text(exc)}); left alone")
                    continue
                if damage:
                    notes.append(f"{key}: in no index, damaged ({clean_text(damage)}); left alone")
                    continue
                doomed.append({"pack": pid.hex(), "kind": kind, "size": size, "action": "delete", "live": 0,
                               "dead": size, "orphan": True})
                candidates.append((pid, entries))
            for item, (pid, gone) in zip(doomed, candidates):
                if item["orphan"] and any(e.id in live and e.id not in kept for e in gone):
                    item["action"] = None  # holds a blob in use that no index lists: repo repair index
                    notes.append(f"{pack_key(item['kind'], pid)}: in no index but holds blobs in use; left alone "
                                 f"(data-manager repo repair index)")
                    continue
                dead.add_many(e.id for e in gone if e.id not in kept and e.id not in live)
            doomed = [d for d in doomed if d["action"]]
            for d in doomed:
                if d["action"] == "delete":
                    phase.packs_deleted += 1
                    phase.bytes_deleted += d["size"]
                else:
                    phase.packs_repacked += 1
                    phase.bytes_rewritten += d["live"]
                    phase.bytes_freed_by_repack += d["dead"]
            phase.blobs_dead = len(dead)
            snapshots = sorted({s for t in tombs for s in t.snapshots if s in hidden})
            phase.snapshots = sum(1 for p in pointers if p.doc is not None and p.doc["snapshot"] in hidden)
            phase.tombstones = len(tombs)
            if not doomed and not tombs:
                phase.status = "nothing to do"
                return phase
            seq = max((p.seq for p in plans), default=0) + 1
            plan_id = secrets.token_hex(16)
            phase.plan = plan_id
            if dry_run:
                phase.reason = "a sweep at least {} after the mark frees it".format(_delay(delete_delay))
                return phase
            doc = {"format": PLAN_FORMAT, "id": plan_id, "seq": seq, "created": iso(now_utc()),
                   "key_id": self.ring.key_id, "host": socket.gethostname(),
                   "index_files": [k for k, _ in index],
                   "tombstones": sorted(t.name for t in tombs), "snapshots": snapshots,
                   "packs": doomed, "free": phase.bytes_deleted + phase.bytes_freed_by_repack,
                   "rewrite": phase.bytes_rewritten}
            self._write_plan(doc, dead)
            phase.reason = f"swept by a prune at least {_delay(delete_delay)} from now"
            return phase
        finally:
            for s in (live, kept, dead):
                s.close()
            phase.seconds = round(time.monotonic() - t0, 3)

    def blocking_writers(self, plan: Plan, finished: list[str] | None = None) -> list[str]:
        """Live heartbeats of backups that do not know ``plan`` (started before it): its sweep waits.
        Heartbeats marked ``finished`` (left by keys that may not delete) are skipped, and their keys
        appended to ``finished`` for the sweep to remove."""
        out = []
        now = time.time()
        for e in self.storage.list(WRITERS_PREFIX):
            if e.is_dir:
                continue
            age = now - e.modified.timestamp() if e.modified is not None else 0.0
            if age > WRITER_STALE_SECONDS:
                continue  # killed, or paused: it checks the plans itself before it commits
            key = f"{WRITERS_PREFIX}/{e.name}"
            try:
                doc = decode_writer(self.ring, _read(self.storage, key, SMALL_LIMIT))
            except NotFoundError:
                continue
            except (CorruptBackupError, ValueError) as exc:
                out.append(f"{key}: unreadable heartbeat ({clean_text(exc)}), last beat {int(age)}s ago")
                continue
            if isinstance(doc, dict) and doc.get("finished"):
                if finished is not None:
                    finished.append(key)
                continue
            known = doc.get("prune_plans") if isinstance(doc, dict) else None
            if isinstance(known, list) and plan.name in known:
                continue
            who = f"{doc.get('host', '?')} pid {doc.get('pid', '?')}" if isinstance(doc, dict) else "?"
            out.append(f"a backup on {clean_text(who, 80)} started {clean_text(doc.get('started', '?'), 40)}, "
                       f"before the mark, is still running ({key})")
        return out

    def _sweep(self, plan: Plan, plans: list[Plan], dry_run: bool, delete_delay: float, notes: list[str]) -> Phase:
        t0 = time.monotonic()
        engine = self.engine
        phase = Phase("sweep", "would sweep" if dry_run else "done", plan=plan.name)
        age = (now_utc() - plan.created).total_seconds()
        if age < delete_delay:
            phase.status = "waiting"
            phase.reason = (f"marked {_delay(max(0.0, age))} ago; swept once {_delay(delete_delay)} passed "
                            f"(in {_delay(delete_delay - age)}; --delete-delay)")
            return phase
        finished: list[str] = []
        blocking = self.blocking_writers(plan, finished)
        if blocking:
            phase.status = "waiting"
            phase.reason = "; ".join(blocking[:3]) + (f" (+{len(blocking) - 3} more)" if len(blocking) > 3 else "")
            return phase
        index = self._index()
        pointers = self.pointers()
        hidden = self.hidden()
        live, snap_packs = self.live(pointers, hidden, notes)
        dead = DiskSet(engine.cache.directory)
        kept = DiskSet(engine.cache.directory)
        store: BlobStore | None = None
        try:
            dead.add_many(plan.dead_ids())
            doomed = {bytes.fromhex(p["pack"]): p for p in plan.doc["packs"]}
            existing = {pid: (key, kind, size) for key, kind, pid, size in engine._walk_packs()}
            listed: dict[bytes, PackRecord] = {}
            for _, records in index:
                for rec in records:
                    if rec.pack_id not in doomed:
                        kept.add_many(e.id for e in rec.entries)
                    listed.setdefault(rec.pack_id, rec)
            work: list[tuple[bytes, str, str, int, Any, list[BlobEntry]]] = []
            for pid, item in doomed.items():
                if pid not in existing:
                    continue  # swept already (an interrupted sweep)
                key, kind, size = existing[pid]
                if pid in snap_packs:
                    notes.append(f"{key}: holds a snapshot in use now; kept whole")
                    continue
                rec = listed.get(pid)
                if rec is not None:
                    header, entries = parse_pack_header(rec.header, key), rec.entries
                else:
                    try:
                        header, entries, damage = engine.pack_entries(key, kind, size)
                    except (CorruptBackupError, NotFoundError) as exc:
                        notes.append(f"{key}: unreadable ({clean_text(exc)}); left alone")
                        continue
                    if damage:
                        notes.append(f"{key}: damaged ({clean_text(damage)}); left alone")
                        continue
                copy = [e for e in entries if not (e.id in dead and e.id not in live) and e.id not in kept]
                work.append((pid, key, kind, size, header, copy))
            for pid, key, kind, size, header, copy in work:
                if copy:
                    phase.packs_repacked += 1
                    copied = sum(header.sealed_header_size + e.stored for e in copy)
                    phase.bytes_rewritten += copied
                    phase.bytes_freed_by_repack += max(0, size - copied)
                else:
                    phase.packs_deleted += 1
                    phase.bytes_deleted += size
            phase.blobs_dead = len(dead)
            doomed_now = {pid for pid, *_ in work}
            affected = [(k, recs) for k, recs in index if any(r.pack_id in doomed_now for r in recs)]
            phase.index_files = len(affected)
            gone_snaps = {s for s in plan.doc["snapshots"] if s in hidden}
            phase.snapshots = sum(1 for p in pointers if p.doc is not None and p.doc["snapshot"] in gone_snaps)
            if dry_run:
                return phase
            # 1. live blobs of doomed packs into new packs (and their index files)
            delete = []
            for pid, key, kind, size, header, copy in work:
                if copy:
                    if store is None:
                        from .engine import BlobStore

                        store = BlobStore(engine, engine.pack_size)
                    if not self._copy(store, key, pid, header, copy, kept, notes):
                        continue
                delete.append((pid, key))
            if store is not None:
                store.finish()
                store = None
            # 2. the index files that list a doomed pack, rewritten without it
            deleting = {pid for pid, _ in delete}
            affected = [(k, recs) for k, recs in index if any(r.pack_id in deleting for r in recs)]
            keep_recs: dict[bytes, PackRecord] = {}
            for _, recs in affected:
                for r in recs:
                    if r.pack_id not in deleting and (r.pack_id in existing or r.pack_id not in doomed):
                        keep_recs.setdefault(r.pack_id, r)
            batch = list(keep_recs.values())
            for i in range(0, len(batch), 256):
                write_index(self.storage, self.ring, batch[i:i + 256])
            # 3. the old index files, then the packs no index names any more
            for k, _ in affected:
                self.storage.delete(k)
            for _, key in delete:
                self.storage.delete(key)
            # 4. the forgotten backups' pointers, then their tombstones
            for p in pointers:
                if p.doc is not None and p.doc["snapshot"] in gone_snaps:
                    self.storage.delete(f"{SNAPSHOT_PREFIX}/{p.name}")
            remaining = {p.doc["snapshot"] for p in self.pointers() if p.doc is not None}
            for t in self.tombstones():
                if t.name in plan.doc["tombstones"] and t.valid and not set(t.snapshots) & remaining:
                    self.storage.delete(f"{TOMBSTONES_PREFIX}/{t.name}")
                    self._tombstones.pop(t.name, None)
                    phase.tombstones += 1
            engine.sync_index()
            # 5. done; plans swept before this one are no longer needed (the newest always stays), nor are
            # the heartbeats of finished backups that append keys could not delete
            self._write_done(plan, phase)
            for key in finished:
                self.storage.delete(key)
            for old in plans:
                if old.done and old.seq < plan.seq:
                    for k in (f"{PRUNE_PREFIX}/{old.name}", f"{PRUNE_PREFIX}/{old.name}.done"):
                        self.storage.delete(k)
            return phase
        finally:
            if store is not None:
                store.abort()
            for s in (live, dead, kept):
                s.close()
            phase.seconds = round(time.monotonic() - t0, 3)

    def _copy(self, store: BlobStore, key: str, pack_id: bytes, header: Any, copy: list[BlobEntry], kept: DiskSet,
              notes: list[str]) -> bool:
        """The blobs ``copy`` of one pack into new packs, each checked against its id; False (the pack is left
        alone) if one cannot be read."""
        from .engine import decompress, meta_id

        try:
            with self.storage.open_read(key) as f:
                whole = f.read()
        except NotFoundError:
            notes.append(f"{key}: gone while prune ran")
            return False
        opener = self.ring.pack_opener(header.sealer_header)
        view = memoryview(whole)
        for e in copy:
            if e.id in kept:
                continue
            try:
                entry, payload = open_blob(opener, header, view[e.offset:], e.offset, key, expected=e)
                plain = decompress(payload, entry, key)
                ok = len(plain) == entry.raw and (self.ring.chunk_id(plain) if entry.type == DATA
                                                  else meta_id(self.ring, plain)) == e.id
                if not ok:
                    raise CorruptBackupError(f"{key}: blob {e.id.hex()} does not match its id")
            except CorruptBackupError as exc:
                notes.append(f"{exc}; the pack is left alone")
                return False
            store.add(entry.type, e.id, entry.compression, entry.raw, payload)
            kept.add(e.id)
        return True

    # ---- check

    def check(self, errors: list[str], info: list[str]) -> set[str]:
        """What ``check`` reports about retention objects; the snapshots it must not check (forgotten: their
        data may be swept already)."""
        for t in self.tombstones():
            if not t.valid and t.problem:
                errors.append(t.problem)
        notes: list[str] = []
        self.plans(notes)
        errors.extend(n for n in notes if "not signed" in n or "malformed" in n or "unreadable" in n)
        info.extend(n for n in notes if n not in errors)
        for h in self.all_holds():
            if h.problem:
                info.append(f"{HOLDS_PREFIX}/{h.name}: {h.problem}; still a hold")
            elif not h.verified:
                info.append(f"{HOLDS_PREFIX}/{h.name}: not signed by a trusted key; still a hold")
        hidden = self.hidden()
        if hidden:
            info.append(f"{len(hidden)} forgotten snapshot(s) waiting for prune")
        return hidden

    # ---- the guard of one backup

    def guard(self, writer: DedupBackupWriter) -> BackupGuard:
        return BackupGuard(self, writer)


def choose_repacks(packs: list[tuple[int, int]], used: int, max_unused: float) -> set[int]:
    """Which partly dead packs (``(size, dead bytes)`` each) to rewrite: the deadest share first, only until
    the dead bytes left are at most ``max_unused`` of the repository's (``used`` bytes live, so at most
    ``max_unused / (1 - max_unused) * used``), as restic's ``--max-unused``. Rewriting a pack 90% live to free
    its last 10% copies nine bytes per byte freed: those are left for later, when more of them died."""
    unused = sum(dead for _, dead in packs)
    allowed = max_unused / (1 - max_unused) * used if max_unused < 1 else float("inf")
    chosen: set[int] = set()
    for i in sorted(range(len(packs)), key=lambda i: packs[i][1] / max(1, packs[i][0]), reverse=True):
        if unused <= allowed:
            break
        chosen.add(i)
        unused -= packs[i][1]
    return chosen


def _delay(seconds: float) -> str:
    from ...retention import age_text

    return age_text(seconds)


class BackupGuard:
    """What keeps one backup's data safe from a concurrent prune (see the module's docstring): the plans it
    knew when it started (their dead blobs are written again instead of reused; its heartbeat names them),
    the blobs it uses (on disk), and the check before its pointer."""

    def __init__(self, retention: DedupRetention, writer: DedupBackupWriter) -> None:
        self.retention = retention
        self.engine = retention.engine
        self.writer = writer
        plans = retention.plans()
        self.handled = {p.name for p in plans}
        self.start_seq = max((p.seq for p in plans), default=0)
        directory = self.engine.cache.directory
        self.refs = DiskSet(directory)
        self.dead: DiskSet | None = None
        pending = [p for p in plans if not p.done]
        if pending:
            self.dead = DiskSet(directory)
            for p in pending:
                self.dead.add_many(p.dead_ids())
        # After the listing: an index a sweep rewrote before it is the one this backup deduplicates against.
        self.engine.sync_index()
        store = writer.store
        store.refs = self.refs
        if self.dead is not None and len(self.dead):
            store.marked = self.dead.__contains__
        if plans:
            writer._guard = self
            writer._heartbeat()  # now naming the plans it knows: their sweeps need not wait for it

    def names(self) -> list[str]:
        return sorted(self.handled)

    def before_pointer(self, sid: bytes) -> tuple[BlobEntry, bytes] | None:
        """Called once everything but the pointer is committed: every plan that appeared since the backup
        started is checked; the blobs it uses that such a plan marked dead are written again (or the backup
        fails). The new place of the snapshot blob if it was written again."""
        self.refs.add(sid)
        self.writer._heartbeat()  # fresh: a sweep that starts now waits for this backup
        moved = None
        for _ in range(8):
            plans = self.retention.plans()
            new = [p for p in plans if p.name not in self.handled]
            if not new:
                return moved
            seqs = {p.seq for p in plans}
            missing = [s for s in range(self.start_seq + 1, max(seqs) + 1) if s not in seqs]
            if missing:
                raise DataManagerError(
                    f"prune swept {len(missing) + 1} or more times while this backup ran (it was paused?), so it "
                    f"cannot tell whether the data it reuses still exists; nothing was committed: back up again")
            at_risk = sorted({i for p in new for i in p.dead_ids() if i in self.refs})
            self.handled.update(p.name for p in new)
            if at_risk:
                where = self._write_again(at_risk, sid)
                moved = where or moved
            self.writer._heartbeat()
        raise DataManagerError("prune plans kept appearing while this backup committed; nothing was committed: "
                               "back up again")

    def _write_again(self, ids: list[bytes], sid: bytes) -> tuple[BlobEntry, bytes] | None:
        from .engine import BlobStore, _compress, _compressor

        engine = self.engine
        plural = f"{len(ids)} blob(s) this backup uses"
        if not engine.ring.can_read:
            raise DataManagerError(
                f"a prune marked {plural} as unused while it ran (paused?); a {engine.ring.role} key cannot "
                f"copy them; nothing was committed: back up again")
        engine.sync_index()
        store = BlobStore(engine, engine.pack_size)
        try:
            cctx = _compressor()
            for bid in ids:
                loc = engine.cache.locate(bid)
                try:
                    if loc is None:
                        raise NotFoundError(f"blob {bid.hex()} is no longer in the index")
                    if loc.entry.type == DATA:
                        plain = b"".join(engine.read_run([(bid, loc.entry.raw, loc)]))
                    else:
                        plain = engine._read_one(loc, f"blob {bid.hex()}", expect_meta=True)
                except (CorruptBackupError, NotFoundError) as exc:
                    raise DataManagerError(
                        f"a prune removed data this backup reuses while it was paused ({exc}); nothing was "
                        f"committed: back up again") from None
                comp, payload = _compress(cctx, plain)
                store.add(loc.entry.type, bid, comp, len(plain), payload)
            store.finish()
        except BaseException:
            store.abort()
            raise
        log.info("wrote %s again: a prune marked them while this backup ran", plural)
        return store.located(sid) if sid in ids else None

    def close(self) -> None:
        self.refs.close()
        if self.dead is not None:
            self.dead.close()
