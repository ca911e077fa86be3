"""Enclave beside Orthanc (`make bench`): the same synthetic data, in one run, through both archives.

Orthanc comes from Debian's packages (`apt-get install orthanc orthanc-dicomweb`). The benchmark starts it with a
configuration of its own in a temporary folder (loopback ports, `DicomAet` ORTHANC, no authentication, storage
and index in the folder; every other option is the Debian package's default, read from /etc/orthanc/orthanc.json,
so `SyncStorageArea` stays on) and stops it at the end. Enclave runs as in bench/ingest.py: its own database
(`enclave_bench_vs`, dropped and created again) and Redis database (/9, flushed), `manage.py dicom_listener`, the
two Celery workers as scripts/run.sh starts them (`worker`: queue ingest, -c 2; `worker-default`: queues default
and maintenance, -c 1; `--one-worker`: the earlier runs' single worker, -c 2, on all three) and gunicorn as
scripts/run.sh starts it (portal/gunicorn_conf.py, 2 gthread workers x 8 threads, connections kept alive), with
encryption, the built-in scanner and auditing on. The per-person rate
limits are lifted (RATE_LIMITS): Orthanc has none, and one client sends more searches a minute than they allow.

Measured for both, in this order, with `TCP_NODELAY=1` for dcmtk and Orthanc. With `--order paired` (the default)
both archives are up from the start and each of Orthanc's C-STORE and STOW-RS sets runs right after Enclave's same
set, so the two figures of a ratio come from the same few minutes of a shared machine (`--order blocks`: every
Enclave phase, then every Orthanc phase, as the runs before session 6 did). The archive that is not measured idles.

- C-STORE of a set of CT instances (512 x 512, 16-bit) with dcmtk's storescu in one association, then of a second
  set (the same size, other UIDs) in four parallel associations: instances/s from the start of the senders to the
  last instance searchable. For Enclave that is the last IngestItem's final write (the transaction that indexes
  it); for Orthanc, which indexes before it answers, the moment `/statistics` counts every instance (polled every
  50 ms after the senders exit).
- STOW-RS of two more sets, `--stow-batch` instances per multipart/related request, from 1 and from 4 client
  threads (each over a keep-alive requests.Session of its own), to the last instance searchable.
- The QIDO-RS index (`--index`, 20,000 instances; `--large`: 200,000): bench/query.py's realistic index (names,
  IDs, dates over 2020-2024, modalities; 1 patient per 20 instances, 1 study per 10, 1 series per 4) written in
  bulk into an Enclave tenant of its own, then the same rows written as small Part-10 files (64 x 64, 16-bit)
  and C-STOREd into Orthanc in one association: Orthanc's "20,000 small instances" figure. `--small-cstore`
  also sends those files to Enclave's listener (slow: minutes at Enclave's present rate; `--small-cstore-count N`
  sends only the first N).
- With clamd (Debian's clamav-daemon; skipped when it is missing, or with `--no-clamd`): one more set in one
  association, the listener and the worker started again with CLAMD_ADDRESS set to bench/ingest.py's clamd (one
  signature, Unix socket). Its ratio is to Orthanc's one-association rate (Orthanc scans nothing).
- CPU per instance of every C-STORE set, from /proc/<pid>/stat (bench/profile.py): the listener, each Celery
  worker (each with its children; both workers in the total), the PostgreSQL backends of the benchmark's
  database, clamd, and redis-server (shared with everything else on the machine: shown, left out of the total);
  Orthanc's process for its sets.
- `--profile`: one more set after the others, with `py-spy record` on the listener and the ingest worker once the
  workers are idle: collapsed stacks (var/bench/profile-<time>-<process>.txt) and the top functions and the
  project's own functions step by step, in CPU ms per instance (...-top.txt).
- WADO-RS retrieval of one series (`multipart/related; type="application/dicom"`, every instance) over one
  keep-alive `requests.Session`: MB/s of the body, median of `--retrievals` timed runs after one warm-up.
- QIDO-RS over one `requests.Session`, median and p95 of `--repeat` timed requests after `--warmup`: studies by
  PatientID, series of a study and instances of a series of the small C-STORE tenant; and the issue's seven
  searches on the index (by PatientID / PatientName=MARTIN* / a one-year StudyDate / ModalitiesInStudy=CT and a
  month / all studies, limit 100 / series of a study / instances of a series), each request asking for another
  patient, study, series, year or month, the same sequence for both.
- The reads (`--reads alternating`, the default): Enclave's gunicorn and workers stay up, idle, while Orthanc
  stores its sets; then both answer the same reads taking turns request by request, the order swapped every
  round (Enclave then Orthanc, Orthanc then Enclave, ...), each over its own keep-alive session. A minute of a
  shared machine that is slower falls on both, not on one: before session 6 each server's reads ran in a block
  of their own minutes apart (`--reads sequential`), and ratios moved between runs by more than the code did.
  First, the same way, each server's lightest answer, which reads no patient data (Enclave's /health/: one
  PostgreSQL and one Redis round trip; Orthanc's /system): the floor under every read of that server when the two
  take turns, each idle while the other answers (bench.http_cost `--gap-ms` measures what idling costs a search).
- Peak resident memory (VmHWM) of the listener, the worker and gunicorn (each with its children), and Orthanc.

Each Enclave phase (a C-STORE or STOW-RS set) is followed by a wait until the workers have done every task it
left (the thumbnails of its new series, on the `default` queue; the wake-ups on `ingest`), so that no later phase
shares the cores with them: every Celery queue empty and no message taken but unacknowledged (the broker's lists
and kombu's `unacked` hash, read directly; `bench.ingest.celery_drained`), for a second in a row, at most
`--drain-timeout` seconds. Each wait, what was waiting and the CPU the processes spent in it (outside the phase's
own figures, which end at its last instance searchable) are logged, written to the JSON (`drain` of each phase)
and summed up in the notes; a wait that timed out is named there and the run goes on.

Prints a table (ratios Enclave / Orthanc: for rates higher is better, for times and CPU lower; a search whose
p95 is more than twice its median marked "(!)") and the same as markdown for docs/BENCHMARKS.md, with the machine,
the date and the load average, and writes var/bench/orthanc-<time>.json (every sample) and .md. Defaults: sets
of 2 studies x 2 series x 30 instances (120); `--full` uses the issue's 480 (4 x 2 x 60). Its own database and
Redis database: BENCH_ORTHANC_DB_NAME and BENCH_ORTHANC_REDIS_URL in the environment change them.

    .venv/bin/python -m bench.orthanc [--full] [--index 20000 | --large] [--small-cstore [--small-cstore-count N]]
        [--profile] [--no-clamd] [--drain-timeout 1800] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
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

from bench.ingest import (  # noqa: E402  (the path above first)
    CLAMD,
    GUNICORN,
    MB,
    PG_SERVER,
    PYTHON,
    STORESCU,
    WORKER_CONCURRENCY,
    BenchError,
    Processes,
    Started,
    Target,
    bench_cleanup,
    bench_environment,
    celery_drained,
    celery_queues,
    clamd_start,
    cpu_busy_since,
    django_on_fresh_database,
    free_port,
    generate,
    log,
    log_says,
    machine,
    machine_cpu,
    memory_of,
    provision,
    stores_env,
    wait_final,
    worker_start,
)
from bench.profile import (  # noqa: E402
    CpuMeter,
    PySpy,
    named,
    per_instance_ms,
    pids_of,
    postgres_backends,
    top_functions,
    wait_idle,
    write_top,
)

# Its own database and Redis database; on a machine shared with other benchmarks, set others in the environment.
DB_NAME = os.environ.get("BENCH_ORTHANC_DB_NAME", "enclave_bench_vs")
REDIS_URL = os.environ.get("BENCH_ORTHANC_REDIS_URL", "redis://127.0.0.1:6379/9")
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
ORTHANC_DEFAULTS = Path("/etc/orthanc/orthanc.json")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
READ_CHUNK = 1 << 20  # the series reader's piece size (bench/wado_cpu.py --readers tries others)
ASSOCIATIONS = 4
# Orthanc limits nobody; the benchmark's one client sends more searches a minute than a person's limit allows.
NO_RATE_LIMITS = json.dumps(
    {action: {"person": "1000000/minute", "token": "1000000/minute", "address": "1000000/minute",
              "device": "1000000/minute"} for action in ("login", "search", "retrieve", "export")}
)  # fmt: skip


# Senders
# ------------------------------------------------------------------------------


def split(files: list[Path], folder: Path, parts: int) -> list[Path]:
    """`parts` folders of hard links, the files dealt round-robin (each association sends every series)."""
    folders = []
    for n in range(parts):
        sub = folder / f"part{n}"
        sub.mkdir(parents=True)
        folders.append(sub)
    for i, path in enumerate(files):
        os.link(path, folders[i % parts] / path.name)
    return folders


def storescu(folders: list[Path], *, calling: str, called: str, port: int, logs: Path, tag: str) -> tuple[float, float]:
    """Send each folder in an association of its own, all at once; (t0, seconds until the last sender exits)."""
    running = []
    t0 = time.time()
    for n, folder in enumerate(folders):
        out = (logs / f"storescu-{tag}-{n}.log").open("wb")
        argv = [STORESCU, "-aet", calling, "-aec", called, "+sd", "127.0.0.1", str(port), str(folder)]
        env = {**os.environ, "TCP_NODELAY": "1"}
        running.append((subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT), out))
    for process, out in running:
        code = process.wait()
        out.close()
        if code != 0:
            raise BenchError(f"storescu exited with {code} (see {out.name})")
    return t0, time.time() - t0


# Enclave
# ------------------------------------------------------------------------------


def enclave_searchable_at(target: Target) -> float:
    """The moment the run's last instance became searchable: the last final write of its IngestItems."""
    from django.db.models import Max

    from studies.models import IngestItem
    from tenants.scoping import tenant_scope

    with tenant_scope(target.tenant):
        last = IngestItem.objects.aggregate(last=Max("updated_at"))["last"]
        stored = IngestItem.objects.filter(state=IngestItem.State.STORED).count()
        total = IngestItem.objects.count()
    if stored != total:
        raise BenchError(f"Enclave stored {stored} of {total} items")
    return float(last.timestamp())


