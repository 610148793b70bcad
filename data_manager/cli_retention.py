"""The retention commands: ``forget`` (apply a dataset's policy), ``hold`` / ``unhold`` (exempt a backup
from it), ``holds`` (list them) and ``prune`` (reclaim the space forgotten backups left in a dedup storage).
Thin: :mod:`data_manager.operations.forget` and :mod:`data_manager.operations.prune` do the work, through
:class:`~data_manager.api.DataManager`."""

from __future__ import annotations

from typing import Any

import click

from .errors import UsageError
from .retention import COUNT_KEYS, MAX_DURATION, Decision


def _ctx() -> Any:
    from .cli import Context

    return click.get_current_context().find_object(Context)


def _emit(doc: Any) -> None:
    from .cli import _emit_json

    _emit_json(doc)


def _wait(text: str | None) -> float:
    from .cli import _seconds

    return _seconds(text, "--wait")


def _count(text: str | None, option: str) -> int | None:
    """A whole number >= 0 from the command line (0 turns the config's rule off); None when absent."""
    if text is None:
        return None
    if not text.strip().isdigit():
        raise UsageError(f"{option} {text!r}: expected a whole number (0 turns the rule off)")
    return int(text)


def _duration(text: str | None, option: str) -> float | None:
    """A duration from the command line (``0`` or ``off`` turns the config's off); None when absent."""
    from .units import DURATION_HINT, parse_duration

    if text is None:
        return None
    if text.strip().lower() in ("0", "0s", "0d", "off"):
        return 0.0
    seconds = parse_duration(text)
    if seconds is None:
        raise UsageError(f"{option} {text!r}: expected {DURATION_HINT}, or 0 to turn it off")
    if seconds > MAX_DURATION:
        raise UsageError(f"{option} {text!r}: at most {MAX_DURATION / 86400:.0f}d")
    return seconds


def _share(text: str | None, option: str) -> float | None:
    """A percentage from the command line (``unlimited``: 100%); None when absent."""
    from .units import parse_percent

    if text is None:
        return None
    if text.strip().lower() == "unlimited":
        return 1.0
    share = parse_percent(text)
    if share is None:
        raise UsageError(f"{option} {text!r}: expected a percentage like 5% or 0%, or unlimited")
    return share


def _print_prune(reports: list[dict[str, Any]], dry_run: bool) -> None:
    for r in reports:
        click.echo(f"{r['storage']} ({r['location']}), {r['engine']}{': dry run, nothing changed' if dry_run else ''}")
        for line in r.get("describe", []):
            click.echo(f"  {line}")
        for note in r.get("notes", []):
            click.echo(f"note: {r['storage']}: {note}", err=True)


_MAX_UNUSED_HELP = ("Rewrite partly unused packs only until at most this share of the repository stays unused "
                    "(default 5%, as restic; 0%: free every unused byte; unlimited: delete only wholly unused "
                    "packs, copy nothing).")


def _table(decisions: list[Decision]) -> None:
    rows = [("TIMESTAMP", "ACTION", "REASONS")] + [(d.timestamp, d.action, ", ".join(d.reasons)) for d in decisions]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for r in rows:
        click.echo(f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2]}")


_COUNT_OPTIONS = [(f"--{k.replace('_', '-')}", k) for k in COUNT_KEYS]


_PERIODS = {"keep_hourly": "hours", "keep_daily": "days", "keep_weekly": "ISO weeks", "keep_monthly": "months",
            "keep_yearly": "years"}


def _policy_options(fn: Any) -> Any:
    """The policy's options, shown in the order of its keys (click lists the outermost first)."""
    fn = click.option("--min-keep", "min_keep", metavar="N", help="Never remove the N newest complete backups.")(fn)
    fn = click.option("--ttl", "ttl", metavar="DURATION",
                      help="Remove a backup no rule keeps only this long after it was taken, e.g. 60d.")(fn)
    fn = click.option("--keep-within", "keep_within", metavar="DURATION",
                      help="Keep every backup taken within this long before the newest, e.g. 30d.")(fn)
    for option, key in reversed(_COUNT_OPTIONS):
        help_text = ("Keep the N newest backups." if key == "keep_last" else
                     f"Keep the newest backup of each of the N newest {_PERIODS[key]} (UTC) holding one.")
        fn = click.option(option, key, metavar="N", help=help_text)(fn)
    return fn


@click.command(name="forget")
@click.argument("data_id")
@_policy_options
@click.option("--dry-run", is_flag=True, help="Show every backup with keep or remove and why; change nothing.")
@click.option("--prune", "then_prune", is_flag=True,
              help="Then run prune on the dataset's storage in the same process (as restic's forget --prune; "
                   "a dedup storage frees the space at a later prune, after its delete delay).")
