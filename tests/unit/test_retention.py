"""Retention policies (data_manager/retention.py): vectors with their reasons, the config table, property
tests of what a plan must never do; and the worm engine's side (holds, forget), crafted holds included."""

from __future__ import annotations

import getpass
import json
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_manager.builtin.filesystem import FilesystemStorage
from data_manager.config import parse_config
from data_manager.engines.records import SourceRecord
from data_manager.engines.worm import WormEngine
from data_manager.errors import ConfigError, CorruptBackupError, NotFoundError, UsageError
from data_manager.plugins import load_registry
from data_manager.retention import FUTURE_SLACK, Policy, plan
from data_manager.timestamps import is_timestamp
from data_manager.timestamps import format_timestamp, parse_timestamp
from data_manager.types import Settings

REG = load_registry(load_entry_points=False)
UTC = timezone.utc


def ts(text: str) -> str:
    """``"2025-04-21 11:00"`` -> ``20250421T110000Z``."""
    return format_timestamp(datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC))


def reasons(p, stamp: str) -> list[str]:  # type: ignore[no-untyped-def]
    return p.decision(stamp).reasons


NOW = datetime(2025, 6, 1, tzinfo=UTC)

# restic's manual (doc/060_forget.rst): weekdays of two weeks, an extra backup on Fridays, no Wednesday.
WEEKDAYS = [ts(t) for t in ("2025-04-21 11:00", "2025-04-22 11:00", "2025-04-23 11:00", "2025-04-24 11:00",
                            "2025-04-25 11:00", "2025-04-25 23:00", "2025-04-28 11:00", "2025-04-29 11:00",
                            "2025-05-01 11:00", "2025-05-02 11:00", "2025-05-02 23:00")]


# --------------------------------------------------------------------------- vectors


def test_keep_daily_counts_only_days_that_hold_a_backup() -> None:
    p = plan(Policy(keep_daily=5), WEEKDAYS, now=NOW)
    assert p.keep == [ts("2025-04-25 23:00"), ts("2025-04-28 11:00"), ts("2025-04-29 11:00"),
                      ts("2025-05-01 11:00"), ts("2025-05-02 23:00")]  # as restic's manual shows
    assert reasons(p, ts("2025-05-02 23:00")) == ["newest", "daily 1 of 5"]
    assert reasons(p, ts("2025-04-25 23:00")) == ["daily 5 of 5"]
    assert reasons(p, ts("2025-05-02 11:00")) == ["no rule keeps it"]  # not the newest of its day


def test_keep_last_and_the_rules_are_ored() -> None:
    p = plan(Policy(keep_last=3, keep_weekly=2), WEEKDAYS, now=NOW)
    assert reasons(p, ts("2025-05-02 23:00")) == ["newest", "last 1 of 3", "weekly 1 of 2"]
    assert reasons(p, ts("2025-05-02 11:00")) == ["last 2 of 3"]
    assert reasons(p, ts("2025-05-01 11:00")) == ["last 3 of 3"]
    assert reasons(p, ts("2025-04-25 23:00")) == ["weekly 2 of 2"]  # the newest of the week before
    assert len(p.keep) == 4


def test_iso_weeks_span_the_turn_of_the_year() -> None:
    # 2020 has 53 ISO weeks: Monday 2020-12-28 to Sunday 2021-01-03 is 2020-W53, one week.
    history = [ts(f"{d} 12:00") for d in ("2020-12-27", "2020-12-28", "2020-12-31", "2021-01-03", "2021-01-04")]
    p = plan(Policy(keep_weekly=3), history, now=NOW)
    assert p.keep == [ts("2020-12-27 12:00"), ts("2021-01-03 12:00"), ts("2021-01-04 12:00")]
    assert reasons(p, ts("2021-01-03 12:00")) == ["weekly 2 of 3"]


def test_the_oldest_is_kept_while_a_rule_has_count_left() -> None:
    history = [ts("2025-01-01 08:00"), ts("2025-01-01 20:00"), ts("2025-01-02 08:00"), ts("2025-01-03 08:00")]
    p = plan(Policy(keep_daily=7), history, now=NOW)
    assert p.remove == []
    assert reasons(p, ts("2025-01-01 08:00")) == ["daily 4 of 7 (oldest)"]  # restic >= 0.16; 0.14 removed it
    # Once the count is spent before the oldest, it goes (restic keeps no oldest then either).
    assert plan(Policy(keep_daily=3), history, now=NOW).remove == [ts("2025-01-01 08:00")]


