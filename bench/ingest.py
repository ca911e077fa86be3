"""Ingestion benchmark (`make bench`): instances/s and MB/s through the real doors into the real pipeline.

Sets up its own PostgreSQL database (`enclave_bench`, dropped and created again each time) and Redis database
(/9, flushed), migrates it, makes a synthetic set of CT instances (512 x 512, 16-bit, Explicit VR Little Endian)
in a temporary folder and, for each scanner (the built-in one, and a real clamd when it is installed):

- C-STORE: `manage.py dicom_listener` and a `celery worker` (-c 2, queues default,ingest,maintenance); dcmtk's
  `storescu` (TCP_NODELAY=1) sends the folder in one association.
- STOW-RS: gunicorn (2 sync workers) and the same worker; `multipart/related` requests of `--stow-batch`
  instances each, from `--stow-clients` client threads.

Each run goes into a tenant of its own (fresh AE titles, modality, user and API token made through the real
services) with blob stores of its own, and is timed from the start of the sender to the last IngestItem reaching
its final state (its `updated_at`, written in the same transaction as the index). Peak memory is VmHWM from
/proc of every process started, read at the end of the run, beside the CPU time each used during the run. The run
fails unless every instance sent is stored.

Prints a table and writes var/bench/ingest-<time>.json. Every process started is stopped and the temporary data,
database and Redis database are removed at the end. Settings: portal.settings.local with DEBUG off; the
application's connections persistent as in production (portal.settings.base.APP_CONN_MAX_AGE).

    .venv/bin/python -m bench.ingest [--studies 4 --series 2 --per-series 125] [--scanner builtin|clamd|both]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PYTHON = sys.executable
GUNICORN = str(Path(PYTHON).with_name("gunicorn"))
# Overridable so that two people measuring on one machine do not drop each other's database or Redis db.
DB_NAME = os.environ.get("BENCH_DB_NAME", "enclave_bench")
PG_SERVER = "postgres://enclave@127.0.0.1:5432"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
WORKER_CONCURRENCY = 2
GUNICORN_WORKERS = 2
STARTUP_SECONDS = 60
POLL_SECONDS = 0.1
STALL_SECONDS = 60  # no item finished for this long: the worker is failing
CLAMD = shutil.which("clamd") or "/usr/sbin/clamd"
STORESCU = shutil.which("storescu") or "storescu"
MB = 1e6


class BenchError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# Processes
# ------------------------------------------------------------------------------


@dataclass
class Started:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    cpu_at_ready: dict[int, float] = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Processes:
    """Every process this benchmark starts, each in a session of its own, stopped with SIGTERM to its group."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: dict[str, Started] = {}
        self.suffix = ""  # added to log file names: one set of logs per run

    def start(self, name: str, argv: list[str], env: dict[str, str], ready: Callable[[Started], bool]) -> Started:
        path = self.folder / f"{name}{self.suffix}.log"
        with path.open("wb") as out:
            process = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        started = Started(name=name, process=process, log=path)
        self.running[name] = started
        deadline = time.monotonic() + STARTUP_SECONDS
        while not ready(started):
            if process.poll() is not None:
                raise BenchError(f"{name} exited with {process.returncode}:\n{started.output()[-4000:]}")
            if time.monotonic() > deadline:
                raise BenchError(f"{name} was not ready within {STARTUP_SECONDS} s:\n{started.output()[-4000:]}")
            time.sleep(0.1)
        started.cpu_at_ready = {pid: cpu_seconds(pid) for pid in [process.pid, *children(process.pid)]}
        return started

    def stop(self, name: str) -> None:
        started = self.running.pop(name, None)
        if started is None or started.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(started.process.pid, signal.SIGTERM)
        try:
            started.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started.process.pid, signal.SIGKILL)
            started.process.wait(timeout=10)

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a process, in MB (1e6 bytes)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) * 1024 / MB if found else None


def children(pid: int) -> list[int]:
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    return sorted(set(pids))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU time of the whole machine from /proc/stat, in clock ticks, every core summed."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


def cpu_busy_since(start: tuple[float, float]) -> float:
    """The share of the machine's CPU time (all cores) that was busy since `start`, by any process."""
    busy, total = machine_cpu()
    return round((busy - start[0]) / max(total - start[1], 1), 3)


def memory_of(started: Started) -> dict[str, Any]:
    """VmHWM of a process and of its children (a Celery pool, gunicorn's workers), and the CPU time they used
    since the process was ready."""
    pid = started.process.pid
    kids = children(pid)
    main = vm_hwm_mb(pid)
    values = [v for v in (vm_hwm_mb(kid) for kid in kids) if v is not None]
    cpu = sum(cpu_seconds(p) - started.cpu_at_ready.get(p, 0.0) for p in [pid, *kids])
    return {
        "main_mb": round(main or 0, 1),
        "children_mb": [round(v, 1) for v in values],
        "children_max_mb": round(max(values), 1) if values else None,
        "sum_mb": round((main or 0) + sum(values), 1),
        "cpu_s": round(cpu, 2),
    }


