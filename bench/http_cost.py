"""The server's cost of a QIDO-RS search over HTTP: CPU per request of the gunicorn worker and of PostgreSQL.

bench/request_cost.py measures a search in-process (Django's test client, no socket); this one asks gunicorn, as
bench/orthanc.py starts it (portal/gunicorn_conf.py) but with one worker so that its CPU is the request's, over one
keep-alive `requests.Session`, the searches issue 10 found slowest against Orthanc at 20,000 instances (studies by
PatientID, series of a study, instances of a series; each request another patient, study or series) and two of
its wildcard and range searches (PatientName=MARTIN*; ModalitiesInStudy=CT with one month of StudyDate, another
month each request), as bench/orthanc.py's `scale_searches` asks them. Per search it prints, over `--repeat`
requests after a warm-up:

- the worker's CPU ms per request (user + system, /proc/<pid>/stat of the worker process, all its threads);
- PostgreSQL's CPU ms per request (every backend connected to the database, /proc/<pid>/stat);
- the client's median and p95 wall time (noise on a shared machine; printed for scale, not a figure to compare);
- with `--sql`: each statement of one request of the search (captured in this process through Django's test
  client), with its execution and planning time from EXPLAIN ANALYZE (SELECTs; the audit INSERT is shown, not
  run again);
- with `--sql-cpu-runs N`: each SELECT of that request run N times more on one backend, and the Query event N
  times on its own, for PostgreSQL's CPU per execution (/proc of the backend);
- with `--in-process`: the same requests through Django's test client in this process, its CPU per request;
- with `--search NAME` (repeatable): only those searches over HTTP, for more alternated runs in the same time;
- with `--gap-ms N`: the client pauses N ms after each measured request (`--gap-busy`: spinning on a core instead of
  sleeping), as bench/orthanc.py's alternating reads leave each server idle while the other answers;
- with `--py-spy DIR`: a py-spy profile of the worker during the measured requests (`--gil`: the thread holding
  the GIL, so waits do not count).

The 20,000-instance index is bench/orthanc.py's (bench/query.py's fixture: 1 patient per 20 instances, 1 study per
10, 1 series per 4), built into the database `--db` (dropped at the end unless `--keep`; `--reuse` measures a kept
one again without building it, e.g. another tree against the same index), Redis database `--redis`.

    .venv/bin/python -m bench.http_cost [--instances 20000] [--repeat 300] [--worker-class gthread|sync] [--sql
        [--plans] [--sql-cpu-runs 300]] [--in-process] [--py-spy var/bench/spy] [--db enclave_h1_http --redis 1]
        [--keep | --reuse] [--gap-ms 25] [--search "PatientName=MARTIN*" --search "CT + one month"]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402
    PG_SERVER,
    Processes,
    bench_cleanup,
    bench_environment,
    children,
    cpu_seconds,
    django_on_fresh_database,
    free_port,
    postgres_cpu,
    stores_env,
)
from bench.orthanc import NO_RATE_LIMITS, gunicorn_start, percentile  # noqa: E402

# The settings studies.selectors.matching sends in front of a search outside a transaction.
SEARCH_SETTINGS = "SELECT set_config('statement_timeout'"
SEARCHES = ("by PatientID", "series of a study", "instances of a series", "PatientName=MARTIN*", "CT + one month")


def search_path(name: str, picked: dict[str, Any], i: int) -> str:
    """Request i of search `name` (another patient, study, series or month each time), as bench/orthanc.py asks."""
    from urllib.parse import urlencode

    from bench.orthanc import scale_searches

    path, params = scale_searches(picked)[name](i)
    return f"{path}?{urlencode(params)}" if params else path


def _pause(seconds: float, *, busy: bool) -> None:
    """`seconds` of idling (`busy`: of this process's CPU spinning, as another server's request would take a core)."""
    if not busy:
        time.sleep(seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _py_spy() -> str:
    """py-spy beside this Python, else on PATH (installed apart from the shared .venv: `pip install --target`)."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else (shutil.which("py-spy") or str(beside))


def thread_cpu_seconds(pid: int) -> tuple[float, float]:
    """(the main thread's, every other thread's) CPU seconds of process `pid` so far, from /proc/<pid>/task: in a
    gthread worker the main thread is gunicorn's own loop (poll, accept, hand-over to the pool, keep-alive
    re-registration) and the others are the pool that runs Django."""
    main = other = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        seconds = cpu_seconds_of(task / "stat")
        if task.name == str(pid):
            main += seconds
        else:
            other += seconds
    return main, other