def enclave_reader(target: Target) -> str:
    """A radiologist of the run's tenant with an API token (a technologist may send but not read)."""
    from django.db import transaction

    from audit.context import audit_context
    from tenants import services
    from tenants.models import Role, User
    from tenants.scoping import tenant_scope

    with audit_context(system_principal="bench/orthanc.py"), transaction.atomic():
        user = User(username=f"{target.tenant.slug}-radiologist", email=f"{target.tenant.slug}@bench.enclave.invalid")
        user.set_unusable_password()
        user.save()
        services.membership_grant_by_operator(
            tenant=target.tenant, user=user, role=Role.RADIOLOGIST, reason="benchmark"
        )
        with tenant_scope(target.tenant):
            _, raw = services.api_token_create(actor=user, tenant=target.tenant, name="benchmark")
    return raw


DEFAULT_WORKER = "worker-default"


def workers_start(processes: Processes, env: dict[str, str], *, one: bool) -> Started:
    """The Celery workers as scripts/run.sh starts them: `worker` on the ingest queue (-c 2, INGEST_CONCURRENCY's
    default on 2 cores) and `worker-default` on default and maintenance (-c 1: the thumbnails, mail, exports);
    with `one`, the earlier runs' single worker (-c 2) on all three. Returns `worker`."""
    if one:
        return worker_start(processes, env)
    worker_start(processes, env, name=DEFAULT_WORKER, queues="default,maintenance", concurrency=1)
    return worker_start(processes, env, name="worker", queues="ingest", concurrency=WORKER_CONCURRENCY)


def workers_stop(processes: Processes) -> None:
    processes.stop("worker")
    processes.stop(DEFAULT_WORKER)


def worker_groups(processes: Processes) -> dict[str, Any]:
    """The CPU groups of the running workers: `worker` and, when it runs, `worker-default`, each a process with
    its pool; both are counted in a phase's total."""
    groups: dict[str, Any] = {"worker": pids_of(processes.running["worker"])}
    if DEFAULT_WORKER in processes.running:
        groups[DEFAULT_WORKER] = pids_of(processes.running[DEFAULT_WORKER])
    return groups