def postgres_cpu(db_name: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend connected to `db_name` (its title names the database)."""
    found: dict[int, float] = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            title = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if title.startswith("postgres: ") and f" {db_name} " in title:
                pid = int(cmdline.parent.name)
                found[pid] = cpu_seconds(pid)
    return found


def py_spy_start(processes: Processes, targets: dict[str, Started]) -> list[subprocess.Popen[bytes]]:
    """With BENCH_PY_SPY=<folder>: py-spy records each target (and its children: a Celery pool) while the run
    lasts, in py-spy's raw (collapsed stacks) format, one file per process, for step-by-step CPU per instance."""
    folder = os.environ.get("BENCH_PY_SPY", "")
    spy = Path(PYTHON).with_name("py-spy")
    if not spy.exists():  # installed elsewhere (not in the virtualenv): on the PATH
        spy = Path(shutil.which("py-spy") or spy)
    if not folder or not spy.exists():
        return []
    Path(folder).mkdir(parents=True, exist_ok=True)
    started = []
    for name, target in targets.items():
        out = Path(folder) / f"{name}{processes.suffix}.txt"
        argv = [str(spy), "record", "--pid", str(target.process.pid), "--subprocesses", "--format", "raw",
                "--rate", "250", "--output", str(out)]  # fmt: skip
        if os.environ.get("BENCH_PY_SPY_GIL"):
            # Only the thread holding the GIL: Python's own CPU, where py-spy cannot tell an idle thread (a
            # virtual machine's kernel): waits in select, sleep and queue get would otherwise count as work.
            argv.append("--gil")
        started.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # attached before the first object arrives
    return started


def py_spy_stop(started: list[subprocess.Popen[bytes]]) -> None:
    for spy in started:
        spy.send_signal(signal.SIGINT)
    for spy in started:
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()


def log_says(pattern: str, count: int = 1) -> Callable[[Started], bool]:
    return lambda started: len(re.findall(pattern, started.output())) >= count


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Database, Redis, clamd
# ------------------------------------------------------------------------------


def psql(sql: str) -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "enclave", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qtA", "-c", sql],
        cwd="/",
        check=True,
        capture_output=True,
    )


def database_reset(name: str) -> None:
    psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    psql(f"CREATE DATABASE {name} OWNER enclave")


