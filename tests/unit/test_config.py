import errno
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


UNSET = "${DM_TEST_NEVER_SET_4711}"


def with_storages(datasets: dict, **storages: object) -> dict:
    return {"storages": storages, "datasets": datasets}


# (config, what the message starts with: file, then dataset/storage/source, then the key; a word of the
# problem; ConfigError.key). Every raise in config.py has a line here.
CASES = [
    # top level
    ({"storages": 5}, "/etc/dm.toml: key 'storages': must be a table", "", "storages"),
    ({**cfg(), "datasets": []}, "/etc/dm.toml: key 'datasets': must be a table", "", "datasets"),
    ({**cfg(), "storage": {}}, "/etc/dm.toml: unknown top-level table [storage]", "did you mean [storages]?", "storage"),
    ({**cfg(), "colour": 1}, "/etc/dm.toml: unknown top-level key 'colour'", "known: datasets", "colour"),
    # storages
    (with_storages({}, local=5), "/etc/dm.toml: key 'storages.local': must be a table", "", "storages.local"),
    (with_storages({}, **{"bad name!": {"type": "filesystem"}}), "/etc/dm.toml: storage 'bad name!': bad storage name",
     "letters, digits", "storages.bad name!"),
    (with_storages({}, s={"root": "/x"}), "/etc/dm.toml: storage 's': key 'type': missing", "required", "type"),
    (with_storages({}, s={"type": "ftp"}), "/etc/dm.toml: storage 's': key 'type': unknown storage type 'ftp'",
     "installed: filesystem", "type"),
    (with_storages({}, s={"type": "filesystem", "root": UNSET}),
     "/etc/dm.toml: storage 's': key 'root': environment variable DM_TEST_NEVER_SET_4711 is not set", "", "root"),
    (with_storages({}, s={"type": "filesystem", "root": "/x", "engine": 5}),
     "/etc/dm.toml: storage 's': key 'engine': must be a string, not 5", "", "engine"),
    (with_storages({}, s={"type": "filesystem", "root": "/x", "engine": "zip"}),
     "/etc/dm.toml: storage 's': key 'engine': unknown engine 'zip' (known: ", "dedup", "engine"),
    ({**cfg(), "service": 5}, "/etc/dm.toml: key 'service': must be a table", "", "service"),
    # datasets
    ({"datasets": {"exp42": {"sources": [src()]}}}, "/etc/dm.toml: dataset 'exp42': key 'storage': missing, and "
     "no storage is configured", "", "storage"),  # no [storages] at all
    ({"datasets": {"exp42": {"storage": "s", "sources": [src()]}}},
     "/etc/dm.toml: dataset 'exp42': key 'storage': unknown storage 's' (configured: none)", "", "storage"),
    (with_storages({"exp42": {"storage": "c", "sources": [src()]}}, a={"type": "filesystem", "root": "/a"},
                   b={"type": "filesystem", "root": "/b"}),
     "/etc/dm.toml: dataset 'exp42': key 'storage': unknown storage 'c' (configured: a, b)", "", "storage"),
    (cfg(exp42=5), "/etc/dm.toml: key 'datasets.exp42': must be a table", "", "datasets.exp42"),
    (cfg(**{"bad id!": {"sources": [src()]}}), "/etc/dm.toml: dataset 'bad id!': bad dataset id", "max 128", "datasets"),
    (cfg(exp42={"sources": [src()], "colour": 1}), "/etc/dm.toml: dataset 'exp42': key 'colour': unknown",
     "description, ", None),  # the known keys listed; ConfigError.key is not set on this one
    (with_storages({"exp42": {"sources": [src()]}}), "/etc/dm.toml: dataset 'exp42': key 'storage': missing",
     "no storage is configured", "storage"),
    (with_storages({"exp42": {"sources": [src()]}}, a={"type": "filesystem", "root": "/a"},
                   b={"type": "filesystem", "root": "/b"}),
     "/etc/dm.toml: dataset 'exp42': key 'storage': missing", "there are several storages", "storage"),
    (cfg(exp42={"storage": "gone", "sources": [src()]}), "/etc/dm.toml: dataset 'exp42': key 'storage': unknown storage 'gone'",
     "configured: local", "storage"),
    # copies: a list of other storages' names (either check alone must refuse)
    (cfg(exp42={"sources": [src()], "copies": "local"}),
     "/etc/dm.toml: dataset 'exp42': key 'copies': must be a list of storage names, not 'local'", "", "copies"),
    (cfg(exp42={"sources": [src()], "copies": [7]}),
     "/etc/dm.toml: dataset 'exp42': key 'copies': must be a list of storage names, not [7]", "", "copies"),
    (cfg(exp42={"sources": [src()], "copies": ["gone"]}),
     "/etc/dm.toml: dataset 'exp42': key 'copies': unknown storage 'gone'", "configured: local", "copies"),
    (with_storages({"exp42": {"storage": "a", "sources": [src()], "copies": ["gone"]}},
                   a={"type": "filesystem", "root": "/a"}, b={"type": "filesystem", "root": "/b"}),
     "/etc/dm.toml: dataset 'exp42': key 'copies': unknown storage 'gone' (configured: a, b)", "", "copies"),
    (with_storages({"exp42": {"storage": "a", "sources": [src()], "copies": ["b", "b"]}},
                   a={"type": "filesystem", "root": "/a"}, b={"type": "filesystem", "root": "/b"}),
     "/etc/dm.toml: dataset 'exp42': key 'copies': a storage is named twice", "", "copies"),
    (cfg(exp42={"sources": [src()], "copies": ["local"]}),
     "/etc/dm.toml: dataset 'exp42': key 'copies': 'local' is the dataset's own storage", "", "copies"),
    (cfg(exp42={"sources": []}), "/etc/dm.toml: dataset 'exp42': key 'sources': missing or empty",
     "[[datasets.exp42.sources]]", "sources"),
    (cfg(exp42={}), "/etc/dm.toml: dataset 'exp42': key 'sources': missing or empty", "", "sources"),
    (cfg(exp42={"sources": {"name": "raw"}}), "/etc/dm.toml: dataset 'exp42': key 'sources': missing or empty", "", "sources"),
    # sources
    (cfg(exp42={"sources": [src(), 5]}), "/etc/dm.toml: dataset 'exp42': key 'sources[1]': must be a table", "",
     "sources[1]"),
    (cfg(exp42={"sources": [{"type": "directory"}]}), "/etc/dm.toml: dataset 'exp42', source #1: key 'name': missing",
     "letters, digits", "name"),
    (cfg(exp42={"sources": [src(), src(name="../up")]}),
     "/etc/dm.toml: dataset 'exp42', source #2: key 'name': bad name '../up' (letters, digits, . _ -)", "", "name"),
    (cfg(exp42={"sources": [src(name=7)]}), "/etc/dm.toml: dataset 'exp42', source #1: key 'name': bad name 7", "", "name"),
    (cfg(exp42={"sources": [src(), src()]}), "/etc/dm.toml: dataset 'exp42', source 'raw': key 'name': duplicate source name 'raw'",
     "", "name"),
    (cfg(exp42={"sources": [{"name": "raw", "path": "/x"}]}), "/etc/dm.toml: dataset 'exp42', source 'raw': key 'type': missing",
     "required", "type"),
    (cfg(exp42={"sources": [src(type="nope")]}), "/etc/dm.toml: dataset 'exp42', source 'raw': key 'type': unknown source type 'nope'",
     "installed: directory, sqlite", "type"),
    (cfg(exp42={"sources": [src(path=UNSET)]}),
     "/etc/dm.toml: dataset 'exp42', source 'raw': key 'path': environment variable DM_TEST_NEVER_SET_4711 is not set", "", "path"),
    (cfg(exp42={"sources": [src(exclude=["*.tmp", UNSET])]}),
     "/etc/dm.toml: dataset 'exp42', source 'raw': key 'exclude': environment variable DM_TEST_NEVER_SET_4711", "", "exclude"),
    (cfg(exp42={"sources": [src(options={"inner": UNSET})]}),
     "/etc/dm.toml: dataset 'exp42', source 'raw': key 'options.inner': environment variable", "", "options.inner"),
]


