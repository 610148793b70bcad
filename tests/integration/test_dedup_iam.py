"""Issue #18, "enforce it in the storage's credentials": a ``dedup`` repository on MinIO (``s3`` storage,
fixture ``s3_bucket``) used by two MinIO users made through MinIO's admin API (``minio.MinioAdmin``, no
``mc``): an **append** user whose policy allows Get/Put/List but denies ``s3:DeleteObject``, and an
**admin** user allowed everything on the bucket.

With the append key and the append credentials, a machine backs up (twice), lists, restores byte for byte,
checks and holds although the storage refuses every delete; ``forget`` and ``prune`` with the append key are
refused (exit 3). With the admin key and the admin credentials, ``forget --keep-last 1``, the mark and the
sweep free the space and the kept backup restores byte for byte. The storage itself enforces the role: a raw
``DeleteObject`` of a pack with the append credentials fails with AccessDenied.

Nothing an append job does needs a delete: it releases its dataset lock by overwriting the lock object with
the small ``released`` marker (every contender skips it by its size) and seals a ``finished`` heartbeat over
``writers/<id>`` (a sweep skips it and removes it). So the append client's jobs follow each other with no
admin in between, a sweep right after an append backup frees the space, and the admin's own jobs and sweep
remove the leftovers."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from data_manager.locks import RELEASED

from ..helpers import cli, snapshot
from ..servers import unique_name

pytestmark = pytest.mark.minio

ADMIN_PASS = "admin horse"
APPEND_PASS = "append horse"


@dataclass
class User:
    access_key: str
    secret_key: str


@dataclass
class Iam:
    admin: User
    append: User


def bucket_policy(bucket: str, *, deny_delete: bool) -> dict[str, Any]:
    resources = [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    if not deny_delete:
        return {"Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": resources}]}
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Resource": resources, "Action": [
            "s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:GetBucketLocation",
            "s3:ListBucketMultipartUploads", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"]},
        {"Effect": "Deny", "Action": ["s3:DeleteObject"], "Resource": [f"arn:aws:s3:::{bucket}/*"]},
    ]}


@pytest.fixture
def iam(s3_bucket: Any) -> Iterator[Iam]:
    """Two MinIO users on the test bucket, made (and removed after) through MinIO's admin API."""
    from minio import MinioAdmin
    from minio.credentials import StaticProvider

    admin_api = MinioAdmin(endpoint=s3_bucket.endpoint, credentials=StaticProvider(s3_bucket.access_key, s3_bucket.secret_key),
                           secure=False)
    made_users: list[str] = []
    made_policies: list[str] = []
    users = {}
    try:
        for role, deny in (("admin", False), ("append", True)):
            policy = unique_name(f"dm-{role}", sep="-")
            admin_api.policy_add(policy, policy=bucket_policy(s3_bucket.bucket, deny_delete=deny))
            made_policies.append(policy)
            user = User(unique_name(f"dm{role}", sep="-"), unique_name("secret", sep="-") + "-" + os.urandom(8).hex())
            admin_api.user_add(user.access_key, user.secret_key)
            made_users.append(user.access_key)
            admin_api.attach_policy([policy], user=user.access_key)
            users[role] = user
        yield Iam(**users)
    finally:
        for name in made_users:
            admin_api.user_remove(name)
        for name in made_policies:
            admin_api.policy_remove(name)


@pytest.fixture
def setup(s3_bucket: Any, iam: Iam, tmp_path: Path) -> tuple[Path, dict[str, dict[str, str]], Path]:
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "same.txt").write_text("unchanged\n" * 10_000)
    config = tmp_path / "dm.toml"
    config.write_text(f"""
[locks]
settle = "0.02s"

[storages.vault]
type = "s3"
endpoint = "{s3_bucket.endpoint}"
secure = false
access_key = "${{S3_ACCESS_KEY}}"
secret_key = "${{S3_SECRET_KEY}}"
bucket = "{s3_bucket.bucket}"
retries = 0
engine = "dedup"
passphrase = "${{DM_PASSPHRASE}}"
pack_size = "256KiB"
cache_dir = "{tmp_path / 'cache'}"

[datasets.exp42]
storage = "vault"

[[datasets.exp42.sources]]
name = "raw"
type = "directory"
path = "{raw}"
""")
    state = str(tmp_path / "state.db")
    envs = {
        "admin": {"DATA_MANAGER_STATE": state, "DM_PASSPHRASE": ADMIN_PASS,
                  "S3_ACCESS_KEY": iam.admin.access_key, "S3_SECRET_KEY": iam.admin.secret_key},
        "append": {"DATA_MANAGER_STATE": state, "DM_PASSPHRASE": APPEND_PASS,
                   "S3_ACCESS_KEY": iam.append.access_key, "S3_SECRET_KEY": iam.append.secret_key},
    }
    return config, envs, raw


