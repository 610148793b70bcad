"""The source is ``mysql``; ``memsql``, its first name, stays an alias (configs and backups that name it)."""

from data_manager.config import parse_config
from data_manager.plugins import load_registry


def test_mysql_and_its_alias_memsql_are_one_source_type() -> None:
    reg = load_registry(load_entry_points=True)
    assert reg.source_type("memsql", "t") is reg.source_type("mysql", "t")
    stype, info = reg.source_type("memsql", "t")
    assert stype.name == "mysql" and info.name == "memsql" and info.error is None
    assert info.source_types == ["mysql"] and info.source_aliases == {"memsql": "mysql"}


def test_a_config_naming_the_alias_is_recorded_under_the_type_name() -> None:
    reg = load_registry(load_entry_points=True)
    config = parse_config({
        "storages": {"local": {"type": "filesystem", "root": "/srv/b"}},
        "datasets": {"d": {"sources": [{"name": "db", "type": "memsql", "database": "exp42"}]}},
    }, reg)
    assert [s.type for s in config.datasets["d"].sources] == ["mysql"]
