from pathlib import Path

import pytest

from data_manager.config import find_config, load_config, parse_assignments, parse_config
from data_manager.errors import ConfigError, UsageError
from data_manager.plugins import load_registry

REG = load_registry(load_entry_points=False)


def cfg(**datasets: object) -> dict:
    return {"storages": {"local": {"type": "filesystem", "root": "/tmp/x"}}, "datasets": datasets}


def src(name: str = "raw", type: str = "directory", **kw: object) -> dict:
    return {"name": name, "type": type, "path": "/data", **kw}


def test_minimal_config_defaults_to_the_only_storage() -> None:
    c = parse_config(cfg(exp42={"sources": [src()]}), REG)
    assert c.datasets["exp42"].storage == "local"
    assert [s.name for s in c.datasets["exp42"].sources] == ["raw"]


@pytest.mark.parametrize(
    "data, needle",
    [
        (cfg(exp42={"sources": [src(type="nope")]}), "dataset 'exp42', source 'raw': key 'type': unknown source type 'nope'"),
        (cfg(exp42={"sources": [{"type": "directory"}]}), "dataset 'exp42', source #1: key 'name': missing"),
        (cfg(exp42={"sources": [src(), src()]}), "source 'raw': key 'name': duplicate source name"),
        (cfg(exp42={"storage": "gone", "sources": [src()]}), "dataset 'exp42': key 'storage': unknown storage 'gone'"),
        (cfg(exp42={"sources": []}), "dataset 'exp42': key 'sources': missing or empty"),
        (cfg(exp42={"sources": [src()], "colour": 1}), "dataset 'exp42': key 'colour': unknown"),
        ({"storages": {"s": {"root": "/x"}}, "datasets": {}}, "storage 's': key 'type': missing"),
        (cfg(**{"bad id!": {"sources": [src()]}}), "bad dataset id"),
        (cfg(exp42={"sources": [src(name="../up")]}), "key 'name': bad name"),
    ],
)
def test_config_errors_name_file_dataset_and_key(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(data, REG, Path("/etc/dm.toml"))
    assert needle in str(e.value)
    assert str(e.value).startswith("/etc/dm.toml")
    assert "\n" not in str(e.value)


def test_several_storages_need_an_explicit_choice() -> None:
    data = cfg(exp42={"sources": [src()]})
    data["storages"]["other"] = {"type": "filesystem", "root": "/y"}
    with pytest.raises(ConfigError, match="key 'storage': missing, and there are several storages"):
        parse_config(data, REG)


def test_env_expansion_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DM_ROOT", "/srv/b")
    monkeypatch.setenv("DM_PW", "hunter22")
    data = cfg(exp42={"sources": [src(password="${DM_PW}", note="${DM_MISSING:-fallback}")]})
    data["storages"]["local"]["root"] = "${DM_ROOT}"
    c = parse_config(data, REG)
    s = c.datasets["exp42"].sources[0].settings
    assert s.get("password") == "hunter22" and s.get("note") == "fallback"
    assert c.storages["local"].settings.get("root") == "/srv/b"
    assert "hunter22" in c.secrets
    assert s.public()["password"] == "***"
    assert s.public()["note"] == "${DM_MISSING:-fallback}"  # metadata keeps the unexpanded form


def test_missing_env_var_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DM_NOPE", raising=False)
    with pytest.raises(ConfigError, match="key 'path': environment variable DM_NOPE is not set"):
        parse_config(cfg(exp42={"sources": [{"name": "r", "type": "directory", "path": "${DM_NOPE}"}]}), REG)


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATA_MANAGER_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    with pytest.raises(ConfigError, match="no config file"):
        find_config(None)
    user = tmp_path / "xdg" / "data-manager" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text("")
    assert find_config(None) == user
    (tmp_path / "data-manager.toml").write_text("")
    assert find_config(None) == Path("data-manager.toml")
    monkeypatch.setenv("DATA_MANAGER_CONFIG", str(user))
    assert find_config(None) == user
    assert find_config(tmp_path / "data-manager.toml") == tmp_path / "data-manager.toml"
    with pytest.raises(ConfigError, match="not found \\(from --config\\)"):
        find_config(tmp_path / "nope.toml")


def test_bad_toml_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[storages\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p, REG)


def test_parse_assignments() -> None:
    assert parse_assignments(["raw.path=/tmp/x", "db.port=5433", "db.flag=true"]) == {
        "raw": {"path": "/tmp/x"},
        "db": {"port": 5433, "flag": True},
    }
    with pytest.raises(UsageError, match="SOURCE.KEY=VALUE"):
        parse_assignments(["nodot"])
