"""``forget``, ``hold`` and ``unhold``: complete backups removed by the dataset's retention policy, and
exempted from it (:mod:`data_manager.retention` decides, the storage's engine removes).

``forget`` plans over the complete backups of the dataset's own storage (incomplete ones are ``cleanup``'s,
damaged ones are never counted nor removed here; copies in other storages are not touched). A dry run
only plans. A real run is a job holding the dataset's lock (no guards: the dataset's data is not
touched, only its backups): under the lock it lists and plans again, and removes a backup only if both
plans say so (a hold or an expiry that came meanwhile keeps it until the next run), one at a time, each
a task of the job. ``hold``/``unhold`` run as jobs under the same lock, so a hold never races a forget.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..engines.base import RepositoryEngine
from ..errors import UsageError
from ..timestamps import is_timestamp
from ..retention import (Decision, Plan, Policy, check_timestamp, clean_text, plan,
                         policy_from_table)
from ..runner import JobContext, one_line
from ..types import Dataset

if TYPE_CHECKING:
    from ..api import DataManager

log = logging.getLogger(__name__)

REASON_LIMIT = 500


@dataclass
class ForgetResult:
    data_id: str
    storage: str
    location: str
    policy: Policy
    now: str
    decisions: list[Decision] = field(default_factory=list)  # oldest first, each with its action
    removed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was not counted (incomplete, damaged), and why
    dry_run: bool = False
    job_id: str | None = None

    @property
    def kept(self) -> list[str]:
        return [d.timestamp for d in self.decisions if d.timestamp not in self.removed and d.keep]

    def to_json(self) -> dict[str, Any]:
        return {"data_id": self.data_id, "storage": self.storage, "location": self.location,
                "policy": self.policy.to_json(), "describe": self.policy.describe(), "now": self.now,
                "dry_run": self.dry_run, "job_id": self.job_id, "backups": [d.to_json() for d in self.decisions],
                "removed": list(self.removed), "notes": list(self.notes)}


def dataset_policy(dm: DataManager, dataset: Dataset, overrides: Mapping[str, Any] | None = None) -> Policy:
    """``[datasets.X.retention]`` with ``overrides`` (command options; None values not given) applied;
    an empty policy is refused (exit 2): forget never removes every backup but the newest by accident."""
    file = str(dm.config.path) if dm.config.path else "<config>"
    table = dataset.options.get("retention")
    base = Policy() if table is None else policy_from_table(table, file, dataset.data_id, dm.config.secrets)
    policy = base.replace(**(overrides or {}))
    if policy.empty():
        where = (f"[datasets.{dataset.data_id}.retention] in {file} has no keep_* rule, keep_within nor ttl"
                 if table is not None else f"{dataset.data_id} has no [datasets.{dataset.data_id}.retention] in {file}")
        raise UsageError(f"no retention policy: {where}; give one there or with --keep-*, --keep-within, --ttl "
                         f"(forget never removes backups without a policy)")
    return policy


def _plan(repo: RepositoryEngine, data_id: str, policy: Policy) -> tuple[Plan, list[str], dict[str, int]]:
    """The plan over the complete backups now, notes on the others, and each backup's stored size."""
    backups = repo.backups(data_id)
    notes = []
    incomplete = [b.timestamp for b in backups if not b.complete and not b.damaged]
    if incomplete:
        notes.append(f"{len(incomplete)} incomplete backup(s) not counted ({', '.join(incomplete)}): "
                     f"data-manager cleanup {data_id} removes them")
    for b in backups:
        if b.damaged:
            notes.append(f"{b.timestamp}: damaged, not counted and not removed: {clean_text(b.damaged)}")
    complete = [b.timestamp for b in backups if b.complete and is_timestamp(b.timestamp)]
    holds = repo.holds(data_id)
    for ts in sorted(set(holds) - set(complete)):
        notes.append(f"{ts}: held, but not a complete backup here")
    sizes = {b.timestamp: b.stored_size or 0 for b in backups if b.complete}
    return plan(policy, complete, holds, times=repo.retention_times(data_id)), notes, sizes


