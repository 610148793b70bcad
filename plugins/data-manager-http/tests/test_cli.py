"""The http source through the real ``data-manager`` command, end to end, as a user or a script runs it."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers import cli

TOKEN = "cli-s3cret-token-0042"
ENV_TOKEN = "env-bearer-token-0043"


def ok(r: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r


def everything_written(root: Path, state: Path) -> str:
    """Every metadata file of the backups, and the state database's rows, as text."""
    text = "".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file() and p.name != "export")
    con = sqlite3.connect(state)
    try:
        for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            text += "".join(map(repr, con.execute(f'SELECT * FROM "{name}"')))
    finally:
        con.close()
    return text


def test_backup_then_restore_to_a_file_with_secrets_kept_out(tmp_path: Path, export_server: Any,
                                                             config_file: Any) -> None:
    export_server.digest = "repr-digest"
    export_server.drops = [None, 4096]  # a warning that names the URL, at -vv with urllib3's debug lines
    config = config_file(url=f"{export_server.url}?site=42&token={TOKEN}",
                         headers={"Authorization": "Bearer ${SITE_TOKEN}"})
    state = tmp_path / "state.db"
    env = {"SITE_TOKEN": ENV_TOKEN, "DATA_MANAGER_STATE": str(state)}

    r = ok(cli("-vv", "backup", "site42", "--json", config=config, env=env))
    backup = json.loads(r.stdout)
    assert backup["size"] == len(export_server.data)
    assert all(g.headers["Authorization"] == f"Bearer {ENV_TOKEN}" for g in export_server.gets())
    assert "token=***" in r.stderr and "resuming at byte" in r.stderr

    target = tmp_path / "restored" / "site42.zip"
    r = ok(cli("-vv", "restore", "--yes", "--set", f"db.path={target}", "site42", config=config, env=env))
    assert target.read_bytes() == export_server.data

    shown = ok(cli("list", "backup", "--json", config=config, env=env)).stdout
    for secret in (TOKEN, ENV_TOKEN):
        assert secret not in r.stdout + r.stderr + shown
        assert secret not in everything_written(tmp_path / "backups", state)
    meta = json.loads((tmp_path / "backups" / "site42" / backup["timestamp"] / "db" / "source.json").read_text())
    assert meta["settings"]["headers"] == "***" and meta["settings"]["url"] == "***"
    assert meta["info"]["url"] == f"{export_server.url}?site=42&token=***"
    assert meta["info"]["server_checksum"].startswith("Repr-Digest: sha-256=:")


def test_a_server_that_stays_busy_fails_in_one_line(tmp_path: Path, export_server: Any, config_file: Any) -> None:
    export_server.statuses = [(None, None)] + [(503, "0")] * 20  # the first range, then never again
    config = config_file(url=f"{export_server.url}?token={TOKEN}", retries=2)
    env = {"DATA_MANAGER_STATE": str(tmp_path / "state.db")}
    r = ok(cli("backup", "site42", config=config, env=env), code=1)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") or "source 'db'" in lines[-1]
    assert "bytes 262144-524287" in lines[-1] and "HTTP 503" in lines[-1] and "gave up after 2 retries" in lines[-1]
    assert TOKEN not in r.stderr
    listed = json.loads(ok(cli("list", "backup", "--json", config=config, env=env)).stdout)
    assert not any(b.get("complete") for b in listed)


def test_restore_uploads_to_the_configured_import_url(tmp_path: Path, export_server: Any, config_file: Any) -> None:
    config = config_file(restore_url=export_server.import_url, restore_method="PUT",
                         headers={"Authorization": f"Bearer {TOKEN}"})
    env = {"DATA_MANAGER_STATE": str(tmp_path / "state.db")}
    ok(cli("backup", "site42", config=config, env=env))
    export_server.upload_status = [(429, "0")]
    r = ok(cli("restore", "--yes", "site42", config=config, env=env))
    [upload] = export_server.uploads
    assert upload.method == "PUT" and upload.body == export_server.data
    assert upload.headers["Authorization"] == f"Bearer {TOKEN}" and TOKEN not in r.stdout + r.stderr
