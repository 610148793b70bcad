import sys
import types
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from data_manager import hookimpl
from data_manager import plugins as plugins_mod
from data_manager.errors import PluginError
from data_manager.types import SourceType


class FakeDist:
    def __init__(self, name: str) -> None:
        self.metadata = {"Name": name}
        self.version = "9.9"


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, modules: dict[str, types.ModuleType | None]) -> None:
    eps = []
    for name, module in modules.items():
        mod_name = f"dm_fake_{name}"
        if module is not None:
            sys.modules[mod_name] = module
        else:
            sys.modules.pop(mod_name, None)  # import will fail
        ep = EntryPoint(name=name, value=mod_name, group="data_manager")
        eps.append(ep)

    def entry_points(group: str) -> list[Any]:
        out = []
        for ep in eps:
            ep_with_dist = ep
            object.__setattr__(ep_with_dist, "dist", FakeDist(f"data-manager-{ep.name}"))
            out.append(ep_with_dist)
        return out

    monkeypatch.setattr(plugins_mod, "entry_points", entry_points)


def module_with(**funcs: Any) -> types.ModuleType:
    m = types.ModuleType("fake")
    for name, f in funcs.items():
        setattr(m, name, hookimpl(f))
    return m


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    plugins_mod.reset_registry()
    yield
    plugins_mod.reset_registry()


def test_builtins_register_through_the_hooks() -> None:
    reg = plugins_mod.load_registry(load_entry_points=False)
    assert set(reg.source_types) >= {"directory", "sqlite"} and "filesystem" in reg.storage_types


def test_a_broken_plugin_is_reported_and_the_others_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def register_source_types(register):  # type: ignore[no-untyped-def]
        register(SourceType("good", object))  # type: ignore[arg-type]

    fake_entry_points(monkeypatch, {"broken": None, "good": module_with(register_source_types=register_source_types)})
    reg = plugins_mod.load_registry(load_entry_points=True)
    by_name = {p.name: p for p in reg.plugins}
    assert by_name["broken"].error and "ModuleNotFoundError" in by_name["broken"].error
    assert by_name["good"].error is None and "good" in reg.source_types


def test_a_hook_without_spec_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def register_sauce_types(register):  # type: ignore[no-untyped-def]
        pass

    fake_entry_points(monkeypatch, {"typo": module_with(register_sauce_types=register_sauce_types)})
    reg = plugins_mod.load_registry(load_entry_points=True)
    assert "register_sauce_types" in (next(p for p in reg.plugins if p.name == "typo").error or "")
    assert not reg.pm.has_plugin("typo")


def test_two_plugins_claiming_one_type_name_both(monkeypatch: pytest.MonkeyPatch) -> None:
    def register_source_types(register):  # type: ignore[no-untyped-def]
        register(SourceType("directory", object))  # type: ignore[arg-type]

    fake_entry_points(monkeypatch, {"clash": module_with(register_source_types=register_source_types)})
    with pytest.raises(PluginError, match=r"source type 'directory' is provided twice: by data-manager \(built-in\).*data-manager-clash 9.9"):
        plugins_mod.load_registry(load_entry_points=True)


def test_no_plugins_env_blocks_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, {"broken": None})
    monkeypatch.setenv("DATA_MANAGER_NO_PLUGINS", "1")
    reg = plugins_mod.load_registry()
    assert [p.name for p in reg.plugins] == ["filesystem", "directory", "sqlite"]