@pytest.mark.parametrize("data, prefix, needle, key", CASES)
def test_config_errors_name_file_dataset_and_key(data: dict, prefix: str, needle: str, key: str | None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DM_TEST_NEVER_SET_4711", raising=False)
    with pytest.raises(ConfigError) as e:
        parse_config(data, REG, Path("/etc/dm.toml"))
    text = str(e.value)
    assert text.startswith(prefix), text
    assert needle in text and "\n" not in text
    if key is not None:
        assert e.value.key == key


def build(data: dict) -> None:
    """Parse, then create every storage and source as a job would: the plugins read their settings."""
    config = parse_config(data, REG, Path("/etc/dm.toml"))
    for name, storage in config.storages.items():
        REG.storage_type(storage.type, storage.settings.where)[0].factory(name, storage.settings)
    for dataset in config.datasets.values():
        for spec in dataset.sources:
            REG.source_type(spec.type, spec.settings.where)[0].factory(spec.name, spec.settings)


@pytest.mark.parametrize("data, prefix", [
    (with_storages({}, local={"type": "filesystem"}), "storage 'local': key 'root': missing (required)"),
    (with_storages({}, local={"type": "filesystem", "root": "/x", "bucket": "b"}),
     "storage 'local': key 'bucket': unknown key (known: root, shared)"),
    (cfg(exp42={"sources": [{"name": "raw", "type": "directory"}]}), "dataset 'exp42', source 'raw': key 'path': missing (required)"),
    (cfg(exp42={"sources": [src(path=5)]}), "dataset 'exp42', source 'raw': key 'path': must be a string, not 5"),
    (cfg(exp42={"sources": [src(path="")]}), "dataset 'exp42', source 'raw': key 'path': must not be empty"),
    (cfg(exp42={"sources": [src(colour="red")]}), "dataset 'exp42', source 'raw': key 'colour': unknown key (known: "),
    (cfg(exp42={"sources": [src(volume_size="lots")]}),
     "dataset 'exp42', source 'raw': key 'volume_size': must be a size like 128MiB or a number of bytes, not 'lots'"),
    (cfg(exp42={"sources": [src(volume_size=0)]}), "dataset 'exp42', source 'raw': key 'volume_size': must be a size"),
    (cfg(exp42={"sources": [src(exclude=["*.tmp", 3])]}), "dataset 'exp42', source 'raw': key 'exclude': must be a list of strings"),
    (cfg(exp42={"sources": [src(exclude=5)]}), "dataset 'exp42', source 'raw': key 'exclude': must be a list of strings, not 5"),
    (cfg(exp42={"sources": [src(type="sqlite", busy_timeout=-1)]}),
     "dataset 'exp42', source 'raw': key 'busy_timeout': must be at least 0, not -1"),
    (cfg(exp42={"sources": [src(type="sqlite", busy_timeout="soon")]}),
     "dataset 'exp42', source 'raw': key 'busy_timeout': must be an integer, not 'soon'"),
    (cfg(exp42={"sources": [src(type="sqlite", busy_timeout=True)]}),
     "dataset 'exp42', source 'raw': key 'busy_timeout': must be an integer, not True"),
])
def test_plugin_settings_errors_name_file_dataset_and_key(data: dict, prefix: str) -> None:
    with pytest.raises(ConfigError) as e:
        build(data)
    assert str(e.value).startswith(f"/etc/dm.toml: {prefix}"), str(e.value)
    assert "\n" not in str(e.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[storages\n")
    with pytest.raises(ConfigError, match=f"^{bad}: not valid TOML: "):
        load_config(bad, REG)
    bad.write_bytes(b'[storages.local]\ntype = "filesystem"\nroot = "/b\xe9"\n')
    with pytest.raises(ConfigError, match=f"^{bad}: not UTF-8 text"):
        load_config(bad, REG)
    bad.write_text('[storages.local]\ntype = "filesystem"\nroot = 5\n[datasets.exp42]\nsources = []\n')
    with pytest.raises(ConfigError, match=f"^{bad}: dataset 'exp42': key 'sources'"):
        load_config(bad, REG)


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


def test_secrets_are_every_env_value_of_4_chars_or_more_and_every_value_under_a_secret_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What the log and metadata scrubbers are given (Config.secrets): found in lists and tables too."""
    monkeypatch.setenv("DM_FOUR", "abcd")
    monkeypatch.setenv("DM_THREE", "abc")  # shorter values would scrub common words out of every log line
    monkeypatch.setenv("DM_LISTED", "in-a-list")
    monkeypatch.setenv("DM_NESTED", "in-a-table")
    data = cfg(exp42={"sources": [src(
        note="${DM_FOUR}/${DM_THREE}",
        exclude=["${DM_LISTED}"],
        options={"inner": "${DM_NESTED}"},
        password="literal-pw",  # a secret key's value, written in the file itself
        tokens=["listed-token"],  # a secret key holding a list
        secret={"deep": "nested-secret"},  # and a table
    )]})
    c = parse_config(data, REG)
    assert c.secrets >= {"abcd", "in-a-list", "in-a-table", "literal-pw", "listed-token", "nested-secret"}
    assert "abc" not in c.secrets
    assert None not in c.secrets


def test_a_key_its_type_declares_secret_is_one_whatever_its_name() -> None:
    """``secret_keys`` of a source or storage type: ``conninfo`` holds no secret word, yet is one."""
    from data_manager.config import make_settings

    secrets: set[str] = set()
    s = make_settings({"conninfo": "host=db password=pw-in-conninfo", "host": "db"}, "source 'pg'", ("conninfo",), secrets)
    assert secrets == {"host=db password=pw-in-conninfo"}
    assert s.public() == {"conninfo": "***", "host": "db"}
    assert s.get("conninfo") == "host=db password=pw-in-conninfo"


def test_retention_values_from_the_environment_are_secrets_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DM_WITHIN", "365d")
    c = parse_config(cfg(exp42={"sources": [src()], "retention": {"keep_within": "${DM_WITHIN}"}}), REG)
    assert "365d" in c.secrets


def test_the_engine_settings_name_their_storage() -> None:
    c = parse_config(with_storages({}, s={"type": "filesystem", "root": "/x", "engine": "dedup"}), REG,
                     Path("/etc/dm.toml"))
    assert c.storages["s"].engine == "dedup"
    assert c.storages["s"].engine_settings.where == "/etc/dm.toml: storage 's'"


@pytest.mark.parametrize("schedule, message", [
    ({"cron": "2 * *"}, "/etc/dm.toml: dataset 'exp42': [schedule]: key 'cron': '2 * *': expected five fields"),
    ({}, "/etc/dm.toml: dataset 'exp42': [schedule]: key 'cron': missing"),
    ("daily", "/etc/dm.toml: dataset 'exp42': key 'schedule': must be a table"),
])
def test_a_bad_schedule_is_a_config_error_naming_file_and_dataset(schedule: object, message: str) -> None:
    """Validated when the config is read (by every command), not first by ``serve``."""
    with pytest.raises(ConfigError) as e:
        parse_config(cfg(exp42={"sources": [src()], "schedule": schedule}), REG, Path("/etc/dm.toml"))
    assert str(e.value).startswith(message), str(e.value)


def test_dataset_options_are_its_other_keys() -> None:
    c = parse_config(cfg(exp42={"storage": "local", "sources": [src()], "description": "run 42", "copies": []}), REG)
    assert c.datasets["exp42"].options == {"description": "run 42", "copies": []}


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


def test_a_missing_config_names_where_its_path_came_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_MANAGER_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError) as e:
        find_config(None)
    assert str(e.value) == f"config file {tmp_path / 'gone.toml'} not found (from DATA_MANAGER_CONFIG)"


def test_an_unreadable_config_is_one_line_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "c.toml"
    p.write_text("")

    def refuse(self: Path, *a: object, **k: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)  # root reads a mode-000 file: refuse it another way
    with pytest.raises(ConfigError) as e:
        load_config(p, REG)
    assert str(e.value) == f"{p}: cannot read: Permission denied"


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


def test_the_user_config_is_under_xdg_config_home_or_dot_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from data_manager.config import user_config_path

    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert user_config_path() == tmp_path / ".config" / "data-manager" / "config.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert user_config_path() == tmp_path / "xdg" / "data-manager" / "config.toml"


def test_an_unknown_dataset_names_the_known_ones() -> None:
    c = parse_config(cfg(b={"sources": [src()]}, a={"sources": [src()]}), REG, Path("/etc/dm.toml"))
    with pytest.raises(UsageError, match=r"^unknown dataset 'x' \(in /etc/dm.toml: a, b\)$"):
        c.dataset("x")
    with pytest.raises(UsageError, match=r"^unknown dataset 'x' \(in None: none\)$"):
        parse_config(cfg(), REG).dataset("x")
    assert c.storage_for("a").name == "local"


def test_assignments_split_at_the_first_dot_and_the_first_equals() -> None:
    assert parse_assignments(["raw.opt.x=a=b", "raw.s=[1, 2]", "raw.t=not toml"]) == {
        "raw": {"opt.x": "a=b", "s": [1, 2], "t": "not toml"}}
    for bad in ("raw.path", "=x", ".path=x", "raw.=x", "raw=x"):
        with pytest.raises(UsageError, match="expected SOURCE.KEY=VALUE"):
            parse_assignments([bad])