def database_drop(name: str) -> None:
    with contextlib.suppress(subprocess.CalledProcessError):
        psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def redis_flush(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


def django_on_fresh_database(*, db_name: str, redis_url: str) -> None:
    """A benchmark's own database, dropped and created again, and its Redis database, flushed; then Django set up
    on them (from the environment already in os.environ, see `bench_environment`) and the database migrated."""
    database_reset(db_name)
    redis_flush(redis_url)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def bench_cleanup(*, db_name: str, redis_url: str, tmp: Path, keep: bool) -> None:
    """After a benchmark, its processes stopped: close Django's connections, then drop its database, flush its
    Redis database and remove `tmp`, unless `keep`."""
    from django.apps import apps

    if apps.ready:
        from django.db import connections

        connections.close_all()
    if keep:
        log(f"kept {tmp} and database {db_name}")
        return
    database_drop(db_name)
    with contextlib.suppress(Exception):
        redis_flush(redis_url)
    shutil.rmtree(tmp, ignore_errors=True)


def eicar() -> bytes:
    from studies.scanning import eicar_test_bytes

    return eicar_test_bytes()


def clamd_start(processes: Processes, env: dict[str, str]) -> str:
    """clamd with one EICAR body signature (as tests/studies/conftest.py), on a Unix socket; its address."""
    # A Unix socket path has at most 108 bytes: a short folder under /tmp.
    # mkdtemp makes a new folder only this user can enter: not the shared-/tmp race bandit's B108 is about.
    workdir = Path(tempfile.mkdtemp(prefix="ecb-", dir="/tmp"))  # nosec B108
    processes.folder.joinpath("clamd-dir").write_text(str(workdir))
    db = workdir / "db"
    db.mkdir()
    (db / "enclave-bench.ndb").write_text(f"Enclave.Bench.EICAR:0:*:{eicar().hex()}\n")
    sock = workdir / "c.sock"
    conf = workdir / "clamd.conf"
    conf.write_text(f"DatabaseDirectory {db}\nLocalSocket {sock}\nForeground yes\nStreamMaxLength 200M\n")

    def answers(_: Started) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(1)
                probe.connect(str(sock))
                probe.sendall(b"zPING\0")
                return probe.recv(16).startswith(b"PONG")
        except OSError:
            return False

    processes.start("clamd", [CLAMD, f"--config-file={conf}"], env, answers)
    return f"unix://{sock}"


# The synthetic set
# ------------------------------------------------------------------------------


def generate(folder: Path, *, studies: int, series: int, per_series: int) -> list[Path]:
    from pydicom.uid import generate_uid

    from studies.dicom.synthetic import make_instance

    folder.mkdir(parents=True)
    files = []
    for st in range(1, studies + 1):
        study_uid = generate_uid()
        for se in range(1, series + 1):
            series_uid = generate_uid()
            for i in range(1, per_series + 1):
                data = make_instance(
                    patient_id=f"BENCH{st:04d}",
                    patient_name=f"BENCH^SYNTHETIC{st}",
                    study_uid=study_uid,
                    series_uid=series_uid,
                    modality="CT",
                    rows=512,
                    columns=512,
                    bits=16,
                    series_number=se,
                    instance_number=i,
                    accession=f"BENCHACC{st:04d}",
                    study_description="Synthetic benchmark CT",
                    series_description=f"Synthetic axial {se}",
                    pixel_seed=se * 1000 + i,
                )
                path = folder / f"s{st:02d}_{se:02d}_{i:04d}.dcm"
                path.write_bytes(data)
                files.append(path)
    return files


# One run
# ------------------------------------------------------------------------------


@dataclass
class Target:
    tenant: Any
    tenant_ae: str
    device_ae: str
    token: str


def provision(tag: str) -> Target:
    """A tenant of its own for one run, through the real services: AE title, approved modality, a technologist
    with an API token."""
    from django.db import transaction

    from audit.context import audit_context
    from devices.models import Device
    from devices.services import device_register_approved_by_operator
    from tenants import services
    from tenants.models import Role, User
    from tenants.scoping import tenant_scope

    tenant_ae, device_ae = f"BENCH{tag}", f"BENCHCT{tag}"
    with audit_context(system_principal="bench/ingest.py"), transaction.atomic():
        tenant = services.tenant_create(slug=f"bench{tag}", name=f"Benchmark {tag}", ae_title=tenant_ae)
        with tenant_scope(tenant):
            device_register_approved_by_operator(
                kind=Device.Kind.MODALITY,
                name="Benchmark CT",
                ae_title=device_ae,
                host="127.0.0.1",
                reason="benchmark",
            )
        user = User(username=f"bench{tag}-technologist", email=f"bench{tag}@bench.enclave.invalid")
        user.set_unusable_password()
        user.save()
        services.membership_grant_by_operator(tenant=tenant, user=user, role=Role.TECHNOLOGIST, reason="benchmark")
        with tenant_scope(tenant):
            _, raw = services.api_token_create(actor=user, tenant=tenant, name="benchmark")
    return Target(tenant=tenant, tenant_ae=tenant_ae, device_ae=device_ae, token=raw)


@dataclass
class RunResult:
    door: str
    scanner: str
    instances: int
    megabytes: float
    seconds_total: float = 0.0
    seconds_received: float = 0.0
    seconds_client: float = 0.0
    states: dict[str, int] = field(default_factory=dict)
    stored_instances: int = 0
    studies: int = 0
    series: int = 0
    pipeline: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    task_results: int = 0
    rows_per_instance: dict[str, float] = field(default_factory=dict)
    machine_cpu_busy: float = 0.0
    other_cpu_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ok: bool = False

    def rate(self, seconds: float) -> tuple[float, float]:
        return (self.instances / seconds, self.megabytes / seconds) if seconds > 0 else (0.0, 0.0)

    def as_dict(self) -> dict[str, Any]:
        total, received = self.rate(self.seconds_total), self.rate(self.seconds_received)
        return {
            "door": self.door,
            "scanner": self.scanner,
            "instances": self.instances,
            "megabytes": round(self.megabytes, 1),
            "seconds_first_byte_to_last_indexed": round(self.seconds_total, 2),
            "instances_per_second": round(total[0], 1),
            "megabytes_per_second": round(total[1], 1),
            "seconds_first_byte_to_last_received": round(self.seconds_received, 2),
            "received_instances_per_second": round(received[0], 1),
            "received_megabytes_per_second": round(received[1], 1),
            "seconds_client_done": round(self.seconds_client, 2),
            "states": self.states,
            "stored_instances": self.stored_instances,
            "studies": self.studies,
            "series": self.series,
            "pipeline": self.pipeline,
            "machine_cpu_busy": self.machine_cpu_busy,
            "processes": self.memory,
            "other_cpu_s": self.other_cpu_s,
            "task_results": self.task_results,
            "rows_per_instance": self.rows_per_instance,
            "notes": self.notes,
            "ok": self.ok,
        }


def written_rows(target: Target) -> dict[str, int]:
    """Rows of the records every instance leaves behind: django-auditlog's field-change log (every model, one
    table for the whole database, which only this benchmark uses) and the tenant's DICOM audit events."""
    from auditlog.models import LogEntry

    from audit.models import AuditEvent
    from tenants.scoping import tenant_scope

    with tenant_scope(target.tenant):
        events = AuditEvent.objects.count()
    return {"auditlog_entries": LogEntry.objects.count(), "audit_events": events}


def wait_final(target: Target, expected: int, timeout: float) -> None:
    """Poll the database until `expected` items exist and every one is in a final state."""
    from django.db.models import Count

    from studies.models import IngestItem
    from tenants.scoping import tenant_scope

    deadline = time.monotonic() + timeout
    progress, progress_at = -1, time.monotonic()
    with tenant_scope(target.tenant):
        while True:
            counts = dict(IngestItem.objects.values_list("state").annotate(n=Count("id")).order_by())
            total = sum(counts.values())
            final = sum(counts.get(state, 0) for state in IngestItem.FINAL_STATES)
            if total >= expected and final == total:
                return
            now = time.monotonic()
            if final != progress:
                progress, progress_at = final, now
            if now > deadline or now - progress_at > STALL_SECONDS:
                raise BenchError(f"not all items final (see the worker's log): {counts}")
            time.sleep(POLL_SECONDS)


# kombu's Redis transport: a queue is a list named after it, one more list per priority step above 0
# (`<queue>\x06\x16<step>`), and a message a worker has taken but not acknowledged (reserved, or running: the tasks
# ack late) waits in the `unacked` hash until it is acknowledged.
KOMBU_PRIORITY_SEPARATOR = "\x06\x16"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
KOMBU_UNACKED_KEY = "unacked"
DRAIN_SETTLE_SECONDS = 1.0


def celery_queues() -> list[str]:
    """The Celery queues of this configuration (settings: the default queue and every routed one)."""
    from django.conf import settings

    names = {settings.CELERY_TASK_DEFAULT_QUEUE}
    names |= {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    return sorted(names)


def celery_backlog(client: Any, queues: list[str], unacked_key: str = KOMBU_UNACKED_KEY) -> dict[str, int]:
    """Messages waiting in each queue (every priority step counted) and taken but not acknowledged, read from
    the broker in one round trip; only the non-zero counts."""
    keys = [q if not step else f"{q}{KOMBU_PRIORITY_SEPARATOR}{step}" for q in queues for step in KOMBU_PRIORITY_STEPS]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.llen(key)
    pipe.hlen(unacked_key)
    *lengths, unacked = pipe.execute()
    counts: dict[str, int] = {}
    for key, length in zip(keys, lengths, strict=True):
        if length:
            queue = key.split(KOMBU_PRIORITY_SEPARATOR)[0]
            counts[queue] = counts.get(queue, 0) + int(length)
    if unacked:
        counts[unacked_key] = int(unacked)
    return counts


def celery_drained(
    redis_url: str, queues: list[str], *, timeout: float, unacked_key: str = KOMBU_UNACKED_KEY,
    settle: float = DRAIN_SETTLE_SECONDS, poll: float = POLL_SECONDS,
) -> dict[str, Any]:  # fmt: skip
    """Wait until no Celery task is queued, reserved or running: every queue empty and nothing unacknowledged,
    for `settle` seconds in a row (a worker pops a message before it notes it as unacknowledged: an instant in
    which it is in neither). Reads the broker (LLEN, HLEN), not `celery inspect` (a broadcast and a second's wait
    for the replies). Returns the seconds waited, whether it drained within `timeout`, what was waiting at the
    start and, when it did not drain, what was still waiting at the end."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        t0 = time.monotonic()
        first = now = celery_backlog(client, queues, unacked_key)
        empty_since = t0 if not now else None
        while True:
            at = time.monotonic()
            if empty_since is not None and at - empty_since >= settle:
                return {"seconds": round(at - t0, 1), "drained": True, "waiting_at_start": first}
            if at - t0 > timeout:
                return {"seconds": round(at - t0, 1), "drained": False, "waiting_at_start": first,
                        "waiting_at_end": now}  # fmt: skip
            time.sleep(poll)
            now = celery_backlog(client, queues, unacked_key)
            if now:
                empty_since = None
            elif empty_since is None:
                empty_since = time.monotonic()
    finally:
        client.close()


def measure(result: RunResult, target: Target, t0: float) -> None:
    """Timings from the database (the moments each item was received, claimed, finished and last written) and
    the correctness check."""
    from django.db.models import Count
    from django_celery_results.models import TaskResult

    from studies.models import IngestItem, Instance, Series, Study
    from tenants.scoping import tenant_scope

    with tenant_scope(target.tenant):
        rows = list(IngestItem.objects.values_list("state", "created_at", "claimed_at", "finished_at", "updated_at"))
        result.states = dict(IngestItem.objects.values_list("state").annotate(n=Count("id")).order_by())
        result.stored_instances = Instance.objects.count()
        result.studies = Study.objects.count()
        result.series = Series.objects.count()
    created = [r[1].timestamp() for r in rows]
    result.seconds_received = max(created) - t0
    result.seconds_total = max(r[4].timestamp() for r in rows) - t0
    waits = [r[2].timestamp() - r[1].timestamp() for r in rows if r[2]]
    work = [r[3].timestamp() - r[2].timestamp() for r in rows if r[2] and r[3]]
    if work:
        result.pipeline = {
            "first_received_after_s": round(min(created) - t0, 3),
            "queue_wait_s": _summary(waits),
            "processing_s": _summary(work),
            # The worker's capacity if it did nothing but ingest: processes / mean time per item.
            "worker_capacity_instances_per_second": round(WORKER_CONCURRENCY / statistics.fmean(work), 1),
        }
    # Celery results (no task names without result_extended): ingest tasks plus thumbnail tasks.
    result.task_results = TaskResult.objects.count()
    TaskResult.objects.all().delete()  # counted per run
    stored = result.states.get(IngestItem.State.STORED, 0)
    result.ok = stored == result.instances == result.stored_instances == len(rows)


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "mean": round(statistics.fmean(ordered), 4),
        "p50": round(ordered[len(ordered) // 2], 4),
        "p95": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 4),
        "max": round(ordered[-1], 4),
    }


def in_process_environment(*, prefix: str, db_name: str, redis_url: str, batch: int) -> Path:
    """A temporary folder, and this process's environment made a benchmark's (`bench_environment`, folder stores,
    the built-in scanner, INGEST_BATCH_SIZE = `batch`), for a benchmark that runs the pipeline in its own process
    (bench/small_cost.py, bench/worker_cost.py); Django is set up after it (`django_on_fresh_database`)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    env = bench_environment(
        db_url=f"{PG_SERVER}/{db_name}", redis_url=redis_url, var_dir=tmp / "var", log_level="WARNING"
    )
    env = stores_env(env, tmp / "stores", "")
    env["INGEST_BATCH_SIZE"] = str(batch)
    os.environ.clear()
    os.environ.update(env)
    return tmp


def stores_env(base: dict[str, str], folder: Path, clamd: str) -> dict[str, str]:
    env = dict(base)
    for name, sub in (("BLOB_STORE", "blobs"), ("REPLICA_STORE", "replica"), ("QUARANTINE_STORE", "quarantine")):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        env[name] = f"file://{folder / sub}"
    env["CLAMD_ADDRESS"] = clamd
    return env


def worker_start(
    processes: Processes, env: dict[str, str], *, name: str = "worker", queues: str = "default,ingest,maintenance",
    concurrency: int = WORKER_CONCURRENCY,
) -> Started:  # fmt: skip
    """A Celery worker of `concurrency` processes on `queues` (by default one worker for every queue)."""
    argv = [
        PYTHON,
        "-m",
        "celery",
        "-A",
        "portal",
        "worker",
        "-l",
        "info",
        "-c",
        str(concurrency),
        "-Q",
        queues,
        "-n",
        f"bench-{name}@localhost",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    return processes.start(name, argv, env, log_says(r" ready\."))


def run_cstore(
    processes: Processes, env: dict[str, str], target: Target, folder: Path, result: RunResult, timeout: float
) -> None:
    worker = worker_start(processes, env)
    listener = processes.start(
        "listener",
        [PYTHON, "manage.py", "dicom_listener", "--host", "127.0.0.1", "--port", "0"],
        env,
        log_says(r"DICOM listener on 127\.0\.0\.1:\d+"),
    )
    port = int(re.findall(r"DICOM listener on 127\.0\.0\.1:(\d+)", listener.output())[0])
    argv = [STORESCU, "-aet", target.device_ae, "-aec", target.tenant_ae, "+sd", "127.0.0.1", str(port), str(folder)]
    sender_log = processes.folder / f"storescu{processes.suffix}.log"
    profilers = py_spy_start(processes, {"listener": listener, "worker": worker})
    pg0 = postgres_cpu(DB_NAME)
    pg_last = dict(pg0)  # every backend's CPU as last seen: a backend that closes during the run still counts
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.2):
            pg_last.update(postgres_cpu(DB_NAME))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu0 = machine_cpu()
    t0 = time.time()
    with sender_log.open("wb") as out:
        sender = subprocess.Popen(argv, env={**os.environ, "TCP_NODELAY": "1"}, stdout=out, stderr=subprocess.STDOUT)
        sender_cpu = 0.0
        while sender.poll() is None:  # its CPU time, read while it still exists
            sender_cpu = cpu_seconds(sender.pid) or sender_cpu
            time.sleep(POLL_SECONDS)
    result.seconds_client = time.time() - t0
    if sender.returncode != 0:
        raise BenchError(f"storescu exited with {sender.returncode}:\n{sender_log.read_text(errors='replace')[-2000:]}")
    wait_final(target, result.instances, timeout)
    result.machine_cpu_busy = cpu_busy_since(cpu0)
    sampling.set()
    sampler.join()
    pg_last.update(postgres_cpu(DB_NAME))
    result.other_cpu_s = {
        "postgres_backends": round(sum(cpu - pg0.get(pid, 0.0) for pid, cpu in pg_last.items()), 2),
        "storescu_at_least": round(sender_cpu, 2),
    }
    py_spy_stop(profilers)
    result.memory = {"listener": memory_of(listener), "worker": memory_of(worker)}
    measure(result, target, t0)


def multipart(paths: list[Path], boundary: str) -> bytes:
    chunks = []
    for path in paths:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), path.read_bytes(), b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


def run_stow(
    processes: Processes,
    env: dict[str, str],
    target: Target,
    files: list[Path],
    result: RunResult,
    *,
    batch: int,
    clients: int,
    timeout: float,
) -> None:
    import requests

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**env, "PORTAL_BASE_URL": base}
    worker = worker_start(processes, env)
    url = f"{base}/dicomweb/{target.tenant.slug}/studies"
    auth = {"Authorization": f"Bearer {target.token}"}

    def answers(_: Started) -> bool:
        try:
            requests.get(url, headers=auth, timeout=2)
        except requests.RequestException:
            return False
        return True

    web = processes.start(
        "gunicorn",
        [
            GUNICORN,
            "portal.wsgi:application",
            "-w",
            str(GUNICORN_WORKERS),
            "-b",
            f"127.0.0.1:{port}",
            "--timeout",
            "300",
            "--access-logfile",
            "-",
        ],
        env,
        answers,
    )
    for _ in range(2 * GUNICORN_WORKERS):  # both workers have loaded the application
        requests.get(url, headers=auth, timeout=30)
    local = threading.local()
    statuses: list[int] = []
    failed: list[str] = []

    def send(paths: list[Path]) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        boundary = uuid.uuid4().hex
        response = session.post(
            url,
            data=multipart(paths, boundary),
            headers={
                **auth,
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
            timeout=600,
        )
        statuses.append(response.status_code)
        if response.status_code not in (200, 202):
            failed.append(f"HTTP {response.status_code}: {response.text[:300]}")
        elif "00081198" in response.json():
            failed.append(f"failed instances in HTTP {response.status_code}")

    batches = [files[i : i + batch] for i in range(0, len(files), batch)]
    cpu0 = machine_cpu()
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(send, batches))
    result.seconds_client = time.time() - t0
    wait_final(target, result.instances, timeout)
    result.machine_cpu_busy = cpu_busy_since(cpu0)
    result.memory = {"gunicorn": memory_of(web), "worker": memory_of(worker)}
    counts = {status: statuses.count(status) for status in sorted(set(statuses))}
    result.notes.append(f"HTTP statuses: {counts}")
    result.notes += [failure[:300] for failure in failed[:3]]
    measure(result, target, t0)
    result.ok = result.ok and not failed


