"""before_operation/after_operation are called per plugin through pluggy, with the documented semantics.

Guards are fake plugin modules added to ``BUILTIN_PLUGINS`` (registered in that order); the registry is
reset around every test. See docs/control-flow.md (steps 5 and 7) and ``hookspecs.before_operation``.
"""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from data_manager import DataManager, hookimpl, plugins
from data_manager.errors import DataManagerError, SourceError

EVENTS: list[str] = []


def guard(name: str, *, before: bool = True, after: bool = True, fail_before: bool = False,
          fail_after: bool = False) -> str:
    """A guard plugin module named ``dm_test_guard_<name>``, recording its calls in EVENTS."""
    mod = types.ModuleType(f"dm_test_guard_{name}")
    if before:
        def before_operation(dataset: Any, operation: str, job_id: str) -> None:
            EVENTS.append(f"before {name}")
            if fail_before:
                raise SourceError(f"{name} cannot mark {dataset.data_id}")
        mod.before_operation = hookimpl(before_operation)  # type: ignore[attr-defined]
    if after:
        def after_operation(dataset: Any, error: BaseException | None) -> None:  # declares only what it uses
            EVENTS.append(f"after {name} {type(error).__name__ if error else 'ok'}")
            if fail_after:
                raise SourceError(f"{name} cannot unmark")
        mod.after_operation = hookimpl(after_operation)  # type: ignore[attr-defined]
    sys.modules[mod.__name__] = mod
    return mod.__name__


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DATA_MANAGER_STATE", str(tmp_path / "state.db"))
    monkeypatch.setenv("DATA_MANAGER_NO_PLUGINS", "1")
    EVENTS.clear()
    saved = plugins.BUILTIN_PLUGINS
    plugins.reset_registry()
    try:
        yield
    finally:
        plugins.BUILTIN_PLUGINS = saved
        plugins.reset_registry()
        for name in [m for m in sys.modules if m.startswith("dm_test_guard_")]:
            del sys.modules[name]


def manager(tmp_path: Path, *guards: str) -> DataManager:
    plugins.BUILTIN_PLUGINS = plugins.BUILTIN_PLUGINS + guards
    plugins.reset_registry()
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "f").write_text("x")
    return DataManager.from_dict({
        "storages": {"local": {"type": "filesystem", "root": str(tmp_path / "backups")}},
        "locks": {"settle": "0.05s"},
        "datasets": {"d": {"sources": [{"name": "raw", "type": "directory", "path": str(data)}]}},
    })


def test_before_in_reverse_registration_order_after_in_registration_order(tmp_path: Path) -> None:
    dm = manager(tmp_path, guard("a"), guard("b"), guard("notify", before=False))
    dm.backup("d")
    assert EVENTS == ["before b", "before a", "after a ok", "after b ok", "after notify ok"]
    assert dm.state.unavailable() == []


def test_a_failing_guard_undoes_those_that_entered_and_stops_the_rest(tmp_path: Path) -> None:
    # c is called first and enters; b fails; a is never called. c is undone with b's error, b is not
    # (it never marked anything), the notifier is told once.
    dm = manager(tmp_path, guard("a"), guard("b", fail_before=True), guard("c"), guard("notify", before=False))
    with pytest.raises(SourceError, match="b cannot mark d"):
        dm.backup("d")
    assert EVENTS == ["before c", "before b", "after c SourceError", "after notify SourceError"]
    assert dm.state.unavailable() == []  # c's mark was undone: the dataset is not left marked


def test_a_failing_undo_after_a_failing_guard_is_recorded(tmp_path: Path) -> None:
    dm = manager(tmp_path, guard("x", fail_before=True), guard("a", fail_after=True))
    with pytest.raises(SourceError, match="x cannot mark d"):
        dm.backup("d")
    assert EVENTS == ["before a", "before x", "after a SourceError"]
    marks = dm.state.unavailable()
    assert [m.state for m in marks] == ["release_failed"] and "a cannot unmark" in (marks[0].error or "")


def test_after_only_plugins_are_told_when_the_job_is_refused_before_marking(tmp_path: Path) -> None:
    refuse = types.ModuleType("dm_test_guard_refuse")
    refuse.check_dataset = hookimpl(lambda dataset, operation: "not now")  # type: ignore[attr-defined]
    sys.modules[refuse.__name__] = refuse
    dm = manager(tmp_path, guard("a"), refuse.__name__, guard("notify", before=False))
    with pytest.raises(DataManagerError, match="not now"):
        dm.backup("d")
    assert EVENTS == ["after notify RefusedError"]


def test_a_failing_release_is_recorded_and_returned(tmp_path: Path) -> None:
    dm = manager(tmp_path, guard("a", fail_after=True), guard("b"))
    result = dm.backup("d")
    assert EVENTS == ["before b", "before a", "after a ok", "after b ok"]
    assert result.release_error and "dm_test_guard_a: a cannot unmark" in result.release_error
    assert [m.state for m in dm.state.unavailable()] == ["release_failed"]


def test_guard_calls_go_through_pluggy_and_are_traced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dm = manager(tmp_path, guard("a"), guard("b"))
    seen: list[tuple[str, list[str]]] = []
    dm.registry.pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: seen.append((name, [i.plugin_name for i in impls])), lambda *a: None)
    with caplog.at_level(logging.DEBUG, logger="data_manager.hooks"):
        dm.backup("d")
    guards = [s for s in seen if s[0] in ("before_operation", "after_operation")]
    assert guards == [("before_operation", ["dm_test_guard_b"]), ("before_operation", ["dm_test_guard_a"]),
                      ("after_operation", ["dm_test_guard_a"]), ("after_operation", ["dm_test_guard_b"])]
    assert "hook before_operation(dataset=Dataset('d'), operation='backup'" in caplog.text
    assert "-> plugins dm_test_guard_b" in caplog.text
