"""The ``data-manager`` command: a thin click layer over :class:`data_manager.api.DataManager`.

Every expected failure is a :class:`~data_manager.errors.DataManagerError`: printed as one line on stderr,
exit code from :class:`~data_manager.errors.ExitCode`, no traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from . import __version__
from .errors import DataManagerError, ExitCode, UsageError, error_code
from .scrub import scrub

log = logging.getLogger("data_manager")

EPILOG = """\b
Exit codes: 0 ok, 1 failed, 2 bad usage/config/dataset/timestamp or missing plugin,
3 refused (a guard said not now, or the dataset is locked), 4 backup corrupt, 130 interrupted.
"""


class _Scrubber(logging.Filter):
    """Keeps secrets out of log lines, whatever a plugin or library puts in them (see :mod:`data_manager.scrub`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
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

            self._dm = DataManager.from_file(self.config_path)  # registers the config's secrets with scrub
        return self._dm


def _fail(exc: DataManagerError, as_json: bool = False) -> NoReturn:
    _error_line(scrub(str(exc)), error_code(exc), exc.exit_code, as_json)
    sys.exit(exc.exit_code)


def _error_line(message: str, code: str, exit_code: int, as_json: bool) -> None:
    """An error on stderr: one text line, or with ``--json`` one JSON object a script can parse."""
    if as_json:
        click.echo(json.dumps({"error": {"code": code, "message": message, "exit_code": exit_code}}), err=True)
    else:
        click.echo(f"data-manager: error: {message}", err=True)


class _Group(click.Group):
    """Turns DataManagerError and Ctrl-C into one line (a JSON object with --json) and an exit code."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Whether the command line asks for --json (any subcommand; options end at "--"), for invoke's errors.
        ctx.meta["data_manager.json"] = "--json" in (args[: args.index("--")] if "--" in args else args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        as_json = bool(ctx.meta.get("data_manager.json"))
        try:
            return super().invoke(ctx)
        except DataManagerError as exc:
            _fail(exc, as_json)
        except click.ClickException as exc:
            if not as_json:
                raise
            _error_line(exc.format_message(), "usage", exc.exit_code, True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            if as_json:
                _error_line("interrupted", "interrupted", ExitCode.INTERRUPTED, True)
            else:
                click.echo("data-manager: interrupted", err=True)
            sys.exit(ExitCode.INTERRUPTED)


def _progress(obj: Context, as_json: bool) -> Any:
    """Progress on stderr (data_manager.progress): JSON lines with --json, a bar on a terminal, else None."""
    from .progress import for_stderr

    return for_stderr(as_json, obj.quiet)


def _release_failed(text: str | None) -> None:
    """The operation is done, but the dataset may still be marked unavailable: say so loudly, exit 1."""
    if text:
        click.echo(f"data-manager: error: {scrub(text)}; see data-manager status", err=True)
        sys.exit(ExitCode.FAILED)


def _interrupt_on_term(signum: int, frame: Any) -> None:
    # A service manager's stop (SIGTERM) unwinds like Ctrl-C: the dataset is released and unlocked.
    raise KeyboardInterrupt


def _seconds(text: str | None, option: str) -> float:
    from .jobs import parse_duration

    if text is None:
        return 0.0
    if text.strip() in ("0", "0s"):
        return 0.0
    try:
        return parse_duration(text, option, "value")
    except DataManagerError:
        raise UsageError(f"{option} {text!r}: expected a duration like 90, 90s, 30m, 6h or 2d") from None


def _count(text: str | None, option: str) -> int | None:
    """A positive whole number from the command line (None when the option is absent)."""
    if text is None:
        return None
    if not text.strip().isdigit() or int(text) < 1:
        raise UsageError(f"{option} {text!r}: expected a positive whole number")
    return int(text)


def _rate(text: str | None, option: str) -> int | None:
    """Bytes per second from the command line (None when absent, 0 for no limit)."""
    from .throttle import RATE_HINT, parse_rate

    if text is None:
        return None
    rate = parse_rate(text)
    if rate is None:
        raise UsageError(f"{option} {text!r}: expected {RATE_HINT}, or 0 for no limit")
    return rate


def _limit_options(fn: Any) -> Any:
    """``--limit-upload``/``--limit-download RATE`` on a command: every storage it uses is paced to them
    (:mod:`data_manager.throttle`), overriding the storages' ``limit_upload``/``limit_download``."""
    from functools import wraps

    @wraps(fn)
    def command(*args: Any, limit_upload: str | None = None, limit_download: str | None = None, **kwargs: Any) -> Any:
        if limit_upload is not None or limit_download is not None:
            upload, download = _rate(limit_upload, "--limit-upload"), _rate(limit_download, "--limit-download")
            click.get_current_context().find_object(Context).dm.set_limits(upload, download)
        return fn(*args, **kwargs)

    command = click.option("--limit-download", "limit_download", metavar="RATE",
                           help="Read from the storage at most this many bytes per second, e.g. 10MiB (0: no limit).")(command)
    return click.option("--limit-upload", "limit_upload", metavar="RATE",
                        help="Write to the storage at most this many bytes per second, e.g. 10MiB (0: no limit).")(command)


def _emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet or verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("data-manager: %(levelname)s: %(message)s"))
    handler.addFilter(SCRUBBER)
    handler.setLevel(level)  # a logger may be lowered for a while (data_manager.monitoring's log tail)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``--version``: the core's version, then each plugin's (a broken one says so)."""
    if not value or ctx.resilient_parsing:
        return
    from .plugins import get_registry

    click.echo(f"data-manager {__version__}")
    for p in get_registry().plugins:
        click.echo(f"  {p.name} {p.version} ({p.package})" + (f" BROKEN: {p.error}" if p.error else ""))
    ctx.exit()