# Main
# ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    from django.db import connection

    def first(pattern: str, path: str) -> str:
        with contextlib.suppress(OSError):
            found = re.search(pattern, Path(path).read_text(), re.MULTILINE)
            if found:
                return found.group(1).strip()
        return ""

    def command(*argv: str) -> str:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(argv, capture_output=True, text=True, check=True)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        return ""

    import redis

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg_version = cursor.fetchone()[0]
    return {
        "nproc": os.cpu_count(),
        "cpu": first(r"^model name\s*:(.*)$", "/proc/cpuinfo"),
        "ram_gb": round(int(first(r"^MemTotal:\s+(\d+) kB", "/proc/meminfo") or 0) * 1024 / 1e9, 1),
        "debian": first(r"(.*)", "/etc/debian_version"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "redis": redis.Redis.from_url(REDIS_URL).info("server")["redis_version"],
        "dcmtk": command(STORESCU, "--version").strip("$ "),
        "clamd": command(CLAMD, "--version") if Path(CLAMD).exists() else "",
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
    }


def print_table(results: list[RunResult]) -> None:
    """One line per run. Peak MB and CPU s: the door (the listener, or the largest gunicorn worker and all of
    gunicorn's CPU) and the Celery worker (all its processes, and its largest pool process)."""
    head = (
        f"{'door':<7}{'scanner':<8}{'n':>5}{'MB':>7}{'total s':>8}{'inst/s':>7}{'MB/s':>6}{'recv s':>7}"
        f"{'recv/s':>7}{'proc ms':>8}{'busy':>6}{'door MB':>8}{'worker MB':>12}{'CPU s door/worker':>19}  ok"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        total, received = r.rate(r.seconds_total), r.rate(r.seconds_received)
        door = r.memory.get("listener") or r.memory.get("gunicorn") or {}
        door_peak = door.get("main_mb") if "listener" in r.memory else door.get("children_max_mb")
        worker = r.memory.get("worker", {})
        proc_ms = r.pipeline.get("processing_s", {}).get("mean", 0) * 1000
        worker_mb = f"{worker.get('sum_mb')}/{worker.get('children_max_mb')}"
        cpu = f"{door.get('cpu_s')}/{worker.get('cpu_s')}"
        print(
            f"{r.door:<7}{r.scanner:<8}{r.instances:>5}{r.megabytes:>7.1f}{r.seconds_total:>8.1f}{total[0]:>7.1f}"
            f"{total[1]:>6.1f}{r.seconds_received:>7.1f}{received[0]:>7.1f}{proc_ms:>8.0f}"
            f"{r.machine_cpu_busy:>6.0%}{door_peak!s:>8}{worker_mb:>12}{cpu:>19}  {'yes' if r.ok else 'NO'}"
        )


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--series", type=int, default=2, help="series per study")
    parser.add_argument("--per-series", type=int, default=125, help="instances per series")
    parser.add_argument("--doors", default="cstore,stow", help="cstore, stow or both (comma-separated)")
    parser.add_argument(
        "--scanner", choices=["builtin", "clamd", "both"], default="both", help="both: clamd too when it is installed"
    )
    parser.add_argument("--stow-batch", type=int, default=50, help="instances per STOW-RS request")
    parser.add_argument("--stow-clients", type=int, default=2, help="STOW-RS requests in flight")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the last item of a run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and database")
    return parser.parse_args()


def bench_environment(*, db_url: str, redis_url: str, var_dir: Path, log_level: str = "INFO") -> dict[str, str]:
    """The environment of a benchmark and the processes it starts: production-like local settings (DEBUG off,
    persistent connections as the settings make them, fresh secrets) on the benchmark's own database and Redis
    database, the built-in scanner unless a run sets CLAMD_ADDRESS, and none of the test suite's switches."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "portal.settings.local",
        "DJANGO_DEBUG": "false",
        "ENCLAVE_VAR_DIR": str(var_dir),
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": secrets.token_urlsafe(50),
        "MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "THROTTLE_USER": "100000/min",
        "CLAMD_ADDRESS": "",
        "LOG_LEVEL": log_level,
    }
    for key in (
        "CONN_MAX_AGE",  # the settings' own (APP_CONN_MAX_AGE), as `make run` and production have it
        "CELERY_TASK_ALWAYS_EAGER",
        "CELERY_TASK_DEFAULT_QUEUE",
        "CELERY_SINGLE_QUEUE",
        "ENCLAVE_TEST_STORE_ROOT",
    ):
        env.pop(key, None)
    return env


def main() -> int:
    args = arguments()
    doors = [d.strip() for d in args.doors.split(",") if d.strip()]
    if unknown := set(doors) - {"cstore", "stow"}:
        raise SystemExit(f"unknown door(s): {', '.join(sorted(unknown))}")
    scanners = ["builtin", "clamd"] if args.scanner == "both" else [args.scanner]
    if "clamd" in scanners and not Path(CLAMD).exists():
        if args.scanner == "clamd":
            raise SystemExit(f"{CLAMD} is missing (apt-get install clamav-daemon)")
        log(f"{CLAMD} is missing: the built-in scanner only")
        scanners = ["builtin"]
    if "cstore" in doors and not shutil.which(STORESCU):
        raise SystemExit("storescu is missing (apt-get install dcmtk)")
    count = args.studies * args.series * args.per_series
    needed = count * 530_000 * (1 + 2 + 1)  # the set; blobs and replica of one run; headroom
    tmp = Path(tempfile.mkdtemp(prefix="enclave-bench-"))
    if shutil.disk_usage(tmp).free < needed:
        shutil.rmtree(tmp)
        raise SystemExit(f"not enough free disk under {tmp.parent}: {needed / 1e9:.1f} GB needed")
    log(f"load average before: {os.getloadavg()}; working in {tmp}")

    base_env = bench_environment(db_url=f"{PG_SERVER}/{DB_NAME}", redis_url=REDIS_URL, var_dir=tmp / "var")
    base_env = stores_env(base_env, tmp / "stores-setup", "")
    os.environ.clear()
    os.environ.update(base_env)

    processes = Processes(tmp)
    results: list[RunResult] = []
    try:
        django_on_fresh_database(db_name=DB_NAME, redis_url=REDIS_URL)
        info = machine()
        log(f"machine: {info}")

        started = time.monotonic()
        files = generate(tmp / "dicom", studies=args.studies, series=args.series, per_series=args.per_series)
        megabytes = sum(p.stat().st_size for p in files) / MB
        log(f"generated {len(files)} instances, {megabytes:.1f} MB, in {time.monotonic() - started:.1f} s")

        clamd_address = clamd_start(processes, base_env) if "clamd" in scanners else ""
        runs = 0
        for scanner in scanners:
            for door in doors:
                runs += 1
                tag = str(runs)
                target = provision(tag)
                rows_before = written_rows(target)
                env = stores_env(base_env, tmp / f"run-{tag}", clamd_address if scanner == "clamd" else "")
                result = RunResult(door=door, scanner=scanner, instances=len(files), megabytes=megabytes)
                log(f"run {tag}: {door} with the {scanner} scanner")
                processes.suffix = f"-{tag}"
                if "clamd" in processes.running:  # its CPU time per run; its peak is over its whole life
                    clamd = processes.running["clamd"]
                    clamd.cpu_at_ready = {clamd.process.pid: cpu_seconds(clamd.process.pid)}
                try:
                    if door == "cstore":
                        run_cstore(processes, env, target, tmp / "dicom", result, args.timeout)
                    else:
                        run_stow(
                            processes,
                            env,
                            target,
                            files,
                            result,
                            batch=args.stow_batch,
                            clients=args.stow_clients,
                            timeout=args.timeout,
                        )
                    if "clamd" in processes.running:
                        result.memory["clamd"] = memory_of(processes.running["clamd"])
                    after = written_rows(target)
                    result.rows_per_instance = {
                        name: round((after[name] - rows_before[name]) / result.instances, 2) for name in after
                    }
                finally:
                    for name in ("listener", "gunicorn", "worker"):
                        processes.stop(name)
                    if not args.keep:
                        shutil.rmtree(tmp / f"run-{tag}", ignore_errors=True)
                results.append(result)
                log(
                    f"run {tag}: {result.seconds_total:.2f} s, {result.rate(result.seconds_total)[0]:.1f} inst/s, "
                    f"ok={result.ok} {result.states} {result.notes}"
                )

        print()
        print_table(results)
        out = ROOT / "var" / "bench"
        out.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        path = out / f"ingest-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
        path.write_text(
            json.dumps(
                {
                    "date": now.isoformat(timespec="seconds"),
                    "command": " ".join([Path(PYTHON).name, "-m", "bench.ingest", *sys.argv[1:]]),
                    "machine": info,
                    "load_average_after": [round(v, 2) for v in os.getloadavg()],
                    "set": {
                        "instances": len(files),
                        "megabytes": round(megabytes, 1),
                        "rows": 512,
                        "columns": 512,
                        "bits": 16,
                        "transfer_syntax": "Explicit VR Little Endian",
                        "studies": args.studies,
                        "series_per_study": args.series,
                    },
                    "settings": {
                        "worker_concurrency": WORKER_CONCURRENCY,
                        "gunicorn_workers": GUNICORN_WORKERS,
                        "stow_batch": args.stow_batch,
                        "stow_clients": args.stow_clients,
                        "conn_max_age": 60,
                        "debug": False,
                    },
                    "runs": [r.as_dict() for r in results],
                },
                indent=2,
            )
        )
        print(f"\nWritten: {path.relative_to(ROOT)}")
        return 0 if results and all(r.ok for r in results) else 1
    finally:
        processes.stop_all()
        clamd_dir = tmp / "clamd-dir"
        if clamd_dir.exists():
            shutil.rmtree(clamd_dir.read_text(), ignore_errors=True)
        bench_cleanup(db_name=DB_NAME, redis_url=REDIS_URL, tmp=tmp, keep=args.keep)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM ends the benchmark like Ctrl-C: through the `finally` that stops everything."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    with _signals_raise():
        sys.exit(main())