def run(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return cli(*args, config=config, env=env)


def show(r: subprocess.CompletedProcess[str]) -> str:
    return f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"


def objects(s3_bucket: Any, prefix: str = "") -> dict[str, int]:
    return {o.object_name: o.size for o in s3_bucket.client.list_objects(s3_bucket.bucket, prefix=prefix or None,
                                                                           recursive=True)}


def ok(r: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert r.returncode == code, show(r)
    assert "Traceback" not in r.stderr, show(r)
    return r


def leftovers(s3_bucket: Any) -> list[str]:
    """What an append client could not delete: dataset locks and backup heartbeats."""
    return sorted(k for k in objects(s3_bucket) if "/.locks/" in k or k.startswith("writers/"))


class Unexpected(Exception):
    """A step failed that a strict xfail below does not expect to: it fails the test instead of passing as xfail."""


def init(config: Path, envs: dict[str, dict[str, str]]) -> None:
    """The admin key and credentials make the repository and the append key."""
    ok(run(config, envs["admin"], "repo", "init", "vault"))
    ok(cli("repo", "key", "add", "vault", "--role", "append", "--passphrase-env", "APPEND", config=config,
           env={**envs["admin"], "APPEND": APPEND_PASS}))


def append_backup(config: Path, env: dict[str, str], raw: Path, i: int) -> str:
    for old in raw.glob("unique-*"):
        old.unlink()
    (raw / f"unique-{i}.bin").write_bytes(os.urandom(1 << 20))
    r = ok(run(config, env, "backup", "exp42", "--json"))
    append_backup.last = r  # type: ignore[attr-defined]
    return json.loads(r.stdout)["timestamp"]


def test_append_credentials_without_delete_back_up_and_restore_only_admin_frees(setup, s3_bucket, iam,
                                                                                 tmp_path: Path) -> None:
    """The whole round trip. Between the append client's jobs that take the dataset lock, the admin breaks
    the lock the previous job could not remove (``lock break exp42``, admin credentials), and before the
    sweep it removes the heartbeats the append backups left (see the two xfails below)."""
    import minio
    from minio.error import S3Error

    config, envs, raw = setup
    admin, append = envs["admin"], envs["append"]
    init(config, envs)
    admin_breaks: list[str] = []

    def break_leftover_lock(before: str) -> None:
        locks = [k for k, size in objects(s3_bucket).items() if "/.locks/" in k and size != len(RELEASED)]
        if locks:
            ok(run(config, admin, "lock", "break", "exp42"))
            admin_breaks.append(before)
            assert not [k for k in leftovers(s3_bucket) if "/.locks/" in k]  # released ones too

    stamps = [append_backup(config, append, raw, 0)]
    quiet = append_backup.last  # type: ignore[attr-defined]
    assert json.loads(quiet.stdout)["release_error"] is None and "cannot remove" not in quiet.stderr, show(quiet)
    left = leftovers(s3_bucket)  # the lock and the heartbeat stay, overwritten as released / finished
    assert any(k.startswith("exp42/.locks/") for k in left) and any(k.startswith("writers/") for k in left), left
    break_leftover_lock("backup 2")
    stamps.append(append_backup(config, append, raw, 1))
    kept = snapshot(raw)
    assert stamps[0] != stamps[1]

    listed = json.loads(ok(run(config, append, "list", "backup", "exp42", "--json")).stdout)
    assert [b["timestamp"] for b in listed] == stamps and all(b["complete"] for b in listed), listed

    break_leftover_lock("restore")
    restored = tmp_path / "restored-by-append"
    ok(run(config, append, "restore", "latest", "exp42", "--yes", "--set", f"raw.path={restored}"))
    assert snapshot(restored) == kept

    check = json.loads(ok(run(config, append, "check", "vault", "--read-data-subset", "100%", "--json")).stdout)
    assert check[0]["ok"], check

    break_leftover_lock("hold")
    ok(run(config, append, "hold", stamps[1], "exp42", "--reason", "reference data"))

    break_leftover_lock("forget")
    for args in (("forget", "exp42", "--keep-last", "1"), ("prune", "vault")):
        r = ok(run(config, append, *args), 3)
        assert "only an admin key may" in r.stderr, show(r)

    # The storage enforces the role too: the append credentials cannot delete a pack.
    packs = [k for k in objects(s3_bucket) if k.startswith("packs/")]
    assert packs, objects(s3_bucket)
    client = minio.Minio(s3_bucket.endpoint, access_key=iam.append.access_key, secret_key=iam.append.secret_key,
                         secure=False)
    with pytest.raises(S3Error) as denied:
        client.remove_object(s3_bucket.bucket, packs[0])
    assert denied.value.code == "AccessDenied"
    assert packs[0] in objects(s3_bucket)

    # The admin key and credentials forget, mark, then sweep.
    before = sum(objects(s3_bucket).values())
    forgot = json.loads(ok(run(config, admin, "forget", "exp42", "--keep-last", "1", "--json")).stdout)
    assert forgot["removed"] == stamps[:1], forgot
    marked = json.loads(ok(run(config, admin, "prune", "vault", "--json")).stdout)
    assert marked[0]["phases"][0]["phase"] == "mark" and marked[0]["phases"][0]["status"] == "done", marked
    admin_client = minio.Minio(s3_bucket.endpoint, access_key=iam.admin.access_key,
                               secret_key=iam.admin.secret_key, secure=False)
    assert admin_client is not None
    swept = json.loads(ok(run(config, admin, "prune", "vault", "--delete-delay", "0s", "--json")).stdout)
    sweep = swept[0]["phases"][0]
    assert sweep["phase"] == "sweep" and sweep["status"] == "done", swept
    assert before - sum(objects(s3_bucket).values()) > 1 << 20

    restored = tmp_path / "restored-by-admin"
    ok(run(config, admin, "restore", "latest", "exp42", "--yes", "--set", f"raw.path={restored}"))
    assert snapshot(restored) == kept
    assert [b["timestamp"] for b in json.loads(ok(run(config, admin, "list", "backup", "exp42", "--json")).stdout)] \
        == stamps[1:]
    assert admin_breaks == []  # each job released its lock by overwriting it: nothing for the admin to break
    assert not [k for k in leftovers(s3_bucket) if k.startswith("writers/")]  # the admin's sweep removed them


@pytest.mark.parametrize("job", ["backup", "restore", "hold"])
def test_append_client_alone_runs_a_second_job_on_the_dataset(setup, s3_bucket, job: str, tmp_path: Path) -> None:
    """The first job's lock stays (the storage refuses its delete); the next job on this host ignores it, its
    process being gone, instead of failing on the same refused delete."""
    config, envs, raw = setup
    append = envs["append"]
    init(config, envs)
    stamp = append_backup(config, append, raw, 0)
    args = {"backup": ("backup", "exp42"),
            "restore": ("restore", "latest", "exp42", "--yes", "--set", f"raw.path={tmp_path / 'restored'}"),
            "hold": ("hold", stamp, "exp42")}[job]
    ok(run(config, append, *args))


def test_sweep_right_after_an_append_backup_frees_the_space(setup, s3_bucket) -> None:
    config, envs, raw = setup
    admin, append = envs["admin"], envs["append"]
    try:
        init(config, envs)
        first = append_backup(config, admin, raw, 0)
        append_backup(config, append, raw, 1)
        assert any(k.startswith("writers/") for k in leftovers(s3_bucket))
        forgot = json.loads(ok(run(config, admin, "forget", "exp42", "--keep-last", "1", "--json")).stdout)
        assert forgot["removed"] == [first], forgot
        ok(run(config, admin, "prune", "vault"))
        before = sum(objects(s3_bucket).values())
        swept = json.loads(ok(run(config, admin, "prune", "vault", "--delete-delay", "0s", "--json")).stdout)
        sweep = swept[0]["phases"][0]
    except AssertionError as exc:
        raise Unexpected(exc) from exc
    waiting_for_heartbeat = sweep["status"] == "waiting" and "writers/" in str(sweep.get("reason"))
    if sweep["status"] != "done" and not waiting_for_heartbeat:
        raise Unexpected(swept)
    assert sweep["status"] == "done", sweep
    assert before - sum(objects(s3_bucket).values()) > 1 << 20
