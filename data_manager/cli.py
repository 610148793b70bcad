"""The ``data-manager`` command: a thin click layer over :class:`data_manager.api.DataManager`.

Every expected failure is a :class:`~data_manager.errors.DataManagerError`: printed as one line on stderr,
exit code from :class:`~data_manager.errors.ExitCode`, no traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import click

from . import __version__
from .errors import DataManagerError, ExitCode, UsageError

log = logging.getLogger("data_manager")

EPILOG = """\b
Exit codes: 0 ok, 1 failed, 2 bad usage/config/dataset/timestamp or missing plugin,
3 refused (a guard said not now, or the dataset is locked), 4 backup corrupt, 130 interrupted.
"""


class _Scrubber(logging.Filter):
    """Keeps secrets out of log lines, whatever a plugin or library puts in them."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def scrub(self, text: str) -> str:
        for s in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(s, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = self.scrub(record.getMessage())
            record.args = None
        return True


SCRUBBER = _Scrubber()


class Context:
    def __init__(self, config_path: str | None, quiet: bool) -> None:
        self.config_path = config_path
        self.quiet = quiet
        self._dm: Any = None

    @property
    def dm(self) -> Any:
        if self._dm is None:
            from .api import DataManager

            self._dm = DataManager.from_file(self.config_path)
            SCRUBBER.secrets |= self._dm.config.secrets
        return self._dm


def _fail(exc: DataManagerError) -> NoReturn:
    click.echo(f"data-manager: error: {SCRUBBER.scrub(str(exc))}", err=True)
    sys.exit(exc.exit_code)


class _Group(click.Group):
    """Turns DataManagerError and Ctrl-C into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DataManagerError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            click.echo("data-manager: interrupted", err=True)
            sys.exit(ExitCode.INTERRUPTED)


class _Progress:
    """One status line on stderr while data moves, when stderr is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._label = ""
        self._bytes = 0
        self._t0 = time.monotonic()
        self._last = 0.0

    def __call__(self, label: str) -> Callable[[int], None] | None:
        if not self.enabled:
            return None
        self.done()
        self._label, self._bytes, self._t0 = label, 0, time.monotonic()
        return self._advance

    def _advance(self, n: int) -> None:
        from .repository import human_size

        self._bytes += n
        now = time.monotonic()
        if now - self._last >= 0.2:
            self._last = now
            rate = self._bytes / max(now - self._t0, 1e-6)
            click.echo(f"\r\x1b[K{self._label}: {human_size(self._bytes)} ({human_size(int(rate))}/s)", nl=False, err=True)

    def done(self) -> None:
        if self.enabled and self._label:
            click.echo("\r\x1b[K", nl=False, err=True)
            self._label = ""


def _emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet or verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("data-manager: %(levelname)s: %(message)s"))
    handler.addFilter(SCRUBBER)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@click.group(cls=_Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH", envvar="DATA_MANAGER_CONFIG",
              help="Config file (default: $DATA_MANAGER_CONFIG, ./data-manager.toml, ~/.config/data-manager/config.toml).")
