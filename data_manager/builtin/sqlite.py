"""Built-in source ``sqlite``: a consistent copy of a live SQLite database, streamed.

Backup opens a read transaction and, while holding it, streams the database file and (in WAL mode) the
``-wal`` file. This is consistent while writers are active:

* rollback-journal mode: the read transaction's SHARED lock keeps writers from changing the file until we
  are done (they wait, up to their busy timeout);
* WAL mode: the read transaction stops checkpoints from copying frames newer than our snapshot into the
  database file, and from restarting the WAL. The copied WAL holds our snapshot's frames, possibly later
  complete commits, and possibly a torn last frame that SQLite's recovery drops; replaying it on the copied
  file gives the state at one commit.

Restore writes the copy beside the target, lets SQLite recover it, runs ``PRAGMA integrity_check``, then
installs it with SQLite's online backup API (atomic for other connections) or, if there is no target yet,
by renaming. A failed restore leaves the target as it was. The copy is created readable by its owner only
and a new target gets the mode the database file had at backup (0600 for backups that did not record it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sqlite3
import time
import stat
from collections.abc import Callable
from pathlib import Path

from ..durable import fsync_dir
from ..errors import CorruptBackupError, SourceError
from ..hookspecs import hookimpl
from ..types import ArtifactSet, ArtifactSink, Settings, Source, SourceType

CHUNK = 1 << 20
_STAGING = ".dm-restore-"
DB = "database.sqlite"
WAL = "database.sqlite-wal"


def _copy(src: Path, out: object) -> int:
    n = 0
    with open(src, "rb", buffering=0) as f:
        while data := f.read(CHUNK):
            out.write(data)  # type: ignore[attr-defined]
            n += len(data)
    return n


class SqliteSource(Source):
    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        settings.check_known({"path", "busy_timeout"})
        self.path = settings.get_path("path")
        self.busy_timeout = settings.get_int("busy_timeout", 30, minimum=0)

    def describe(self) -> str:
        return str(self.path)

    def _connect(self, path: Path, readonly: bool) -> sqlite3.Connection:
        uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
        try:
            return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=self.busy_timeout)
        except sqlite3.Error as exc:
            raise SourceError(f"source {self.name!r}: cannot open {path}: {exc}") from None

    def check(self) -> None:
        if not self.path.is_file():
            raise SourceError(f"source {self.name!r}: {self.path} does not exist")
        con = self._connect(self.path, readonly=True)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):  # busy, not broken: say so
                raise SourceError(f"source {self.name!r}: {self.path} stayed locked by another connection longer "
                                  f"than busy_timeout ({exc})") from None
            raise SourceError(f"source {self.name!r}: {self.path} is not a usable SQLite database: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise SourceError(f"source {self.name!r}: {self.path} is not a usable SQLite database: {exc}") from None
        finally:
            con.close()

    def backup(self, sink: ArtifactSink) -> None:
        self.check()
        con = self._connect(self.path, readonly=True)
        try:
            con.execute("BEGIN")
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the read snapshot
            mode = stat.S_IMODE(os.stat(self.path).st_mode)
            journal_mode = con.execute("PRAGMA journal_mode").fetchone()[0]
            page_size = con.execute("PRAGMA page_size").fetchone()[0]
            with sink.open(DB) as out:
                size = _copy(self.path, out)
            wal = Path(f"{self.path}-wal")
            wal_size = 0
            if journal_mode == "wal" and wal.exists():
                with sink.open(WAL) as out:
                    wal_size = _copy(wal, out)
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            raise SourceError(f"source {self.name!r}: {self.path}: {exc}") from None
        except OSError as exc:
            raise SourceError(f"source {self.name!r}: cannot read {exc.filename or self.path}: {exc.strerror}") from None
        finally:
            con.close()
        sink.set_info(journal_mode=journal_mode, page_size=page_size, db_bytes=size, wal_bytes=wal_size,
                      sqlite_version=sqlite3.sqlite_version, mode=mode)

    def restore_leftovers(self, remove: bool) -> list[str]:
        """Staging copies (and their -wal/-shm) that an interrupted restore left beside the target."""
        try:
            found = sorted(p for p in self.path.parent.iterdir() if p.name.startswith(f".{self.path.name}{_STAGING}"))
        except OSError:
            return []
        if remove:
            for path in found:
                with contextlib.suppress(OSError):
                    path.unlink()
        return [str(p) for p in found]

    def restore(self, artifacts: ArtifactSet) -> None:
        target = self.path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SourceError(f"source {self.name!r}: cannot create the directory {target.parent}: "
                              f"{exc.strerror or exc}") from None
        mode = artifacts.info.get("mode")
        if not isinstance(mode, int) or isinstance(mode, bool):
            mode = 0o600  # a backup from before modes were recorded: the data may be private
        self.restore_leftovers(remove=True)
        staging = target.parent / f".{target.name}{_STAGING}{secrets.token_hex(4)}"
        try:
            for name, dest in ((DB, staging), (WAL, Path(f"{staging}-wal"))):
                if name in artifacts.names():
                    try:
                        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    except OSError as exc:
                        raise SourceError(f"source {self.name!r}: cannot create {dest}: {exc.strerror or exc}") from None
                    try:
                        with open(fd, "wb") as out, artifacts.open(name) as src:
                            shutil.copyfileobj(src, out, CHUNK)
                    except OSError as exc:  # ENOSPC, EIO (reading the backup raises DataManagerErrors)
                        raise SourceError(f"source {self.name!r}: cannot write {dest}: {exc.strerror or exc}") from None
            con = self._connect(staging, readonly=False)
            try:
                result = con.execute("PRAGMA integrity_check").fetchone()[0]
                if result != "ok":
                    raise CorruptBackupError(f"source {self.name!r}: restored database fails integrity_check: {result}")
                if artifacts.info.get("journal_mode") == "wal":
                    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.DatabaseError as exc:  # e.g. "file is not a database": what the backup holds is not one
                raise CorruptBackupError(f"source {self.name!r}: the restored copy is not a usable database: {exc}") from None
            finally:
                con.close()
            if not target.exists():
                try:
                    os.chmod(staging, mode & 0o7777)
                    with open(staging, "rb") as f:  # on disk before it has the target's name
                        os.fsync(f.fileno())
                    os.rename(staging, target)
                    fsync_dir(target.parent)
                except OSError as exc:
                    raise SourceError(f"source {self.name!r}: cannot install the restored database at {target}: "
                                      f"{exc.strerror or exc}") from None
                return
            src = self._connect(staging, readonly=True)
            dst = self._connect(target, readonly=False)
            deadline = time.monotonic() + self.busy_timeout

            def give_up_when_busy(status: int, remaining: int, total: int) -> None:
                # Connection.backup retries a busy target every 250 ms for ever: busy_timeout bounds it.
                if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) and time.monotonic() > deadline:
                    raise sqlite3.OperationalError("database is locked")

            try:
                src.backup(dst, progress=give_up_when_busy)  # page by page, in one write transaction on the target
            except sqlite3.Error as exc:
                raise SourceError(f"source {self.name!r}: cannot write {target}: {exc}") from None
            finally:
                src.close()
                dst.close()
        finally:
            for leftover in (staging, Path(f"{staging}-wal"), Path(f"{staging}-shm")):
                with contextlib.suppress(OSError):  # missing, or never creatable: the error that got us here counts
                    leftover.unlink()


@hookimpl
def register_source_types(register: Callable[[SourceType], None]) -> None:
    register(SourceType("sqlite", SqliteSource, "a SQLite database file, copied consistently while in use",
                        target_keys=("path",)))
