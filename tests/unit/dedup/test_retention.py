"""Retention on the dedup engine: tombstones (forget), holds, the two prune phases (mark, sweep), the guard that
keeps backups running across a prune whole (a concurrent one, a paused one), forged objects, and crashes at
every write and delete of forget, mark and sweep."""

from __future__ import annotations

import os
import shutil
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.engines.dedup import retention as dr
from data_manager.engines.dedup.engine import DedupEngine
from data_manager.engines.dedup.keys import add_key
from data_manager.engines.records import SourceRecord
from data_manager.errors import CorruptBackupError, DataManagerError, RefusedError, UsageError
from data_manager.retention import Policy, plan
from data_manager.timestamps import format_timestamp, now_utc
from data_manager.types import Settings

from .test_engine import KDF, Crashing, WriteOnly, backup, new_repo, reopen, restore, text

SETTINGS = {"pack_size": "256KiB"}


def files(root: Path, prefix: str) -> list[Path]:
    return sorted(p for p in (root / prefix).rglob("*") if p.is_file())


def size_of(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def prune(engine: DedupEngine, delay: float = 0.0, dry_run: bool = False) -> dict[str, Any]:
    return engine.prune(dry_run=dry_run, delete_delay=delay)


def phase(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in result["phases"] if p["phase"] == name)


def prune_all(engine: DedupEngine) -> None:
    """Mark, then sweep (delay 0), until nothing is left to do."""
    for _ in range(4):
        r = prune(engine)
        if phase(r, "mark")["status"] == "nothing to do":
            return
    raise AssertionError(r)


def datasets() -> dict[str, dict[str, dict[str, bytes]]]:
    shared = text(400_000, 50)
    return {
        "old": {"s": {"a": shared + os.urandom(500_000), "b": os.urandom(300_000)}},
        "mid": {"s": {"a": shared + os.urandom(400_000)}},
        "new": {"s": {"a": shared + text(300_000, 51), "c": os.urandom(200_000)}},
    }


def three_backups(tmp_path: Path) -> tuple[DedupEngine, dict[str, dict], list[str]]:
    """One dataset 'd', three backups (the first and the second share a prefix with the third)."""
    engine = new_repo(tmp_path)
    data = datasets()
    stamps = []
    for i, name in enumerate(("old", "mid", "new")):
        writer_ts = format_timestamp(now_utc() - timedelta(days=3 - i))
        stamps.append(writer_ts)
        write(engine, "d", data[name], writer_ts)
    return engine, data, stamps


def write(engine: DedupEngine, data_id: str, sources: dict[str, dict[str, bytes]], timestamp: str | None = None,
          **kw: Any) -> dict[str, Any]:
    writer = engine.start_backup(data_id, {"storage": {"name": "vault"}}, timestamp)
    try:
        fill(writer, sources)
        return writer.commit()
    finally:
        writer.abort()


def fill(writer: Any, sources: dict[str, dict[str, bytes]]) -> None:
    for sname, arts in sources.items():
        sink = writer.source(SourceRecord(sname, "test", {"name": "test"}, {"path": "/x"}))
        for aname, blob in arts.items():
            with sink.open(aname) as w:
                for i in range(0, len(blob), 100_000):
                    w.write(blob[i:i + 100_000])
        writer.add_done(sink.finish())


def restore_at(engine: DedupEngine, data_id: str, ts: str) -> dict[str, dict[str, bytes]]:
    return restore(engine, data_id, ts)


def role_engine(engine: DedupEngine, tmp_path: Path, role: str, name: str) -> DedupEngine:
    add_key(engine.ring, engine.storage, f"pass {name}", role, kdf=KDF)
    return DedupEngine(engine.storage, Settings({"passphrase": f"pass {name}", **SETTINGS}),
                       cache_dir=tmp_path / f"cache-{name}")


# --------------------------------------------------------------------------- forget, holds


def test_forget_writes_a_signed_tombstone_and_prune_frees_the_space(tmp_path: Path) -> None:
    engine, data, stamps = three_backups(tmp_path)
    root = tmp_path / "repo"
    assert engine.forget("d", [stamps[0]]) == [stamps[0]]
    assert [b.timestamp for b in engine.backups("d")] == stamps[1:]
    assert len(files(root, "tombstones")) == 1 and len(files(root, "snapshots")) == 3  # deleting is prune's
    for needle in (b"d", stamps[0].encode()):
        assert needle not in files(root, "tombstones")[0].name.encode() or needle == b"d"
    assert engine.check_repository(read_fraction=1.0).ok

    before = size_of(root)
    dry = prune(engine, dry_run=True)
    assert phase(dry, "mark")["status"] == "would mark"
    m = phase(dry, "mark")
    # Which packs hold only the old backup's chunks depends on the random data's chunk boundaries: count what
    # deleting and rewriting free together (b's 300 kB random bytes alone are unique to the old backup).
    assert m["packs_deleted"] >= 1 and m["bytes_deleted"] + m["bytes_freed_by_repack"] > 500_000
    assert size_of(root) == before and not files(root, "prune")

    marked = prune(engine, delay=3600)
    assert phase(marked, "mark")["status"] == "done" and len(files(root, "prune")) == 1
    assert size_of(root) - before < 20_000  # only the plan
    waiting = prune(engine, delay=3600)
    assert phase(waiting, "sweep")["status"] == "waiting" and "--delete-delay" in phase(waiting, "sweep")["reason"]
    assert phase(waiting, "mark")["status"] == "skipped"
    would = prune(engine, delay=0, dry_run=True)
    assert phase(would, "sweep")["status"] == "would sweep"
    assert phase(would, "sweep")["bytes_deleted"] == phase(marked, "mark")["bytes_deleted"]

    swept = prune(engine, delay=0)
    s = phase(swept, "sweep")
    assert s["status"] == "done" and s["packs_deleted"] >= 1 and s["tombstones"] == 1 and s["snapshots"] == 1
    assert before - size_of(root) > 700_000  # the old backup's unique data is gone
    assert not files(root, "tombstones") and len(files(root, "snapshots")) == 2
    fresh = reopen(engine, tmp_path, "cache-after")
    for ts, name in zip(stamps[1:], ("mid", "new")):
        assert restore_at(fresh, "d", ts) == data[name]
    report = fresh.check_repository(read_fraction=1.0)
    assert report.ok, report.errors
    assert phase(prune(fresh), "mark")["status"] == "nothing to do"


def test_max_unused_rewrites_the_deadest_packs_only_until_little_stays_unused(tmp_path: Path) -> None:
    engine, data, stamps = three_backups(tmp_path)
    engine.forget("d", stamps[:2])

    def mark(max_unused: float | None) -> dict[str, Any]:
        return phase(engine.prune(dry_run=True, delete_delay=0, max_unused=max_unused), "mark")

    every, none, default = mark(0.0), mark(1.0), mark(None)
    assert every["packs_repacked"] >= 1 and every["bytes_freed_by_repack"] > 0
    assert none["packs_repacked"] == 0 and none["bytes_rewritten"] == 0  # wholly dead packs only
    assert none["packs_deleted"] == every["packs_deleted"] == default["packs_deleted"] >= 1
    assert none["packs_repacked"] <= default["packs_repacked"] <= every["packs_repacked"]

    assert phase(prune(engine, delay=0), "mark")["status"] == "done"
    swept = phase(prune(engine, delay=0), "sweep")
    assert swept["status"] == "done"
    left = mark(0.0)  # what a prune that freed every unused byte would still free now
    used = size_of(tmp_path / "repo" / "packs") - left["bytes_deleted"] - left["bytes_freed_by_repack"]
    assert left["bytes_freed_by_repack"] <= dr.DEFAULT_MAX_UNUSED / (1 - dr.DEFAULT_MAX_UNUSED) * used + 1
    assert restore_at(reopen(engine, tmp_path, "cache-after"), "d", stamps[2]) == data["new"]
    with pytest.raises(UsageError, match="--max-unused"):
        from data_manager.operations.prune import prune as prune_op

        prune_op(type("DM", (), {})(), [], max_unused=1.5)  # type: ignore[arg-type]


def test_choose_repacks_takes_the_deadest_packs_until_the_unused_share_is_within_the_limit() -> None:
    packs = [(100, 10), (100, 90), (100, 50), (100, 1)]  # (size, dead bytes); 151 dead in all
    assert dr.choose_repacks(packs, used=1000, max_unused=0.0) == {0, 1, 2, 3}
    assert dr.choose_repacks(packs, used=1000, max_unused=1.0) == set()
    assert dr.choose_repacks(packs, used=1000, max_unused=0.05) == {1, 2}  # 11 left <= 52.6 allowed; 61 > 52.6
    assert dr.choose_repacks(packs, used=10_000, max_unused=0.05) == set()  # 151 <= 526
    assert dr.choose_repacks(packs, used=1000, max_unused=0.10) == {1}  # 61 <= 111
    assert dr.choose_repacks([], used=0, max_unused=0.0) == set()


def test_only_an_admin_key_forgets_prunes_and_releases_holds(tmp_path: Path) -> None:
    engine, data, stamps = three_backups(tmp_path)
    append = role_engine(engine, tmp_path, "append", "app")
    wo = role_engine(engine, tmp_path, "write-only", "wo")
    for key in (append, wo):
        for call in (lambda: key.forget("d", [stamps[0]]), lambda: key.prune(dry_run=False, delete_delay=0)):
            with pytest.raises(RefusedError, match="only an admin key may"):
                call()
    append.set_hold("d", stamps[0], "reference data")  # readers hold
    assert "reference data" in engine.holds("d")[stamps[0]]
    with pytest.raises(RefusedError, match="only an admin key may release holds"):
        append.set_hold("d", stamps[0], None)
    with pytest.raises(RefusedError):
        wo.set_hold("d", stamps[1], "no")
    with pytest.raises(UsageError, match="held"):
        engine.forget("d", [stamps[1], stamps[0]])
    assert len(engine.backups("d")) == 3  # everything checked first: nothing forgotten
    with pytest.raises(UsageError):
        engine.forget("d", ["20200101T000000Z"])
    with pytest.raises(UsageError):
        engine.forget("d", ["not-a-time"])
    engine.set_hold("d", stamps[0], "replaced")  # an admin's hold replaces the others
    assert list(engine.holds("d")) == [stamps[0]] and "replaced" in engine.holds("d")[stamps[0]]
    engine.set_hold("d", stamps[0], None)
    assert engine.holds("d") == {}
    with pytest.raises(UsageError, match="not held"):
        engine.set_hold("d", stamps[0], None)
    assert engine.forget("d", [stamps[0]]) == [stamps[0]]


def test_a_damaged_hold_still_holds_and_a_hold_beats_a_tombstone(tmp_path: Path) -> None:
    engine, data, stamps = three_backups(tmp_path)
    root = tmp_path / "repo"
    engine.set_hold("d", stamps[0], "case 17")
    (hold,) = files(root, "holds")
    hold.write_bytes(hold.read_bytes()[:-3] + b"xyz")
    fresh = reopen(engine, tmp_path, "c2")
    assert "unreadable hold object, still a hold" in fresh.holds("d")[stamps[0]]
    with pytest.raises(UsageError, match="held"):
        fresh.forget("d", [stamps[0]])
    report = fresh.check_repository()
    assert report.ok and any("still a hold" in i for i in report.notes)
    # a hold on a backup a tombstone names: the tombstone does not hide it, and prune keeps its data
    hold.unlink()
    fresh = reopen(engine, tmp_path, "c3")
    fresh.forget("d", [stamps[0]])
    doc_hold(fresh, "d", stamps[0])  # holding needs it listed: a hold object as a second client would write it
    assert stamps[0] in [b.timestamp for b in fresh.backups("d")]
    prune_all(fresh)
    assert restore_at(reopen(engine, tmp_path, "c4"), "d", stamps[0]) == data["old"]


def doc_hold(engine: DedupEngine, data_id: str, ts: str) -> None:
    """A hold object written as set_hold does, without the listing check (a second client's)."""
    import json
    import secrets

    ret = engine.retention()
    doc = {"format": dr.HOLD_FORMAT, "data_id": data_id, "timestamp": ts, "reason": "late", "user": "u", "host": "h",
           "created": "2030-01-01T00:00:00.000Z", "key_id": engine.ring.key_id}
    sealed = engine.ring.seal(json.dumps(doc).encode(), dr.HOLD_CONTEXT)
    with engine.storage.open_write(f"holds/{ret.tag(data_id, ts)}-{secrets.token_hex(16)}") as w:
        w.write(dr._frame(dr.HOLD_MAGIC, engine.ring, sealed, dr.HOLD_CONTEXT))


# --------------------------------------------------------------------------- backups across a prune


def test_new_backups_do_not_reuse_blobs_a_pending_plan_marked_dead(tmp_path: Path) -> None:
    engine, data, stamps = three_backups(tmp_path)
    engine.forget("d", stamps[:2])
    prune(engine)  # mark
    plan_ = engine.retention().plans()[0]
    assert plan_.doc["dead"] > 0
    again = reopen(engine, tmp_path, "c2")
    m = write(again, "e", data["old"])  # the forgotten data again: written anew, not reused
    assert m["stored_size"] > 700_000
    swept = prune(engine)
    assert phase(swept, "sweep")["status"] == "done"
    fresh = reopen(engine, tmp_path, "c3")
    assert restore(fresh, "e") == data["old"] and restore(fresh, "d") == data["new"]
    assert fresh.check_repository(read_fraction=1.0).ok


def slow_writer(engine: DedupEngine, data_id: str, sources: dict, started: threading.Event, go: threading.Event,
                out: dict[str, Any]) -> threading.Thread:
    """A backup on a thread: it writes the first half of its data, says so, waits for ``go``, then the rest."""

    def run() -> None:
        try:
            writer = engine.start_backup(data_id, {"storage": {"name": "vault"}})
            try:
                (sname, arts), = sources.items()
                sink = writer.source(SourceRecord(sname, "test", {"name": "test"}, {"path": "/x"}))
                names = list(arts)
                for i, aname in enumerate(names):
                    with sink.open(aname) as w:
                        w.write(arts[aname])
                    if i == 0:
                        started.set()
                        assert go.wait(60)
                writer.add_done(sink.finish())
                out["manifest"] = writer.commit()
            finally:
                writer.abort()
        except BaseException as exc:
            out["error"] = exc
            started.set()

    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_backup_running_across_the_mark_holds_the_sweep_back_and_restores(tmp_path: Path) -> None:
    engine, data, stamps = three_backups(tmp_path)
    engine.forget("d", stamps[:2])
    other = reopen(engine, tmp_path, "cache-other")
    other.index_every = 1
    sources = {"s": {"x": data["old"]["s"]["a"], "y": data["old"]["s"]["b"] + os.urandom(100_000)}}
    started, go, out = threading.Event(), threading.Event(), {}
    t = slow_writer(other, "e", sources, started, go, out)
    assert started.wait(60)
    prune(engine)  # mark while it runs: it reuses blobs the plan marks dead
    r = prune(engine)
    assert phase(r, "sweep")["status"] == "waiting" and "before the mark" in phase(r, "sweep")["reason"]
    go.set()
    t.join(60)
    assert "error" not in out, out.get("error")
    assert phase(prune(engine), "sweep")["status"] == "done"
    prune_all(engine)
    fresh = reopen(engine, tmp_path, "c3")
    assert restore(fresh, "e") == sources and restore(fresh, "d") == data["new"]
    assert fresh.check_repository(read_fraction=1.0).ok


def test_a_backup_started_after_the_mark_runs_during_the_sweep_and_restores(tmp_path: Path) -> None:
    engine, data, stamps = three_backups(tmp_path)
    engine.forget("d", stamps[:2])
    prune(engine)  # mark
    other = reopen(engine, tmp_path, "cache-other")
    sources = {"s": {"x": data["old"]["s"]["a"], "y": data["mid"]["s"]["a"], "z": os.urandom(50_000)}}
    started, go, out = threading.Event(), threading.Event(), {}
    t = slow_writer(other, "e", sources, started, go, out)
    assert started.wait(60)
    r = prune(engine)  # it knows the plan: the sweep need not wait, and it wrote the marked blobs anew
    assert phase(r, "sweep")["status"] == "done", r
    go.set()
    t.join(60)
    assert "error" not in out, out.get("error")
    fresh = reopen(engine, tmp_path, "c3")
    assert restore(fresh, "e") == sources and restore(fresh, "d") == data["new"]
    prune_all(engine)
    assert restore(reopen(engine, tmp_path, "c4"), "e") == sources


def age_heartbeats(root: Path) -> None:
    old = time.time() - 3 * dr.WRITER_STALE_SECONDS
    for p in files(root, "writers"):
        os.utime(p, (old, old))


@pytest.mark.parametrize("when", ["after-mark", "after-sweep"])
def test_a_paused_backup_never_commits_pruned_data(tmp_path: Path, when: str) -> None:
    """A laptop suspended mid-backup, past its heartbeat: it reused blobs of a backup forgotten meanwhile and
    had indexed packs of its own; at commit it writes what a plan marked dead again, or fails without a
    pointer. Nothing it commits is ever missing."""
    engine, data, stamps = three_backups(tmp_path)
    root = tmp_path / "repo"
    laptop = reopen(engine, tmp_path, "cache-laptop")
    laptop.heartbeat_seconds = 3600  # suspended: no beat
    laptop.index_every = 1  # its own packs are indexed (and unused) when the mark comes
    sources = {"s": {"x": data["old"]["s"]["a"] + os.urandom(300_000)}}
    writer = laptop.start_backup("e", {"storage": {"name": "vault"}})
    try:
        fill(writer, sources)
        writer.store.flush("data")
        time.sleep(0.5)  # its packs reach the storage and the index (the uploader thread)
        engine.forget("d", stamps[:2])
        age_heartbeats(root)
        prune(engine)  # mark: the old backup's blobs and the laptop's own are unused now
        assert engine.retention().plans()[0].doc["dead"] > 0
        if when == "after-sweep":
            assert phase(prune(engine), "sweep")["status"] == "done"
            with pytest.raises(DataManagerError, match="back up again"):
                writer.commit()
        else:
            manifest = writer.commit()
            assert phase(prune(engine), "sweep")["status"] == "done"
    finally:
        writer.abort()
    fresh = reopen(engine, tmp_path, "c-fresh")
    assert restore(fresh, "d") == data["new"]
    if when == "after-mark":
        assert restore(fresh, "e") == sources and manifest["timestamp"]
    else:
        assert fresh.backups("e") == []
        write(reopen(engine, tmp_path, "c-again"), "e", sources)
        assert restore(reopen(engine, tmp_path, "c-again2"), "e") == sources
    prune_all(engine)
    final = reopen(engine, tmp_path, "c-final")
    assert restore(final, "e") == sources and final.check_repository(read_fraction=1.0).ok


def test_a_paused_write_only_backup_fails_rather_than_commit_pruned_data(tmp_path: Path) -> None:
    engine, data, stamps = three_backups(tmp_path)
    wo = DedupEngine(engine.storage, engine.settings, ring=WriteOnly(engine.ring), cache_dir=tmp_path / "wo")
    wo.heartbeat_seconds = 3600
    writer = wo.start_backup("e", {"storage": {"name": "vault"}}, "20300101T000000Z")
    try:
        fill(writer, {"s": {"x": data["old"]["s"]["b"]}})
        engine.forget("d", [stamps[0]])
        age_heartbeats(tmp_path / "repo")
        prune(engine)
        with pytest.raises(DataManagerError, match="write-only key cannot copy"):
            writer.commit()
    finally:
        writer.abort()
    assert [b.timestamp for b in engine.backups("e")] == []


def test_a_paused_backup_notices_plans_swept_and_removed_while_it_slept(tmp_path: Path) -> None:
    engine, data, stamps = three_backups(tmp_path)
    laptop = reopen(engine, tmp_path, "cache-laptop")
    laptop.heartbeat_seconds = 3600
    writer = laptop.start_backup("e", {"storage": {"name": "vault"}})
    try:
        fill(writer, {"s": {"x": os.urandom(100_000)}})
        age_heartbeats(tmp_path / "repo")
        for ts in stamps[:2]:  # two prunes, the first plan removed by the second sweep
            engine.forget("d", [ts])
            prune(engine)
            age_heartbeats(tmp_path / "repo")
            assert phase(prune(engine), "sweep")["status"] == "done"
        assert len(engine.retention().plans()) == 1
        with pytest.raises(DataManagerError, match="swept 2 or more times"):
            writer.commit()
    finally:
        writer.abort()


# --------------------------------------------------------------------------- forged objects


def test_forged_snapshots_tombstones_and_plans_never_make_retention_delete_real_data(tmp_path: Path) -> None:
    """An append key writes snapshots claiming old and future times in every bucket, a pointer that no key
    signed, a tombstone and a prune plan of its own: after forget (the plan bucketing by the storage's time
    where a claim is implausible) and both prune phases, every backup the policy keeps restores."""
    engine = new_repo(tmp_path)
    root = tmp_path / "repo"
    client = role_engine(engine, tmp_path, "append", "client")
    now = now_utc().replace(microsecond=0)
    real: dict[str, dict] = {}
    for day in range(10, 1, -1):  # daily backups at 03:00, written when they claim
        ts = format_timestamp((now - timedelta(days=day)).replace(hour=3, minute=0, second=0))
        data = {"s": {"a": text(60_000, day) + os.urandom(30_000)}}
        before = set(files(root, "snapshots"))
        write(client, "d", data, ts)
        (pointer,) = set(files(root, "snapshots")) - before
        when = datetime.strptime(ts, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp() + 60
        os.utime(pointer, (when, when))
        real[ts] = data
    policy = Policy(keep_daily=5)
    attacker = role_engine(engine, tmp_path, "append", "mallory")
    forged = []
    for day in [*range(12, 1, -1), -1, -2, -30]:  # every day's 23:00, and the future: newer than each real one
        ts = format_timestamp((now - timedelta(days=day)).replace(hour=23, minute=0, second=0))
        write(attacker, "d", {"s": {"a": b"junk %d" % day}}, ts)
        forged.append(ts)
    # one claiming an hour ago is believed: no different from a real backup the key could make now
    recent = format_timestamp(now - timedelta(hours=1))
    write(attacker, "d", {"s": {"a": b"junk now"}}, recent)
    honest = plan(policy, [*real, recent], now=now)
    # a pointer nobody signed (a real key's signature cut off and replaced)
    victim = files(root, "snapshots")[0]
    blob = bytearray(victim.read_bytes())
    blob[30] ^= 1
    (root / "snapshots" / ("f" * 32)).write_bytes(bytes(blob))
    # a tombstone and a plan signed by the append key
    mallory = attacker.retention()
    keep_ts = sorted(real)[-1]
    forged_tomb = {"format": dr.TOMBSTONE_FORMAT, "data_id": "d", "timestamp": keep_ts, "key_id": attacker.ring.key_id,
                   "snapshots": [d["snapshot"] for _, d, _, _ in attacker._pointers() if d and d["timestamp"] == keep_ts],
                   "pointers": [], "created": "2030-01-01T00:00:00.000Z"}
    import json

    sealed = attacker.ring.seal(json.dumps(forged_tomb).encode(), dr.TOMBSTONE_CONTEXT)
    (root / "tombstones").mkdir(exist_ok=True)
    (root / "tombstones" / ("e" * 32)).write_bytes(dr._frame(dr.TOMBSTONE_MAGIC, attacker.ring, sealed,
                                                             dr.TOMBSTONE_CONTEXT))
    attacker.sync_index()
    all_blobs = [pid for pid, *_ in attacker.cache.packs()]
    assert all_blobs
    dead = [bytes(r[0]) for r in attacker.cache._db.execute("SELECT id FROM blobs")]
    doc = {"format": dr.PLAN_FORMAT, "id": "d" * 32, "seq": 1, "created": "2000-01-01T00:00:00.000Z",
           "key_id": attacker.ring.key_id, "host": "h", "index_files": [], "tombstones": [], "snapshots": [],
           "packs": [{"pack": pid.hex(), "kind": kind, "size": size, "action": "delete", "live": 0, "dead": size,
                      "orphan": False} for pid, kind, size, _ in attacker.cache.packs()]}
    mallory._write_plan(doc, dead)

    admin = reopen(engine, tmp_path, "cache-admin")
    listed = [b.timestamp for b in admin.backups("d") if b.complete]
    assert keep_ts in listed  # the forged tombstone hides nothing
    report = admin.check_repository()
    assert any("tombstones/" + "e" * 32 in e for e in report.errors)
    assert any("prune/" + "d" * 32 in e for e in report.errors)
    times = admin.retention_times("d")
    assert set(times) == set(forged) and not set(times) & set(real)
    decided = plan(policy, listed, admin.holds("d"), now=now, times=times)
    # Every real backup the honest plan keeps is kept. (Today's slot may go to a forged snapshot written now:
    # bucketed at the storage's time, it is no different from a backup the key could really make now.)
    assert set(honest.keep) & set(real) <= set(decided.keep), (honest.keep, decided.keep)
    admin.forget("d", decided.remove)
    result = prune(admin)  # the forged plan is not swept; a real mark is made
    assert any("not signed by a trusted admin key" in n for n in result["notes"])
    assert phase(result, "mark")["status"] == "done"
    assert phase(prune(admin), "sweep")["status"] == "done"
    fresh = reopen(engine, tmp_path, "cache-fresh")
    kept_real = [ts for ts in honest.keep if ts in real]
    assert len(kept_real) == 4  # 5 days, one of them today's
    for ts in kept_real:
        assert restore_at(fresh, "d", ts) == real[ts], ts
    # a backup by the append client does not avoid blobs the forged plan names
    m = write(reopen(client, tmp_path, "cache-client2"), "d", real[keep_ts])
    assert m["stored_size"] < 20_000


def test_implausible_times_are_bucketed_at_the_storage_time(tmp_path: Path) -> None:
    engine = new_repo(tmp_path)
    client = role_engine(engine, tmp_path, "append", "c")
    old = format_timestamp(now_utc() - timedelta(days=30))
    future = format_timestamp(now_utc() + timedelta(days=30))
    write(client, "d", {"s": {"a": b"1"}}, old)
    write(client, "d", {"s": {"a": b"2"}}, future)
    write(engine, "d", {"s": {"a": b"3"}}, format_timestamp(now_utc() - timedelta(days=60)))  # admin: believed
    recent = write(client, "d", {"s": {"a": b"4"}}, format_timestamp(now_utc()))["timestamp"]
    # the next backup's TIMESTAMP follows the future-dated one (new_timestamp): the storage's time counts
    follows = write(client, "d", {"s": {"a": b"5"}})["timestamp"]
    assert follows > future
    times = engine.retention_times("d")
    assert set(times) == {old, future, follows}
    assert all(abs((t - now_utc()).total_seconds()) < 300 for t in times.values())
    assert recent not in times


# --------------------------------------------------------------------------- crashes


class Dying(Crashing):
    """Raises instead of the (N+1)th commit of a write or delete."""

    def delete(self, key: str) -> None:
        with self._lock:
            self.commits += 1
            if self.commits > self.allowed:
                raise OSError("killed")
        super().delete(key)


def test_crash_at_every_write_and_delete_of_forget_mark_and_sweep(tmp_path: Path) -> None:
    template, data, stamps = three_backups(tmp_path / "t")
    troot = tmp_path / "t" / "repo"
    repo_settings = template.settings

    def steps(engine: DedupEngine) -> None:
        engine.forget("d", stamps[:2])
        prune(engine)  # mark
        prune(engine)  # sweep (and a mark that finds nothing)

    counting = Dying(troot.parent / "count", 10**9)
    shutil.copytree(troot, troot.parent / "count", dirs_exist_ok=True)
    steps(DedupEngine(counting, repo_settings, ring=template.ring, cache_dir=tmp_path / "t" / "count-cache"))
    total = counting.commits
    assert total >= 8, total
    print("crash points:", total)
    for n in range(total):
        case = tmp_path / f"n{n}"
        shutil.copytree(troot, case / "repo")
        dying = DedupEngine(Dying(case / "repo", n), repo_settings, ring=template.ring, cache_dir=case / "cache")
        with pytest.raises(Exception):
            steps(dying)
        after = DedupEngine(FilesystemStorage("vault", Settings({"root": str(case / "repo")})), repo_settings,
                            ring=template.ring, cache_dir=case / "cache-after")
        listed = [b.timestamp for b in after.backups("d") if b.complete]
        assert stamps[2] in listed, n
        for ts in listed:
            assert restore_at(after, "d", ts) == data[["old", "mid", "new"][stamps.index(ts)]], (n, ts)
        left = [ts for ts in stamps[:2] if ts in listed]
        if left:
            after.forget("d", left)
        prune_all(after)
        final = DedupEngine(after.storage, repo_settings, ring=template.ring, cache_dir=case / "cache-final")
        assert [b.timestamp for b in final.backups("d")] == [stamps[2]], n
        assert restore_at(final, "d", stamps[2]) == data["new"], n
        report = final.check_repository(read_fraction=1.0)
        assert report.ok, (n, report.errors)
        assert not files(case / "repo", "tombstones"), n
        assert final.check_repository().counts["unused_blobs"] == 0, n
        shutil.rmtree(case)


def test_the_files_cache_never_reuses_chunks_a_pending_plan_marked_dead(tmp_path: Path) -> None:
    engine = new_repo(tmp_path)
    big = os.urandom(600_000)

    def one(ts: str | None, reuse: bool) -> Any:
        writer = engine.start_backup("d", {"storage": {"name": "vault"}}, ts)
        try:
            sink = writer.source(SourceRecord("s", "test", {"name": "test"}, {"path": "/x"}))
            with sink.open("a") as w:
                w.cut()
                got = w.reuse("big\0fingerprint", len(big)) if reuse else None
                if got is None:
                    w.write(big)
                    w.cut()
                    w.remember("big\0fingerprint", len(big), {"k": 1})
            writer.add_done(sink.finish())
            writer.commit()
            return got
        finally:
            writer.abort()

    one(format_timestamp(now_utc() - timedelta(days=2)), False)
    assert one(format_timestamp(now_utc() - timedelta(days=1)), True) == {"k": 1}  # the cache works
    engine.forget("d", [b.timestamp for b in engine.backups("d")])  # (a policy never does: a test of the guard)
    prune(engine)  # mark: every chunk of big is dead now
    assert one(None, True) is None  # not reused: read and written again
    assert phase(prune(engine), "sweep")["status"] == "done"
    assert restore(reopen(engine, tmp_path, "c2"), "d") == {"s": {"a": big}}


def test_prune_refuses_when_it_cannot_tell_what_is_used(tmp_path: Path) -> None:
    """A damaged index file (its packs would look unused), or a listed backup whose chunk list is not in the
    index: prune stops (exit 4) and deletes nothing; after repo repair index it works."""
    engine, data, stamps = three_backups(tmp_path)
    root = tmp_path / "repo"
    engine.forget("d", [stamps[0]])
    index_files = files(root, "index")
    damaged = bytearray(index_files[0].read_bytes())
    damaged[40] ^= 0x10
    index_files[0].write_bytes(bytes(damaged))
    before = {p: p.stat().st_size for p in root.rglob("*") if p.is_file()}
    with pytest.raises(CorruptBackupError, match="repair index"):
        prune(reopen(engine, tmp_path, "c2"))
    for p in index_files:
        p.unlink()  # every index gone: the chunk lists of the listed backups cannot be found
    with pytest.raises(CorruptBackupError, match="repair index"):
        prune(reopen(engine, tmp_path, "c3"))
    assert all(p.exists() for p in before if "index" not in p.parts)
    fixed = reopen(engine, tmp_path, "c4")
    fixed.repair_index()
    prune_all(fixed)
    for ts, name in zip(stamps[1:], ("mid", "new")):
        assert restore_at(reopen(engine, tmp_path, "c5"), "d", ts) == data[name]


CHILD = r"""
import os, sys, time
from pathlib import Path
sys.path.insert(0, os.getcwd())
from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.engines.dedup.engine import DedupEngine
from data_manager.engines.records import SourceRecord
from data_manager.types import Settings

repo, cache, work = map(Path, sys.argv[1:4])
engine = DedupEngine(FilesystemStorage("vault", Settings({"root": str(repo)})),
                     Settings({"passphrase": "correct horse", "pack_size": "256KiB"}), cache_dir=cache)
writer = engine.start_backup("child", {"storage": {"name": "vault"}})
sink = writer.source(SourceRecord("s", "test", {"name": "test"}, {"path": "/x"}))
with sink.open("x") as w:
    w.write((work / "x").read_bytes())
(work / "started").touch()
while not (work / "go").exists():
    time.sleep(0.05)
with sink.open("y") as w:
    w.write((work / "y").read_bytes())
writer.add_done(sink.finish())
writer.commit()
writer.abort()
"""


@pytest.mark.parametrize("start", ["before-mark", "after-mark"])
def test_a_backup_in_another_process_across_mark_and_sweep_restores(tmp_path: Path, start: str) -> None:
    import subprocess
    import sys

    engine, data, stamps = three_backups(tmp_path)
    engine.forget("d", stamps[:2])
    work = tmp_path / "work"
    work.mkdir()
    sources = {"s": {"x": data["old"]["s"]["a"], "y": data["old"]["s"]["b"] + os.urandom(50_000)}}
    for name, blob in sources["s"].items():
        (work / name).write_bytes(blob)
    if start == "after-mark":
        prune(engine)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "repo"), str(tmp_path / "child-cache"),
                              str(work)], cwd=str(Path(__file__).resolve().parents[3]))
    try:
        deadline = time.monotonic() + 60
        while not (work / "started").exists():
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        if start == "before-mark":
            prune(engine)  # mark while it runs: the sweep waits for it
            assert phase(prune(engine), "sweep")["status"] == "waiting"
        else:
            assert phase(prune(engine), "sweep")["status"] == "done"  # it knows the plan
        (work / "go").touch()
        assert child.wait(60) == 0
    finally:
        if child.poll() is None:
            child.kill()
    prune_all(engine)
    fresh = reopen(engine, tmp_path, "c-fresh")
    assert restore(fresh, "child") == sources and restore(fresh, "d") == data["new"]
    assert fresh.check_repository(read_fraction=1.0).ok


def test_known_many_answers_as_known_does_for_blobs_a_pending_plan_marked_dead(tmp_path: Path) -> None:
    """The writer looks small files' chunks up in batches: a blob a pending plan marked dead is unknown
    there too (written anew), a live one known, a new one unknown."""
    engine, data, stamps = three_backups(tmp_path)
    engine.forget("d", stamps[:2])
    prune(engine)  # mark
    again = reopen(engine, tmp_path, "c2")
    writer = again.start_backup("e", {"storage": {"name": "vault"}})
    try:
        store = writer.store
        ids = [row[0] for row in again.cache._db.execute("SELECT id FROM blobs")] + [os.urandom(32) for _ in range(3)]
        known = {b for b in ids if store.known(b)}
        assert 0 < len(known) < len(ids) - 3  # some live, some marked dead, the random ones unknown
        assert store.known_many(ids) == known
        assert again.cache.has_many(ids) == set(ids[:-3])  # the index itself: every indexed blob
    finally:
        writer.abort()