def cpu_seconds_of(stat: Path) -> float:
    try:
        fields = stat.read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gunicorn_one_worker(
    processes: Processes,
    env: dict[str, str],
    *,
    worker_class: str,
    base: str,
    token: str,
    threads: int = 8,
    extra: tuple[str, ...] = (),
) -> int:
    """gunicorn as bench/orthanc.py starts it, with one worker (`threads` threads, `extra` more arguments, e.g.
    `--keepalive 5`); the worker's pid."""
    port = int(base.split(":")[2].split("/")[0])
    started = gunicorn_start(
        processes, env, base, port, token, worker_class=worker_class, workers=1, threads=threads, extra=extra
    )
    workers = children(started.process.pid)
    if len(workers) != 1:
        raise SystemExit(f"expected one gunicorn worker, found {workers}")
    return workers[0]


def http_measured(
    *,
    base: str,
    token: str,
    picked: dict[str, Any],
    worker: int,
    db: str,
    repeat: int,
    spy_dir: str,
    spy_gil: bool = False,
    spy_rate: int = 200,
    gap_ms: float = 0.0,
    gap_busy: bool = False,
    searches: tuple[str, ...] = SEARCHES,
) -> dict[str, Any]:
    import requests

    headers = {"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"}
    out: dict[str, Any] = {}
    with requests.Session() as session:
        for name in searches:
            for i in range(30):  # warm-up: every thread's connection, the worker's caches
                answer = session.get(f"{base}/{search_path(name, picked, i)}", headers=headers, timeout=60)
                if answer.status_code != 200 or not answer.json():
                    raise SystemExit(f"{name}: HTTP {answer.status_code} {answer.content[:200]!r}")
            spy = None
            if spy_dir:
                Path(spy_dir).mkdir(parents=True, exist_ok=True)
                spy = subprocess.Popen(
                    [_py_spy(), "record", "--pid", str(worker), "-r", str(spy_rate), *(["--gil"] if spy_gil else []),
                     "--format", "raw", "-o", f"{spy_dir}/{name.replace(' ', '_')}.txt"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(1.0)
            walls = []
            threads0 = thread_cpu_seconds(worker)
            worker0, pg0 = cpu_seconds(worker), postgres_cpu(db)
            for i in range(30, 30 + repeat):
                t0 = time.perf_counter()
                answer = session.get(f"{base}/{search_path(name, picked, i)}", headers=headers, timeout=60)
                _ = answer.content
                walls.append((time.perf_counter() - t0) * 1000)
                if gap_ms:  # the client's pause before its next request (bench.orthanc's reads take turns)
                    _pause(gap_ms / 1000, busy=gap_busy)
            worker1, pg1 = cpu_seconds(worker), postgres_cpu(db)
            threads1 = thread_cpu_seconds(worker)
            if spy is not None:
                spy.send_signal(2)
                spy.wait(timeout=60)
            pg = sum(cpu - pg0.get(pid, 0.0) for pid, cpu in pg1.items())
            out[name] = {
                "worker_cpu_ms": round((worker1 - worker0) * 1000 / repeat, 2),
                "worker_main_thread_cpu_ms": round((threads1[0] - threads0[0]) * 1000 / repeat, 2),
                "worker_pool_threads_cpu_ms": round((threads1[1] - threads0[1]) * 1000 / repeat, 2),
                "postgres_cpu_ms": round(pg * 1000 / repeat, 2),
                "wall_median_ms": round(statistics.median(walls), 2),
                "wall_p95_ms": round(percentile(walls, 0.95), 2),
            }
            main, pool = out[name]["worker_main_thread_cpu_ms"], out[name]["worker_pool_threads_cpu_ms"]
            print(f"{name:24s} worker {out[name]['worker_cpu_ms']:6.2f} ms CPU (main thread {main:.2f}, pool "
                  f"{pool:.2f}), PostgreSQL "
                  f"{out[name]['postgres_cpu_ms']:5.2f} ms CPU per request; wall median {out[name]['wall_median_ms']}"
                  f" ms, p95 {out[name]['wall_p95_ms']} ms", flush=True)  # fmt: skip
    return out


def _backend_cpu_ms(tenant: Any, settings: str, statement: str, runs: int) -> float:
    """The PostgreSQL backend's CPU per execution of `statement` (with `settings` in front of it, as the request
    sends it): /proc/<backend>/stat over `runs` executions."""
    from django.db import connection

    from tenants.scoping import tenant_scope

    with tenant_scope(tenant), connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
        before = cpu_seconds(backend)
        for _ in range(runs):
            if settings:  # in front of the statement, in its implicit transaction (studies.selectors.matching)
                cursor.execute(settings + "; " + statement)
                cursor.cursor.nextset()
                cursor.fetchall()
            else:
                cursor.execute(statement)
                cursor.fetchall()
        return (cpu_seconds(backend) - before) * 1000 / runs


def audit_cpu(*, tenant_slug: str, runs: int) -> None:
    """The Query event of a search on its own (studies.services.reads.studies_query_record: BEGIN, the chain
    head's lock, the INSERT with the head's UPDATE, COMMIT): the backend's and this process's CPU per event."""
    from django.db import connection

    from studies.services.reads import studies_query_record
    from tenants.models import Membership, Tenant
    from tenants.scoping import tenant_scope

    tenant = Tenant.objects.get(slug=tenant_slug)
    with tenant_scope(tenant):
        user = Membership.objects.select_related("user").first().user
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]
        backend0, own0 = cpu_seconds(backend), time.process_time()
        for _ in range(runs):
            studies_query_record(actor=user, resource="/dicomweb/x/studies", query_string="PatientID=X", results=0,
                                 source_address="127.0.0.1", actor_role="radiologist")  # fmt: skip
        backend1, own1 = cpu_seconds(backend), time.process_time()
    print(f"Query event alone: PostgreSQL {(backend1 - backend0) * 1000 / runs:.3f} ms CPU, "
          f"this process {(own1 - own0) * 1000 / runs:.3f} ms CPU per event")  # fmt: skip


def statements_explained(
    *, base_path: str, token: str, picked: dict[str, Any], tenant_slug: str, plans: bool = False, cpu_runs: int = 0
) -> None:
    """The statements of one request of each search, each with its EXPLAIN ANALYZE times; `plans`: the search's
    statement and its plan in full; `cpu_runs`: each SELECT run that many times more, for the backend's CPU."""
    from django.db import connection, transaction
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from tenants.models import Tenant
    from tenants.scoping import tenant_scope

    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_ACCEPT="application/dicom+json",
                    REMOTE_ADDR="127.0.0.1", HTTP_HOST="127.0.0.1")  # fmt: skip
    tenant = Tenant.objects.get(slug=tenant_slug)
    for name in SEARCHES:
        for i in range(3):
            client.get(f"{base_path}/{search_path(name, picked, i)}")
        with CaptureQueriesContext(connection) as queries:
            answer = client.get(f"{base_path}/{search_path(name, picked, 7)}")
        print(f"{name}: HTTP {answer.status_code}, {len(queries)} statements")
        for query in queries.captured_queries:
            sql = query["sql"]
            timing = ""
            words = set(sql.upper().replace("(", " ").split())
            if sql.lstrip().upper().startswith(("SELECT", "WITH")) and not words & {"INSERT", "UPDATE", "DELETE"}:
                settings, _, statement = sql.partition("; ") if sql.startswith(SEARCH_SETTINGS) else ("", "", sql)
                with tenant_scope(tenant), transaction.atomic(), connection.cursor() as cursor:
                    if settings:  # the search's own settings (studies.selectors.matching), for its transaction
                        cursor.execute(settings)
                    cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement)
                    plan = cursor.fetchone()[0]
                    plan = plan[0] if isinstance(plan, list) else json.loads(plan)[0]
                timing = f"execution {plan['Execution Time']:.3f} ms, planning {plan['Planning Time']:.3f} ms"
                if settings and plans:
                    with tenant_scope(tenant), transaction.atomic(), connection.cursor() as cursor:
                        cursor.execute(settings)
                        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement)
                        print(statement, *(row[0] for row in cursor.fetchall()), sep="\n")
            if timing and cpu_runs:
                timing += f", PG CPU {_backend_cpu_ms(tenant, settings, statement, cpu_runs):.3f} ms"
            print(f"  [{float(query['time']) * 1000:6.2f} ms round trip] {timing:42s} {sql[:150]}")


