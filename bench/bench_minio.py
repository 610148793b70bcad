"""S3 both ways against ``rclone copy``, on the same data in the same run (MinIO of scripts/services).

    python bench/bench_minio.py [--size-mb 2048] [--rounds 3] [--keep] [--old DIR]

1. a directory of mixed files (a few large ones, medium ones, many small; half random, half text) to S3:
   ``rclone copy DIR m:bucket`` against ``data-manager backup`` with the directory source and the ``s3``
   storage;
2. that bucket (the copy rclone just made) to the local filesystem: ``rclone copy m:bucket DIR`` against
   ``data-manager backup`` with the ``minio`` source and the ``filesystem`` storage; for reference also
   ``rclone copy`` followed by ``sync -f`` (data-manager fsyncs what it writes, rclone does not). The three
   run in turn ``--rounds`` times; each is reported by its median run, and every round's ratio is printed;
3. that backup restored into a new bucket, against the upload of step 1.

data-manager does more than a copy (a BLAKE3 digest of every object, BLAKE3 of every artifact, zstd where it pays,
an index, fsync, checked multipart parts): the ratio says what that costs. rclone runs with its defaults
(4 transfers, MD5 checks), configured through RCLONE_CONFIG_M_* variables.

``--old DIR`` adds a fourth contender, interleaved with the others in every step: the same data-manager
with the minio plugin of another checkout (``git worktree add /tmp/minio-old COMMIT``; DIR is that
checkout, its ``plugins/data-manager-minio`` goes first on PYTHONPATH), to measure a change of the plugin
against rclone and against the code before it in the same run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path

from common import Measurement, dm_command, medians, report
from common import run as run_child

ENDPOINT = "127.0.0.1:9000"
ACCESS, SECRET = "dmadmin", "dmadmin-secret"
MiB = 1 << 20

RCLONE_ENV = {
    "RCLONE_CONFIG_M_TYPE": "s3",
    "RCLONE_CONFIG_M_PROVIDER": "Minio",
    "RCLONE_CONFIG_M_ENDPOINT": f"http://{ENDPOINT}",
    "RCLONE_CONFIG_M_ACCESS_KEY_ID": ACCESS,
    "RCLONE_CONFIG_M_SECRET_ACCESS_KEY": SECRET,
    "RCLONE_CONFIG_M_REGION": "us-east-1",
}


CPU: dict[str, list[dict[str, float]]] = {}  # per contender, per run: CPU seconds of its process tree and of MinIO


def _minio_cpu() -> float | None:
    """CPU seconds the local MinIO server has used so far (None if it is not a local process)."""
    try:
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == "minio":
                        with open(f"/proc/{pid}/stat") as st:
                            fields = st.read().rsplit(")", 1)[1].split()
                        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        pass
    return None


def run(name: str, cmd: str | list[str], **kw: object) -> Measurement:
    """``common.run`` plus the CPU time of the contender and of MinIO: on a shared machine wall times vary a
    lot, CPU seconds much less, and they show what each contender costs."""
    before, server = resource.getrusage(resource.RUSAGE_CHILDREN), _minio_cpu()
    m = run_child(name, cmd, **kw)  # type: ignore[arg-type]
    after, server_after = resource.getrusage(resource.RUSAGE_CHILDREN), _minio_cpu()
    cpu = {"cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)}
    if server is not None and server_after is not None:
        cpu["minio_cpu_s"] = round(server_after - server, 2)
    CPU.setdefault(name, []).append(cpu)
    print(f"{name}: {m.seconds:.2f} s, CPU {cpu['cpu_s']:.2f} s, MinIO CPU {cpu.get('minio_cpu_s', '?')} s")
    return m


def make_tree(root: Path, size_mb: int) -> tuple[int, int]:
    """~50% of the bytes in large files, ~35% in medium ones, ~15% in small ones; alternately random and text."""
    total = size_mb * MiB
    rnd = os.urandom(4 * MiB)
    text = b"".join(b"t=%d,sensor=%d,value=%.6f\n" % (i, i % 17, i * 0.001) for i in range(150_000))[: 4 * MiB]
    count = 0

    def write(path: Path, size: int, random: bool) -> None:
        nonlocal count
        path.parent.mkdir(parents=True, exist_ok=True)
        src = rnd if random else text
        with open(path, "wb") as f:
            left, i = size, 0
            while left:
                n = min(left, len(src))
                f.write(src[i % 997 :][:n] if n <= len(src) - i % 997 else src[:n])
                left -= n
                i += 1
        count += 1

    big = max(total // 2 // 4, MiB)
    for i in range(4):
        write(root / "large" / f"run{i}.{'bin' if i % 2 else 'csv'}", big, bool(i % 2))
    medium, written, i = total * 35 // 100, 0, 0
    while written < medium:
        size = (4 + (i * 7) % 13) * MiB
        write(root / "medium" / f"m{i:04d}.{'bin' if i % 2 else 'txt'}", size, bool(i % 2))
        written, i = written + size, i + 1
    small, written, i = total * 15 // 100, 0, 0
    while written < small:
        size = 4096 + (i * 7919) % (120 << 10)
        write(root / "small" / f"d{i // 500:02d}" / f"s{i:06d}.{'bin' if i % 2 else 'json'}", size, bool(i % 2))
        written, i = written + size, i + 1
    nbytes = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return nbytes, count


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3, help="runs of each contender, bucket to filesystem")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--old", type=Path, help="another checkout whose minio plugin runs as a fourth contender")
    args = ap.parse_args()
    # rclone 1.60 cannot load a custom CA bundle into its transport and refuses to start when AWS_CA_BUNDLE
    # is set; the benchmark talks plain http to 127.0.0.1, so no CA is needed by anyone.
    os.environ.pop("AWS_CA_BUNDLE", None)
    from minio import Minio
    from minio.deleteobjects import DeleteObject

    client = Minio(ENDPOINT, ACCESS, SECRET, secure=False)
    tag = uuid.uuid4().hex[:8]
    rclone_dst, dm_dst = f"bench-rclone-{tag}", f"bench-dm-{tag}"
    for b in (rclone_dst, dm_dst):
        client.make_bucket(b)
    work = Path(tempfile.mkdtemp(prefix="dm-bench-minio-"))
    try:
        src = work / "src"
        nbytes, files = make_tree(src, args.size_mb)
        conn = f'endpoint = "{ENDPOINT}"\nsecure = false\naccess_key = "{ACCESS}"\nsecret_key = "${{BENCH_S3_SECRET}}"\n'
        config = work / "dm.toml"
        config.write_text(
            f'[storages.s3]\ntype = "s3"\n{conn}bucket = "{dm_dst}"\n'
            f'[storages.local]\ntype = "filesystem"\nroot = "{work / "backups"}"\n'
            f'[datasets.dir2s3]\nstorage = "s3"\n[[datasets.dir2s3.sources]]\nname = "tree"\ntype = "directory"\npath = "{src}"\n'
            f'[datasets.bucket2fs]\nstorage = "local"\n[[datasets.bucket2fs.sources]]\nname = "objects"\ntype = "minio"\n'
            f'{conn}bucket = "{rclone_dst}"\n'
        )
        env = {**RCLONE_ENV, "BENCH_S3_SECRET": SECRET}
        dm = [*dm_command(), "--config", str(config)]
        old_env = {}
        if args.old:
            plugin = args.old.resolve() / "plugins" / "data-manager-minio"
            old_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin), os.environ.get("PYTHONPATH")]))}
            old_config = work / "dm-old.toml"  # its own buckets and backups: the two never meet
            old_config.write_text(config.read_text().replace(f'bucket = "{dm_dst}"', f'bucket = "{dm_dst}-o"')
                                  .replace(str(work / "backups"), str(work / "backups-old")))
            client.make_bucket(f"{dm_dst}-o")
            dm_old = [*dm_command(), "--config", str(old_config)]
        run("warm page cache", f"tar -cf - -C {src} . > /dev/null", shell=True)

        upload = run("rclone copy dir -> s3", ["rclone", "copy", str(src), f"m:{rclone_dst}"], env=env, nbytes=nbytes)
        rows = [upload, run("data-manager backup dir -> s3", [*dm, "backup", "dir2s3"], env=env, nbytes=nbytes)]
        if args.old:
            rows.append(run("old data-manager backup dir -> s3", [*dm_old, "backup", "dir2s3"], env=old_env, nbytes=nbytes))
        report(f"minio dir to s3: {nbytes / 1e6:.0f} MB in {files} files", rows, baseline="rclone copy dir -> s3",
               extra={"source_bytes": nbytes, "files": files, "cpu": dict(CPU)})

        # Each contender starts with the page cache clean (an untimed sync): the 2 GB rclone leaves dirty
        # would otherwise be written back during the next run. data-manager fsyncs every volume before it
        # counts; rclone copy does not, so its copy made durable (then `sync -f`) is shown for reference.
        rounds = []
        for i in range(args.rounds):
            for d in (work / "rclone-copy", work / "rclone-durable", work / "backups", work / "backups-old"):
                shutil.rmtree(d, ignore_errors=True)
            os.sync()
            row = [run("rclone copy s3 -> dir", ["rclone", "copy", f"m:{rclone_dst}", str(work / "rclone-copy")],
                       env=env, nbytes=nbytes)]
            os.sync()
            durable = work / "rclone-durable"
            row.append(run("rclone copy s3 -> dir; sync -f", f"rclone copy m:{rclone_dst} {durable} && sync -f {durable}",
                           shell=True, env=env, nbytes=nbytes))
            os.sync()
            row.append(run("data-manager backup s3 -> fs", [*dm, "backup", "bucket2fs"], env=env, nbytes=nbytes))
            if args.old:
                os.sync()
                row.append(run("old data-manager backup s3 -> fs", [*dm_old, "backup", "bucket2fs"], env=old_env,
                               nbytes=nbytes))
            print(f"round {i + 1}: data-manager / rclone copy = {row[2].seconds / row[0].seconds:.2f}"
                  + (f", old / rclone copy = {row[3].seconds / row[0].seconds:.2f}" if args.old else ""))
            rounds.append(row)
        stored = sum(p.stat().st_size for p in (work / "backups").rglob("*") if p.is_file())
        report(f"minio bucket to fs: {nbytes / 1e6:.0f} MB in {files} objects, median of {args.rounds} rounds",
               medians(rounds), baseline="rclone copy s3 -> dir",
               extra={"source_bytes": nbytes, "stored_bytes": stored, "objects": files, "cpu": dict(CPU),
                      "rounds": [[asdict(m) for m in row] for row in rounds]})
        # Restoring writes every object back to a bucket: the upload (rclone copy dir -> s3) is its measure.
        rows = [
            upload,
            run("data-manager restore fs -> s3", [*dm, "restore", "--yes", "--set", f"objects.bucket={dm_dst}-r",
                                                   "--set", "objects.verify_first=false", "bucket2fs"],
                env=env, nbytes=nbytes),
        ]
        if args.old:
            rows.append(run("old data-manager restore fs -> s3",
                            [*dm_old, "restore", "--yes", "--set", f"objects.bucket={dm_dst}-or",
                             "--set", "objects.verify_first=false", "bucket2fs"], env=old_env, nbytes=nbytes))
        report(f"minio restore fs to bucket: {nbytes / 1e6:.0f} MB in {files} objects", rows,
               baseline="rclone copy dir -> s3", extra={"source_bytes": nbytes, "objects": files, "cpu": dict(CPU)})
        print(f"stored {stored / 1e6:.0f} MB for {nbytes / 1e6:.0f} MB of objects")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            for b in (rclone_dst, dm_dst, f"{dm_dst}-r", f"{dm_dst}-o", f"{dm_dst}-or"):
                try:
                    if not client.bucket_exists(b):
                        continue
                    keys = [DeleteObject(o.object_name) for o in client.list_objects(b, recursive=True)]
                    for i in range(0, len(keys), 1000):
                        list(client.remove_objects(b, keys[i : i + 1000]))
                    client.remove_bucket(b)
                except Exception as exc:  # noqa: BLE001 - best effort
                    print(f"cleanup of {b}: {exc}")


if __name__ == "__main__":
    main()
