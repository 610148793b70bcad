"""Run inside a private mount namespace whose tmpfs is full at some point (see test_faults.py): one backup
or restore through the real command, then what a user would check, printed as JSON.

    python -m tests.e2e.tmpfs_check storage CONFIG OUT
    python -m tests.e2e.tmpfs_check target CONFIG TARGET OLD_TREE
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from ..helpers import cli, snapshot


def main() -> None:
    mode, config = sys.argv[1], Path(sys.argv[2])
    src = Path(json.loads(sys.argv[-1])["src"])
    report: dict[str, object] = {}
    if mode == "storage":
        out = Path(sys.argv[3])
        r = cli("backup", "exp42", config=config)
        report.update(rc=r.returncode, stderr=r.stderr)
        if r.returncode == 0:
            report["verify_rc"] = cli("verify", "latest", "exp42", config=config).returncode
            rr = cli("restore", "latest", "exp42", "--yes", "--set", f"raw.path={out}", config=config)
            report["restore_rc"] = rr.returncode
            report["same"] = rr.returncode == 0 and snapshot(out) == snapshot(src)
    else:
        target, old = Path(sys.argv[3]), Path(sys.argv[4])
        shutil.copytree(old, target, symlinks=True)
        before = snapshot(target)
        r = cli("restore", "latest", "exp42", "--yes", "--set", f"raw.path={target}", config=config)
        report.update(rc=r.returncode, stderr=r.stderr)
        report["same"] = snapshot(target) == (snapshot(src) if r.returncode == 0 else before)
        report["leftovers"] = [p.name for p in target.parent.iterdir() if ".dm-" in p.name]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
