"""Bandwidth limits and ``parallel`` through the real command: a limited backup really takes its time and
still verifies; the command line wins over the config; bad values are one line, exit 2, naming the key.

Timing assertions are lower bounds only (3 MB at 1 MiB/s cannot take less than ~2.9 s): a slow machine
makes them only safer.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.helpers import cli

SIZE = 3_000_000  # ~2.9 MiB: ~2.9 s at 1 MiB/s


def _setup(tmp_path: Path, storage_extra: str = "", dataset_extra: str = "") -> tuple[Path, Path]:
    data = tmp_path / "raw"
    data.mkdir()
    (data / "random.bin").write_bytes(os.urandom(SIZE))  # does not compress: ~3 MB go to the storage
    config = tmp_path / "dm.toml"
    config.write_text(
        f'[storages.local]\ntype = "filesystem"\nroot = "{tmp_path / "backups"}"\n{storage_extra}\n'
        f'[locks]\nsettle = "0.05s"\n\n'
        f"[datasets.exp]\n{dataset_extra}\n"
        f'[[datasets.exp.sources]]\nname = "raw"\ntype = "directory"\npath = "{data}"\n'
    )
    return config, data


def test_a_limited_backup_takes_its_time_and_verifies(tmp_path: Path) -> None:
    config, data = _setup(tmp_path, storage_extra='limit_upload = "1MiB/s"\n')  # a key the plugin never sees

    result = cli("backup", "exp", "--json", config=config)
    assert result.returncode == 0, result.stderr
    backup = json.loads(result.stdout)
    assert backup["stored_size"] >= SIZE
    assert backup["seconds"] >= 2.5, backup  # the manifest's own timing: from the first write to the last

    t0 = time.monotonic()
    result = cli("verify", "exp", "--limit-download", "1MiB", config=config)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - t0 >= 2.5
    assert "intact" in result.stdout

    target = tmp_path / "restored"
    result = cli("restore", "exp", "--yes", "--set", f"raw.path={target}", config=config)
    assert result.returncode == 0, result.stderr
    assert (target / "random.bin").read_bytes() == (data / "random.bin").read_bytes()


def test_the_command_line_wins_over_the_config(tmp_path: Path) -> None:
    """At the configured 1 KiB/s this backup would take most of an hour; 0 on the command line lifts it."""
    config, _ = _setup(tmp_path, storage_extra='limit_upload = "1KiB"\nlimit_download = "1KiB"\n')
    result = cli("backup", "exp", "--limit-upload", "0", config=config)
    assert result.returncode == 0, result.stderr
    result = cli("verify", "exp", "--limit-download", "1GiB/s", config=config)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("storage_extra", "dataset_extra", "args", "key"), [
    ('limit_upload = "fast"', "", (), "key 'limit_upload'"),
    ("limit_download = 0", "", (), "key 'limit_download'"),
    ('limit_upload = "-1MiB"', "", (), "key 'limit_upload'"),
    ("", "parallel = 0", (), "key 'parallel'"),
    ("", 'parallel = "many"', (), "key 'parallel'"),
    ("", "", ("--limit-upload", "fast"), "--limit-upload 'fast'"),
    ("", "", ("--limit-download", "1MiB/h"), "--limit-download '1MiB/h'"),
    ("", "", ("--parallel", "0"), "--parallel '0'"),
])
def test_bad_limits_and_parallel_are_one_line_exit_2(tmp_path: Path, storage_extra: str, dataset_extra: str,
                                                     args: tuple[str, ...], key: str) -> None:
    config, _ = _setup(tmp_path, storage_extra=storage_extra, dataset_extra=dataset_extra)
    result = cli("backup", "exp", *args, config=config)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("data-manager: error: ") and key in lines[0], lines
    assert not (tmp_path / "backups").exists() or not list((tmp_path / "backups").rglob("backup.json"))
