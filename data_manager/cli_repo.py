"""The commands about a storage's repository as a whole: ``check``, and ``repo init|key|repair``
(engines with a format to set up and keys, like ``dedup``). Each calls the storage's engine through
:class:`~data_manager.engines.base.RepositoryEngine`, never behind it."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from .errors import ExitCode, UsageError


def _ctx() -> Any:
    from .cli import Context

    return click.get_current_context().find_object(Context)


def _repo(name: str) -> Any:
    """The engine of the configured storage ``name``, or a usage error listing the configured ones."""
    dm = _ctx().dm
    if name not in dm.config.storages:
        known = ", ".join(sorted(dm.config.storages)) or "none"
        raise UsageError(f"unknown storage {name!r} (configured: {known})")
    return dm.repository(name)


def _emit(doc: Any) -> None:
    from .cli import _emit_json

    _emit_json(doc)


def _new_passphrase(env: str | None) -> str:
    """The passphrase of a new key: from the environment variable ``env``, else asked twice on a terminal."""
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise UsageError(f"--passphrase-env {env}: the variable is not set or empty")
        return value
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask for the new key's passphrase: use --passphrase-env VAR")
    value = click.prompt("passphrase of the new key", hide_input=True, confirmation_prompt=True)
    if not value:
        raise UsageError("an empty passphrase is not allowed")
    return str(value)


@click.command(name="check")
@click.argument("storages", nargs=-1, metavar="[STORAGE]...")
@click.option("--read-data-subset", "subset", metavar="PERCENT",
              help="Also read back and verify this share of the stored data, e.g. 5% or 100%.")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
def check(storages: tuple[str, ...], subset: str | None, as_json: bool) -> None:
    """Check the repositories of STORAGEs (default: every configured storage).

    Every backup's metadata must be readable and every artifact present with its stored size (and, for a
    dedup storage: indexes against packs, snapshots against indexes, signatures). With
    --read-data-subset a random share of the data is read back and verified too. Orphans and
    leftovers of interrupted runs are noted, not errors. Exit 4 if anything is damaged.
    """
    from .operations.verify import parse_sample
    from .units import human_size

    fraction = parse_sample(subset, "--read-data-subset") if subset is not None else 0.0
    names = list(storages) or list(_ctx().dm.config.storages)
    reports = [_repo(name).check_repository(fraction) for name in names]
    if as_json:
        _emit([r.to_json() for r in reports])
    else:
        for r in reports:
            counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in r.counts.items())
            read = f", {human_size(r.read_bytes)} read back" if r.read_fraction else ""
            click.echo(f"{r.storage} ({r.engine}): {'ok' if r.ok else 'DAMAGED'}: {counts}{read} in {r.seconds:.1f}s")
            for e in r.errors:
                click.echo(f"  error: {e}")
            for n in r.notes:
                click.echo(f"  note: {n}")
    if not all(r.ok for r in reports):
        sys.exit(ExitCode.CORRUPT)


@click.group(name="repo")
def repo() -> None:
    """A storage's repository: create it, manage its keys, rebuild its indexes (dedup storages)."""


@repo.command(name="init")
@click.argument("storage")
@click.option("--json", "as_json", is_flag=True, help="Print what was created as JSON.")
def repo_init(storage: str, as_json: bool) -> None:
    """Create the repository of STORAGE, with a first admin key unlocked by its configured passphrase.

    Refuses if the storage holds a repository already. Keep the passphrase safe: without it (or another
    key's) the backups cannot be read by anyone.
    """
    made = _repo(storage).init_repository()
    if as_json:
        _emit(made)
        return
    click.echo(f"created {made.get('engine', 'a')} repository {made.get('id', '')} in {made.get('location', storage)}; "
               f"admin key {made.get('key_id', '')}")


@repo.group(name="key")
def key() -> None:
    """The keys of a repository, each with a role: admin (everything, alone can delete), append (back up,
    restore, check; never delete), write-only (back up only: cannot read anything back)."""


@key.command(name="add")
@click.argument("storage")
@click.option("--role", type=click.Choice(["admin", "append", "write-only"]), required=True, help="What the key may do.")
@click.option("--passphrase-env", "env", metavar="VAR", help="Take the new key's passphrase from this variable (else asked).")
@click.option("--json", "as_json", is_flag=True, help="Print the new key as JSON.")
def key_add(storage: str, role: str, env: str | None, as_json: bool) -> None:
    """Add a key to STORAGE's repository (needs an admin key: the configured passphrase)."""
    key_id = _repo(storage).add_key(role, _new_passphrase(env))
    if as_json:
        _emit({"key_id": key_id, "role": role})
    else:
        click.echo(f"added {role} key {key_id}")


@key.command(name="list")
@click.argument("storage")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def key_list(storage: str, as_json: bool) -> None:
    """The keys of STORAGE's repository, with their roles."""
    keys = _repo(storage).list_keys()
    if as_json:
        _emit(keys)
        return
    for k in keys:
        flags = [f for f, on in (("revoked", k.get("revoked")), ("BAD SIGNATURE", k.get("signed_ok") is False)) if on]
        click.echo(f"{k['key_id']} {k['role']:<10} created {k.get('created', '?')} on {k.get('host', '?')}"
                   + (f" [{', '.join(flags)}]" if flags else ""))


@key.command(name="revoke")
@click.argument("storage")
@click.argument("key_id")
def key_revoke(storage: str, key_id: str) -> None:
    """Revoke KEY_ID in STORAGE's repository (needs an admin key; the last admin key stays)."""
    _repo(storage).revoke_key(key_id)
    click.echo(f"revoked key {key_id}")


@repo.command(name="repair")
@click.argument("storage")
@click.argument("what", type=click.Choice(["index", "snapshots"]))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def repo_repair(storage: str, what: str, as_json: bool) -> None:
    """Rebuild the index, or the snapshot pointers, of STORAGE's repository from its packs alone."""
    summary = _repo(storage).repair(what)
    if as_json:
        _emit(summary)
    else:
        click.echo(f"repaired {what}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    if summary.get("errors"):
        sys.exit(ExitCode.CORRUPT)
