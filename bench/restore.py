"""Restore benchmark: `manage.py restore_blobs --from-replica` throughput (GB per minute), on folders and on S3.

Sets up its own PostgreSQL database (`enclave_bench_restore`, dropped and created again each run) and Redis
database (/11, flushed), migrates it and makes one tenant. For each store kind (`--stores fs,s3`):

- builds a synthetic archive of `--size-gb` (default 0.05; the issue's figure is `--size-gb 10`) of encrypted
  blobs of `--blob-mb` each (default 0.5 MB, about a CT slice), incompressible random bytes, written by the real
  `blob_write` (envelope encryption, primary and replica), `--study-blobs` to a study (default 200: one study key
  and its two key files per 200 blobs, as ingest makes them);
- deletes the primary store entirely (the folder removed, or every object of the bucket);
- runs `restore_blobs --from-replica --tenant <slug>` in this process, timed: every replica copy is decrypted and
  its SHA-256 checked before it is written;
- checks afterwards that every blob's primary copy decrypts to its stored hash (not timed);
- with `--drill`: takes a database backup (`database_backup`, timed) and runs the restore drill
  (`restore_drill_run`: the backup restored into a scratch database and every file of the replica store copied
  to a scratch folder, timed as its recovery time, then the row counts, a sample of blobs decrypted end to end
  and the audit chains checked), timed as a whole too.

S3 is moto's server mode in its own process on a loopback port (objects spill to files under the benchmark's
temporary folder, so a 10 GB archive does not sit in memory), reached through django-storages as in production
(settings' `blob_store`, server-side encryption AES256 requested on every object). It measures the client side
(our code, boto3, HTTP on loopback), not a real object store's network.

Prints the figures and writes var/bench/restore-<time>.json. Everything is removed at the end unless `--keep`.

    .venv/bin/python -m bench.restore [--size-gb 0.05] [--blob-mb 0.5] [--stores fs,s3] [--drill] [--keep]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402  (after the sys.path line, for `python bench/restore.py`)
    PG_SERVER,
    PYTHON,
    BenchError,
    bench_cleanup,
    bench_environment,
    django_on_fresh_database,
    free_port,
    log,
    machine,
    stores_env,
)

DB_NAME = "enclave_bench_restore"
REDIS_URL = "redis://127.0.0.1:6379/11"
TENANT_SLUG = "benchr"
GB = 1024**3
S3_KEYS = {"BLOB_S3_ACCESS_KEY_ID": "bench", "BLOB_S3_SECRET_ACCESS_KEY": "bench", "BLOB_S3_REGION": "us-east-1"}


def moto_start(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    spill = tmp / "moto"
    spill.mkdir()
    env = {**os.environ, "TMPDIR": str(spill), "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": "4096"}
    process = subprocess.Popen(
        [PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError("moto_server exited at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise BenchError("moto_server did not start")


def s3_env(endpoint: str, tag: str) -> dict[str, str]:
    """The environment of an S3 run: fresh buckets on the local server, named by BLOB_STORE and friends exactly as
    a deployment names them (portal.settings' `blob_store` reads them when the child process starts)."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_KEYS["BLOB_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["BLOB_S3_SECRET_ACCESS_KEY"],
        region_name=S3_KEYS["BLOB_S3_REGION"],
    )
    env = {**S3_KEYS, "BLOB_S3_ENDPOINT_URL": endpoint, "BLOB_S3_SSE": "AES256"}
    for name, store in (("BLOB_STORE", "blobs"), ("REPLICA_STORE", "replica"), ("QUARANTINE_STORE", "quarantine")):
        client.create_bucket(Bucket=f"bench-{store}-{tag}")
        env[name] = f"s3://bench-{store}-{tag}/archive"
    return env


def provision(n: int) -> Any:
    """A fresh tenant per run (one archive per store kind), through the real service."""
    from django.db import transaction

    from audit.context import audit_context
    from tenants import services

    with audit_context(system_principal="bench/restore.py"), transaction.atomic():
        return services.tenant_create(slug=f"{TENANT_SLUG}{n}", name=f"Restore benchmark {n}", ae_title=f"BENCHR{n}")