@click.option("-v", "--verbose", count=True, help="Say what happens (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.version_option(__version__, prog_name="data-manager")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: int, quiet: bool) -> None:
    """Back up and restore datasets spread over databases, buckets, directories and files.

    A dataset (DATA_ID) and its sources are described in a TOML config; backups land in a storage at
    ROOT/DATA_ID/TIMESTAMP/SOURCE with human-readable metadata (backup.json) beside the data.
    """
    _setup_logging(verbose, quiet)
    ctx.obj = Context(config_path, quiet)


def _which_and_id(args: tuple[str, ...]) -> tuple[str, str]:
    if len(args) == 1:
        return "latest", args[0]
    if len(args) == 2:
        return args[0], args[1]
    raise UsageError("expected [latest | TIMESTAMP] DATA_ID")


@main.command()
@click.argument("data_id")
@click.option("--dry-run", is_flag=True, help="Check config, storage and sources; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def backup(obj: Context, data_id: str, dry_run: bool, as_json: bool) -> None:
    """Back up every source of DATA_ID into ROOT/DATA_ID/TIMESTAMP/."""
    from .repository import human_size

    progress = _Progress(sys.stderr.isatty() and not as_json and not obj.quiet)
    try:
        result = obj.dm.backup(data_id, dry_run=dry_run, progress=progress)
    finally:
        progress.done()
    if as_json:
        _emit_json(result.to_json())
        return
    if dry_run:
        click.echo(f"would back up {data_id} to {result.location}:")
        for s in result.sources:
            click.echo(f"  {s.name} ({s.type})")
        return
    for s in result.sources:
        click.echo(f"  {s.name:<20} {s.type:<12} {human_size(s.size):>10}  stored {human_size(s.stored_size):>10}  {s.seconds:.1f}s")
    click.echo(f"backup {data_id}/{result.timestamp} complete: {human_size(result.size)}, "
               f"stored {human_size(result.stored_size)}, {result.seconds:.1f}s")


@main.group(name="list")
def list_() -> None:
    """List things: backups."""


@list_.command(name="backup")
@click.argument("data_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def list_backup(obj: Context, data_id: str | None, as_json: bool) -> None:
    """One row per backup of DATA_ID (every dataset in the storages if omitted)."""
    from .repository import human_size

    backups = obj.dm.list_backups(data_id)
    if as_json:
        _emit_json([b.to_json() for b in backups])
        return
    if not backups:
        click.echo("no backups" + (f" of {data_id}" if data_id else ""))
        return
    rows = [("DATASET", "TIMESTAMP", "SIZE", "STORED", "STATUS", "SOURCES")]
    for b in backups:
        rows.append((b.data_id, b.timestamp, human_size(b.size), human_size(b.stored_size),
                     "complete" if b.complete else "INCOMPLETE", ",".join(b.sources)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        click.echo("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5])


@main.command()
@click.argument("args", nargs=-1, metavar="[latest | TIMESTAMP] DATA_ID")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before replacing current data.")
@click.option("--set", "sets", multiple=True, metavar="SOURCE.KEY=VALUE",
              help="Restore a source elsewhere, e.g. --set raw.path=/tmp/raw or --set db.dsn=postgresql://.../other.")
@click.option("--only", multiple=True, metavar="SOURCE", help="Restore only this source (repeatable).")
@click.option("--dry-run", is_flag=True, help="Show what would be restored where; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def restore(obj: Context, args: tuple[str, ...], yes: bool, sets: tuple[str, ...], only: tuple[str, ...],
            dry_run: bool, as_json: bool) -> None:
    """Put every source of DATA_ID back as it was at a backup (default: latest).

    Replaces current data, so it asks first; --yes skips the question. Checksums are checked while
    reading; a corrupt backup is reported and the target left as it was.
    """
    from .config import parse_assignments
    from .repository import human_size

    which, data_id = _which_and_id(args)
    overrides = parse_assignments(sets)
    dm = obj.dm
    plan = dm.restore(data_id, which, overrides=overrides, only=list(only) or None, dry_run=True)
    if dry_run:
        if as_json:
            _emit_json(plan.to_json())
        else:
            click.echo(f"would restore {data_id}/{plan.timestamp}:")
            for s in plan.sources:
                click.echo(f"  {s['name']} ({s['type']}, {human_size(s['size'])}) -> {s['target']}")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("restore replaces current data: pass --yes to confirm when not on a terminal")
        targets = ", ".join(f"{s['name']} -> {s['target']}" for s in plan.sources)
        if not click.confirm(f"Replace current data with {data_id}/{plan.timestamp} ({targets})?"):
            click.echo("nothing restored")
            sys.exit(ExitCode.OK)
    progress = _Progress(sys.stderr.isatty() and not as_json and not obj.quiet)
    try:
        result = dm.restore(data_id, plan.timestamp, overrides=overrides, only=list(only) or None, progress=progress)
    finally:
        progress.done()
    if as_json:
        _emit_json(result.to_json())
        return
    for s in result.sources:
        click.echo(f"  {s['name']:<20} -> {s['target']}")
    click.echo(f"restored {data_id}/{result.timestamp}")


@main.command()
@click.argument("args", nargs=-1, metavar="[latest | TIMESTAMP] DATA_ID")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def verify(obj: Context, args: tuple[str, ...], as_json: bool) -> None:
    """Read a backup back and check every artifact's size and sha256."""
    which, data_id = _which_and_id(args)
    progress = _Progress(sys.stderr.isatty() and not as_json and not obj.quiet)
    try:
        info = obj.dm.verify(data_id, which, progress=progress)
    finally:
        progress.done()
    if as_json:
        _emit_json({"data_id": data_id, "timestamp": info.timestamp, "ok": True})
    else:
        click.echo(f"backup {data_id}/{info.timestamp} is intact")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def status(obj: Context, as_json: bool) -> None:
    """The config in use, plugins, storages and each dataset's latest backup."""
    from .api import age_text

    doc = obj.dm.status()
    if as_json:
        _emit_json(doc)
        return
    click.echo(f"config: {doc['config']}")
    click.echo("plugins: " + ", ".join(f"{p['name']} {p['version']}" + (" (BROKEN)" if p.get("error") else "") for p in doc["plugins"]))
    click.echo("storages:")
    for s in doc["storages"]:
        state = "reachable" if s["reachable"] else f"UNREACHABLE: {s.get('error')}"
        click.echo(f"  {s['name']} ({s['type']}) {s.get('location', '')}: {state}")
    click.echo("datasets:")
    for d in doc["datasets"]:
        latest = f"{d['latest']} ({age_text(d['age_seconds'])})" if d["latest"] else "no backup yet"
        extra = f", {d['incomplete']} incomplete" if d["incomplete"] else ""
        click.echo(f"  {d['data_id']}: {latest}{extra}; sources {', '.join(d['sources'])}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def plugins(as_json: bool) -> None:
    """Installed plugins and the source and storage types they provide."""
    from .plugins import get_registry

    reg = get_registry()
    rows = [
        {"name": p.name, "package": p.package, "version": p.version, "source_types": p.source_types,
         "storage_types": p.storage_types, "error": p.error}
        for p in reg.plugins
    ]
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        provides = ", ".join([f"source {t}" for t in r["source_types"]] + [f"storage {t}" for t in r["storage_types"]])
        state = f"BROKEN: {r['error']}" if r["error"] else provides
        click.echo(f"{r['name']:<14} {r['package']} {r['version']}: {state}")