def test_monthly_and_yearly() -> None:
    history = [ts(f"{y}-{m:02d}-15 03:00") for y in (2022, 2023, 2024) for m in (1, 6, 12)]
    p = plan(Policy(keep_monthly=3, keep_yearly=3), history, now=NOW)
    assert p.keep == [ts("2022-12-15 03:00"), ts("2023-12-15 03:00"), ts("2024-01-15 03:00"),
                      ts("2024-06-15 03:00"), ts("2024-12-15 03:00")]
    assert reasons(p, ts("2024-12-15 03:00")) == ["newest", "monthly 1 of 3", "yearly 1 of 3"]
    assert reasons(p, ts("2023-12-15 03:00")) == ["yearly 2 of 3"]
    assert reasons(p, ts("2022-12-15 03:00")) == ["yearly 3 of 3"]
    p = plan(Policy(keep_monthly=4, keep_yearly=2), history, now=NOW)
    assert reasons(p, ts("2023-12-15 03:00")) == ["monthly 4 of 4", "yearly 2 of 2"]
    assert len(p.keep) == 4


def test_hourly() -> None:
    history = [ts(f"2025-03-01 {h:02d}:{m:02d}") for h in (9, 10, 11) for m in (5, 35)]
    p = plan(Policy(keep_hourly=2), history, now=NOW)
    assert p.keep == [ts("2025-03-01 10:35"), ts("2025-03-01 11:35")]


def test_keep_within_is_relative_to_the_newest_backup_not_to_now() -> None:
    history = [ts(f"2019-05-{d:02d} 12:00") for d in range(1, 11)]  # years before NOW
    p = plan(Policy(keep_within=3 * 86400), history, now=NOW)
    # Strictly after newest - 3d (restic's cur.Time.After(t)): the 8th, 9th and 10th; not the 7th.
    assert p.keep == [ts("2019-05-08 12:00"), ts("2019-05-09 12:00"), ts("2019-05-10 12:00")]
    assert reasons(p, ts("2019-05-09 12:00")) == ["within 3d"]


def test_ttl_removes_only_what_expired_and_no_rule_keeps() -> None:
    now = datetime(2025, 3, 31, 13, tzinfo=UTC)
    history = [ts(f"2025-{m:02d}-{d:02d} 12:00") for m in (1, 2, 3) for d in (1, 10, 20)]
    p = plan(Policy(keep_monthly=2, ttl=30 * 86400), history, now=now)
    assert reasons(p, ts("2025-03-20 12:00")) == ["newest", "monthly 1 of 2"]
    assert reasons(p, ts("2025-02-20 12:00")) == ["monthly 2 of 2"]  # expired long ago, kept by a rule
    assert reasons(p, ts("2025-03-10 12:00")) == ["expires in 8d"]  # no rule keeps it, not expired yet
    assert reasons(p, ts("2025-03-01 12:00")) == ["expired 1h ago"]  # expired at 12:00 today
    assert reasons(p, ts("2025-02-10 12:00")) == ["expired 19d ago"]
    assert p.remove == [ts(f"2025-01-{d:02d} 12:00") for d in (1, 10, 20)] + [
        ts("2025-02-01 12:00"), ts("2025-02-10 12:00"), ts("2025-03-01 12:00")]


def test_the_newest_and_the_min_keep_newest_are_never_removed() -> None:
    history = [ts(f"2024-01-{d:02d} 12:00") for d in range(1, 9)]
    only_ttl = plan(Policy(ttl=86400), history, now=NOW)  # everything expired months ago
    assert only_ttl.keep == [ts("2024-01-08 12:00")]
    assert reasons(only_ttl, ts("2024-01-08 12:00")) == ["newest"]
    p = plan(Policy(ttl=86400, min_keep=3), history, now=NOW)
    assert p.keep == history[-3:]
    assert reasons(p, history[-1]) == ["newest", "min_keep 1 of 3"]
    assert reasons(p, history[-3]) == ["min_keep 3 of 3"]


