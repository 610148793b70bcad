import json
import re
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from importlib.metadata import EntryPoint
from typing import Any

import pytest
from click.testing import CliRunner

from data_manager import hookimpl
from data_manager import plugins as plugins_mod
from data_manager.config import parse_config
from data_manager.errors import ConfigError
from data_manager.types import SourceType, StorageType


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


class Dummy:
    def __init__(self, name: str, settings: Any) -> None:
        self.name = name


def by_name(reg: plugins_mod.Registry) -> dict[str, plugins_mod.PluginInfo]:
    return {p.name: p for p in reg.plugins}


def good_plugin() -> types.ModuleType:
    def register_source_types(register):  # type: ignore[no-untyped-def]
        register(SourceType("good", Dummy))

    return module_with(register_source_types=register_source_types)


CALLED: list[str] = []


def bad_plugin(bad: Callable[[Callable[..., None]], None]) -> types.ModuleType:
    """A plugin that first registers a valid type ``fine``, then does ``bad(register)``; it is also a guard."""

    def register_source_types(register):  # type: ignore[no-untyped-def]
        register(SourceType("fine", Dummy))
        bad(register)

    def check_dataset(dataset, operation):  # type: ignore[no-untyped-def]
        CALLED.append("check_dataset")
        return "a skipped plugin must never be asked"

    return module_with(register_source_types=register_source_types, check_dataset=check_dataset)


def _raise(register: Callable[..., None]) -> None:
    raise RuntimeError("no config for me")


@pytest.mark.parametrize(("bad", "error"), [
    (lambda register: register("not a SourceType"), "registered 'not a SourceType', not a SourceType"),
    (lambda register: register(StorageType("s", Dummy)), "not a SourceType"),
    (lambda register: register(SourceType("nofactory", "Dummy")), "type 'nofactory' has a factory that is not callable"),
    (lambda register: register(SourceType(42, Dummy)), "whose name 42 is not a non-empty str"),
    (lambda register: register(SourceType("", Dummy)), "whose name '' is not a non-empty str"),
    (lambda register: register(SourceType("x", Dummy), aliases="y"), "has aliases 'y', not a list of non-empty str"),
    (lambda register: register(SourceType("fine", Dummy)), "source type name 'fine' registered twice by this plugin"),
    (_raise, "register_source_types raised RuntimeError: no config for me"),
])
def test_a_bad_registration_skips_the_whole_plugin(monkeypatch: pytest.MonkeyPatch, bad: Any, error: str) -> None:
    fake_entry_points(monkeypatch, {"bad": bad_plugin(bad), "good": good_plugin()})
    reg = plugins_mod.load_registry(load_entry_points=True)
    info = by_name(reg)["bad"]
    assert info.error and error in info.error, info.error
    assert info.source_types == []
    assert "fine" not in reg.source_types  # what it registered before the bad call does not stay
    assert not reg.pm.has_plugin("bad")  # nor do its other hooks: a guard of a skipped plugin is never asked
    CALLED.clear()
    assert reg.hook.check_dataset(dataset=None, operation="backup") == [] and CALLED == []
    assert by_name(reg)["good"].error is None and "good" in reg.source_types
    assert {"directory", "sqlite"} <= set(reg.source_types) and "filesystem" in reg.storage_types


def test_a_clash_with_a_builtin_keeps_the_builtin_and_names_both(monkeypatch: pytest.MonkeyPatch) -> None:
    def register_source_types(register):  # type: ignore[no-untyped-def]
        register(SourceType("mine", Dummy))
        register(SourceType("directory", Dummy))

    fake_entry_points(monkeypatch, {"clash": module_with(register_source_types=register_source_types)})
    reg = plugins_mod.load_registry(load_entry_points=True)
    error = by_name(reg)["clash"].error or ""
    assert re.search(r"source type 'directory' is provided twice: by data-manager \(built-in\) \S+ \(plugin directory\), "
                     r"loaded first, which keeps it, and by data-manager-clash 9.9 \(plugin clash\), skipped", error), error
    assert reg.source_types["directory"][1].name == "directory"
    assert "mine" not in reg.source_types and not reg.pm.has_plugin("clash")


