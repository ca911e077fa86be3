"""STOW-RS alone: where a request of 10 CT instances spends its CPU, and the rate from 1 and 4 clients.

Two measurements, each on a fresh database of its own (`--db`, dropped at the end unless `--keep`) and Redis
database `--redis` (flushed), the built-in scanner, encryption and auditing on, rate limits lifted as
bench/orthanc.py lifts them:

- `--in-process`: `--requests` requests of 10 CT (0.53 MB each) through Django's test client (every middleware,
  the bearer token, the door, the quarantine, the receipt, the pipeline, the response), one after the other.
  Per request: CPU (`time.process_time`) and SQL statements (CaptureQueriesContext), medians over the requests
  after the first two; and the CPU and wall time per instance of the request's steps (`identify`,
  `ingest_quarantine`, `ingest_receive_many`, `ingest_process_received`, the wait for verdicts). `--eager` runs
  the worker's task in this process when the receipt commits (Celery eager), for a tree whose request hands its
  parts to the worker; `--door-only` sets DICOMWEB_STOW_WAIT_SECONDS=0, so the request answers after its receipt
  (202) and the process's CPU is the door's alone, without the worker's.
- otherwise, end to end: gunicorn as bench/orthanc.py starts it (2 gthread workers x 8 threads) and the Celery
  workers as its STOW-RS phase starts them (`workers_start`: the ingest queue's worker -c 2, and the default and
  maintenance queues' worker -c 1, which draws the thumbnails; `--one-worker`: one worker -c 2 on every queue, as
  before session 11; CPU of both counted as "worker"); for each entry of `--clients` a fresh set of
  `--per-series` x 4 series CT is sent in requests of 10 (bench.orthanc's client: a keep-alive session per client
  thread) and timed to the last instance searchable; CPU ms per instance of gunicorn, the worker and the
  database's PostgreSQL backends from /proc; each request's latency (median, p90).

    .venv/bin/python -m bench.stow [--clients 1,4,1,4] [--per-series 60] [--db enclave_bench_stow --redis 12]
        [--port 18200]
    .venv/bin/python -m bench.stow --in-process [--requests 30] [--eager | --door-only] [--sql]

Figures: docs/BENCHMARKS.md, "STOW-RS processed in the request" and "STOW-RS: the request's own CPU".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402  (the path above first)
    PG_SERVER,
    BenchError,
    Processes,
    bench_cleanup,
    bench_environment,
    django_on_fresh_database,
    free_port,
    generate,
    log,
    multipart,
    provision,
    stores_env,
    wait_final,
)
from bench.orthanc import (  # noqa: E402
    NO_RATE_LIMITS,
    enclave_reader,
    enclave_searchable_at,
    gunicorn_start,
    stow,
    worker_groups,
    workers_start,
)
from bench.profile import CpuMeter, pids_of, postgres_backends, wait_idle  # noqa: E402

PER_REQUEST = 10
STEPS = ("identify", "ingest_quarantine", "ingest_receive_many", "ingest_process_received", "ingest_verdicts_wait")
CONTENT_TYPE = 'multipart/related; type="application/dicom"; boundary={boundary}'


def _send(url: str, headers: dict[str, str], files: list[Path], clients: int) -> tuple[float, _Ends]:
    """POST the files in requests of PER_REQUEST from `clients` threads, each over a keep-alive session of its
    own, as bench.orthanc's STOW-RS phase does; (t0, each request's latency in ms, with its start and end)."""
    latencies = _Ends()
    t0, _ = stow(url, headers, files, clients=clients, batch=PER_REQUEST, latencies=latencies)
    return t0, latencies


def end_to_end(args: argparse.Namespace, env: dict[str, str], tmp: Path, db: str) -> list[dict[str, Any]]:
    import requests
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        own = {int(cursor.fetchone()[0])}
    clients = [int(n) for n in args.clients.split(",")]
    sets = {i: generate(tmp / f"set{i}", studies=2, series=2, per_series=args.per_series) for i in range(len(clients))}
    targets = {i: provision(f"st{i}") for i in range(len(clients))}
    processes = Processes(tmp)
    results = []
    try:
        workers_start(processes, env, one=args.one_worker)
        port = args.port or free_port()
        root = f"http://127.0.0.1:{port}/dicomweb"
        web = gunicorn_start(processes, env, f"{root}/{targets[0].tenant.slug}", port, enclave_reader(targets[0]))
        groups: dict[str, Callable[[], list[int]]] = {
            "gunicorn": pids_of(web),
            "worker": lambda: [pid for group in worker_groups(processes).values() for pid in group()],
            "postgres": lambda: postgres_backends(db, own),
        }
        for i, count in enumerate(clients):
            target, files = targets[i], sets[i]
            headers = {"Authorization": f"Bearer {target.token}"}
            for _ in range(4):  # both gunicorn workers have loaded the application
                requests.get(f"{root}/{target.tenant.slug}/studies?limit=1", headers=headers, timeout=30)
            wait_idle(lambda: groups["gunicorn"]() + groups["worker"](), timeout=30)
            spies = (
                _spy_start(args.spy, f"c{count}-set{i}-gunicorn", groups["gunicorn"]())
                + _spy_start(args.spy, f"c{count}-set{i}-worker", groups["worker"]())
                if args.spy
                else []
            )
            meter = CpuMeter(groups).start()
            t0, latencies = _send(f"{root}/{target.tenant.slug}/studies", headers, files, count)
            wait_final(target, len(files), args.timeout)
            last = enclave_searchable_at(target)
            time.sleep(0.5)  # the worker's and gunicorn's last CPU after the last verdict
            cpu = meter.stop()
            _spy_stop(spies)
            result = {
                "clients": count,
                "instances": len(files),
                "instances_per_second": round(len(files) / (last - t0), 1),
                "cpu_ms_per_instance": {name: round(value * 1000 / len(files), 2) for name, value in cpu.items()},
                "cpu_ms_per_instance_total": round(sum(cpu.values()) * 1000 / len(files), 2),
                "request_ms_median": round(statistics.median(latencies), 1),
                "request_ms_p90": round(sorted(latencies)[int(len(latencies) * 0.9)], 1),
                "load_average": round(os.getloadavg()[0], 2),
                "timeline_ms_median": _timeline(target, latencies.spans) if count == 1 else {},
            }
            log(json.dumps(result))
            results.append(result)
    finally:
        processes.stop_all()
    return results


def _spy_start(folder: str, name: str, pids: list[int]) -> list[Any]:
    """py-spy (installed apart from .venv, bench.http_cost's `_py_spy`) on each of `pids`, 250 Hz, raw stacks
    with the threads waiting left out, into `folder`/`name`-<pid>.txt."""
    import subprocess  # nosec B404: the profiler, a fixed command of this benchmark

    from bench.http_cost import _py_spy

    Path(folder).mkdir(parents=True, exist_ok=True)
    spies = [
        subprocess.Popen(  # nosec B603
            [
                _py_spy(),
                "record",
                "--pid",
                str(pid),
                "-r",
                "250",
                "--format",
                "raw",
                "-o",
                f"{folder}/{name}-{pid}.txt",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]
    time.sleep(1.0)  # attached before the first request
    return spies


def _spy_stop(spies: list[Any]) -> None:
    for spy in spies:
        spy.send_signal(2)
        spy.wait(timeout=60)


class _Ends(list):  # type: ignore[type-arg]
    """The latencies list bench.orthanc's `stow` appends to, keeping also when each was appended (the answer's
    arrival), so that each request's start is known: end - latency."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[tuple[float, float]] = []

    def append(self, latency: float) -> None:
        end = time.time()
        self.spans.append((end - latency / 1000, end))
        super().append(latency)