def forget(dm: DataManager, data_id: str, *, dry_run: bool = False, overrides: Mapping[str, Any] | None = None,
           wait: float = 0.0) -> ForgetResult:
    """Apply ``data_id``'s retention policy (``overrides``: keys of :class:`~data_manager.retention.Policy`
    from the command line, None for not given) to its complete backups in its storage."""
    dataset = dm.stored_dataset(data_id)
    policy = dataset_policy(dm, dataset, overrides)
    repo = dm.repository(dataset.storage)
    first, notes, sizes = _plan(repo, data_id, policy)
    result = ForgetResult(data_id, dataset.storage, repo.location(), policy, _iso(first), notes=notes, dry_run=dry_run)
    if dry_run or not first.remove:
        for d in first.decisions:
            d.action = "keep" if d.keep else "would remove"
        result.decisions = first.decisions
        return result

    def body(ctx: JobContext) -> Plan:
        again, notes, _ = _plan(repo, data_id, policy)  # under the lock: what changed since counts
        result.notes, result.now = notes, _iso(again)
        removable = set(first.remove) & set(again.remove)
        for d in again.decisions:
            d.action = "keep" if d.keep else "would remove"
            if not d.keep and d.timestamp not in removable:
                d.action = "keep this time"
                d.reasons.append("its removal came while forget ran: the next run removes it")
        for ts in first.remove:
            ctx.check()
            ctx.rec.task_started(ts)
            if ts not in removable:
                kept = next((d for d in again.decisions if d.timestamp == ts), None)
                why = "; ".join(kept.reasons) if kept is not None else "gone meanwhile"
                ctx.rec.task_done(ts, 0, f"kept: {why}")
                continue
            try:
                repo.forget(data_id, [ts])
            except BaseException as exc:
                ctx.rec.task_failed(ts, one_line(exc))
                raise
            ctx.rec.task_done(ts, sizes.get(ts, 0))
            again.decision(ts).action = "removed"
            result.removed.append(ts)
            log.info("forgot %s/%s (%s)", data_id, ts, "; ".join(first.decision(ts).reasons))
        return again

    final, rec, _ = dm.runner.run(dataset, "forget", [(ts, "forget") for ts in first.remove], body, wait=wait,
                                  guarded=False)
    result.decisions = final.decisions
    result.job_id = rec.job.id
    return result


def _iso(p: Plan) -> str:
    from ..timestamps import iso

    return iso(p.now)


def check_reason(reason: str | None) -> str:
    """A hold's reason as given on the command line: one line of printable text, at most 500 characters."""
    reason = (reason or "").strip()
    if len(reason) > REASON_LIMIT:
        raise UsageError(f"--reason: at most {REASON_LIMIT} characters, not {len(reason)}")
    if clean_text(reason, REASON_LIMIT) != reason:
        raise UsageError("--reason: one line of printable text (no control characters or line breaks)")
    return reason


def hold(dm: DataManager, data_id: str, timestamp: str, reason: str | None = None, *, wait: float = 0.0) -> None:
    """Exempt the complete backup ``data_id/timestamp`` from forget (``reason``: why, for people), as a
    job holding the dataset's lock. Holding a held backup replaces its reason."""
    _set_hold(dm, data_id, check_timestamp(timestamp), check_reason(reason), wait)


def unhold(dm: DataManager, data_id: str, timestamp: str, *, wait: float = 0.0) -> None:
    """Release the hold on ``data_id/timestamp`` (exit 2 if there is none)."""
    _set_hold(dm, data_id, check_timestamp(timestamp), None, wait)


def _set_hold(dm: DataManager, data_id: str, timestamp: str, reason: str | None, wait: float) -> None:
    dataset = dm.stored_dataset(data_id)
    repo = dm.repository(dataset.storage)
    kind = "hold" if reason is not None else "unhold"

    def body(ctx: JobContext) -> None:
        ctx.rec.task_started(timestamp)
        repo.set_hold(data_id, timestamp, reason)
        ctx.rec.task_done(timestamp, 0, reason or None)

    dm.runner.run(dataset, kind, [(timestamp, kind)], body, wait=wait, guarded=False, backup=timestamp)
    log.info("%s %s/%s%s", kind, data_id, timestamp, f": {reason}" if reason else "")


def holds(dm: DataManager, data_id: str) -> dict[str, str]:
    """The held backups of ``data_id`` in its storage: TIMESTAMP -> why (reason, who, when)."""
    dataset = dm.stored_dataset(data_id)
    return dict(sorted(dm.repository(dataset.storage).holds(data_id).items()))