def test_held_backups_are_kept_and_still_counted() -> None:
    held = {ts("2025-04-21 11:00"): "legal hold, case 17 (ann@lab, 2025-05-01T00:00:00Z)"}
    p = plan(Policy(keep_daily=5), WEEKDAYS, held, now=NOW)
    assert reasons(p, ts("2025-04-21 11:00")) == ["held: legal hold, case 17 (ann@lab, 2025-05-01T00:00:00Z)"]
    without = plan(Policy(keep_daily=5), WEEKDAYS, now=NOW)
    assert set(p.keep) == set(without.keep) | set(held)  # a hold changes no other decision
    assert reasons(plan(Policy(keep_last=1), WEEKDAYS, {WEEKDAYS[0]: ""}, now=NOW), WEEKDAYS[0]) == ["held"]


def test_backups_dated_in_the_future_are_kept_and_never_counted() -> None:
    forged = [ts(f"2031-01-0{d} 00:00") for d in range(1, 6)]  # e.g. a wrong clock; NOW is 2025
    p = plan(Policy(keep_last=2, keep_daily=2), WEEKDAYS + forged, now=NOW)
    assert set(forged) <= set(p.keep)
    assert reasons(p, forged[0]) == ["dated in the future: kept, not counted"]
    assert reasons(p, WEEKDAYS[-1]) == ["newest", "last 1 of 2", "daily 1 of 2"]  # real ones keep their slots
    assert reasons(p, WEEKDAYS[-2]) == ["last 2 of 2"]


def test_an_empty_policy_is_refused() -> None:
    for empty in (Policy(), Policy(min_keep=3), Policy(keep_daily=0, ttl=0)):
        with pytest.raises(UsageError, match="no retention policy"):
            plan(empty, WEEKDAYS, now=NOW)


def test_a_name_that_is_no_timestamp_is_one_line() -> None:
    for bad in ("latest", "2025042T110000Z", "20250421T110000Z/../x", "20250421t110000z", "x\nfake"):
        with pytest.raises(CorruptBackupError, match="is no TIMESTAMP") as exc:
            plan(Policy(keep_last=1), [*WEEKDAYS, bad], now=NOW)
        assert "\n" not in str(exc.value)
    assert not is_timestamp("2025421T11000Z") and is_timestamp("20250421T110000Z")


def test_no_backups_plans_nothing() -> None:
    assert plan(Policy(keep_last=1), [], now=NOW).decisions == []


# --------------------------------------------------------------------------- the config table and overrides


def cfg(retention: object) -> dict:
    return {"storages": {"local": {"type": "filesystem", "root": "/tmp/x"}},
            "datasets": {"exp42": {"sources": [{"name": "raw", "type": "directory", "path": "/d"}],
                                   "retention": retention}}}


def test_the_table_is_read_and_validated_at_load_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from data_manager.retention import policy_from_table

    monkeypatch.setenv("DM_TEST_TTL", "60d")
    table = {"keep_last": 3, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12, "keep_within": "30d",
             "ttl": "${DM_TEST_TTL}", "min_keep": 1}
    c = parse_config(cfg(table), REG)
    assert c.datasets["exp42"].options["retention"] == table  # kept as written (config check shows it so)
    p = policy_from_table(table, "f", "exp42")
    assert p == Policy(keep_last=3, keep_daily=7, keep_weekly=4, keep_monthly=12, keep_within=30 * 86400.0,
                       ttl=60 * 86400.0, min_keep=1)
    assert p.to_json()["ttl"] == "60d"
    assert p.describe() == ("keep 3 last, 7 daily, 4 weekly, 12 monthly; keep all within 30d of the newest; "
                            "the others expire 60d after they were taken; never fewer than the 1 newest")