def _timeline(target: Any, spans: list[tuple[float, float]]) -> dict[str, float]:
    """Where the wall time of a request of one client goes (median over the requests, ms), from the client's
    start and end of each request and its items' own timestamps: start -> receipt (the items' `created_at`,
    taken as the receipt statement was built: the body read, identified and sealed), receipt -> the worker's
    claim (first `claimed_at`: the Celery message and the worker's pick-up), claim -> last verdict (last
    `finished_at`: the worker's batch), last verdict -> the answer at the client (the batch's audit and commit,
    the wake-up, the request's read of its items and its answer). Requests and batches are paired in order, which
    holds for one client only."""
    from django.db.models import Max, Min

    from studies.models import IngestItem
    from tenants.scoping import tenant_scope

    with tenant_scope(target.tenant):
        rows = list(
            IngestItem.objects.values("batch")
            .annotate(received=Min("created_at"), claimed=Min("claimed_at"), finished=Max("finished_at"))
            .order_by("received")
        )
    if len(rows) != len(spans) or not all(r["claimed"] and r["finished"] for r in rows):
        return {}
    steps: dict[str, list[float]] = {}
    for (start, end), row in zip(sorted(spans), rows, strict=True):
        marks = [start, row["received"].timestamp(), row["claimed"].timestamp(), row["finished"].timestamp(), end]
        for name, a, b in zip(_TIMELINE, marks, marks[1:], strict=False):
            steps.setdefault(name, []).append((b - a) * 1000)
    return {name: round(statistics.median(values), 1) for name, values in steps.items()}


_TIMELINE = ("start_to_receipt", "receipt_to_claim", "claim_to_last_verdict", "last_verdict_to_answer")