@click.group(cls=_Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH", envvar="DATA_MANAGER_CONFIG",
              help="Config file (default: $DATA_MANAGER_CONFIG, ./data-manager.toml, ~/.config/data-manager/config.toml).")
@click.option("-v", "--verbose", count=True, help="Say what happens (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version of data-manager and of each plugin, and exit.")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: int, quiet: bool) -> None:
    """Back up and restore datasets spread over databases, buckets, directories and files.

    A dataset (DATA_ID) and its sources are described in a TOML config; backups land in a storage at
    ROOT/DATA_ID/TIMESTAMP/SOURCE with human-readable metadata (backup.json) beside the data.
    """
    _setup_logging(verbose, quiet)
    from .memory import tune_allocator
    from .threads import tune_switch_interval

    tune_allocator()  # the command owns its process; the Python API leaves its host's allocator alone
    tune_switch_interval()  # likewise
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt_on_term)
    ctx.obj = Context(config_path, quiet)


def _which_and_id(args: tuple[str, ...]) -> tuple[str, str]:
    if len(args) == 1:
        return "latest", args[0]
    if len(args) == 2:
        return args[0], args[1]
    raise UsageError("expected [latest | TIMESTAMP] DATA_ID")


def _monitored(command: Callable[..., None]) -> Callable[..., None]:
    """A backup pings [monitoring] (start, then success or fail with the log's tail); not a dry run."""

    @functools.wraps(command)
    def run(obj: Context, **kwargs: Any) -> None:
        if kwargs.get("dry_run"):
            return command(obj, **kwargs)
        with obj.dm.monitoring.watch(f"backup of {kwargs['data_id']}"):
            return command(obj, **kwargs)

    return run


