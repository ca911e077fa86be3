"""The CPU of one QIDO-RS search with many results, in-process: the web process's CPU, the PostgreSQL backend's CPU
and the SQL statements per request, and the SHA-256 of an answer (to show a change keeps the bytes).

The searches of bench/orthanc.py's 200,000 index that answer many studies (one-year StudyDate: 1,000 of about
4,000; PatientName=MARTIN*; CT + one month; all studies, limit 100) plus by PatientID, sent through Django's test
client (middleware, DRF, token, rate limits lifted as bench/orthanc.py lifts them, permission, the search, the
Query audit event, DICOM JSON, the renderer) in a process of its own with garbage collection set as a gunicorn
worker sets it (portal/gunicorn_conf.py). The index has the study shape of the 200,000 index (bench/query.py's
`fixture`: 10,000 patients, 20,000 studies, 50,000 series) and `--instances` instances (a study-level search never
reads them). Figures: docs/BENCHMARKS.md, "h4 branch, session 3".

    .venv/bin/python -m bench.search_cost --db enclave_bench_search --redis 11 [--keep]   # build, measure, drop
    .venv/bin/python -m bench.search_cost --db enclave_bench_search --redis 11 --reuse    # measure a kept one
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
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

from bench.ingest import PG_SERVER, bench_cleanup, bench_environment, django_on_fresh_database, stores_env  # noqa: E402
from bench.orthanc import NO_RATE_LIMITS, scale_searches  # noqa: E402

SEARCHES = (
    "one-year StudyDate",
    "PatientName=MARTIN*",
    "CT + one month",
    "all studies, limit 100",
    "by PatientID",
    "series of a study",
    "instances of a series",
)
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def backend_cpu_seconds(pid: int) -> float:
    """utime + stime of a PostgreSQL backend (a local server), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def measured(state: dict[str, Any], repeat: int, warmup: int, only: list[str]) -> None:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_AUTHORIZATION=f"Bearer {state['token']}", HTTP_ACCEPT="application/dicom+json",
                    REMOTE_ADDR="127.0.0.1", HTTP_HOST="127.0.0.1:8000")  # fmt: skip
    base = "/dicomweb/benchq"
    searches = scale_searches(state["picked"])

    def url(name: str, i: int) -> tuple[str, dict[str, str]]:
        path, params = searches[name](i)
        return f"{base}/{path}", params

    client.get(*url("by PatientID", 0))  # the connection opened, the URL patterns loaded
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(50_000, gen1, gen2)  # portal/gunicorn_conf.py GC_GEN0_THRESHOLD
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    for name in only or SEARCHES:
        first = client.get(*url(name, 0))
        if first.status_code not in (200, 204):
            raise SystemExit(f"{name}: {first.status_code} {first.content[:300]!r}")
        digest = hashlib.sha256(first.content.replace(b"127.0.0.1:8000", b"")).hexdigest()[:16]
        results = len(json.loads(first.content)) if first.status_code == 200 else 0
        with CaptureQueriesContext(connection) as queries:
            client.get(*url(name, 1))
        statements = len(queries)  # now: the next request clears the log
        if os.environ.get("SEARCH_COST_SQL"):
            for query in queries.captured_queries:
                print(f"    {query['sql'][:300]}")
        for i in range(warmup):
            client.get(*url(name, i))
        samples = []
        backend_before = backend_cpu_seconds(backend)
        for i in range(repeat):
            t0 = time.process_time()
            client.get(*url(name, i))
            samples.append(time.process_time() - t0)
        backend_ms = (backend_cpu_seconds(backend) - backend_before) / repeat * 1000
        print(f"{name:24s} {results:5d} results, {statements:2d} SQL statements, "
              f"{statistics.median(samples) * 1000:6.1f} ms CPU (median of {repeat}), "
              f"backend {backend_ms:5.1f} ms (mean), body {len(first.content):8d} B sha256 {digest}")  # fmt: skip
        if os.environ.get("SEARCH_COST_PROFILE"):  # cProfile of `repeat` more requests (shares, not ms)
            import cProfile

            profiler = cProfile.Profile(time.process_time)
            profiler.runcall(lambda: [client.get(*url(name, i)) for i in range(repeat)])  # noqa: B023 (called here)
            profiler.dump_stats(f"{os.environ['SEARCH_COST_PROFILE']}-{name.split()[0].replace('=', '')}.prof")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="enclave_bench_search")
    parser.add_argument("--redis", type=int, default=11)
    parser.add_argument("--instances", type=int, default=60_000, help="instances (the study shape is 200,000's)")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--search", action="append", default=[], help=f"one of {SEARCHES} (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the database and its state file")
    parser.add_argument("--reuse", action="store_true", help="measure on the database a --keep run left")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the child process: the state file it measures with
    args = parser.parse_args()
    if args.measure:
        state = json.loads(Path(args.measure).read_text())
        os.environ.update(state["env"])
        import django

        django.setup()
        measured(state, args.repeat, args.warmup, args.search)
        return 0
    state_file = Path(tempfile.gettempdir()) / f"{args.db}.state.json"
    redis_url = f"redis://127.0.0.1:6379/{args.redis}"
    tmp = Path(tempfile.mkdtemp(prefix="enclave-search-")) if not args.reuse else None
    if tmp is not None:
        original = dict(os.environ)
        env = bench_environment(db_url=f"{PG_SERVER}/{args.db}", redis_url=redis_url, var_dir=tmp / "var",
                                log_level="WARNING")  # fmt: skip
        env = {**stores_env(env, tmp / "stores", ""), "RATE_LIMITS": NO_RATE_LIMITS}
        os.environ.update(env)
        (tmp / "var" / "staticfiles").mkdir(parents=True, exist_ok=True)
        django_on_fresh_database(db_name=args.db, redis_url=redis_url)
        from bench import query

        target = query.provision()
        t0 = time.monotonic()
        picked = query.fixture(target, patients=10_000, studies=20_000, series=50_000, instances=args.instances,
                               seed=4)  # fmt: skip
        print(f"index built in {time.monotonic() - t0:.0f} s")
        state_env = {k: v for k, v in env.items() if original.get(k) != v}  # the benchmark's settings and secrets
        state_file.write_text(json.dumps({"token": target.token, "picked": picked, "env": state_env}))
        state_file.chmod(0o600)
    try:
        print(f"load average {os.getloadavg()[0]:.2f} before")
        argv = [sys.executable, "-m", "bench.search_cost", "--measure", str(state_file), "--repeat", str(args.repeat),
                "--warmup", str(args.warmup), *(f"--search={s}" for s in args.search)]  # fmt: skip
        subprocess.run(argv, check=True, cwd=ROOT)
        print(f"load average {os.getloadavg()[0]:.2f} after")
    finally:
        if tmp is not None and not args.keep:
            bench_cleanup(db_name=args.db, redis_url=redis_url, tmp=tmp, keep=False)
            state_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