def in_process(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from studies.dicomweb import stow as stow_module

    if args.eager:
        from celery import current_app

        current_app.conf.task_always_eager = True  # the project's app (portal.celery, loaded with Django)
    files = generate(tmp / "set", studies=1, series=4, per_series=(args.requests * PER_REQUEST) // 4 + 1)
    target = provision("stc")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {target.token}", HTTP_HOST="127.0.0.1")
    url = f"/dicomweb/{target.tenant.slug}/studies"
    client.get(f"{url}?limit=1")
    steps: dict[str, list[float]] = {}

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                spent = steps.setdefault(name, [0.0, 0.0])
                spent[0] += time.process_time() - cpu
                spent[1] += time.perf_counter() - wall

        return wrapper

    for name in STEPS:
        if hasattr(stow_module, name):
            setattr(stow_module, name, timed(name, getattr(stow_module, name)))
    cpu, wall, statements = [], [], []
    for i in range(args.requests):
        if i == 2:
            steps.clear()  # the first two requests warm the caches up
        boundary = uuid.uuid4().hex
        body = multipart(files[i * PER_REQUEST : (i + 1) * PER_REQUEST], boundary)
        with CaptureQueriesContext(connection) as queries:
            started_cpu, started = time.process_time(), time.perf_counter()
            response = client.generic(
                "POST",
                url,
                body,
                content_type=CONTENT_TYPE.format(boundary=boundary),
                HTTP_ACCEPT="application/dicom+json",
            )
            cpu.append((time.process_time() - started_cpu) * 1000)
            wall.append((time.perf_counter() - started) * 1000)
        # Without a wait (--door-only) the answer is 202, every instance still processing.
        if response.status_code != (202 if args.door_only else 200):
            raise BenchError(f"HTTP {response.status_code}: {response.content[:300]!r}")
        statements.append(len(queries.captured_queries))
        if args.sql and i == args.requests - 1:
            for query in queries.captured_queries:
                print(query["sql"][:160])
    measured = (args.requests - 2) * PER_REQUEST
    return {
        "requests": args.requests,
        "cpu_ms_per_request": round(statistics.median(cpu[2:]), 1),
        "cpu_ms_per_instance": round(statistics.median(cpu[2:]) / PER_REQUEST, 2),
        "statements_per_request": statistics.median(statements[2:]),
        "wall_ms_per_request": round(statistics.median(wall[2:]), 1),
        "steps_cpu_wall_ms_per_instance": {
            name: [round(spent[0] * 1000 / measured, 2), round(spent[1] * 1000 / measured, 2)]
            for name, spent in steps.items()
        },
        "load_average": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("--requests", type=int, default=30, help="--in-process: requests of 10 instances")
    parser.add_argument("--eager", action="store_true", help="--in-process: the worker's task runs in this process")
    parser.add_argument("--sql", action="store_true", help="--in-process: print the last request's statements")
    parser.add_argument(
        "--door-only",
        action="store_true",
        help="--in-process: DICOMWEB_STOW_WAIT_SECONDS=0, the request answers after its receipt (the door's CPU alone)",
    )
    parser.add_argument("--clients", default="1,4", help="end to end: one set per entry, sent from that many clients")
    parser.add_argument("--per-series", type=int, default=60, help="end to end: instances per series (4 series)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--db", default="enclave_bench_stow")
    parser.add_argument("--redis", type=int, default=12)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--port", type=int, default=0, help="end to end: gunicorn's port (default: any free one)")
    parser.add_argument(
        "--one-worker",
        action="store_true",
        help="end to end: one Celery worker (-c 2) on every queue, as bench.stow ran before session 11",
    )
    parser.add_argument(
        "--spy", default="", help="end to end: py-spy each gunicorn worker and Celery worker process into this folder"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="enclave-bench-stow-"))
    redis_url = f"redis://127.0.0.1:6379/{args.redis}"
    env = bench_environment(db_url=f"{PG_SERVER}/{args.db}", redis_url=redis_url, var_dir=tmp / "var",
                            log_level="WARNING")  # fmt: skip
    env = {**stores_env(env, tmp / "stores", ""), "RATE_LIMITS": NO_RATE_LIMITS}
    if args.door_only:
        env["DICOMWEB_STOW_WAIT_SECONDS"] = "0"
    os.environ.clear()
    os.environ.update(env)
    try:
        django_on_fresh_database(db_name=args.db, redis_url=redis_url)
        result: Any = in_process(args, tmp) if args.in_process else end_to_end(args, env, tmp, args.db)
        print(json.dumps(result, indent=1))
    finally:
        bench_cleanup(db_name=args.db, redis_url=redis_url, tmp=tmp, keep=args.keep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