def enclave_cpu_groups(processes: Processes, listener: Started, clamd: Started | None) -> dict[str, Any]:
    """The processes whose CPU time one C-STORE set costs Enclave: the listener and the workers (each with its
    children), the PostgreSQL backends of the benchmark's database (less this script's own connection), clamd
    when it scans, and the machine's redis-server (shared with every other user of the machine: an upper bound,
    left out of the total)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        own = {int(cursor.fetchone()[0])}
    groups: dict[str, Any] = {"listener": pids_of(listener), **worker_groups(processes),
                              "postgres": lambda: postgres_backends(DB_NAME, own)}  # fmt: skip
    if clamd is not None:
        groups["clamd"] = pids_of(clamd)
    groups["redis-server (shared)"] = lambda: named("redis-server")
    return groups


def drained(groups: dict[str, Any], count: int, what: str, timeout: float) -> dict[str, Any]:
    """After a phase, wait until the worker has done every task it left (the thumbnails of its new series, on
    the `default` queue), so that the next phase has the cores to itself: the seconds waited, what was waiting
    and the CPU ms per instance of the phase that the wait cost each process (its tasks' work, not counted in the
    phase's own CPU figure, which ends at the last instance searchable). A wait that times out is logged and
    recorded (`drained` false), and the run goes on."""
    meter = CpuMeter(groups).start()
    try:
        result = celery_drained(REDIS_URL, celery_queues(), timeout=timeout)
    finally:
        cpu = meter.stop()
    result["cpu_ms_per_instance"] = per_instance_ms(cpu, count)
    state = "drained" if result["drained"] else f"NOT drained (still waiting: {result['waiting_at_end']})"
    log(
        f"after {what}: Celery queues {state} in {result['seconds']} s (waiting at the start: "
        f"{result['waiting_at_start'] or 'nothing'}); CPU ms per instance of the wait {result['cpu_ms_per_instance']}"
    )
    return result


def enclave_cstore(
    folders: list[Path], target: Target, *, port: int, count: int, groups: dict[str, Any], tmp: Path, tag: str,
    timeout: float, drain_timeout: float | None,
) -> dict[str, Any]:  # fmt: skip
    """One C-STORE set into Enclave: its rate to the last instance searchable and the CPU ms each process spent
    per instance until then; then (unless `drain_timeout` is None) the wait for the tasks it left (`drained`)."""
    meter = CpuMeter(groups).start()
    try:
        t0, client = storescu(folders, calling=target.device_ae, called=target.tenant_ae, port=port, logs=tmp,
                              tag=tag)  # fmt: skip
        wait_final(target, count, timeout)
    finally:
        cpu = meter.stop()
    figure: dict[str, Any] = {"instances": count, **_rate(count, enclave_searchable_at(target) - t0, client)}
    figure["cpu_ms_per_instance"] = per_instance_ms(cpu, count)
    if drain_timeout is not None:
        figure["drain"] = drained(groups, count, f"C-STORE {tag}", drain_timeout)
    return figure


def profiled_cstore(
    files: list[Path], target: Target, *, listener: Started, worker: Started, port: int, groups: dict[str, Any],
    tmp: Path, rate: int, timeout: float, drain_timeout: float, idle: Any,
) -> dict[str, Any]:  # fmt: skip
    """One more C-STORE set with `py-spy record` on the listener and the worker (and their children): the
    collapsed stacks in var/bench/profile-<time>-<process>.txt (flamegraph.pl or speedscope read them), the
    functions with the most samples in ...-top.txt, and the CPU ms per instance of every process from /proc.
    Sampling slows what it samples: this set's rate is not one of the table's figures."""
    out = ROOT / "var" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    waited = wait_idle(idle)
    log(f"profiled C-STORE: the worker idle after {waited} s; py-spy on the listener and the worker")
    spies = {name: PySpy(started.process.pid, out / f"profile-{stamp}-{name}.txt", rate)
             for name, started in (("listener", listener), ("worker", worker))}  # fmt: skip
    time.sleep(2)  # attached
    try:
        figure = enclave_cstore([files[0].parent], target, port=port, count=len(files), groups=groups, tmp=tmp,
                                tag="eprof", timeout=timeout, drain_timeout=None)  # fmt: skip
    finally:
        for spy in spies.values():
            spy.stop()
    # After the samples (they and the CPU figure they are shared out by both end at the last instance searchable).
    figure["drain"] = drained(groups, len(files), "the profiled C-STORE", drain_timeout)
    figure["profile"] = {}
    for name, spy in spies.items():
        summary = top_functions(spy.out, instances=len(files), cpu_ms=figure["cpu_ms_per_instance"][name])
        top = spy.out.with_name(f"{spy.out.stem}-top.txt")
        write_top(top, f"py-spy, {name}, one C-STORE set of {len(files)} instances ({rate} samples/s)", summary)
        figure["profile"][name] = {"raw": str(spy.out.relative_to(ROOT)), "top": str(top.relative_to(ROOT)),
                                   "samples_per_instance": summary.get("samples_per_instance"),
                                   "steps": summary.get("steps", [])[:12]}  # fmt: skip
        log(f"profile of the {name}: {top.relative_to(ROOT)} ({summary.get('samples')} samples)")
    log(f"profiled C-STORE: {figure['instances_per_second']} inst/s, CPU ms/instance {figure['cpu_ms_per_instance']}")
    return figure


def listener_start(processes: Processes, env: dict[str, str], count: int = 1) -> tuple[Started, int]:
    """`manage.py dicom_listener` with `count` processes sharing its port (scripts/run.sh starts one per core): ready
    when it says so (with several, once every process listens: the parent's line names how many)."""
    ready = r"DICOM listener on 127\.0\.0\.1:(\d+)" + (rf" \({count} processes" if count > 1 else "")
    listener = processes.start(
        "listener",
        [PYTHON, "manage.py", "dicom_listener", "--host", "127.0.0.1", "--port", "0", "--processes", str(count)],
        env,
        log_says(ready),
    )
    return listener, int(re.findall(ready, listener.output())[0])


def gunicorn_start(
    processes: Processes, env: dict[str, str], base: str, port: int, token: str, *, worker_class: str = "gthread",
    workers: int = 2, threads: int = 8, extra: tuple[str, ...] | list[str] = (),
) -> Started:  # fmt: skip
    """gunicorn as scripts/run.sh starts it (portal/gunicorn_conf.py, gthread workers that keep connections
    alive), on a loopback port of its own; answering a search when it returns. `extra`: more gunicorn arguments."""
    import requests

    def answers(_: Started) -> bool:
        try:
            requests.get(f"{base}/studies?limit=1", headers={"Authorization": f"Bearer {token}"}, timeout=2)
        except requests.RequestException:
            return False
        return True

    argv = [GUNICORN, "portal.wsgi:application", "-c", "portal/gunicorn_conf.py", "-b", f"127.0.0.1:{port}",
            "--worker-class", worker_class, "--workers", str(workers), "--threads", str(threads), "--timeout", "300",
            "--no-control-socket", *extra]  # fmt: skip
    return processes.start("gunicorn", argv, {**env, "PORTAL_BASE_URL": f"http://127.0.0.1:{port}"}, answers)


# Orthanc
# ------------------------------------------------------------------------------


def orthanc_config(folder: Path, *, http_port: int, dicom_port: int) -> Path:
    """Orthanc's own configuration for this run: the Debian defaults, with paths, ports and plugins of its own."""
    config = {
        "Name": "bench",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def orthanc_start(processes: Processes, folder: Path) -> tuple[Started, str, int]:
    import requests

    http_port, dicom_port = free_port(), free_port()
    config = orthanc_config(folder, http_port=http_port, dicom_port=dicom_port)
    base = f"http://127.0.0.1:{http_port}"

    def answers(_: Started) -> bool:
        try:
            return requests.get(f"{base}/system", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    env = {**os.environ, "TCP_NODELAY": "1"}
    started = processes.start("orthanc", [ORTHANC, str(config)], env, answers)
    return started, base, dicom_port


def orthanc_searchable_at(base: str, expected: int, timeout: float) -> float:
    import requests

    deadline = time.monotonic() + timeout
    while True:
        count = requests.get(f"{base}/statistics", timeout=10).json()["CountInstances"]
        if count >= expected:
            return time.time()
        if time.monotonic() > deadline:
            raise BenchError(f"Orthanc counts {count} of {expected} instances")
        time.sleep(0.05)


# Reads (the same client code for both)
# ------------------------------------------------------------------------------


def retrieve_once(session: Any, url: str, headers: dict[str, str], *, expected: int) -> tuple[float, int]:
    """One retrieval of the series: (seconds, bytes of the body), every part counted."""
    t0 = time.perf_counter()
    size, parts, tail = 0, 0, b""
    with session.get(url, headers={**headers, "Accept": ACCEPT_DICOM}, stream=True, timeout=600) as response:
        if response.status_code != 200:
            raise BenchError(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
        boundary = response.headers["Content-Type"].split("boundary=")[1].split(";")[0].strip('"').encode()
        for chunk in response.iter_content(chunk_size=READ_CHUNK):
            size += len(chunk)
            parts += (tail + chunk).count(b"--" + boundary + b"\r\n")  # never split: the tail overlaps
            tail = chunk[-(len(boundary) + 3) :]
    elapsed = time.perf_counter() - t0
    if parts != expected:
        raise BenchError(f"{url}: {parts} parts, expected {expected}")
    return elapsed, size


def retrieval_summary(samples: list[tuple[float, int]]) -> dict[str, Any]:
    timings = [seconds for seconds, _ in samples]
    rates = [size / MB / seconds for seconds, size in samples]
    return {
        "body_megabytes": round(samples[0][1] / MB, 2),
        "megabytes_per_second_median": round(statistics.median(rates), 1),
        "megabytes_per_second": [round(r, 1) for r in rates],
        "seconds_median": round(statistics.median(timings), 3),
    }


def retrieve_series(session: Any, url: str, headers: dict[str, str], *, runs: int, expected: int) -> dict[str, Any]:
    samples = [retrieve_once(session, url, headers, expected=expected) for _ in range(runs + 1)]
    return retrieval_summary(samples[1:])  # the first warms up


def alternate(sides: dict[str, Any], count: int) -> dict[str, list[Any]]:
    """`sides[name](i)` for i in range(count), the sides taking turns and the order swapped every round (E O, O E,
    E O, ...): both servers are measured over the same minutes, so a slower or busier minute of a shared machine
    falls on both rather than on whichever happened to run then."""
    names = list(sides)
    out: dict[str, list[Any]] = {name: [] for name in names}
    for i in range(count):
        for name in names if i % 2 == 0 else names[::-1]:
            out[name].append(sides[name](i))
    return out


def search_once(session: Any, url: str, headers: dict[str, str]) -> float:
    """One search, in ms; an error or an empty answer ends the run."""
    t0 = time.perf_counter()
    response = session.get(url, headers={**headers, "Accept": "application/dicom+json"}, timeout=60)
    body = response.content
    elapsed = time.perf_counter() - t0
    if response.status_code != 200 or not json.loads(body):
        raise BenchError(f"{url}: HTTP {response.status_code}: {body[:200]!r}")
    return elapsed * 1000


def search_summary(timings: list[float]) -> dict[str, Any]:
    return {"median_ms": round(statistics.median(timings), 1), "p95_ms": round(percentile(timings, 0.95), 1)}


def search_medians(session: Any, searches: dict[str, str], headers: dict[str, str], repeat: int) -> dict[str, Any]:
    out = {}
    for name, url in searches.items():
        timings = [search_once(session, url, headers) for _ in range(repeat + 3)]
        out[name] = search_summary(timings[3:])  # three warm up
    return out


def searches_for(base: str, uids: dict[str, str]) -> dict[str, str]:
    study, series = uids["study"], uids["series"]
    return {
        "studies by PatientID": f"{base}/studies?PatientID={uids['patient_id']}",
        "series of a study": f"{base}/studies/{study}/series",
        "instances of a series": f"{base}/studies/{study}/series/{series}/instances",
    }


def first_series(files: list[Path]) -> tuple[dict[str, str], int]:
    import pydicom

    series: dict[str, int] = {}
    first: dict[str, str] = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        series[ds.SeriesInstanceUID] = series.get(ds.SeriesInstanceUID, 0) + 1
        if not first:
            first = {"study": ds.StudyInstanceUID, "series": ds.SeriesInstanceUID, "patient_id": ds.PatientID}
    return first, series[first["series"]]


# STOW-RS (the same client code for both)
# ------------------------------------------------------------------------------


def stow(
    url: str, headers: dict[str, str], files: list[Path], *, clients: int, batch: int,
    latencies: list[float] | None = None,
) -> tuple[float, float]:  # fmt: skip
    """POST the files as multipart/related requests of `batch` instances from `clients` threads, each over a
    keep-alive requests.Session of its own; (t0, seconds until the last answer). Each request's latency (ms, from
    its body built to its answer) is appended to `latencies` when given."""
    import threading
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from bench.ingest import multipart

    local = threading.local()
    failed: list[str] = []

    def send(paths: list[Path]) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        boundary = uuid.uuid4().hex
        body = multipart(paths, boundary)
        started = time.time()
        response = session.post(
            url,
            data=body,
            headers={**headers, "Accept": "application/dicom+json",
                     "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
            timeout=600,
        )  # fmt: skip
        if latencies is not None:
            latencies.append((time.time() - started) * 1000)
        if response.status_code not in (200, 202) or response.json().get("00081198", {}).get("Value"):
            failed.append(f"HTTP {response.status_code}: {response.text[:300]}")

    batches = [files[i : i + batch] for i in range(0, len(files), batch)]
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(send, batches))
    if failed:
        raise BenchError(f"STOW-RS to {url}: {len(failed)} requests failed, first: {failed[0]}")
    return t0, time.time() - t0


# QIDO-RS at scale: one index, the same in both archives
# ------------------------------------------------------------------------------


def index_fixture(instances: int, seed: int) -> tuple[Any, dict[str, Any]]:
    """bench/query.py's index (realistic names, dates and modalities; 1 patient per 20 instances, 1 study per
    10, 1 series per 4) bulk-written into a tenant of its own (`benchq`, a radiologist with a token)."""
    from bench import query

    target = query.provision()
    t0 = time.monotonic()
    picked = query.fixture(
        target,
        patients=max(1, instances // 20),
        studies=max(1, instances // 10),
        series=max(1, instances // 4),
        instances=instances,
        seed=seed,
    )
    picked["seconds"] = round(time.monotonic() - t0, 1)
    return target, picked


def index_files(target: Any, folder: Path) -> int:
    """The same index as small Part-10 files (64 x 64, 16-bit, the same pixels in each; bench/smallfiles.py) for
    Orthanc: every instance with its patient, study and series attributes as Enclave holds them."""
    from bench.smallfiles import SmallFiles
    from studies.models import Instance
    from tenants.scoping import tenant_scope

    folder.mkdir(parents=True)
    fields = ("sop_instance_uid", "instance_number", "series__series_instance_uid", "series__series_number",
              "series__modality", "series__description", "series__study__study_instance_uid",
              "series__study__study_date", "series__study__accession_number", "series__study__description",
              "series__study__referring_physician", "series__study__patient__patient_id",
              "series__study__patient__name", "series__study__patient__birth_date",
              "series__study__patient__sex")  # fmt: skip
    count, writer = 0, SmallFiles()
    with tenant_scope(target.tenant):
        rows = Instance.objects.order_by("pk").values_list(*fields).iterator(chunk_size=5000)
        for sop, number, series, series_number, modality, series_desc, study, day, accession, desc, referrer, \
                patient_id, name, birth, sex in rows:  # fmt: skip
            data = writer.build(
                patient_id=patient_id, patient_name=name, patient_birth_date=birth, patient_sex=sex,
                study_uid=study, series_uid=series, sop_uid=sop, modality=modality, instance_number=number,
                series_number=series_number, accession=accession, referring=referrer or "", study_description=desc,
                series_description=series_desc, study_date=day,
            )  # fmt: skip
            (folder / f"{count:07d}.dcm").write_bytes(data)
            count += 1
    return count


def scale_searches(picked: dict[str, Any]) -> dict[str, Any]:
    """The issue's seven searches; request i of each asks for another patient, study, series or month."""
    from datetime import date, timedelta

    months = [(year, month) for year in range(2020, 2025) for month in range(1, 13)]

    def month(i: int) -> str:
        year, number = months[i % len(months)]
        last = (date(year + (number == 12), number % 12 + 1, 1) - timedelta(days=1)).day
        return f"{year}{number:02d}01-{year}{number:02d}{last:02d}"

    def pick(key: str, i: int) -> Any:
        return picked[key][i % len(picked[key])]

    return {
        "by PatientID": lambda i: ("studies", {"PatientID": pick("patient_ids", i)}),
        "PatientName=MARTIN*": lambda i: ("studies", {"PatientName": "MARTIN*"}),
        "one-year StudyDate": lambda i: ("studies", {"StudyDate": f"{2020 + i % 5}0101-{2020 + i % 5}1231"}),
        "CT + one month": lambda i: ("studies", {"ModalitiesInStudy": "CT", "StudyDate": month(i)}),
        "all studies, limit 100": lambda i: ("studies", {"limit": "100"}),
        "series of a study": lambda i: (f"studies/{pick('study_uids', i)}/series", {}),
        "instances of a series": lambda i: ("studies/{}/series/{}/instances".format(*pick("series", i)), {}),
    }


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * share
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class SearchFailed(Exception):
    """A search at scale that timed out or that the server could not answer (5xx): recorded, and the run goes on."""


def scale_once(
    session: Any, base: str, headers: dict[str, str], name: str, request: Any, i: int, timeout: float
) -> tuple[float, int]:
    """Request i of search `name`: (ms, results)."""
    import requests

    path, params = request(i)
    t0 = time.perf_counter()
    # The query string as a viewer writes it: Orthanc 1.10 does not decode %2A (a wildcard requests would encode)
    # and answers nothing; every value here is letters, digits, '-' and '*'.
    query = "&".join(f"{key}={value}" for key, value in params.items())
    url = f"{base}/{path}" + (f"?{query}" if query else "")
    try:
        response = session.get(url, headers={**headers, "Accept": "application/dicom+json"}, timeout=timeout)
    except (requests.Timeout, requests.ConnectionError) as error:
        log(f"  {name}: no answer within {timeout:.0f} s ({url}): {error!r}"[:400])
        raise SearchFailed(f"no answer within {timeout:.0f} s") from error
    if response.status_code >= 500:  # the server's own timeout (Enclave's 503 search_timeout): noted
        log(f"  {name}: HTTP {response.status_code} ({url}): {response.text[:200]!r}")
        raise SearchFailed(f"HTTP {response.status_code}")
    body = response.content
    elapsed = time.perf_counter() - t0
    if response.status_code not in (200, 204):
        raise BenchError(f"{name}: HTTP {response.status_code}: {body[:300]!r}")
    return elapsed * 1000, len(json.loads(body)) if response.status_code == 200 else 0


def scale_summary(
    name: str, samples: list[tuple[float, int]], failure: str, *, repeat: int, timeout: float, who: str = ""
) -> dict[str, Any]:
    """`samples`: the timed requests (the warm-ups left out)."""
    timings = [ms for ms, _ in samples]
    if len(timings) < repeat:
        return {"timed_out_s": timeout, "failure": failure, "answered": len(timings),
                "samples_ms": [round(t, 2) for t in timings]}  # fmt: skip
    out = {
        "median_ms": round(statistics.median(timings), 1),
        "p95_ms": round(percentile(timings, 0.95), 1),
        "results_median": statistics.median([count for _, count in samples]),
        "samples_ms": [round(t, 2) for t in timings],
    }
    log(f"  {who}{name}: median {out['median_ms']} ms, p95 {out['p95_ms']} ms, {out['results_median']} results")
    return out


def run_scale_searches(
    session: Any, base: str, headers: dict[str, str], searches: dict[str, Any], *, warmup: int, repeat: int,
    timeout: float = 120,
) -> dict[str, Any]:  # fmt: skip
    """Each search `warmup` + `repeat` times; one that takes longer than `timeout` is recorded as timed out and
    the next search begins (one pathological search does not end a run that took half an hour to set up)."""
    out: dict[str, Any] = {}
    for name, request in searches.items():
        samples: list[tuple[float, int]] = []
        failure = ""
        for i in range(warmup + repeat):
            try:
                sample = scale_once(session, base, headers, name, request, i, timeout)
            except SearchFailed as error:
                failure = str(error)
                break
            if i >= warmup:
                samples.append(sample)
        out[name] = scale_summary(name, samples, failure, repeat=repeat, timeout=timeout)
    return out


class Server:
    """One side of the alternating reads: its keep-alive session, its DICOMweb root and its headers."""

    def __init__(self, session: Any, base: str, headers: dict[str, str]) -> None:
        self.session, self.base, self.headers = session, base, headers


def reads_alternating(
    servers: dict[str, Server], *, series: str, expected: int, retrievals: int, searches: dict[str, dict[str, str]],
    scale: dict[str, Server] | None, picked_searches: dict[str, Any], warmup: int, repeat: int, timeout: float,
    floors: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every read of both servers, the two taking turns request by request (`alternate`): the series retrieval
    (`retrievals` timed after one warm-up each), the small tenant's searches and the searches at scale. The same
    figures as the sequential reads, in the same shape; with `floors` (each side's URL of an answer that reads no
    patient data), that answer's time taken the same way first (`floor`): the least any read of that server costs
    when the two take turns."""
    out: dict[str, dict[str, Any]] = {name: {} for name in servers}
    if floors:

        def floor(name: str) -> Any:
            return lambda _: search_once(servers[name].session, floors[name], {})

        timings = alternate({name: floor(name) for name in servers}, repeat + 3)
        for name in servers:
            out[name]["floor"] = search_summary(timings[name][3:])

    def retrieval(name: str) -> Any:
        side = servers[name]
        return lambda _: retrieve_once(side.session, f"{side.base}/{series}", side.headers, expected=expected)

    samples = alternate({name: retrieval(name) for name in servers}, retrievals + 1)
    for name in servers:
        out[name]["wado_series"] = retrieval_summary(samples[name][1:])
    for name in servers:
        out[name]["qido"] = {}
    for label in next(iter(searches.values())):

        def search(name: str, label: str = label) -> Any:
            side = servers[name]
            return lambda _: search_once(side.session, searches[name][label], side.headers)

        timings = alternate({name: search(name) for name in servers}, repeat + 3)
        for name in servers:
            out[name]["qido"][label] = search_summary(timings[name][3:])
    if scale is None:
        return out
    for name in scale:
        out[name]["qido_index"] = {}
    for label, request in picked_searches.items():
        failures: dict[str, str] = {}

        def at_scale(name: str, label: str = label, request: Any = request, failures: dict[str, str] = failures) -> Any:
            side = scale[name]

            def once(i: int) -> tuple[float, int] | None:
                if name in failures:  # this side failed: the other goes on alone
                    return None
                try:
                    return scale_once(side.session, side.base, side.headers, label, request, i, timeout)
                except SearchFailed as error:
                    failures[name] = str(error)
                    return None

            return once

        results = alternate({name: at_scale(name) for name in scale}, warmup + repeat)
        for name in scale:
            answered = [sample for sample in results[name][warmup:] if sample is not None]
            out[name]["qido_index"][label] = scale_summary(
                label, answered, failures.get(name, ""), repeat=repeat, timeout=timeout, who=f"{name}: "
            )
    return out


# Main
# ------------------------------------------------------------------------------


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=2)
    parser.add_argument("--series", type=int, default=2, help="series per study")
    parser.add_argument("--per-series", type=int, default=30, help="instances per series")
    parser.add_argument("--full", action="store_true", help="the issue's size: 4 x 2 x 60 = 480 instances per set")
    parser.add_argument("--retrievals", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=20, help="timed requests per search")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests before each search")
    parser.add_argument("--stow-batch", type=int, default=10, help="instances per STOW-RS request")
    parser.add_argument("--index", type=int, default=20000, help="instances of the QIDO-RS index (0: none)")
    parser.add_argument("--large", action="store_true", help="the QIDO-RS index at 200,000 instances")
    parser.add_argument(
        "--small-cstore",
        action="store_true",
        help="also C-STORE the index's small instances into Enclave (Orthanc always gets them)",
    )
    parser.add_argument(
        "--small-cstore-count",
        type=int,
        default=0,
        help="with --small-cstore: send only the first N of the index's instances to Enclave (0: all of them)",
    )
    parser.add_argument("--no-clamd", action="store_true", help="skip the C-STORE set scanned by a real clamd")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one more C-STORE set with py-spy on the listener and the worker: var/bench/profile-<time>-*",
    )
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument(
        "--search-timeout", type=float, default=120, help="seconds before a search at scale counts as timed out"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=1800,
        help="seconds to wait after a phase for the Celery queues to drain before the next begins",
    )  # fmt: skip
    parser.add_argument(
        "--listener-processes", type=int, default=os.cpu_count() or 1,
        help="DICOM listener processes sharing the port, as scripts/run.sh starts them (default: one per core, "
        f"{os.cpu_count() or 1} here); 1: one process, as the runs before session 10",
    )  # fmt: skip
    parser.add_argument(
        "--one-worker", action="store_true",
        help="one Celery worker (-c 2) on every queue, as in the runs before this option (not scripts/run.sh's two)",
    )  # fmt: skip
    parser.add_argument(
        "--order", choices=("paired", "blocks"), default="paired",
        help="paired (default): each of Orthanc's C-STORE and STOW-RS sets right after Enclave's same set, both "
        "archives up from the start; blocks: every Enclave phase, then every Orthanc phase, as before session 6",
    )  # fmt: skip
    parser.add_argument(
        "--reads", choices=("alternating", "sequential"), default="alternating",
        help="alternating (default): both servers up for the reads, taking turns request by request; sequential: "
        "Enclave's reads, then Orthanc's after its C-STORE and STOW-RS, as in the runs before session 6",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and database")
    args = parser.parse_args()
    if args.full:
        args.studies, args.series, args.per_series = 4, 2, 60
    if args.large:
        args.index = 200_000
    return args


def _rate(count: int, seconds: float, client: float) -> dict[str, float]:
    return {"seconds": round(seconds, 2), "instances_per_second": round(count / seconds, 1),
            "senders_done_s": round(client, 2)}  # fmt: skip


def main() -> int:
    import requests

    args = arguments()
    for needed, hint in ((ORTHANC, "apt-get install orthanc orthanc-dicomweb"), (STORESCU, "apt-get install dcmtk")):
        if not shutil.which(needed) and not Path(needed).exists():
            raise SystemExit(f"{needed} is missing ({hint})")
    tmp = Path(tempfile.mkdtemp(prefix="enclave-bench-vs-"))
    # Each CT set (0.53 MB an instance) as files, Enclave's quarantine, blobs and replica, and Orthanc's copy; the
    # index's small files (about 10 kB each) as files, in Orthanc and (--small-cstore) in Enclave twice over.
    sets_count = 6 + args.profile
    needed = sets_count * args.studies * args.series * args.per_series * 530_000 * 5 + args.index * 10_000 * 5
    if shutil.disk_usage(tmp).free < needed:
        shutil.rmtree(tmp)
        raise SystemExit(f"not enough free disk under {tmp.parent}: {needed / 1e9:.1f} GB needed")
    load_before = [round(v, 2) for v in os.getloadavg()]
    log(f"load average before: {load_before}; working in {tmp}")
    base_env = bench_environment(
        db_url=f"{PG_SERVER}/{DB_NAME}", redis_url=REDIS_URL, var_dir=tmp / "var", log_level="WARNING"
    )
    base_env = stores_env(base_env, tmp / "stores", "")
    base_env["RATE_LIMITS"] = NO_RATE_LIMITS
    os.environ.clear()
    os.environ.update(base_env)
    processes = Processes(tmp)
    figures: dict[str, dict[str, Any]] = {"enclave": {}, "orthanc": {}}
    setup: dict[str, Any] = {}
    try:
        django_on_fresh_database(db_name=DB_NAME, redis_url=REDIS_URL)
        info = machine()
        per_set = args.studies * args.series * args.per_series
        clamd_wanted = not args.no_clamd and Path(CLAMD).exists()
        if not clamd_wanted:
            log("no clamd run" + ("" if args.no_clamd else f" ({CLAMD} is missing: apt-get install clamav-daemon)"))
        names = ["one", "four", "stow1", "stow4"] + ["clamd"] * clamd_wanted + ["prof"] * args.profile
        sets = {}
        for name in names:
            sets[name] = generate(
                tmp / f"dicom-{name}", studies=args.studies, series=args.series, per_series=args.per_series
            )
        megabytes = sum(p.stat().st_size for p in sets["one"]) / MB
        folders = {"one": [tmp / "dicom-one"], "four": split(sets["four"], tmp / "split-four", ASSOCIATIONS)}
        log(f"{len(sets)} sets of {per_set} instances, {megabytes:.1f} MB each")
        tags = {"one": "vs1", "four": "vs4", "stow1": "st1", "stow4": "st4", "small": "sm", "clamd": "cl",
                "prof": "pf"}  # fmt: skip
        targets = {name: provision(tags[name]) for name in [*names, "small"]}

        # The QIDO-RS index: bulk rows in Enclave, the same as small files for Orthanc (and Enclave's C-STORE).
        index_target, picked, index_count = None, {}, 0
        if args.index:
            index_target, picked = index_fixture(args.index, args.seed)
            t0 = time.monotonic()
            index_count = index_files(index_target, tmp / "dicom-index")
            setup["index"] = {"instances": index_count, "enclave_bulk_seconds": picked.pop("seconds"),
                              "files_seconds": round(time.monotonic() - t0, 1),
                              "megabytes": round(sum(p.stat().st_size for p in (tmp / "dicom-index").iterdir())
                                                 / MB, 1)}  # fmt: skip
            log(f"index of {index_count} instances: {setup['index']}")

        # Orthanc's side of each phase. --order paired (the default): Orthanc is up from here on and each of its
        # phases runs right after Enclave's same phase; blocks: all of Enclave's phases, then all of Orthanc's.
        paired = args.order == "paired"
        side: dict[str, Any] = {"stored": 0}

        def orthanc_up() -> None:
            if "base" not in side:
                side["process"], side["base"], side["dicom_port"] = orthanc_start(processes, tmp / "orthanc")

        def orthanc_cstore(name: str) -> None:
            orthanc_up()
            busy0 = machine_cpu()
            meter = CpuMeter({"orthanc": pids_of(side["process"])}).start()
            t0, client = storescu(folders[name], calling="BENCHCT", called="ORTHANC", port=side["dicom_port"],
                                  logs=tmp, tag=f"o{name}")  # fmt: skip
            side["stored"] += per_set
            searchable = orthanc_searchable_at(side["base"], side["stored"], args.timeout)
            figure = figures["orthanc"][f"cstore_{name}"] = _rate(per_set, searchable - t0, client)
            figure["cpu_ms_per_instance"] = per_instance_ms(meter.stop(), per_set)
            figure["machine_busy"] = cpu_busy_since(busy0)
            log(f"Orthanc C-STORE ({name}): {figure}")

        def orthanc_small() -> None:
            orthanc_up()
            log(f"Orthanc C-STORE of the index's {index_count} small instances (one association)")
            meter = CpuMeter({"orthanc": pids_of(side["process"])}).start()
            t0, client = storescu([tmp / "dicom-index"], calling="BENCHCT", called="ORTHANC", port=side["dicom_port"],
                                  logs=tmp, tag="osmall")  # fmt: skip
            side["stored"] += index_count
            figure = figures["orthanc"]["cstore_small"] = _rate(
                index_count, orthanc_searchable_at(side["base"], side["stored"], args.timeout) - t0, client
            )
            figure["cpu_ms_per_instance"] = per_instance_ms(meter.stop(), index_count)
            log(f"Orthanc C-STORE (small): {figure}")

        def orthanc_stow(name: str, clients: int) -> None:
            orthanc_up()
            t0, client = stow(f"{side['base']}/dicom-web/studies", {}, sets[name], clients=clients,
                              batch=args.stow_batch)  # fmt: skip
            side["stored"] += per_set
            figures["orthanc"][name] = _rate(
                per_set, orthanc_searchable_at(side["base"], side["stored"], args.timeout) - t0, client
            )
            log(f"Orthanc STOW-RS ({clients} clients): {figures['orthanc'][name]}")

        if paired:
            orthanc_up()

        # Enclave: listener and worker; C-STORE with the built-in scanner.
        cpu0 = machine_cpu()
        worker = workers_start(processes, base_env, one=args.one_worker)
        listener, port = listener_start(processes, base_env, args.listener_processes)
        groups = enclave_cpu_groups(processes, listener, None)
        for name in ("one", "four"):
            busy0 = machine_cpu()
            figure = figures["enclave"][f"cstore_{name}"] = enclave_cstore(
                folders[name], targets[name], port=port, count=per_set, groups=groups, tmp=tmp, tag=f"e{name}",
                timeout=args.timeout, drain_timeout=args.drain_timeout,
            )  # fmt: skip
            figure["machine_busy"] = cpu_busy_since(busy0)
            log(f"Enclave C-STORE ({name}): {figure}")
            if paired:
                orthanc_cstore(name)
        if args.small_cstore and index_count:
            small = min(index_count, args.small_cstore_count or index_count)
            folder = tmp / "dicom-index-enclave"
            folder.mkdir()
            for path in sorted((tmp / "dicom-index").iterdir())[:small]:
                os.link(path, folder / path.name)
            log(f"Enclave C-STORE of {small} small instances (one association)")
            figures["enclave"]["cstore_small"] = enclave_cstore(
                [folder], targets["small"], port=port, count=small, groups=groups, tmp=tmp, tag="esmall",
                timeout=args.timeout, drain_timeout=args.drain_timeout,
            )  # fmt: skip
            log(f"Enclave C-STORE (small): {figures['enclave']['cstore_small']}")
        if paired and index_count:
            orthanc_small()
        figures["enclave"]["machine_busy_during_cstore"] = cpu_busy_since(cpu0)  # with Orthanc's sets when paired
        if args.profile:
            figures["enclave"]["cstore_profiled"] = profiled_cstore(
                sets["prof"], targets["prof"], listener=listener, worker=worker, port=port, groups=groups,
                idle=lambda: [pid for pids in worker_groups(processes).values() for pid in pids()],
                tmp=tmp, rate=args.profile_rate, timeout=args.timeout, drain_timeout=args.drain_timeout,
            )  # fmt: skip
        memory = figures["enclave"]["memory"] = {"listener": memory_of(listener), "worker_cstore": memory_of(worker)}
        if DEFAULT_WORKER in processes.running:
            memory["worker_default_cstore"] = memory_of(processes.running[DEFAULT_WORKER])
        processes.stop("listener")
        workers_stop(processes)

        # The same C-STORE with a real clamd scanning every instance (bench/ingest.py's clamd: one signature).
        if clamd_wanted:
            clamd_env = {**base_env, "CLAMD_ADDRESS": clamd_start(processes, base_env)}
            clamd = processes.running["clamd"]
            worker = workers_start(processes, clamd_env, one=args.one_worker)
            listener, port = listener_start(processes, clamd_env, args.listener_processes)
            figures["enclave"]["cstore_clamd"] = enclave_cstore(
                [tmp / "dicom-clamd"], targets["clamd"], port=port, count=per_set,
                groups=enclave_cpu_groups(processes, listener, clamd), tmp=tmp, tag="eclamd", timeout=args.timeout,
                drain_timeout=args.drain_timeout,
            )  # fmt: skip
            log(f"Enclave C-STORE (clamd): {figures['enclave']['cstore_clamd']}")
            memory["listener_clamd"] = memory_of(listener)
            memory["worker_clamd"] = memory_of(worker)
            memory["clamd"] = memory_of(clamd)
            processes.stop("listener")
            workers_stop(processes)
            processes.stop("clamd")
        worker = workers_start(processes, base_env, one=args.one_worker)

        # gunicorn as `make run` serves it: STOW-RS, then the reads.
        uids, series_size = first_series(sets["one"])
        target = targets["one"]
        token = enclave_reader(target)
        web_port = free_port()
        root = f"http://127.0.0.1:{web_port}/dicomweb"
        base = f"{root}/{target.tenant.slug}"
        web = gunicorn_start(processes, base_env, base, web_port, token)
        stow_groups = {**worker_groups(processes), "postgres": groups["postgres"]}
        for name, clients in (("stow1", 1), ("stow4", 4)):
            stow_target = targets[name]
            sender = {"Authorization": f"Bearer {stow_target.token}"}
            for _ in range(4):  # both workers have loaded the application
                requests.get(f"{root}/{stow_target.tenant.slug}/studies?limit=1", headers=sender, timeout=30)
            t0, client = stow(f"{root}/{stow_target.tenant.slug}/studies", sender, sets[name], clients=clients,
                              batch=args.stow_batch)  # fmt: skip
            wait_final(stow_target, per_set, args.timeout)
            figures["enclave"][f"{name}"] = _rate(per_set, enclave_searchable_at(stow_target) - t0, client)
            log(f"Enclave STOW-RS ({clients} clients): {figures['enclave'][name]}")
            figures["enclave"][name]["drain"] = drained(stow_groups, per_set, f"STOW-RS {name}", args.drain_timeout)
            if paired:
                orthanc_stow(name, clients)
        figures["enclave"]["memory"]["worker_stow"] = memory_of(worker)
        auth = {"Authorization": f"Bearer {token}"}
        index_auth = {"Authorization": f"Bearer {index_target.token}"} if index_target is not None else {}
        series_path = f"studies/{uids['study']}/series/{uids['series']}"
        enclave_session = requests.Session()
        for _ in range(4):
            enclave_session.get(f"{base}/studies?limit=1", headers=auth, timeout=30)
        if args.reads == "sequential":
            figures["enclave"]["wado_series"] = retrieve_series(
                enclave_session, f"{base}/{series_path}", auth, runs=args.retrievals, expected=series_size
            )
            figures["enclave"]["qido"] = search_medians(enclave_session, searches_for(base, uids), auth, args.repeat)
            if index_target is not None:
                log(f"Enclave QIDO-RS at {index_count} instances")
                figures["enclave"]["qido_index"] = run_scale_searches(
                    enclave_session, f"{root}/{index_target.tenant.slug}", index_auth, scale_searches(picked),
                    warmup=args.warmup, repeat=args.repeat, timeout=args.search_timeout,
                )  # fmt: skip
            enclave_session.close()
            figures["enclave"]["memory"]["gunicorn"] = memory_of(web)
            processes.stop("gunicorn")
            workers_stop(processes)
            log(f"Enclave: {figures['enclave']['wado_series']}, {figures['enclave']['qido']}")
        # With --reads alternating gunicorn and the workers stay up, idle, while Orthanc stores its sets.

        # Orthanc: the same sets, in the same order (already done, each beside Enclave's, when paired).
        if not paired:
            cpu0 = machine_cpu()
            for name in ("one", "four"):
                orthanc_cstore(name)
            figures["orthanc"]["machine_busy_during_cstore"] = cpu_busy_since(cpu0)
            for name, clients in (("stow1", 1), ("stow4", 4)):
                orthanc_stow(name, clients)
            if index_count:
                orthanc_small()
        orthanc, obase, stored = side["process"], side["base"], side["stored"]
        dbase = f"{obase}/dicom-web"
        with requests.Session() as session:
            if args.reads == "sequential":
                figures["orthanc"]["wado_series"] = retrieve_series(
                    session, f"{dbase}/{series_path}", {}, runs=args.retrievals, expected=series_size
                )
                figures["orthanc"]["qido"] = search_medians(session, searches_for(dbase, uids), {}, args.repeat)
                if index_count:
                    log(f"Orthanc QIDO-RS at {index_count} instances (+ {stored - index_count} of the other sets)")
                    figures["orthanc"]["qido_index"] = run_scale_searches(
                        session, dbase, {}, scale_searches(picked), warmup=args.warmup, repeat=args.repeat,
                        timeout=args.search_timeout,
                    )  # fmt: skip
            else:
                for _ in range(4):
                    session.get(f"{dbase}/studies?limit=1", timeout=30)
                log("Reads of both, taking turns request by request"
                    + (f" (QIDO-RS at {index_count} instances; Orthanc holds {stored - index_count} more of the "
                       "other sets)" if index_count else ""))  # fmt: skip
                enclave, other = Server(enclave_session, base, auth), Server(session, dbase, {})
                reads = reads_alternating(
                    {"enclave": enclave, "orthanc": other}, series=series_path, expected=series_size,
                    retrievals=args.retrievals,
                    searches={"enclave": searches_for(base, uids), "orthanc": searches_for(dbase, uids)},
                    scale=None if not index_count or index_target is None else {
                        "enclave": Server(enclave_session, f"{root}/{index_target.tenant.slug}", index_auth),
                        "orthanc": other},
                    picked_searches=scale_searches(picked), warmup=args.warmup, repeat=args.repeat,
                    timeout=args.search_timeout,
                    floors={"enclave": f"http://127.0.0.1:{web_port}/health/", "orthanc": f"{obase}/system"},
                )  # fmt: skip
                for name, values in reads.items():
                    figures[name].update(values)
                enclave_session.close()
                figures["enclave"]["memory"]["gunicorn"] = memory_of(web)
                processes.stop("gunicorn")
                workers_stop(processes)
                log(f"Enclave: {figures['enclave']['wado_series']}, {figures['enclave']['qido']}")
        figures["orthanc"]["memory"] = {"orthanc": memory_of(orthanc)}
        processes.stop("orthanc")
        log(f"Orthanc: {figures['orthanc']['wado_series']}, {figures['orthanc']['qido']}")

        rows, notes = table(figures, index_count)
        out = ROOT / "var" / "bench"
        out.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        path = out / f"orthanc-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
        version = subprocess.run([ORTHANC, "--version"], capture_output=True, text=True, check=False).stdout
        about = {
            "date": now.strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join([".venv/bin/python", "-m", "bench.orthanc", *sys.argv[1:]]),
            "machine": info,
            "load_average_before": load_before,
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "orthanc": version.splitlines()[0] if version else "Orthanc",
            "json": str(path.relative_to(ROOT)),
            "listener_processes": args.listener_processes,
        }
        text = markdown(rows, notes, about)
        path.write_text(json.dumps({**about, "date": now.isoformat(timespec="seconds"), "set": {
            "instances": per_set, "megabytes": round(megabytes, 1), "series_retrieved": series_size},
            "setup": setup, "figures": figures, "table": rows, "notes": notes}, indent=2))  # fmt: skip
        path.with_suffix(".md").write_text(text)
        print()
        print("\n".join(text_table(rows)))
        print("\n".join(notes))
        print(f"\nMarkdown for docs/BENCHMARKS.md:\n\n{text}")
        print(f"Written: {path.relative_to(ROOT)} and {path.with_suffix('.md').relative_to(ROOT)}")
        return 0
    finally:
        processes.stop_all()
        clamd_dir = tmp / "clamd-dir"
        if clamd_dir.exists():
            shutil.rmtree(clamd_dir.read_text(), ignore_errors=True)
        bench_cleanup(db_name=DB_NAME, redis_url=REDIS_URL, tmp=tmp, keep=args.keep)


def _memory(value: dict[str, Any] | None) -> str:
    if not value:
        return "-"
    kids = value.get("children_mb") or []
    return f"{value['sum_mb']:.0f}" + (f" (main {value['main_mb']:.0f} + {' + '.join(f'{k:.0f}' for k in kids)})"
                                       if kids else "")  # fmt: skip


def _answer(value: dict[str, Any]) -> str:
    if "timed_out_s" in value:
        return f"failed: {value.get('failure') or 'timed out'} after {value.get('answered', 0)} answers"
    return f"{value['median_ms']:,.1f} / {value['p95_ms']:.0f}"


def table(figures: dict[str, dict[str, Any]], index_count: int) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """The table's rows (figure, Orthanc, Enclave, ratio Enclave / Orthanc: for rates higher is better, for times
    and CPU lower) and the notes under it: CPU per instance by process, peak memory, searches whose p95 is more
    than twice their median."""
    e, o = figures["enclave"], figures["orthanc"]
    rows: list[tuple[str, str, str, str]] = []
    notes: list[str] = []
    slow_tails: list[str] = []

    def row(label: str, ortho: float | None, encl: float | None, extra: tuple[str, str] = ("", "")) -> None:
        ratio = f"{encl / ortho:.2f}" if ortho and encl is not None else ""
        rows.append((label, "not run" if ortho is None else f"{ortho:,.1f}{extra[0]}",
                     "not run" if encl is None else f"{encl:,.1f}{extra[1]}", ratio))  # fmt: skip

    def rate(figure: dict[str, Any], key: str) -> float | None:
        return figure[key]["instances_per_second"] if key in figure else None

    small = e.get("cstore_small", {}).get("instances", index_count) if "cstore_small" in e else index_count
    for key, label in (("cstore_one", "C-STORE, one association (inst/s)"),
                       ("cstore_four", f"C-STORE, {ASSOCIATIONS} associations (inst/s)"),
                       ("stow1", "STOW-RS, 1 client (inst/s)"), ("stow4", "STOW-RS, 4 clients (inst/s)")):  # fmt: skip
        if key in o or key in e:
            row(label, rate(o, key), rate(e, key))
    if "cstore_small" in o:
        count = f"{index_count:,}" if small == index_count else f"{index_count:,} / {small:,}"
        row(f"C-STORE, {count} small instances (64x64), one association (inst/s)", rate(o, "cstore_small"),
            rate(e, "cstore_small"))  # fmt: skip
    if "cstore_clamd" in e:
        row("C-STORE, one association, Enclave with clamd (inst/s; Orthanc scans nothing)", rate(o, "cstore_one"),
            rate(e, "cstore_clamd"))  # fmt: skip
    for key, label in (("cstore_one", "one association"), ("cstore_clamd", "one association, clamd"),
                       ("cstore_small", "small instances")):  # fmt: skip
        okey = "cstore_one" if key == "cstore_clamd" else key
        if key in e and "cpu_ms_per_instance" in e[key]:
            ocpu = o.get(okey, {}).get("cpu_ms_per_instance", {}).get("total")
            row(f"CPU per instance, C-STORE {label} (ms, all processes)", ocpu, e[key]["cpu_ms_per_instance"]["total"])
            parts = ", ".join(f"{name} {value:.1f}" for name, value in e[key]["cpu_ms_per_instance"].items())
            notes.append(f"Enclave CPU ms per instance, C-STORE {label}: {parts}")
    if "cstore_profiled" in e:
        parts = ", ".join(f"{name} {value:.1f}" for name, value in e["cstore_profiled"]["cpu_ms_per_instance"].items())
        notes.append(f"Enclave CPU ms per instance, C-STORE under py-spy: {parts}; profiles: "
                     + ", ".join(v["top"] for v in e["cstore_profiled"]["profile"].values()))  # fmt: skip
    waits = {key: value["drain"] for key, value in e.items() if isinstance(value, dict) and "drain" in value}
    if waits:
        each = [f"{key} {w['seconds']:.1f} s ({w['cpu_ms_per_instance']['total']:.1f} ms CPU per instance)"
                + ("" if w["drained"] else f", NOT drained: {w['waiting_at_end']}")
                for key, w in waits.items()]  # fmt: skip
        notes.append("Enclave: each phase began once the Celery queues were empty and nothing unacknowledged; the "
                     "waits after each (and the CPU of the tasks done in them, outside the phase's figures): "
                     + "; ".join(each))  # fmt: skip
    row("WADO-RS series (MB/s, median)", o["wado_series"]["megabytes_per_second_median"],
        e["wado_series"]["megabytes_per_second_median"])  # fmt: skip

    def search(label: str, ov: dict[str, Any], ev: dict[str, Any]) -> None:
        marks = []
        for who, value in (("Orthanc", ov), ("Enclave", ev)):
            tail = value["p95_ms"] > 2 * value["median_ms"]
            marks.append(" (!)" if tail else "")
            if tail:
                slow_tails.append(f"{who}, {label}: p95 {value['p95_ms']} ms > 2 x median {value['median_ms']} ms")
        row(label, ov["median_ms"], ev["median_ms"], (f" / {ov['p95_ms']:.0f}{marks[0]}",
                                                      f" / {ev['p95_ms']:.0f}{marks[1]}"))  # fmt: skip

    if "floor" in o and "floor" in e:  # not a search: outside the searches' p95 target and its note
        of, ef = o["floor"], e["floor"]
        row("A request that reads nothing: Enclave /health/, Orthanc /system (ms median / p95)", of["median_ms"],
            ef["median_ms"], (f" / {of['p95_ms']:.0f}", f" / {ef['p95_ms']:.0f}"))  # fmt: skip
    for name, value in o["qido"].items():
        search(f"QIDO-RS, small tenant: {name} (ms median / p95)", value, e["qido"][name])
    for name, value in o.get("qido_index", {}).items():
        ev = e["qido_index"][name]
        if "timed_out_s" in value or "timed_out_s" in ev:
            rows.append((f"QIDO-RS at {index_count:,}: {name} (ms median / p95)", _answer(value), _answer(ev), ""))
            slow_tails.append(f"QIDO-RS at {index_count:,}: {name}: failed (no median)")
            continue
        if value["results_median"] != ev["results_median"]:
            name += f" [results differ: {value['results_median']} / {ev['results_median']}]"
        search(f"QIDO-RS at {index_count:,}: {name} (ms median / p95)", value, ev)
    notes.append("p95 within 2x the median: every search" if not slow_tails
                 else "p95 more than 2x the median (marked (!)): " + "; ".join(slow_tails))  # fmt: skip
    memory = e.get("memory", {})
    labels = (("listener", "listener"), ("listener_clamd", "listener (clamd)"),
              ("worker_cstore", "Celery worker (C-STORE)"),
              ("worker_default_cstore", "Celery worker default,maintenance (C-STORE)"),
              ("worker_clamd", "Celery worker (clamd)"),
              ("worker_stow", "Celery worker (STOW-RS)"), ("gunicorn", "gunicorn (STOW-RS, reads)"),
              ("clamd", "clamd"))  # fmt: skip
    notes.append("Peak resident memory (VmHWM, MB; a process and its children): "
                 + "; ".join(f"{label} {_memory(memory.get(key))}" for key, label in labels if key in memory)
                 + f"; Orthanc {_memory(o.get('memory', {}).get('orthanc'))}")  # fmt: skip
    return rows, notes


def text_table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    width = max(len(r[0]) for r in rows)
    lines = [f"{'figure':<{width}} {'Orthanc':>18} {'Enclave':>18} {'ratio':>6}"]
    lines += [f"{label:<{width}} {ortho:>18} {encl:>18} {ratio:>6}" for label, ortho, encl, ratio in rows]
    return lines


def markdown(rows: list[tuple[str, str, str, str]], notes: list[str], about: dict[str, Any]) -> str:
    """The table as docs/BENCHMARKS.md holds it, with the machine, the date, the command and the load average."""
    m = about["machine"]
    lines = [
        f"`{about['command']}`, {about['date']}, on {m.get('nproc')} cores ({m.get('cpu')}), {m.get('ram_gb')} GB, "
        f"Debian {m.get('debian')}, PostgreSQL {m.get('postgresql')}, Redis {m.get('redis')}, {about['orthanc']}. "
        f"Load average {' / '.join(map(str, about['load_average_before']))} before, "
        f"{' / '.join(map(str, about['load_average_after']))} after. Enclave's DICOM listener: "
        f"{about.get('listener_processes', 1)} process(es) sharing its port. Result: `{about['json']}`.",
        "",
        "| figure | Orthanc | Enclave | ratio |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {label} | {ortho} | {encl} | {ratio} |" for label, ortho, encl, ratio in rows]
    lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from bench.ingest import _signals_raise

    with _signals_raise():
        sys.exit(main())
