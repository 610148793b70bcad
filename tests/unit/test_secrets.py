"""Secrets stay out of what data-manager writes and prints: the state database, ``status``, backup metadata.

Uses a test source ``leaky`` registered by this module: its settings carry a password from the
environment, which it puts into its description and into the error it fails with.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from data_manager import hookimpl
from data_manager.errors import SourceError
from data_manager.scrub import add_secrets, scrub
from data_manager.types import ArtifactSet, ArtifactSink, Settings, Source, SourceType

from ..helpers import builtin_plugins

SECRET = "s3cr3t-Pa55-4711"  # from the environment, as ${DM_LEAKY_PW}
URL_PW = "literalpw99"  # written in the config as part of a URL: not a registered secret, but a URL password


class LeakySource(Source):
    """Describes itself with its password, and fails (if ``fail``) with an error that quotes it."""

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        settings.check_known({"password", "url", "fail"})
        self.password = settings.get_str("password")
        self.url = settings.get_str("url")
        self.fail = settings.get_bool("fail", False)

    def describe(self) -> str:
        return f"leaky host=db.example password2 {self.password} via {self.url}"

    def backup(self, sink: ArtifactSink) -> None:
        if self.fail:
            raise SourceError(f"source {self.name!r}: login with {self.password} refused by {self.url}")
        with sink.open("data.bin") as out:
            out.write(b"payload")

    def restore(self, artifacts: ArtifactSet) -> None:
        pass


@hookimpl
def register_source_types(register: Callable[[SourceType], None]) -> None:
    register(SourceType("leaky", LeakySource, "test source that tries to leak its password"))


@pytest.fixture(autouse=True)
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DATA_MANAGER_STATE", str(tmp_path / "state" / "state.db"))
    monkeypatch.setenv("DM_LEAKY_PW", SECRET)
    monkeypatch.delenv("DATA_MANAGER_CONFIG", raising=False)
    with builtin_plugins(__name__):
        yield


def write_config(tmp_path: Path, fail: bool) -> Path:
    path = tmp_path / "dm.toml"
    path.write_text(
        f'[storages.local]\ntype = "filesystem"\nroot = "{tmp_path / "backups"}"\n\n'
        '[locks]\nsettle = "0.05s"\n\n'
        "[[datasets.d.sources]]\n"
        'name = "leaky"\ntype = "leaky"\npassword = "${DM_LEAKY_PW}"\n'
        f'url = "postgresql://app:{URL_PW}@db.example/app"\nfail = {str(fail).lower()}\n'
    )
    return path


def cli(config: Path, *args: str) -> Any:
    from data_manager.cli import main

    result = CliRunner().invoke(main, ["--config", str(config), *args])
    assert "Traceback" not in (result.stderr or ""), result.stderr
    return result


def test_scrub_replaces_registered_secrets_and_url_passwords() -> None:
    add_secrets(["abcd-secret", ""])
    text = "user abcd-secret at postgresql://u:pw1@h/db"
    assert scrub(text) == "user *** at postgresql://u:***@h/db"
    assert scrub({"a": [text], "n": 3}) == {"a": [scrub(text)], "n": 3}


def test_secret_in_no_metadata_no_state_db_no_status(tmp_path: Path) -> None:
    ok = cli(write_config(tmp_path, fail=False), "backup", "d")
    assert ok.exit_code == 0, ok.stderr
    failed = cli(write_config(tmp_path, fail=True), "backup", "d")
    assert failed.exit_code == 1
    assert "login with *** refused" in failed.stderr

    [backup_json] = (tmp_path / "backups" / "d").glob("*/backup.json")
    [source_json] = (tmp_path / "backups" / "d").glob("*/leaky/source.json")
    described = json.loads(source_json.read_text())
    assert "leaky host=db.example password2 ***" in json.dumps(described)  # the description is kept, scrubbed
    for path in (backup_json, source_json):
        text = path.read_text()
        assert SECRET not in text and URL_PW not in text, path

    status = cli(write_config(tmp_path, fail=True), "status", "--json")
    assert status.exit_code == 0, status.stderr
    assert SECRET not in status.stdout and URL_PW not in status.stdout
    doc = json.loads(status.stdout)
    errors = [j["error"] for j in doc["recent"]] + [t["error"] for j in doc["recent"] for t in j["tasks"]]
    assert any(e and "login with *** refused by postgresql://app:***@db.example/app" in e for e in errors), errors

    db = tmp_path / "state" / "state.db"
    for path in [db, *db.parent.glob("state.db-*")]:
        data = path.read_bytes()
        assert SECRET.encode() not in data and URL_PW.encode() not in data, path
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