def test_a_clash_between_two_plugins_the_first_by_name_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    def register_storage_types(register):  # type: ignore[no-untyped-def]
        register(StorageType("cloud", Dummy))

    # Listed in the opposite order: the outcome must not depend on the order entry points come in.
    fake_entry_points(monkeypatch, {"zeta": module_with(register_storage_types=register_storage_types),
                                    "alpha": module_with(register_storage_types=register_storage_types)})
    reg = plugins_mod.load_registry(load_entry_points=True)
    assert reg.storage_types["cloud"][1].name == "alpha" and by_name(reg)["alpha"].error is None
    error = by_name(reg)["zeta"].error or ""
    assert "storage type 'cloud' is provided twice: by data-manager-alpha 9.9 (plugin alpha)" in error
    assert "data-manager-zeta 9.9 (plugin zeta), skipped" in error


def test_an_entry_point_named_like_a_builtin_does_not_unload_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, {"sqlite": good_plugin()})
    reg = plugins_mod.load_registry(load_entry_points=True)
    infos = [p for p in reg.plugins if p.name == "sqlite"]
    assert [p.error is None for p in infos] == [True, False]
    assert "already registered" in (infos[1].error or "")
    assert "sqlite" in reg.source_types and "good" not in reg.source_types


def test_an_alias_resolves_to_its_type_and_is_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    def register_source_types(register):  # type: ignore[no-untyped-def]
        register(SourceType("newname", Dummy), aliases=("oldname",))

    fake_entry_points(monkeypatch, {"renamed": module_with(register_source_types=register_source_types)})
    reg = plugins_mod.load_registry(load_entry_points=True)
    assert reg.source_type("oldname", "here") is reg.source_type("newname", "here")
    assert reg.source_type("oldname", "here")[0].name == "newname"
    info = by_name(reg)["renamed"]
    assert info.source_types == ["newname"] and info.source_aliases == {"oldname": "newname"}


def test_an_alias_clashing_with_a_type_breaks_the_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    def register_source_types(register):  # type: ignore[no-untyped-def]
        register(SourceType("other", Dummy), aliases=("sqlite",))

    fake_entry_points(monkeypatch, {"alias": module_with(register_source_types=register_source_types)})
    reg = plugins_mod.load_registry(load_entry_points=True)
    assert "source type 'sqlite' is provided twice" in (by_name(reg)["alias"].error or "")
    assert "other" not in reg.source_types and reg.source_types["sqlite"][1].name == "sqlite"


def test_block_env_skips_named_plugins_without_importing_them(monkeypatch: pytest.MonkeyPatch) -> None:
    # "broken" would fail to import; blocked, it is never imported, so it is not an error.
    fake_entry_points(monkeypatch, {"broken": None, "minio": good_plugin(), "other": module_with()})
    monkeypatch.setenv("DATA_MANAGER_BLOCK_PLUGINS", " broken, minio ,")
    reg = plugins_mod.load_registry()
    infos = by_name(reg)
    assert infos["broken"].blocked and infos["broken"].error is None
    assert infos["minio"].blocked and "good" not in reg.source_types and not reg.pm.has_plugin("minio")
    assert not infos["other"].blocked and reg.pm.has_plugin("other")
    assert reg.broken == [] and [p.name for p in reg.blocked] == ["broken", "minio"]
    with pytest.raises(ConfigError, match="plugins blocked by DATA_MANAGER_BLOCK_PLUGINS: broken, minio"):
        reg.source_type("good", "dm.toml, dataset 'd', source 'x'")