@main.command()
@click.argument("data_id")
@click.option("--dry-run", is_flag=True, help="Check config, storage and sources; write nothing.")
@click.option("--resume", is_flag=True, help="Continue the newest incomplete backup; redo only unfinished sources.")
@click.option("--wait", "wait", metavar="SECONDS", help="If another job holds the dataset's lock, wait this long (e.g. 300, 10m).")
@click.option("--parallel", "parallel", metavar="N", help="Back up up to N sources at once (default: the dataset's parallel, else 1).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_limit_options
@click.pass_obj
@_monitored
def backup(obj: Context, data_id: str, dry_run: bool, resume: bool, wait: str | None, parallel: str | None,
           as_json: bool) -> None:
    """Back up every source of DATA_ID into ROOT/DATA_ID/TIMESTAMP/.

    Runs as a job: guards asked (exit 3 if one refuses), the dataset locked and marked unavailable, each
    source backed up, the dataset marked available again (also on failure, Ctrl-C or timeout).
    """
    from .units import human_size

    progress = _progress(obj, as_json)
    try:
        result = obj.dm.backup(data_id, dry_run=dry_run, progress=progress, resume=resume,
                               wait=_seconds(wait, "--wait"), parallel=_count(parallel, "--parallel"))
    finally:
        if progress is not None:
            progress.done()
    if as_json:
        _emit_json(result.to_json())
        _release_failed("; ".join(e for e in (result.release_error, result.copy_error) if e) or None)
        return
    if dry_run:
        click.echo(f"would back up {data_id} to {result.location}:")
        for s in result.sources:
            click.echo(f"  {s.name} ({s.type})")
        return
    for s in result.sources:
        kept = "  (done by the interrupted run)" if s.name in result.resumed else ""
        click.echo(f"  {s.name:<20} {s.type:<12} {human_size(s.size):>10}  stored {human_size(s.stored_size):>10}  {s.seconds:.1f}s{kept}")
    click.echo(f"backup {data_id}/{result.timestamp} complete: {human_size(result.size)}, "
               f"stored {human_size(result.stored_size)}, {result.seconds:.1f}s (job {result.job_id})")
    for name in result.copies:
        click.echo(f"copied to {name}")
    _release_failed("; ".join(e for e in (result.release_error, result.copy_error) if e) or None)


def _verified_text(when: str | None, sample: float | None) -> str:
    """When a backup last passed a verify: ``never``, or the time (with the share read, for a sample)."""
    if when is None:
        return "never"
    return when + (f" ({sample * 100:g}%)" if sample is not None else "")


@main.group(name="list")
def list_() -> None:
    """List things: backups."""


@list_.command(name="backup")
@click.argument("data_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def list_backup(obj: Context, data_id: str | None, as_json: bool) -> None:
    """One row per backup of DATA_ID (every dataset in the storages if omitted)."""
    from .units import human_size

    backups = obj.dm.list_backups(data_id)
    if as_json:
        _emit_json([b.to_json() for b in backups])
        return
    if not backups:
        click.echo("no backups" + (f" of {data_id}" if data_id else ""))
        return
    rows = [("DATASET", "TIMESTAMP", "SIZE", "STORED", "STATUS", "VERIFIED", "STORAGES", "SOURCES")]
    for b in backups:
        state = "complete" if b.complete else "DAMAGED" if b.damaged else "INCOMPLETE"
        rows.append((b.data_id, b.timestamp, human_size(b.size), human_size(b.stored_size), state,
                     _verified_text(b.verified, b.verified_sample),
                     ",".join(b.storages + [f"{n}(incomplete)" for n in b.incomplete_in]) or "-", ",".join(b.sources)))
    widths = [max(len(r[i]) for r in rows) for i in range(7)]
    for r in rows:
        click.echo("  ".join(r[i].ljust(widths[i]) for i in range(7)) + "  " + r[7])
    for b in backups:
        if b.damaged:
            click.echo(f"damaged: {b.data_id}/{b.timestamp}: {b.damaged}", err=True)


@main.command()
@click.argument("args", nargs=-1, metavar="[latest | TIMESTAMP] DATA_ID")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before replacing current data.")
@click.option("--set", "sets", multiple=True, metavar="SOURCE.KEY=VALUE",
              help="Restore a source elsewhere, e.g. --set raw.path=/tmp/raw or --set db.dsn=postgresql://.../other.")
@click.option("--only", multiple=True, metavar="SOURCE", help="Restore only this source (repeatable).")
@click.option("--dry-run", is_flag=True, help="Show what would be restored where; change nothing.")
@click.option("--wait", "wait", metavar="SECONDS", help="If another job holds the dataset's lock, wait this long (e.g. 300, 10m).")
@click.option("--parallel", "parallel", metavar="N", help="Restore up to N sources at once (default: the dataset's parallel, else 1).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_limit_options
@click.pass_obj
def restore(obj: Context, args: tuple[str, ...], yes: bool, sets: tuple[str, ...], only: tuple[str, ...],
            dry_run: bool, wait: str | None, parallel: str | None, as_json: bool) -> None:
    """Put every source of DATA_ID back as it was at a backup (default: latest).

    Replaces current data, so it asks first; --yes skips the question. Checksums are checked while
    reading; a corrupt backup is reported and the target left as it was.
    """
    from .config import parse_assignments
    from .units import human_size

    which, data_id = _which_and_id(args)
    overrides = parse_assignments(sets)
    sources_at_once = _count(parallel, "--parallel")
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
    progress = _progress(obj, as_json)
    try:
        result = dm.restore(data_id, plan.timestamp, overrides=overrides, only=list(only) or None, progress=progress,
                            wait=_seconds(wait, "--wait"), parallel=sources_at_once)
    finally:
        if progress is not None:
            progress.done()
    if as_json:
        _emit_json(result.to_json())
        _release_failed(result.release_error)
        return
    for s in result.sources:
        click.echo(f"  {s['name']:<20} -> {s['target']}")
    click.echo(f"restored {data_id}/{result.timestamp} (job {result.job_id})")
    _release_failed(result.release_error)


@main.command()
@click.argument("args", nargs=-1, metavar="[latest | TIMESTAMP] DATA_ID")
@click.option("--all", "every", is_flag=True, help="Every complete backup of DATA_ID (of every dataset if omitted).")
@click.option("--sample", metavar="PERCENT", help="Read a random subset of the artifacts holding this share of the bytes, e.g. 5%.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_limit_options
@click.pass_obj
def verify(obj: Context, args: tuple[str, ...], every: bool, sample: str | None, as_json: bool) -> None:
    """Read a backup back and check every artifact's size and digest (BLAKE3).

    With --all, every complete backup: a damaged one is reported and the others are still verified; the
    exit code is then the worst failure's (4 if one is corrupt). Each success is recorded (list backup,
    status: verified).
    """
    from .units import human_size
    from .operations.verify import parse_sample

    if every and len(args) > 1:
        raise UsageError("verify --all takes at most a DATA_ID")
    which, data_id = ("latest", args[0] if args else None) if every else _which_and_id(args)
    fraction = parse_sample(sample) if sample is not None else None
    progress = _progress(obj, as_json)
    try:
        results = (obj.dm.verify_all(data_id, sample=fraction, progress=progress) if every
                   else [obj.dm.verify(str(data_id), which, sample=fraction, progress=progress)])
    finally:
        if progress is not None:
            progress.done()
    if as_json:
        _emit_json([r.to_json() for r in results] if every else results[0].to_json())
    else:
        for r in results:
            read = f"{r.artifacts}/{r.total_artifacts} artifacts, {human_size(r.bytes)} of {human_size(r.total_bytes)}"
            state = "intact" if r.ok else f"FAILED: {r.error}"
            click.echo(f"backup {r.data_id}/{r.timestamp} {state}" + (f" ({read})" if r.ok else ""))
        if every:
            bad = sum(not r.ok for r in results)
            click.echo(f"{len(results)} backups verified, {bad} failed" if results else "no complete backups")
    sys.exit(max((r.exit_code for r in results), default=ExitCode.OK))


@main.command(name="copy")
@click.argument("args", nargs=-1, metavar="[latest | TIMESTAMP] DATA_ID")
@click.option("--to", "to", required=True, metavar="STORAGE", help="The configured storage to copy to.")
@click.option("--all", "every", is_flag=True, help="Every complete backup of DATA_ID.")
@click.option("--dry-run", is_flag=True, help="Show what would be copied; write nothing.")
@click.option("--wait", "wait", metavar="SECONDS", help="If another job holds the dataset's lock there, wait this long.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_limit_options
@click.pass_obj
def copy_(obj: Context, args: tuple[str, ...], to: str, every: bool, dry_run: bool, wait: str | None,
          as_json: bool) -> None:
    """Copy complete backups of DATA_ID (default: latest) as stored to another storage: a second copy.

    Every artifact's size and digest are checked on the way and backup.json is written last: an
    interrupted copy is an incomplete backup there, and the same command resumes it. Runs as a job holding
    the dataset's lock in the target storage; asks no guard (the dataset's data is not touched).
    """
    from .units import human_size

    if every and len(args) != 1:
        raise UsageError("copy --all takes DATA_ID alone")
    which, data_id = ("all", args[0]) if every else _which_and_id(args)
    progress = _progress(obj, as_json)
    try:
        result = obj.dm.copy(data_id, which, to=to, dry_run=dry_run, progress=progress, wait=_seconds(wait, "--wait"))
    finally:
        if progress is not None:
            progress.done()
    if as_json:
        _emit_json(result.to_json())
        return
    for b in result.backups:
        there = f" ({b.skipped} there already)" if b.skipped else ""
        what = (f"already complete in {to}" if b.state == "already complete" else
                f"{b.state}: {b.artifacts} artifacts, {human_size(b.bytes)}{there}")
        click.echo(f"  {data_id}/{b.timestamp}: {what}")
    if dry_run:
        click.echo(f"would copy to {to} ({result.location}); nothing written")
    else:
        click.echo(f"{data_id}: {len(result.backups)} backup(s) in {to} ({result.location}), copied from "
                   f"{result.source} (job {result.job_id})")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def status(obj: Context, as_json: bool) -> None:
    """The config in use, plugins, storages, each dataset's latest backup and locks; running and recent
    jobs; datasets marked unavailable (or left so because releasing them failed)."""
    from .api import age_text
    from .units import human_size

    st = obj.dm.status()
    if as_json:
        _emit_json(st.to_json())
        return
    click.echo(f"config: {st.config}")
    click.echo(f"state: {st.state}")
    click.echo("plugins: " + ", ".join(f"{p['name']} {p['version']}" + (" (BROKEN)" if p["error"] else " (blocked)" if p["blocked"]
                                       else "") for p in st.plugins))
    click.echo("storages:")
    for s in st.storages:
        state = "reachable" if s["reachable"] else f"UNREACHABLE: {s.get('error')}"
        kind = s["type"] + (f", {s['engine']} engine" if s.get("engine", "worm") != "worm" else "")
        click.echo(f"  {s['name']} ({kind}) {s.get('location', '')}: {state}")
    click.echo("datasets:")
    for d in st.datasets:
        latest = f"{d['latest']} ({age_text(d['age_seconds'])})" if d["latest"] else "no backup yet"
        extra = f", verified {_verified_text(d['verified'], d['verified_sample'])}" if d["latest"] else ""
        extra += f", {d['incomplete']} incomplete" if d["incomplete"] else ""
        extra += f", {d['damaged']} DAMAGED (see list backup)" if d.get("damaged") else ""
        click.echo(f"  {d['data_id']}: {latest}{extra}; sources {', '.join(d['sources'])}")
        if d.get("window"):
            w = d["window"]
            when = f"open until {w['closes_at']}" if w["open"] else f"closed, opens {w['opens_at']}"
            click.echo(f"    backup window {w['window']}: {when}")
            if w["sources_restarting"]:
                click.echo(f"    when the window closes, {', '.join(w['sources_restarting'])} start over (neither "
                           f"engine nor source keeps what a stopped run stored): each must fit in one window")
        for lock in d.get("locks", []):
            stale = " STALE" if lock["stale"] else ""
            click.echo(f"    locked{stale} by {lock['operation']} job {lock['job_id']} (host {lock['host']}, pid {lock['pid']}) "
                       f"since {lock['created']}")
    if st.unavailable:
        click.echo("marked unavailable:")
        for a in st.unavailable:
            if a.state == "release_failed":
                click.echo(f"  {a.data_id}: RELEASE FAILED after job {a.job_id} at {a.since}: {a.error}")
            else:
                click.echo(f"  {a.data_id}: by job {a.job_id} since {a.since}")
    click.echo("running jobs:" + ("" if st.running else " none"))
    for j in st.running:
        done = sum(1 for t in j.tasks if t.state == "done")
        click.echo(f"  {j.id} {j.kind} {j.data_id} {j.backup or ''} since {j.started_at or j.created_at} "
                   f"(host {j.host}, pid {j.pid}), {done}/{len(j.tasks)} sources done")
    click.echo("recent jobs:" + ("" if st.recent else " none"))
    for j in st.recent:
        line = f"  {j.id} {j.kind} {j.data_id} {j.backup or '-'} {j.state.upper()} {j.ended_at or ''} {human_size(j.bytes)}"
        if j.error:
            line += f": {j.error}"
        if j.release_error:
            line += " [RELEASE FAILED]"
        click.echo(line)


@main.command()
@click.argument("data_id", required=False)
@click.option("--older-than", "older_than", default="24h", show_default=True, metavar="DURATION",
              help="Grace period: only incomplete backups started longer ago than this.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def cleanup(obj: Context, data_id: str | None, older_than: str, dry_run: bool, as_json: bool) -> None:
    """Remove incomplete backups (of DATA_ID, or of every dataset) older than the grace period.

    The newest incomplete backup of a dataset another job has locked is kept (it may be running or resuming).
    """
    from .units import human_size

    items = obj.dm.cleanup(data_id, older_than=_seconds(older_than, "--older-than"), dry_run=dry_run)
    if as_json:
        _emit_json([i.to_json() for i in items])
        return
    if not items:
        click.echo("no incomplete backups older than " + older_than + ", no unfinished writes, no restore leftovers")
    for i in items:
        why = f" ({i.reason})" if i.reason else ""
        what = f"{i.kind} {i.path}" if i.path else f"{i.data_id}/{i.timestamp} {human_size(i.stored_size)}"
        click.echo(f"{i.action}: {what}{why}")


@main.group()
def lock() -> None:
    """Dataset locks in the storage: list them, break stale ones."""


@lock.command(name="list")
@click.argument("data_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def lock_list(obj: Context, data_id: str | None, as_json: bool) -> None:
    """Locks of DATA_ID (or of every dataset in the storages), with owner and age; stale ones marked."""
    locks = obj.dm.locks(data_id)
    if as_json:
        _emit_json([lk.to_json() for lk in locks])
        return
    if not locks:
        click.echo("no locks" + (f" on {data_id}" if data_id else ""))
    for lk in locks:
        click.echo(f"{lk.data_id}: {lk.describe()}")


@lock.command(name="break")
@click.argument("data_id")
@click.option("--job", "job_id", metavar="JOB_ID", help="Only the lock of this job.")
@click.option("--force", is_flag=True, help="Also break a lock that is not stale (its job must really be gone).")
@click.pass_obj
def lock_break(obj: Context, data_id: str, job_id: str | None, force: bool) -> None:
    """Remove the stale locks of DATA_ID (expired, or of a process gone from this host)."""
    broken = obj.dm.break_lock(data_id, job_id=job_id, force=force)
    if not broken:
        click.echo(f"{data_id} has no locks")
    for lk in broken:
        click.echo(f"broke the lock of {lk.describe()}")


@main.group(name="config")
def config_() -> None:
    """The config: check it."""


@config_.command(name="check")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def config_check(obj: Context, as_json: bool) -> None:
    """Validate the config and every plugin's settings (each storage and source is constructed; nothing is
    contacted or written) and print it resolved, secrets as ***. Exit 2 and one line naming the file, the
    dataset and the key if anything is wrong."""
    from .operations.config_check import check_config, to_toml

    doc = check_config(obj.dm)
    if as_json:
        _emit_json(doc)
        return
    click.echo(f"# {doc['config']}: valid; state database {doc['state']}")
    click.echo("\n".join(to_toml(doc["resolved"])))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def plugins(as_json: bool) -> None:
    """Installed plugins and the source and storage types they provide.

    A plugin that failed to load or registered something wrong is shown BROKEN with what was wrong, and
    skipped; one named in DATA_MANAGER_BLOCK_PLUGINS is shown blocked.
    """
    from .plugins import BLOCK_PLUGINS_ENV, get_registry

    reg = get_registry()
    guard_hooks = ("configure", "check_dataset", "before_operation", "after_operation", "resolve_dataset")

    def hooks(name: str) -> list[str]:
        plugin = reg.pm.get_plugin(name)
        callers = reg.pm.get_hookcallers(plugin) if plugin is not None else None
        return sorted(c.name for c in callers or [] if c.name in guard_hooks)

    rows = [{**p.to_json(), "hooks": hooks(p.name)} for p in reg.plugins]
    if as_json:
        _emit_json(rows)
        return

    def types(kind: str, r: dict[str, Any]) -> list[str]:
        aliases = r[f"{kind}_aliases"]
        return [f"{kind} {t}" + "".join(f" (alias {a})" for a, to in aliases.items() if to == t) for t in r[f"{kind}_types"]]

    for r in rows:
        provides = ", ".join(types("source", r) + types("storage", r)
                             + ([f"hooks {' '.join(r['hooks'])}"] if r["hooks"] else []))
        state = (f"BROKEN: {r['error']}" if r["error"] else f"blocked by {BLOCK_PLUGINS_ENV}" if r["blocked"]
                 else provides)
        click.echo(f"{r['name']:<14} {r['package']} {r['version']}: {state}")


def _register_commands() -> None:
    """The commands that live in their own modules: repositories, retention, the service."""
    from .cli_repo import check, repo
    from .cli_retention import forget, hold, holds, prune, unhold
    from .cli_service import serve

    for command in (check, repo, forget, hold, unhold, holds, prune, serve):
        main.add_command(command)


_register_commands()
