"""Small builders shared by the core's tests: a demo tree, a config file, a CLI runner."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from data_manager import plugins



def make_tree(root: Path) -> Path:
    """A directory exercising what the directory source must keep."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "hello.txt").write_text("hello\n")
    (root / "sub" / "data.csv").write_text("a,b\n" * 50_000)  # compresses
    (root / "sub" / "deeper" / "random.bin").write_bytes(os.urandom(300_000))  # does not
    (root / "zero").write_bytes(b"")
    (root / "spaces and ünïcödé.txt").write_text("x")
    os.symlink("hello.txt", root / "link")
    os.symlink("/nonexistent/target", root / "dangling")
    os.chmod(root / "hello.txt", 0o640)
    os.utime(root / "sub" / "data.csv", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    bad_name = os.fsencode(str(root)) + b"/latin1-\xe9t\xe9"
    with open(bad_name, "wb") as f:
        f.write(b"not utf-8 name")
    return root


def snapshot(root: Path) -> dict[bytes, tuple[Any, ...]]:
    """Everything the directory source promises to keep, keyed by raw path bytes."""
    out: dict[bytes, tuple[Any, ...]] = {}
    base = os.fsencode(str(root))
    st = os.stat(base)
    out[b"."] = ("root", st.st_mode, st.st_mtime_ns)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, base)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p), st.st_mtime_ns)
            elif os.path.isdir(p):
                out[rel] = ("dir", st.st_mode, st.st_mtime_ns)
            else:
                with open(p, "rb") as f:
                    out[rel] = ("file", st.st_mode, st.st_mtime_ns, f.read())
    return out


def make_sqlite(path: Path, rows: int = 1000, wal: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    if wal:
        con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, value REAL, blob BLOB)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?, ?)",
                    [(i, f"name {i} ✓", i / 3, bytes([i % 256]) * 10) for i in range(rows)])
    con.commit()
    con.close()
    return path


def sqlite_rows(path: Path) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(path)
    try:
        return list(con.execute("SELECT * FROM t ORDER BY id"))
    finally:
        con.close()


def write_config(path: Path, root: Path, sources: dict[str, Path], data_id: str = "exp42") -> Path:
    lines = [
        "[storages.local]",
        'type = "filesystem"',
        f'root = "{root}"',
        "",
        f"[datasets.{data_id}]",
    ]
    for name, src in sources.items():
        kind = "sqlite" if src.suffix == ".db" else "directory"
        lines += ["", f"[[datasets.{data_id}.sources]]", f'name = "{name}"', f'type = "{kind}"', f'path = "{src}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*args: str, config: Path | None = None, input: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real command in a child process, as a user or a script would."""
    cmd = [sys.executable, "-m", "data_manager"]
    if config is not None:
        cmd += ["--config", str(config)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, input=input,
                          env={**os.environ, **(env or {})}, timeout=300)


def replace_artifact(backup: Path, source: str, name: str, data: bytes) -> None:
    """Put ``data`` in place of an artifact of the backup directory ``backup`` (``ROOT/DATA_ID/TIMESTAMP``)
    and record its new size and digest in the metadata, as a crafted (not a damaged) backup would be."""
    import json

    import zstandard
    from blake3 import blake3

    for meta in (backup / "backup.json", backup / source / "source.json"):
        doc = json.loads(meta.read_text())
        for src in doc.get("sources", [doc]):
            if src["name"] != source:
                continue
            art = next(a for a in src["artifacts"] if a["name"] == name)
            stored = zstandard.ZstdCompressor().compress(data) if art["compression"] == "zstd" else data
            (backup / source / art["file"]).write_bytes(stored)
            art.update(size=len(data), blake3=blake3(data).hexdigest(), stored_size=len(stored))
        meta.write_text(json.dumps(doc, indent=2))


@contextmanager
def builtin_plugins(*modules: str) -> Iterator[None]:
    """Test plugin modules registered as if built in, for the duration; the cached registry is reset
    around it, so no test sees another's plugins."""
    saved = plugins.BUILTIN_PLUGINS
    plugins.BUILTIN_PLUGINS = saved + modules
    plugins.reset_registry()
    try:
        yield
    finally:
        plugins.BUILTIN_PLUGINS = saved
        plugins.reset_registry()


REPO = Path(__file__).resolve().parents[1]


def killed(config: Path, at: int, *args: str, count: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real command SIGKILLed just before its ``at``-th durable step (tests/e2e/killer.py; 0: never),
    the number of steps it took written to ``count`` when it exits normally."""
    env = {**os.environ, "DM_KILL_AT": str(at)}
    if count is not None:
        env["DM_KILL_COUNT"] = str(count)
    return subprocess.run([sys.executable, "-m", "tests.e2e.killer", "--config", str(config), *args],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