def archive_build(tenant: Any, *, size_gb: float, blob_mb: float, study_blobs: int) -> dict[str, Any]:
    from django.db import transaction

    from studies.models import Blob
    from studies.storage.blobs import blob_write
    from tenants.scoping import tenant_scope

    blob_bytes = int(blob_mb * 1024**2)
    count = max(1, int(size_gb * GB // blob_bytes))
    started = time.monotonic()
    with tenant_scope(tenant):
        for n in range(count):
            with transaction.atomic():
                study = f"1.2.826.0.1.3680043.8.498.9{n // study_blobs}"
                blob_write(kind=Blob.Kind.INSTANCE, data=os.urandom(blob_bytes), study_instance_uid=study)
            if n and n % 1000 == 0:
                log(f"  {n}/{count} blobs written")
    return {
        "blobs": count,
        "studies": (count + study_blobs - 1) // study_blobs,
        "plaintext_gb": round(count * blob_bytes / GB, 3),
        "build_seconds": time.monotonic() - started,
    }


def primary_wipe() -> None:
    from django.core.files.storage import FileSystemStorage, storages

    storage = storages["blobs"]
    if isinstance(storage, FileSystemStorage):
        shutil.rmtree(storage.location)
    else:
        storage.bucket.objects.all().delete()


def restore_and_check(tenant: Any) -> dict[str, Any]:
    from django.core.management import call_command

    from studies.models import Blob
    from studies.storage.blobs import PRIMARY, blob_data_key, blob_sealed_check, blob_sealed_read
    from tenants.scoping import tenant_scope

    out = io.StringIO()
    started = time.monotonic()
    call_command("restore_blobs", "--from-replica", "--tenant", tenant.slug, stdout=out)
    seconds = time.monotonic() - started
    line = next(line for line in out.getvalue().splitlines() if line.startswith(f"tenant {tenant.slug}:"))
    with tenant_scope(tenant):
        checked, written = 0, 0
        keys: dict = {}
        for blob in Blob.objects.order_by("pk").iterator(chunk_size=1000):
            sealed = blob_sealed_read(store=PRIMARY, name=blob.storage_name)
            blob_sealed_check(blob=blob, sealed=sealed, data_key=blob_data_key(blob=blob, tenant_keys=keys))
            checked += 1
            written += len(sealed)
    return {
        "seconds": round(seconds, 2),
        "ciphertext_gb": round(written / GB, 3),
        "gb_per_minute": round((written / GB) / (seconds / 60), 2),
        "blobs_verified_after": checked,
        "command_output": line,
    }


def drill_run() -> dict[str, Any]:
    """A database backup, then the restore drill on it, both timed (the drill's own recovery time is the restore
    of the database and the copy of the replica store; its checks come after)."""
    from studies.services.backups import database_backup, restore_drill_run

    started = time.monotonic()
    manifest = database_backup()
    backup_seconds = time.monotonic() - started
    started = time.monotonic()
    drill = restore_drill_run()
    drill_seconds = time.monotonic() - started
    return {
        "backup_seconds": round(backup_seconds, 2),
        "backup_bytes": manifest.size,
        "drill_seconds": round(drill_seconds, 2),
        "drill_recovery_seconds": round(drill.recovery_seconds or 0, 2),
        "drill_bytes_restored": drill.bytes_restored,
        "drill_status": drill.status,
        "drill_problems": drill.problems,
        "drill_blob_files": drill.checks.get("blob_files"),
        "drill_blobs_sampled": drill.checks.get("blobs_sampled"),
        "drill_blobs_failed": drill.checks.get("blobs_failed"),
    }


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=0.05, help="plaintext size of the synthetic archive")
    parser.add_argument("--blob-mb", type=float, default=0.5, help="size of each blob")
    parser.add_argument("--stores", default="fs,s3", help="fs, s3 or both (comma-separated)")
    parser.add_argument("--study-blobs", type=int, default=200, help="blobs per study (one study key each)")
    parser.add_argument("--drill", action="store_true", help="also time a database backup and the restore drill")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and database")
    parser.add_argument("--child", metavar="N", type=int, help=argparse.SUPPRESS)  # one run, stores from the env
    parser.add_argument("--result", metavar="PATH", help=argparse.SUPPRESS)
    return parser.parse_args()


def child(args: argparse.Namespace) -> int:
    """One run in a process of its own, so that its stores come from the environment as in a deployment."""
    import django

    django.setup()
    tenant = provision(args.child)
    log(f"building a {args.size_gb} GB archive of {args.blob_mb} MB blobs")
    built = archive_build(tenant, size_gb=args.size_gb, blob_mb=args.blob_mb, study_blobs=args.study_blobs)
    log(f"built in {built['build_seconds']:.0f} s; load average {[round(v, 2) for v in os.getloadavg()]}")
    primary_wipe()
    log("primary store deleted; restoring from the replica")
    measured = restore_and_check(tenant)
    log(measured["command_output"])
    measured["load_average_after_restore"] = [round(v, 2) for v in os.getloadavg()]
    if args.drill:
        log("database backup and restore drill")
        measured |= drill_run()
        measured["load_average_after_drill"] = [round(v, 2) for v in os.getloadavg()]
        log(f"drill {measured['drill_status']} in {measured['drill_seconds']} s "
            f"(recovery {measured['drill_recovery_seconds']} s)")  # fmt: skip
    Path(args.result).write_text(json.dumps({**built, **measured}))
    return 0


def main() -> int:
    args = arguments()
    if args.child is not None:
        return child(args)
    tmp = Path(tempfile.mkdtemp(prefix="enclave-bench-restore-"))
    load_before = [round(v, 2) for v in os.getloadavg()]
    log(f"load average before: {load_before}; working in {tmp}")
    env = bench_environment(
        db_url=f"{PG_SERVER}/{DB_NAME}", redis_url=REDIS_URL, var_dir=tmp / "var", log_level="WARNING"
    )
    os.environ.clear()
    os.environ.update(env)
    moto = None
    results = []
    try:
        django_on_fresh_database(db_name=DB_NAME, redis_url=REDIS_URL)
        info = machine()
        info["load_average_before"] = load_before
        for n, kind in enumerate(k.strip() for k in args.stores.split(",") if k.strip()):
            if kind == "fs":
                run_env = stores_env(env, tmp / f"stores-{n}", "")
            elif kind == "s3":
                if moto is None:
                    moto, endpoint = moto_start(tmp)
                run_env = {**env, **s3_env(endpoint, str(n))}
            else:
                raise BenchError(f"unknown store kind {kind!r}")
            result = tmp / f"result-{n}.json"
            argv = [PYTHON, "-m", "bench.restore", "--child", str(n), "--result", str(result)]
            argv += [
                "--size-gb",
                str(args.size_gb),
                "--blob-mb",
                str(args.blob_mb),
                "--study-blobs",
                str(args.study_blobs),
            ]
            argv += ["--drill"] if args.drill else []
            log(f"{kind}: run {n}")
            subprocess.run(argv, env=run_env, cwd=ROOT, check=True)
            results.append({"stores": kind, **json.loads(result.read_text())})
        print()
        print(f"{'stores':<7}{'blobs':>8}{'GB':>9}{'restore s':>11}{'GB/min':>9}{'verified':>10}")
        for r in results:
            print(
                f"{r['stores']:<7}{r['blobs']:>8}{r['ciphertext_gb']:>9.3f}{r['seconds']:>11.2f}"
                f"{r['gb_per_minute']:>9.2f}{r['blobs_verified_after']:>10}"
            )
            if "drill_seconds" in r:
                print(f"  drill {r['drill_status']}: {r['drill_seconds']} s in all,"
                      f" recovery {r['drill_recovery_seconds']} s, {r['drill_blob_files']} files copied,"
                      f" {r['drill_blobs_sampled']} blobs sampled; backup {r['backup_seconds']} s")  # fmt: skip
        out = ROOT / "var" / "bench"
        out.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        path = out / f"restore-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
        document = {
            "date": now.isoformat(timespec="seconds"),
            "command": " ".join([Path(PYTHON).name, "-m", "bench.restore", *sys.argv[1:]]),
            "machine": info,
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "blob_mb": args.blob_mb,
            "runs": results,
        }
        path.write_text(json.dumps(document, indent=2, default=str))
        log(f"wrote {path}")
        return 0
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(timeout=30)
        bench_cleanup(db_name=DB_NAME, redis_url=REDIS_URL, tmp=tmp, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