def test_status_says_which_plugins_are_blocked_or_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    from data_manager.api import DataManager

    fake_entry_points(monkeypatch, {"broken": None, "minio": good_plugin()})
    monkeypatch.setenv("DATA_MANAGER_BLOCK_PLUGINS", "minio")
    reg = plugins_mod.load_registry()
    dm = DataManager(parse_config({"storages": {"s": {"type": "filesystem", "root": "/tmp/dm-status-test"}}}, reg), reg)
    shown = {p["name"]: p for p in dm.status().plugins}
    assert shown["minio"]["blocked"] and shown["minio"]["error"] is None
    assert not shown["broken"]["blocked"] and shown["broken"]["error"]


def test_blocking_one_side_of_a_clash_lets_the_other_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def register_source_types(register):  # type: ignore[no-untyped-def]
        register(SourceType("directory", Dummy))

    fake_entry_points(monkeypatch, {"clash": module_with(register_source_types=register_source_types)})
    monkeypatch.setenv("DATA_MANAGER_BLOCK_PLUGINS", "directory")
    reg = plugins_mod.load_registry(load_entry_points=True)
    assert reg.source_types["directory"][1].name == "clash" and by_name(reg)["clash"].error is None


def test_plugins_command_reports_broken_blocked_and_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    def register_source_types(register):  # type: ignore[no-untyped-def]
        register(SourceType("newname", Dummy), aliases=("oldname",))

    fake_entry_points(monkeypatch, {
        "bad": bad_plugin(lambda register: register("not a SourceType")),
        "blocked": None,
        "renamed": module_with(register_source_types=register_source_types),
    })
    monkeypatch.setenv("DATA_MANAGER_BLOCK_PLUGINS", "blocked")
    from data_manager.cli import main

    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "data-manager-bad 9.9: BROKEN: register_source_types registered 'not a SourceType', not a SourceType" in lines["bad"]
    assert "data-manager-blocked 9.9: blocked by DATA_MANAGER_BLOCK_PLUGINS" in lines["blocked"]
    assert "source newname (alias oldname)" in lines["renamed"]
    assert "source directory" in lines["directory"]

    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["bad"]["package"] == "data-manager-bad" and rows["bad"]["version"] == "9.9"
    assert "not a SourceType" in rows["bad"]["error"] and rows["bad"]["source_types"] == []
    assert rows["blocked"]["blocked"] is True and rows["blocked"]["error"] is None
    assert rows["renamed"]["source_aliases"] == {"oldname": "newname"} and rows["renamed"]["error"] is None


def test_commands_work_with_a_broken_plugin_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_entry_points(monkeypatch, {"bad": bad_plugin(lambda register: register(SourceType("directory", Dummy)))})
    monkeypatch.setenv("DATA_MANAGER_STATE", str(tmp_path / "state.db"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_text("x")
    config = tmp_path / "dm.toml"
    config.write_text(f'[storages.local]\ntype = "filesystem"\nroot = "{tmp_path / "b"}"\n[locks]\nsettle = "0.05s"\n'
                      f'[[datasets.d.sources]]\nname = "raw"\ntype = "directory"\npath = "{tmp_path / "data"}"\n')
    from data_manager.cli import main

    CALLED.clear()
    result = CliRunner().invoke(main, ["--config", str(config), "backup", "d"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert CALLED == []  # the broken plugin's guard was not asked (it would have refused)
    assert "plugin bad (data-manager-bad 9.9) failed to register its types" in result.stderr


def test_vv_traces_hook_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, {"good": good_plugin()})
    from data_manager.cli import main

    result = CliRunner().invoke(main, ["-vv", "plugins"])
    assert result.exit_code == 0, result.output
    assert "DEBUG: hook register_source_types(register=<_Collected.register>) -> plugins good" in result.stderr
    assert "DEBUG: hook register_source_types returned [] (" in result.stderr  # pluggy drops None results
    quiet = CliRunner().invoke(main, ["-v", "plugins"])
    assert "hook register_source_types" not in quiet.stderr


def test_no_plugins_env_blocks_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, {"broken": None})
    monkeypatch.setenv("DATA_MANAGER_NO_PLUGINS", "1")
    reg = plugins_mod.load_registry()
    assert [p.name for p in reg.plugins] == ["filesystem", "directory", "sqlite"]