def in_process_cpu(*, base_path: str, token: str, picked: dict[str, Any], repeat: int) -> None:
    """The same requests through Django's test client in this process (no socket, no gunicorn): its CPU per
    request (`time.process_time`), beside the worker's over HTTP, for the share the server around Django takes."""
    from django.test import Client

    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_ACCEPT="application/dicom+json",
                    REMOTE_ADDR="127.0.0.1", HTTP_HOST="127.0.0.1")  # fmt: skip
    for name in SEARCHES:
        for i in range(30):
            client.get(f"{base_path}/{search_path(name, picked, i)}")
        t0 = time.process_time()
        for i in range(30, 30 + repeat):
            client.get(f"{base_path}/{search_path(name, picked, i)}")
        print(
            f"{name:24s} in-process (test client) {(time.process_time() - t0) * 1000 / repeat:6.2f} ms CPU per request"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--worker-class", default="gthread", help="gthread, sync, or a class's dotted path")
    parser.add_argument("--threads", type=int, default=8, help="the worker's threads (gunicorn --threads)")
    parser.add_argument("--gunicorn-arg", action="append", default=[], help="one more argument for gunicorn")
    parser.add_argument("--db", default="enclave_h1_http")
    parser.add_argument("--redis", type=int, default=1)
    parser.add_argument("--port", type=int, default=0, help="gunicorn's port (default: any free one)")
    parser.add_argument("--keep", action="store_true", help="keep the database (and its state file) afterwards")
    parser.add_argument("--reuse", action="store_true", help="measure a database kept by an earlier --keep run")
    parser.add_argument("--sql", action="store_true", help="each statement of one request, with EXPLAIN ANALYZE")
    parser.add_argument("--sql-cpu-runs", type=int, default=0, help="with --sql: PG CPU per statement, over N runs")
    parser.add_argument("--in-process", action="store_true", help="the same requests through Django's test client")
    parser.add_argument("--plans", action="store_true", help="with --sql: each search's statement and plan in full")
    parser.add_argument("--py-spy", default="", help="a folder for py-spy profiles of the worker, one per search")
    parser.add_argument("--gap-ms", type=float, default=0.0, help="the client's pause between two measured requests")
    parser.add_argument("--gap-busy", action="store_true", help="with --gap-ms: the pause spent spinning on a core")
    parser.add_argument("--py-spy-rate", type=int, default=200, help="py-spy's samples per second")
    parser.add_argument("--py-spy-gil", action="store_true", help="py-spy --gil: only the thread holding the GIL")
    parser.add_argument("--search", action="append", choices=SEARCHES, default=[],
                        help="measure only this search over HTTP (repeatable; default: all five)")  # fmt: skip
    args = parser.parse_args()
    state_file = ROOT / "var" / "bench" / f"http_cost-{args.db}.json"
    redis_url = f"redis://127.0.0.1:6379/{args.redis}"
    tmp = Path(tempfile.mkdtemp(prefix="enclave-http-cost-"))
    env = bench_environment(db_url=f"{PG_SERVER}/{args.db}", redis_url=redis_url, var_dir=tmp / "var",
                            log_level="WARNING")  # fmt: skip
    env = {**stores_env(env, tmp / "stores", ""), "RATE_LIMITS": NO_RATE_LIMITS}
    state: dict[str, Any] = json.loads(state_file.read_text()) if args.reuse else {}
    if state:  # the kept database's secrets: its token's hash and the tenants' wrapped keys depend on them
        env.update(SECRET_KEY=state["secret_key"], MASTER_KEY=state["master_key"])
    os.environ.update(env)
    (tmp / "var" / "staticfiles").mkdir(parents=True, exist_ok=True)
    processes = Processes(tmp)
    keep = args.keep or args.reuse
    try:
        if state:
            import django

            django.setup()
        else:
            django_on_fresh_database(db_name=args.db, redis_url=redis_url)
            from bench.orthanc import index_fixture

            t0 = time.monotonic()
            target, picked = index_fixture(args.instances, seed=1)
            state = {"token": target.token, "picked": picked, "slug": target.tenant.slug,
                     "secret_key": env["SECRET_KEY"], "master_key": env["MASTER_KEY"]}  # fmt: skip
            print(f"index of {args.instances} instances built in {time.monotonic() - t0:.0f} s")
            if args.keep:
                state_file.parent.mkdir(parents=True, exist_ok=True)
                state_file.write_text(json.dumps(state))
        print(f"load average {os.getloadavg()[0]:.2f} before, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
        if args.sql:
            statements_explained(base_path=f"/dicomweb/{state['slug']}", token=state["token"],
                                 picked=state["picked"], tenant_slug=state["slug"], plans=args.plans,
                                 cpu_runs=args.sql_cpu_runs)  # fmt: skip
        if args.sql and args.sql_cpu_runs:
            audit_cpu(tenant_slug=state["slug"], runs=args.sql_cpu_runs)
        if args.in_process:
            in_process_cpu(base_path=f"/dicomweb/{state['slug']}", token=state["token"], picked=state["picked"],
                           repeat=args.repeat)  # fmt: skip
        base = f"http://127.0.0.1:{args.port or free_port()}/dicomweb/{state['slug']}"
        worker = gunicorn_one_worker(processes, env, worker_class=args.worker_class, base=base, token=state["token"],
                                     threads=args.threads, extra=tuple(args.gunicorn_arg))  # fmt: skip
        http_measured(base=base, token=state["token"], picked=state["picked"], worker=worker, db=args.db,
                      repeat=args.repeat, spy_dir=args.py_spy, spy_gil=args.py_spy_gil, spy_rate=args.py_spy_rate,
                      gap_ms=args.gap_ms,
                      gap_busy=args.gap_busy, searches=tuple(args.search) or SEARCHES)  # fmt: skip
        print(f"load average {os.getloadavg()[0]:.2f} after")
    finally:
        processes.stop_all()
        bench_cleanup(db_name=args.db, redis_url=redis_url, tmp=tmp, keep=keep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
