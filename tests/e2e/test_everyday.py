"""Everyday use through the real command (issue 21): verify --all/--sample and the verified record,
progress on a terminal and as JSON lines, errors as JSON, config check, --version, monitoring pings."""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import cli, make_sqlite, make_tree, write_config


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    raw = make_tree(tmp_path / "data" / "raw")
    (raw / "big.bin").write_bytes(os.urandom(3 << 20))
    db = make_sqlite(tmp_path / "data" / "notes.db")
    backups = tmp_path / "backups"
    config = write_config(tmp_path / "dm.toml", backups, {"raw": raw, "notes": db})
    env = {"DATA_MANAGER_STATE": str(tmp_path / "state.db")}
    return config, backups, env


def ok(r: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r


def two_backups(config: Path, env: dict[str, str]) -> list[str]:
    return [json.loads(ok(cli("backup", "exp42", "--json", config=config, env=env)).stdout)["timestamp"]
            for _ in range(2)]


# --------------------------------------------------------------------------- 1. verify --all, --sample, verified


def test_verify_all_reports_a_damaged_backup_and_goes_on(setup: tuple[Path, Path, dict[str, str]]) -> None:
    config, backups, env = setup
    ts1, ts2 = two_backups(config, env)
    listed = json.loads(ok(cli("list", "backup", "--json", config=config, env=env)).stdout)
    assert [b["verified"] for b in listed] == [None, None]
    assert "never" in ok(cli("list", "backup", config=config, env=env)).stdout

    r = ok(cli("verify", "--all", "exp42", config=config, env=env))
    assert f"exp42/{ts1} intact" in r.stdout and f"exp42/{ts2} intact" in r.stdout and "2 backups verified, 0 failed" in r.stdout
    listed = json.loads(ok(cli("list", "backup", "--json", config=config, env=env)).stdout)
    assert all(b["verified"] and b["verified_sample"] is None for b in listed)
    verified_before = listed[0]["verified"]

    # The older backup loses a volume: --all reports it, verifies the newer one, and exits 4.
    next((backups / "exp42" / ts1 / "raw").glob("vol-*")).unlink()
    r = ok(cli("verify", "--all", config=config, env=env), 4)  # every dataset
    assert f"exp42/{ts1} FAILED: " in r.stdout and "missing from the storage" in r.stdout
    assert f"exp42/{ts2} intact" in r.stdout and "2 backups verified, 1 failed" in r.stdout
    r = ok(cli("verify", "--all", "exp42", "--json", config=config, env=env), 4)
    results = json.loads(r.stdout)
    assert [(x["timestamp"], x["ok"], x["code"], x["exit_code"]) for x in results] == [
        (ts1, False, "corrupt_backup", 4), (ts2, True, None, 0)]
    listed = json.loads(ok(cli("list", "backup", "--json", config=config, env=env)).stdout)
    assert listed[0]["verified"] == verified_before  # a failed verify records nothing

    # A damaged backup.json is a failed backup too, not a reason to stop.
    (backups / "exp42" / ts2 / "backup.json").write_text("{not json")
    results = json.loads(ok(cli("verify", "--all", "--json", config=config, env=env), 4).stdout)
    assert [(x["ok"], x["code"]) for x in results] == [(False, "corrupt_backup")] * 2


def test_verify_sample_reads_a_share_and_is_recorded(setup: tuple[Path, Path, dict[str, str]]) -> None:
    config, backups, env = setup
    ts1, ts2 = two_backups(config, env)
    r = json.loads(ok(cli("verify", "--sample", "5%", "exp42", "--json", config=config, env=env)).stdout)
    assert r["timestamp"] == ts2 and r["ok"] is True and r["sample"] == 0.05
    assert 0 < r["artifacts"] <= r["total_artifacts"] and r["bytes"] >= 0.05 * r["total_bytes"]
    full = json.loads(ok(cli("verify", ts1, "exp42", "--json", config=config, env=env)).stdout)
    assert full["artifacts"] == full["total_artifacts"] and full["bytes"] == full["total_bytes"] and full["sample"] is None
    listed = {b["timestamp"]: b for b in json.loads(ok(cli("list", "backup", "--json", config=config, env=env)).stdout)}
    assert listed[ts2]["verified_sample"] == 0.05 and listed[ts1]["verified_sample"] is None
    assert "(5%)" in ok(cli("list", "backup", config=config, env=env)).stdout
    status = json.loads(ok(cli("status", "--json", config=config, env=env)).stdout)
    assert status["datasets"][0]["verified"] == listed[ts2]["verified"]
    assert f"verified {listed[ts2]['verified']} (5%)" in ok(cli("status", config=config, env=env)).stdout
    r = ok(cli("verify", "--sample", "1/5", "exp42", config=config, env=env), 2)
    assert r.stderr.startswith("data-manager: error: --sample '1/5': expected a percentage") and r.stdout == ""


# --------------------------------------------------------------------------- 2. progress


def on_terminal(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run the command with stderr on a pseudo-terminal; returns its result and what the terminal got."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "data_manager", *args], stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL, text=True, env={**os.environ, **env})
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    out, _ = proc.communicate(timeout=120)
    reader.join(30)
    os.close(master)
    terminal = b"".join(chunks).decode(errors="replace")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, terminal), terminal


def test_progress_on_a_terminal(setup: tuple[Path, Path, dict[str, str]]) -> None:
    config, _, env = setup
    r, terminal = on_terminal("--config", str(config), "backup", "exp42", env=env)
    ok(r)
    assert "backup exp42 raw" in terminal and "artifacts" in terminal and "B/s" in terminal
    assert "complete" in r.stdout and "\r" not in r.stdout  # results on stdout, the bar only on the terminal
    r, terminal = on_terminal("--config", str(config), "backup", "exp42", env=env)  # total: the previous backup's
    assert "%|" in terminal and "<" in terminal  # percentage and ETA (elapsed<remaining)
    r, terminal = on_terminal("--config", str(config), "restore", "--yes", "exp42", env=env)
    ok(r)
    assert "restore exp42/" in terminal and "100%|" in terminal and "/3 artifacts" not in terminal
    r, terminal = on_terminal("--config", str(config), "verify", "exp42", env=env)
    ok(r)
    assert "verify exp42/" in terminal and "100%|" in terminal
    r, terminal = on_terminal("--config", str(config), "-q", "verify", "exp42", env=env)
    assert ok(r) and terminal == ""  # -q: nothing on the terminal


def progress_lines(stderr: str) -> list[dict[str, object]]:
    out = []
    for line in stderr.splitlines():
        doc = json.loads(line)  # every line of stderr is JSON with --json
        if "progress" in doc:
            out.append(doc["progress"])
    return out


def test_progress_as_json_lines_on_a_pipe(setup: tuple[Path, Path, dict[str, str]]) -> None:
    config, _, env = setup
    r = ok(cli("backup", "exp42", "--json", config=config, env=env))
    lines = progress_lines(r.stderr)
    assert lines and lines[-1]["total_bytes"] is None and lines[-1]["percent"] is None  # no earlier backup
    assert lines[-1]["bytes"] == json.loads(r.stdout)["size"]
    r = ok(cli("restore", "--yes", "exp42", "--json", config=config, env=env))
    lines = progress_lines(r.stderr)
    last = lines[-1]
    assert last["bytes"] == last["total_bytes"] and last["percent"] == 100.0 and last["items"] == last["total_items"]
    assert {line["source"] for line in lines} >= {"raw", "notes"} and str(last["operation"]).startswith("restore exp42/")
    assert len(lines) <= 4 * (float(last["elapsed_seconds"]) + 1) + 4  # throttled: a few a second, one per source
    r = ok(cli("verify", "exp42", "--json", config=config, env=env))
    assert progress_lines(r.stderr)[-1]["percent"] == 100.0
    assert ok(cli("verify", "exp42", config=config, env=env)).stderr == ""  # no --json, no terminal: no progress


# --------------------------------------------------------------------------- 4. errors as JSON


def test_errors_are_json_objects_with_json(setup: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    config, backups, env = setup
    cases = [
        (["verify", "exp42", "--json"], "usage", 2),  # no backup yet
        (["backup", "nope", "--json"], "usage", 2),
        (["list", "backup", "--json", "--bogus"], "usage", 2),  # click's own usage errors too
        (["status", "--json"], "config", 2),
    ]
    (tmp_path / "bad.toml").write_text("[lock]\nttl = 1\n")
    for args, code, exit_code in cases:
        conf = tmp_path / "bad.toml" if code == "config" else config
        r = ok(cli(*args, config=conf, env=env), exit_code)
        err = json.loads(r.stderr)["error"]
        assert err["code"] == code and err["exit_code"] == exit_code and err["message"], args
        assert "data-manager: error" not in r.stderr and r.stdout == ""
    ts = two_backups(config, env)[1]
    for vol in (backups / "exp42" / ts / "raw").glob("vol-*"):
        vol.write_bytes(b"garbage")
    r = ok(cli("verify", "exp42", "--json", config=config, env=env), 4)
    errors = [json.loads(line) for line in r.stderr.splitlines() if '"error"' in line]
    assert errors[-1]["error"]["code"] == "corrupt_backup" and errors[-1]["error"]["exit_code"] == 4
    r = ok(cli("verify", "exp42", config=config, env=env), 4)  # without --json: the one text line
    assert r.stderr.startswith("data-manager: error: ") and len(r.stderr.splitlines()) == 1


# --------------------------------------------------------------------------- 3. config check


def test_config_check_masks_secrets_and_names_the_key(setup: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    config, backups, env = setup
    secret = "hc-uuid-0b7e1c2d"
    text = config.read_text() + f'\n[monitoring]\nhealthchecks_url = "http://127.0.0.1:9/ping/${{HC_UUID}}"\n'
    text += '\n[storages.other]\ntype = "filesystem"\nroot = "${OTHER_ROOT}"\n'
    text = text.replace("[datasets.exp42]", '[datasets.exp42]\nstorage = "local"\ntimeout = "30m"')
    config.write_text(text)
    env = {**env, "HC_UUID": secret, "OTHER_ROOT": str(tmp_path / "other-root")}
    r = ok(cli("config", "check", config=config, env=env))
    assert r.stdout.startswith(f"# {config}: valid") and "[storages.local]" in r.stdout and "[[datasets.exp42.sources]]" in r.stdout
    assert 'healthchecks_url = "***"' in r.stdout and secret not in r.stdout + r.stderr
    assert 'timeout = "30m"' in r.stdout and r.stderr == ""
    doc = json.loads(ok(cli("config", "check", "--json", config=config, env=env)).stdout)
    resolved = doc["resolved"]
    assert doc["valid"] is True and resolved["storages"]["local"] == {"type": "filesystem", "engine": "worm", "root": str(backups)}
    assert resolved["storages"]["other"]["root"] == "***"  # a value from the environment may be a secret
    assert resolved["monitoring"]["healthchecks_url"] == "***"
    assert [s["name"] for s in resolved["datasets"]["exp42"]["sources"]] == ["raw", "notes"]
    assert not backups.exists() and not (tmp_path / "other-root").exists() and not (tmp_path / "state.db").exists()

    # A plugin's own check (constructing the source) and a core table: exit 2, one line naming file, dataset, key.
    bad = config.read_text().replace('type = "sqlite"', 'type = "sqlite"\nbogus = 1', 1)
    (tmp_path / "bad.toml").write_text(bad)
    r = ok(cli("config", "check", config=tmp_path / "bad.toml", env=env), 2)
    assert len(r.stderr.splitlines()) == 1 and str(tmp_path / "bad.toml") in r.stderr
    assert "dataset 'exp42', source 'notes'" in r.stderr and "'bogus'" in r.stderr and r.stdout == ""
    r = ok(cli("config", "check", "--json", config=tmp_path / "bad.toml", env=env), 2)
    assert json.loads(r.stderr)["error"]["code"] == "config"
    (tmp_path / "bad.toml").write_text(config.read_text().replace("[monitoring]", "[monitoring]\nping = 1"))
    r = ok(cli("config", "check", config=tmp_path / "bad.toml", env=env), 2)
    assert "[monitoring]: key 'ping'" in r.stderr and secret not in r.stderr


# --------------------------------------------------------------------------- 5. --version, completion


def test_version_names_every_plugin_and_completion_works() -> None:
    r = ok(cli("--version"))
    lines = r.stdout.splitlines()
    assert lines[0].startswith("data-manager 0.") and r.stderr == ""
    assert any(line.split()[0] == "sqlite" and "(data-manager (built-in))" in line for line in lines[1:])
    script = Path(sys.executable).parent / "data-manager"
    r = subprocess.run([str(script)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "_DATA_MANAGER_COMPLETE": "bash_source"})
    assert r.returncode == 0 and "_data_manager_completion" in r.stdout and "complete " in r.stdout
    r = subprocess.run([str(script)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "_DATA_MANAGER_COMPLETE": "bash_complete", "COMP_WORDS": "data-manager ver",
                            "COMP_CWORD": "1"})
    assert r.returncode == 0 and "plain,verify" in r.stdout


# --------------------------------------------------------------------------- 6. monitoring


class Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, dict[str, str], str]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        Recorder.seen.append((self.command, self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_backups_ping_healthchecks_and_ntfy(setup: tuple[Path, Path, dict[str, str]], server: str, tmp_path: Path) -> None:
    config, _, env = setup
    config.write_text(config.read_text() + '\n[monitoring]\nhealthchecks_url = "${HC_URL}"\n'
                      f'ntfy_url = "{server}"\nntfy_topic = "backups"\ntimeout = "5s"\n')
    env = {**env, "HC_URL": f"{server}/ping/uuid-7f3a9c", "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}
    r = ok(cli("backup", "exp42", config=config, env=env))
    assert r.stderr == ""
    assert [(m, p) for m, p, _, _ in Recorder.seen] == [
        ("POST", "/ping/uuid-7f3a9c/start"), ("POST", "/ping/uuid-7f3a9c"), ("POST", "/backups")]
    body = Recorder.seen[1][3]
    assert body.startswith("backup of exp42: done") and "source raw" in body and "uuid-7f3a9c" not in body
    assert Recorder.seen[2][2]["Title"] == "data-manager: backup of exp42 done"
    ok(cli("backup", "--dry-run", "exp42", config=config, env=env))
    assert len(Recorder.seen) == 3  # a dry run pings nothing

    # A failing backup pings /fail with the log's tail and the error.
    Recorder.seen = []
    config.write_text(config.read_text().replace(str(tmp_path / "data" / "notes.db"), str(tmp_path / "missing.db")))
    r = ok(cli("backup", "exp42", config=config, env=env), 1)
    assert [p for _, p, _, _ in Recorder.seen] == ["/ping/uuid-7f3a9c/start", "/ping/uuid-7f3a9c/fail", "/backups"]
    body = Recorder.seen[1][3]
    assert body.startswith("backup of exp42: FAILED") and "missing.db" in body and "(exit code 1)" in body
    assert len(body.encode()) <= 10_000 and len(body.splitlines()) <= 12
    assert Recorder.seen[2][2]["Priority"] == "high"


def test_a_dead_ping_url_is_only_a_warning(setup: tuple[Path, Path, dict[str, str]]) -> None:
    config, _, env = setup
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config.write_text(config.read_text() + '\n[monitoring]\nhealthchecks_url = "${HC_URL}"\ntimeout = "2s"\n')
    env = {**env, "HC_URL": f"http://127.0.0.1:{port}/ping/dead-secret-uuid", "no_proxy": "127.0.0.1"}
    r = ok(cli("-vv", "backup", "exp42", config=config, env=env))
    assert "complete" in r.stdout
    warnings = [line for line in r.stderr.splitlines() if "monitoring:" in line]
    assert len(warnings) == 2 and all("WARNING" in w and "failed" in w for w in warnings)
    assert "dead-secret-uuid" not in r.stderr and str(port) not in r.stderr
