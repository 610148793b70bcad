"""The real command, traced by strace: an unchanged backup to a ``sync`` storage opens none of the source's
files (it only stats them); a file rewritten keeping its size, with a new mtime, is read and uploaded again;
the restore is byte for byte what the source holds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import make_tree, snapshot

STRACE = shutil.which("strace")


def backup_traced(config: Path, env: dict[str, str], trace: Path) -> None:
    """``data-manager backup exp`` with every open/openat of its process tree written to ``trace``, each fd
    shown with its path (``-y``)."""
    assert STRACE, "strace is needed to watch what the command opens (apt-get install strace)"
    cmd = [STRACE, "-f", "-qq", "-y", "-e", "trace=open,openat", "-o", str(trace),
           sys.executable, "-m", "data_manager", "--config", str(config), "backup", "exp"]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr


def opened_files(trace: Path, src: Path) -> set[str]:
    """The source's files (not directories) the traced run opened."""
    out = set()
    pattern = re.compile(r"= \d+<(" + re.escape(str(src)) + r"/[^>]*)>$")
    for line in trace.read_text(errors="surrogateescape").splitlines():
        m = pattern.search(line)
        if m and "O_DIRECTORY" not in line:
            out.add(m.group(1))
    return out


def test_unchanged_files_are_not_opened_and_a_touched_one_is_uploaded(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (src / "big.bin").write_bytes(os.urandom(2_000_000))
    (src / "small.bin").write_bytes(os.urandom(5_000))
    vault = tmp_path / "vault"
    config = tmp_path / "dm.toml"
    config.write_text(f"""
[storages.vault]
type = "filesystem"
root = "{vault}"
engine = "sync"

[datasets.exp]
storage = "vault"

[[datasets.exp.sources]]
name = "raw"
type = "directory"
path = "{src}"
""")
    env = {"DATA_MANAGER_STATE": str(tmp_path / "state.db")}
    trace = tmp_path / "trace"
    backup_traced(config, env, trace)
    assert str(src / "big.bin") in opened_files(trace, src)  # the trace sees the first backup's reads

    backup_traced(config, env, trace)
    assert opened_files(trace, src) == set()

    for name in ("big.bin", "small.bin"):  # new bytes, the same size, a new mtime
        p = src / name
        size, mtime = p.stat().st_size, p.stat().st_mtime_ns
        p.write_bytes(os.urandom(size))
        os.utime(p, ns=(time.time_ns(), mtime + 1_000_000_000))
    backup_traced(config, env, trace)
    assert opened_files(trace, src) == {str(src / "big.bin"), str(src / "small.bin")}
    mirror = vault / "exp" / "mirror" / "raw"
    assert (mirror / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert (mirror / "small.bin").read_bytes() == (src / "small.bin").read_bytes()

    out = tmp_path / "restored"
    r = subprocess.run([sys.executable, "-m", "data_manager", "--config", str(config), "restore", "--yes", "exp",
                        "--set", f"raw.path={out}"], capture_output=True, text=True, env={**os.environ, **env},
                       timeout=300)
    assert r.returncode == 0, (r.stdout, r.stderr)
    a, b = snapshot(src), snapshot(out)
    a.pop(b"."), b.pop(b".")
    assert a == b