@click.option("--wait", "wait", metavar="SECONDS", help="If another job holds the dataset's lock, wait this long.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def forget(data_id: str, dry_run: bool, then_prune: bool, wait: str | None, as_json: bool,
           **policy: str | None) -> None:
    """Remove the complete backups of DATA_ID that its retention policy does not keep.

    The policy is [datasets.DATA_ID.retention] in the config; options override its keys (0 turns one
    off). Rules are restic's: each --keep-* counts only periods holding a backup (UTC; ISO weeks), rules
    are ORed, --keep-within is relative to the newest backup. --ttl: a backup no rule keeps goes only
    once it expired. The newest backup, the --min-keep newest and held ones (see hold) are never removed.
    Without any policy nothing is removed (exit 2). Runs as a job holding the dataset's lock.
    """
    overrides: dict[str, Any] = {}
    for option, key in _COUNT_OPTIONS + [("--min-keep", "min_keep")]:
        overrides[key] = _count(policy.get(key), option)
    overrides["keep_within"] = _duration(policy.get("keep_within"), "--keep-within")
    overrides["ttl"] = _duration(policy.get("ttl"), "--ttl")
    dm = _ctx().dm
    result = dm.forget(data_id, dry_run=dry_run, overrides=overrides, wait=_wait(wait))
    pruned = dm.prune([result.storage], dry_run=dry_run) if then_prune else None
    if as_json:
        _emit(result.to_json() | ({"prune": pruned} if pruned is not None else {}))
        return
    click.echo(f"{data_id} in {result.storage} ({result.location}): {result.policy.describe()}")
    if result.decisions:
        _table(result.decisions)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    kept = sum(d.keep or d.action == "keep this time" for d in result.decisions)
    if dry_run:
        would = sum(d.action == "would remove" for d in result.decisions)
        click.echo(f"{data_id}: {kept} kept, {would} would be removed (dry run: nothing changed)")
    else:
        job = f" (job {result.job_id})" if result.job_id else ""
        click.echo(f"{data_id}: {kept} kept, {len(result.removed)} removed{job}")
    if pruned is not None:
        _print_prune(pruned, dry_run)


@click.command(name="hold")
@click.argument("timestamp")
@click.argument("data_id")
@click.option("--reason", metavar="TEXT", help="Why it is held (one line), e.g. 'legal hold, case 17'.")
@click.option("--wait", "wait", metavar="SECONDS", help="If another job holds the dataset's lock, wait this long.")
@click.option("--json", "as_json", is_flag=True, help="Print the hold as JSON.")
def hold(timestamp: str, data_id: str, reason: str | None, wait: str | None, as_json: bool) -> None:
    """Exempt the complete backup DATA_ID/TIMESTAMP from forget until unhold (a legal hold, reference data).

    Holding a held backup replaces its reason. Runs as a job holding the dataset's lock.
    """
    dm = _ctx().dm
    dm.hold(data_id, timestamp, reason, wait=_wait(wait))
    why = dm.holds(data_id).get(timestamp, "")
    if as_json:
        _emit({"data_id": data_id, "timestamp": timestamp, "held": True, "reason": why})
    else:
        click.echo(f"held {data_id}/{timestamp}: {why}")


@click.command(name="unhold")
@click.argument("timestamp")
@click.argument("data_id")
@click.option("--wait", "wait", metavar="SECONDS", help="If another job holds the dataset's lock, wait this long.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def unhold(timestamp: str, data_id: str, wait: str | None, as_json: bool) -> None:
    """Release the hold on DATA_ID/TIMESTAMP: forget may remove it again (exit 2 if it is not held)."""
    _ctx().dm.unhold(data_id, timestamp, wait=_wait(wait))
    if as_json:
        _emit({"data_id": data_id, "timestamp": timestamp, "held": False})
    else:
        click.echo(f"released the hold on {data_id}/{timestamp}")


@click.command(name="holds")
@click.argument("data_id")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def holds(data_id: str, as_json: bool) -> None:
    """The held backups of DATA_ID, with why, who and when."""
    found = _ctx().dm.holds(data_id)
    if as_json:
        _emit([{"timestamp": ts, "reason": why} for ts, why in found.items()])
        return
    if not found:
        click.echo(f"no held backups of {data_id}")
    for ts, why in found.items():
        click.echo(f"{data_id}/{ts}: {why}")


@click.command(name="prune")
@click.argument("targets", nargs=-1, metavar="[STORAGE|DATA_ID]...")
@click.option("--dry-run", is_flag=True, help="Say what each phase would free or rewrite; change nothing.")
@click.option("--delete-delay", "delete_delay", metavar="DURATION",
              help="How long after the mark the sweep may delete (default 24h; 0: at the next run).")
@click.option("--max-unused", "max_unused", metavar="PERCENT", help=_MAX_UNUSED_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one report per storage as JSON.")
def prune(targets: tuple[str, ...], dry_run: bool, delete_delay: str | None, max_unused: str | None,
          as_json: bool) -> None:
    """Reclaim the space that forgotten backups left in STORAGEs (or DATA_IDs' storages; default: every storage).

    Two phases, each run doing what is due: sweep (delete or rewrite the packs an earlier run marked, once
    --delete-delay passed since and no backup started before the mark still runs; remove the forgotten
    backups' snapshots) then mark (record what no backup uses now; new backups stop reusing it). Admin keys
    only. A worm storage has nothing to prune: forget frees its space.
    """
    delay = _duration(delete_delay, "--delete-delay")
    reports = _ctx().dm.prune(list(targets), dry_run=dry_run, delete_delay=86400.0 if delay is None else delay,
                              max_unused=_share(max_unused, "--max-unused"))
    if as_json:
        _emit(reports)
        return
    _print_prune(reports, dry_run)