@pytest.mark.parametrize("retention, message", [
    (5, "/etc/dm.toml: dataset 'exp42': key 'retention': must be a table"),
    ({"keep_dayly": 7}, "/etc/dm.toml: dataset 'exp42', retention: key 'keep_dayly': unknown key (known: "),
    ({"keep_daily": -1}, "/etc/dm.toml: dataset 'exp42', retention: key 'keep_daily': must be at least 0"),
    ({"keep_daily": "seven"}, "/etc/dm.toml: dataset 'exp42', retention: key 'keep_daily': must be an integer"),
    ({"keep_daily": True}, "/etc/dm.toml: dataset 'exp42', retention: key 'keep_daily': must be an integer"),
    ({"keep_within": "30 days"}, "/etc/dm.toml: dataset 'exp42', retention: key 'keep_within': must be a duration"),
    ({"ttl": "0"}, "/etc/dm.toml: dataset 'exp42', retention: key 'ttl': must be a duration"),
    ({"ttl": "99999999999d"}, "/etc/dm.toml: dataset 'exp42', retention: key 'ttl': at most 100000d"),
    ({"ttl": "${DM_TEST_NEVER_SET_4711}"}, "/etc/dm.toml: dataset 'exp42', retention: key 'ttl': environment variable"),
])
def test_every_table_error_is_one_line_naming_file_dataset_and_key(retention: object, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(cfg(retention), REG, Path("/etc/dm.toml"))
    assert str(exc.value).startswith(message), str(exc.value)
    assert "\n" not in str(exc.value)


def test_options_override_the_table() -> None:
    base = Policy(keep_daily=7, ttl=60 * 86400.0)
    assert base.replace(keep_daily=None, keep_last=2) == Policy(keep_last=2, keep_daily=7, ttl=60 * 86400.0)
    assert base.replace(keep_daily=0, ttl=0.0).empty()  # 0 turns a rule off
    with pytest.raises(UsageError, match="keep-daily: must be a whole number"):
        base.replace(keep_daily=-2)
    with pytest.raises(UsageError, match="unknown retention key 'keep_dayly'"):
        base.replace(keep_dayly=2)


# --------------------------------------------------------------------------- properties

START = datetime(2019, 12, 20, tzinfo=UTC)
stamps = st.lists(st.integers(0, 3 * 366 * 24 * 3600 // 600), max_size=40, unique=True).map(
    lambda offsets: [format_timestamp(START + timedelta(seconds=600 * o)) for o in offsets])
counts = st.integers(0, 6)
durations = st.sampled_from([0.0, 3600.0, 86400.0, 7 * 86400.0, 30 * 86400.0, 400 * 86400.0])
policies = st.builds(Policy, keep_last=counts, keep_hourly=counts, keep_daily=counts, keep_weekly=counts,
                     keep_monthly=counts, keep_yearly=counts, keep_within=durations, ttl=durations,
                     min_keep=st.integers(0, 4)).filter(lambda p: not p.empty())
nows = st.integers(-30, 4 * 366).map(lambda days: START + timedelta(days=days, hours=5))


@st.composite
def cases(draw: st.DrawFn) -> tuple[Policy, list[str], dict[str, str], datetime]:
    backups = draw(stamps)
    held = draw(st.lists(st.sampled_from(backups), unique=True)) if backups else []
    return draw(policies), backups, {h: "why" for h in held}, draw(nows)


FAST = settings(max_examples=300, deadline=None, database=None,  # no .hypothesis/ in the checkout
                suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(cases())
def test_never_removed_the_newest_the_held_the_future_or_the_min_keep_newest(case) -> None:  # type: ignore[no-untyped-def]
    policy, backups, held, now = case
    p = plan(policy, backups, held, now)
    removed = set(p.remove)
    past = sorted((b for b in backups if parse_timestamp(b) <= now + FUTURE_SLACK), reverse=True)
    assert not removed & set(held)
    assert not removed & {b for b in backups if parse_timestamp(b) > now + FUTURE_SLACK}
    assert not removed & set(past[: max(1, policy.min_keep)])
    assert sorted(p.keep + p.remove) == sorted(backups)
    assert [d.timestamp for d in p.decisions] == sorted(backups)  # oldest first
    assert all(d.reasons for d in p.decisions)


@FAST
@given(cases())
def test_applying_a_plan_twice_changes_nothing(case) -> None:  # type: ignore[no-untyped-def]
    policy, backups, held, now = case
    first = plan(policy, backups, held, now)
    again = plan(policy, first.keep, held, now)
    assert again.remove == []
    assert again.keep == first.keep


@FAST
@given(cases())
def test_ttl_removes_only_expired_backups(case) -> None:  # type: ignore[no-untyped-def]
    policy, backups, held, now = case
    p = plan(policy, backups, held, now)
    if policy.ttl:
        for b in p.remove:
            assert parse_timestamp(b) + timedelta(seconds=policy.ttl) <= now
            assert p.decision(b).reasons[0].startswith("expired ")


@FAST
@given(cases())
def test_holds_only_turn_removes_into_keeps(case) -> None:  # type: ignore[no-untyped-def]
    policy, backups, held, now = case
    free = plan(policy, backups, {}, now)
    p = plan(policy, backups, held, now)
    assert set(p.keep) == set(free.keep) | set(held)


@FAST
@given(cases())
def test_a_rule_keeps_at_most_its_count(case) -> None:  # type: ignore[no-untyped-def]
    policy, backups, held, now = case
    p = plan(policy, backups, held, now)
    for name, key in (("last", "keep_last"), ("daily", "keep_daily"), ("weekly", "keep_weekly"),
                      ("monthly", "keep_monthly"), ("yearly", "keep_yearly"), ("hourly", "keep_hourly")):
        kept = [d for d in p.decisions if any(r.startswith(f"{name} ") for r in d.reasons)]
        assert len(kept) <= getattr(policy, key)


# --------------------------------------------------------------------------- the worm engine's side


@pytest.fixture
def repo(tmp_path: Path) -> WormEngine:
    return WormEngine(FilesystemStorage("t", Settings({"root": str(tmp_path / "b")})))


def backup(repo: WormEngine, when: str, commit: bool = True) -> str:
    w = repo.start_backup("d", timestamp=when)
    sink = w.source(SourceRecord("s", "test", {}, {}))
    with sink.open("a") as out:
        out.write(b"x" * 1000)
    w.add_done(sink.finish())
    if commit:
        w.commit()
    return when


def test_worm_holds_round_trip_and_never_look_like_backups(repo: WormEngine, tmp_path: Path) -> None:
    a, b = backup(repo, "20250101T000000Z"), backup(repo, "20250102T000000Z")
    repo.set_hold("d", a, "legal hold")
    assert list(repo.holds("d")) == [a] and repo.holds("d")[a].startswith("legal hold (")
    doc = json.loads((tmp_path / "b" / "d" / ".holds" / f"{a}.json").read_text())
    assert {"reason", "user", "host", "created", "data_id", "timestamp"} <= set(doc)
    assert repo.timestamps("d") == [a, b] and repo.data_ids() == ["d"]  # .holds is no backup
    repo.set_hold("d", a, "another reason")  # replaces the reason
    assert repo.holds("d")[a].startswith("another reason (")
    repo.set_hold("d", a, None)
    assert repo.holds("d") == {}
    with pytest.raises(UsageError, match="is not held"):
        repo.set_hold("d", a, None)


def test_a_hold_says_its_reason_who_and_when(repo: WormEngine, tmp_path: Path) -> None:
    a = backup(repo, "20250101T000000Z")
    repo.set_hold("d", a, "legal hold")
    doc = json.loads((tmp_path / "b" / "d" / ".holds" / f"{a}.json").read_text())
    assert doc["format"] == repo.HOLD_FORMAT and (doc["data_id"], doc["timestamp"]) == ("d", a)
    assert (doc["user"], doc["host"]) == (getpass.getuser(), socket.gethostname())
    assert repo.holds("d") == {a: f"legal hold ({doc['user']}@{doc['host']}, {doc['created']})"}
    # written by another tool: no reason, nobody, no time
    (tmp_path / "b" / "d" / ".holds" / f"{a}.json").write_text(json.dumps({"data_id": "d", "timestamp": a}))
    assert repo.holds("d") == {a: "(?@?, ?)"}


def test_worm_holds_only_complete_backups(repo: WormEngine) -> None:
    half = backup(repo, "20250101T000000Z", commit=False)
    with pytest.raises(UsageError, match="incomplete"):
        repo.set_hold("d", half, "x")
    with pytest.raises(UsageError, match="no backup"):
        repo.set_hold("d", "20250105T000000Z", "x")
    with pytest.raises(UsageError, match="bad timestamp"):
        repo.set_hold("d", "../../etc", "x")


def test_worm_forget_deletes_the_manifest_first_and_refuses_held_ones(repo: WormEngine,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = (backup(repo, f"2025010{i}T000000Z") for i in (1, 2, 3))
    repo.set_hold("d", b, "keep")
    with pytest.raises(UsageError, match="is held"):
        repo.forget("d", [a, b])
    assert repo.timestamps("d") == [a, b, c]  # nothing changed: every one is checked first
    deleted: list[str] = []
    real_delete, real_tree = repo.storage.delete, repo.storage.delete_tree
    monkeypatch.setattr(repo.storage, "delete", lambda key: (deleted.append(key), real_delete(key)))
    monkeypatch.setattr(repo.storage, "delete_tree", lambda key: (deleted.append(key + "/"), real_tree(key)))
    assert repo.forget("d", [a, c]) == [a, c]
    assert deleted[:2] == [f"d/{a}/backup.json", f"d/{a}/"]
    assert repo.timestamps("d") == [b]
    with pytest.raises(UsageError, match="not a complete backup"):
        repo.forget("d", [a])


def test_worm_crafted_hold_objects_still_hold_and_say_so(repo: WormEngine, tmp_path: Path) -> None:
    a, b, c = (backup(repo, f"2025010{i}T000000Z") for i in (1, 2, 3))
    holds = tmp_path / "b" / "d" / ".holds"
    holds.mkdir()
    (holds / f"{a}.json").write_bytes(b"\xff not json")
    (holds / f"{b}.json").write_text(json.dumps({"data_id": "other", "timestamp": b, "reason": "x"}))
    (holds / f"{c}.json").write_text(json.dumps({"data_id": "d", "timestamp": c, "reason": "evil\x1b[2J\nline" * 50}))
    (holds / "not-a-timestamp.json").write_text("{}")
    (holds / "20250101T000000Z").mkdir()
    found = repo.holds("d")
    assert set(found) == {a, b, c}
    assert found[a].startswith("unreadable hold object, still a hold")
    assert "names other/" in found[b]
    assert all("\n" not in why and "\x1b" not in why and len(why) <= 300 for why in found.values())
    with pytest.raises(UsageError, match="is held"):
        repo.forget("d", [a])
    (holds / f"{a}.json").write_bytes(b"[" * 100_000)  # larger than a hold may be
    assert "unreadable hold object" in repo.holds("d")[a]
    assert found[b] == f"hold object d/.holds/{b}.json names other/{b}, still a hold"


def test_worm_holds_bounds_and_what_is_no_hold(repo: WormEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = (backup(repo, f"2025010{i}T000000Z") for i in (1, 2, 3))
    holds = tmp_path / "b" / "d" / ".holds"
    holds.mkdir()
    doc = {"data_id": "d", "timestamp": a, "reason": ""}
    doc["reason"] = "x" * ((64 << 10) + 10 - len(json.dumps(doc)))  # just over the 64 KiB a hold may be
    (holds / f"{a}.json").write_text(json.dumps(doc))
    (holds / f"{b}.yaml").write_text(json.dumps({"data_id": "d", "timestamp": b}))  # not NAME.json
    (holds / ("n" * 200 + ".json")).write_text("{}")  # a long crafted name: logged cut short
    (holds / f".{c}.json.1234.part").write_text("")  # a write in flight: not even logged
    (holds / f"{c}.json").write_text(json.dumps({"data_id": "d", "timestamp": c, "reason": "r"}))
    with caplog.at_level("WARNING", logger="data_manager.engines.worm"):
        found = repo.holds("d")
    assert found[a].startswith(f"unreadable hold object, still a hold (d/.holds/{a}.json: larger than 65536 bytes")
    assert set(found) == {a, c}
    assert sorted(r.getMessage() for r in caplog.records) == [
        f"d/.holds/{b}.yaml: not a hold (expected TIMESTAMP.json); ignored",
        f"d/.holds/{'n' * 79}…: not a hold (expected TIMESTAMP.json); ignored"]
    # a hold released while the list is read is skipped, and the next ones are still read
    real, real_list = repo.storage.open_read, repo.storage.list
    monkeypatch.setattr(repo.storage, "list", lambda prefix: sorted(real_list(prefix), key=lambda e: e.name))

    def released(key: str, *args: object, **kwargs: object) -> object:
        if key.endswith(f"{a}.json"):
            raise NotFoundError(key)
        return real(key, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(repo.storage, "open_read", released)
    assert set(repo.holds("d")) == {c}


def test_a_backup_a_few_seconds_ahead_of_the_clock_counts() -> None:
    """Backups taken in quick succession are named the next free second, ahead of the clock: they count (a
    backup dated further than FUTURE_SLACK ahead does not)."""
    from datetime import timedelta

    from data_manager.timestamps import format_timestamp

    older, ahead = format_timestamp(NOW - timedelta(seconds=1)), format_timestamp(NOW + timedelta(seconds=2))
    p = plan(Policy(keep_last=1), [older, ahead], now=NOW)
    assert p.remove == [older] and reasons(p, ahead) == ["newest", "last 1 of 1"]
