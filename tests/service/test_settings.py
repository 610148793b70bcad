"""[service] and [datasets.X.schedule] are validated when the config is loaded: one line naming the file,
the dataset and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_manager.config import load_config
from data_manager.errors import ConfigError
from data_manager.plugins import load_registry
from data_manager.service.settings import expand_tokens, service_settings

BASE = """
[storages.local]
type = "filesystem"
root = "/tmp/x"

[datasets.d1]
[[datasets.d1.sources]]
name = "a"
type = "directory"
path = "/tmp/a"
"""


def load(tmp_path: Path, extra: str) -> None:
    path = tmp_path / "dm.toml"
    path.write_text(BASE + extra)
    load_config(path, load_registry(load_entry_points=False))


@pytest.mark.parametrize("extra, message", [
    ('[datasets.d1.schedule]\ncron = "61 * * * *"', r"dataset 'd1': \[schedule\]: key 'cron': '61 \* \* \* \*'"),
    ('[datasets.d1.schedule]\ncron = "* * * *"', r"dataset 'd1': \[schedule\]: key 'cron': .*five fields"),
    ('[datasets.d1.schedule]\ncron = "0 0 * * * *"', r"key 'cron': .*five fields"),
    ('[datasets.d1.schedule]\ntimezone = "UTC"', r"key 'cron': missing"),
    ('[datasets.d1.schedule]\ncron = "@daily"\ntimezone = "Mars/Olympus"', r"key 'timezone': unknown time zone"),
    ('[datasets.d1.schedule]\ncron = "@daily"\njitter = "soon"', r"key 'jitter': must be"),
    ('[datasets.d1.schedule]\ncron = "@daily"\nttl = -1', r"key 'ttl': must be"),
    ('[datasets.d1.schedule]\ncron = "@daily"\npaused = "yes"', r"key 'paused': must be true or false"),
    ('[datasets.d1.schedule]\ncron = "@daily"\nwindow = "22:00-26:00"', r"key 'window': '22:00-26:00' is not a range"),
    ('[datasets.d1.schedule]\ncron = "@daily"\nwindow = "22:00-22:00"', r"key 'window': .*opens and closes at the same"),
    ('[datasets.d1.schedule]\ncron = "@daily"\nwindow = []', r"key 'window': an empty list"),
    ('[datasets.d1.schedule]\ncron = "@daily"\nwindow = {cron = "0 22 * * *"}', r"key 'window': length must be"),
    ('[datasets.d1.schedule]\ncron = "@daily"\nwindow = {cron = "0 25 * * *", length = "1h"}', r"key 'window': cron"),
    ('[datasets.d1.schedule]\ncron = "@daily"\nwindow = {cron = "@daily", length = "1h", x = 1}', r"unknown key 'x'"),
    ('[datasets.d1.schedule]\ncron = "@daily"\nwindow = 5', r"key 'window': must be"),
    ('[service]\nport = 0', r"\[service\]: key 'port'"),
    ('[service]\nretries = -1', r"\[service\]: key 'retries'"),
    ('[service]\nkeep_done = "forever"', r"\[service\]: key 'keep_done'"),
    ('[service]\nlisten = "x"', r"\[service\]: key 'listen': unknown"),
    ('[service.tokens.ci]\ntoken = "short"', r"\[service.tokens.ci\]: key 'token': too short"),
    ('[service.tokens.ci]\ntoken = "${X}"\nscope = "root"', r"\[service.tokens.ci\]: key 'scope'"),
])
def test_one_line_errors(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load(tmp_path, extra)
    text = str(err.value)
    assert "\n" not in text and str(tmp_path / "dm.toml") in text


def test_valid_tables_and_tokens_expanded_only_by_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DM_T", raising=False)
    extra = ('[service]\nport = 9000\nkeep_done = "30d"\n[service.tokens.ci]\ntoken = "${DM_T}"\nscope = "operate"\n'
             '[datasets.d1.schedule]\ncron = "30 2 * * *"\ntimezone = "Europe/Berlin"\njitter = "5m"\nttl = "60d"\n')
    load(tmp_path, extra)  # the variable is unset: other commands still load the config
    path = tmp_path / "dm.toml"
    config = load_config(path, load_registry(load_entry_points=False))
    settings = service_settings(config.data, str(path))
    assert (settings.port, settings.keep_done, settings.tokens[0].scope) == (9000, 30 * 86400, "operate")
    with pytest.raises(ConfigError, match=r"\[service.tokens.ci\]: key 'token': environment variable DM_T is not set"):
        expand_tokens(settings, str(path))
    monkeypatch.setenv("DM_T", "t" * 20)
    assert expand_tokens(settings, str(path)) == {"ci": ("t" * 20, "operate")}
