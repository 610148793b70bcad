"""Top-level config tables: the core's and those plugins name; any other is a config error (a typo)."""

from __future__ import annotations

import pytest

from data_manager import hookimpl
from data_manager.config import CORE_TABLES, parse_config
from data_manager.errors import ConfigError
from data_manager.plugins import load_registry

BASE = {"storages": {"local": {"type": "filesystem", "root": "/tmp/x"}}}


class RegistryPlugin:
    @hookimpl
    def config_tables(self) -> list[str]:
        return ["registry"]


def test_core_tables_are_known() -> None:
    assert set(CORE_TABLES) == {"storages", "datasets", "guards", "jobs", "locks", "monitoring", "service", "state"}
    parse_config({**BASE, "jobs": {}, "locks": {}, "state": {}, "guards": {}, "datasets": {}}, load_registry(load_entry_points=False))


def test_a_table_a_plugin_names_is_known_and_listed() -> None:
    reg = load_registry(load_entry_points=False)
    with pytest.raises(ConfigError, match=r"unknown top-level table \[registry\] \(known: datasets, guards"):
        parse_config({**BASE, "registry": {"url": "http://r"}}, reg)
    reg.pm.register(RegistryPlugin(), name="registry-plugin")
    parse_config({**BASE, "registry": {"url": "http://r"}}, reg)
    with pytest.raises(ConfigError, match=r"\[registy\] \(known: datasets, .*registry.*\); did you mean \[registry\]\?") as err:
        parse_config({**BASE, "registy": {}}, reg)
    assert err.value.key == "registy"


def test_a_top_level_key_that_is_not_a_table() -> None:
    with pytest.raises(ConfigError, match=r"<config>: unknown top-level key 'root'"):
        parse_config({**BASE, "root": "/srv"}, load_registry(load_entry_points=False))


def test_an_unknown_table_with_nothing_close_has_no_hint() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "zzqx": {}}, load_registry(load_entry_points=False))
    assert str(err.value) == ("<config>: unknown top-level table [zzqx] (known: datasets, guards, jobs, locks, "
                              "monitoring, service, state, storages)")


def test_plugins_that_failed_to_load_are_named_beside_the_closest_table() -> None:
    """The table may be a broken plugin's: both hints, the close name and the plugins that failed."""
    from data_manager.plugins import PluginInfo

    reg = load_registry(load_entry_points=False)
    reg.plugins.append(PluginInfo("registry", "data-manager-registry", "1.0", error="ImportError: no module x"))
    reg.plugins.append(PluginInfo("other", "data-manager-other", "2.0", error="bad"))
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "storage": {}}, reg)
    assert str(err.value).endswith("; did you mean [storages]?; plugins that failed to load: registry, other")
