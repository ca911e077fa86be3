"""The searches of bench/orthanc.py's index over HTTP, on an index bench/search_cost.py kept (`--keep`): gunicorn
started as bench/orthanc.py starts it (portal/gunicorn_conf.py, gthread, 2 workers x 8 threads) on a port of its
own, one keep-alive `requests.Session`, each search `--warmup` + `--repeat` times (request i asks for another year,
month, patient, study or series, as bench/orthanc.py does), timed as bench/orthanc.py times it (`scale_once`: to
the last byte of the body). Per request also the CPU of the gunicorn workers and of the database's backends
(`/proc/<pid>/stat`, utime + stime, 10 ms ticks, so a mean over the timed requests; a connection closed during the
set loses its share, one opened counts whole), and how many connections the set saw (gunicorn's gthread workers
hand each request to any of their threads, each with a connection of its own, kept CONN_MAX_AGE seconds).
Figures: docs/BENCHMARKS.md, "h2 branch, session 8".

    .venv/bin/python -m bench.search_cost --db enclave_h2_search --redis 12 --instances 200000 --keep
    .venv/bin/python -m bench.search_http --db enclave_h2_search --port 18201 [--search "one-year StudyDate"]
"""

from __future__ import annotations

import argparse
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

from bench.ingest import GUNICORN, PG_SERVER, children  # noqa: E402
from bench.orthanc import percentile, scale_once, scale_searches  # noqa: E402
from bench.search_cost import SEARCHES, backend_cpu_seconds  # noqa: E402


def database_backends(db: str) -> list[int]:
    """The PostgreSQL backends connected to `db` now (gunicorn's threads' connections)."""
    import psycopg

    with psycopg.connect(f"{PG_SERVER}/postgres") as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", [db]).fetchall()
    return [pid for (pid,) in rows]


def cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += backend_cpu_seconds(pid)
        except OSError:
            pass
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="enclave_h2_search")
    parser.add_argument("--port", type=int, default=18201)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--search", action="append", default=[], help=f"one of {SEARCHES} (default: all)")
    parser.add_argument("--json", help="write the samples here")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for gunicorn's environment (CONN_MAX_AGE=5)",
    )
    parser.add_argument(
        "--gap",
        type=float,
        default=0.0,
        help="seconds between timed requests (bench.orthanc's alternating reads leave Enclave idle "
        "while Orthanc answers its turn: 0.2-5 s at 200,000 instances)",
    )
    args = parser.parse_args()
    import requests

    state = json.loads((Path(tempfile.gettempdir()) / f"{args.db}.state.json").read_text())
    env = {
        **os.environ,
        **state["env"],
        "PORTAL_BASE_URL": f"http://127.0.0.1:{args.port}",
        **dict(item.split("=", 1) for item in args.set),
    }
    base = f"http://127.0.0.1:{args.port}/dicomweb/benchq"
    headers = {"Authorization": f"Bearer {state['token']}"}
    argv = [GUNICORN, "portal.wsgi:application", "-c", "portal/gunicorn_conf.py", "-b", f"127.0.0.1:{args.port}",
            "--worker-class", "gthread", "--workers", "2", "--threads", "8", "--timeout", "300",
            "--no-control-socket"]  # fmt: skip
    log = Path(tempfile.gettempdir()) / f"{args.db}.gunicorn.log"
    with log.open("wb") as out:
        server = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    session = requests.Session()
    out: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if session.get(f"{base}/studies?limit=1", headers=headers, timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"gunicorn did not answer: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        time.sleep(3)  # both workers booted (their start-up CPU is not a request's)
        for _ in range(4):  # each worker's first search of the connection and statement cache
            session.get(f"{base}/studies?limit=1", headers=headers, timeout=30)
        workers = children(server.pid)
        searches = scale_searches(state["picked"])
        print(f"load average {os.getloadavg()[0]:.2f} before")
        for name in args.search or SEARCHES:
            samples: list[float] = []
            results = 0
            for i in range(args.warmup):
                scale_once(session, base, headers, name, searches[name], i, 120)
            web0, db0 = cpu(workers), {pid: cpu([pid]) for pid in database_backends(args.db)}
            for i in range(args.warmup, args.warmup + args.repeat):
                time.sleep(args.gap)
                ms, results = scale_once(session, base, headers, name, searches[name], i, 120)
                samples.append(ms)
            web_ms = (cpu(workers) - web0) / args.repeat * 1000
            # A backend opened during the set counts from 0; one closed during it loses what it did in the set.
            db1 = {pid: cpu([pid]) for pid in database_backends(args.db)}
            db_ms = sum(used - db0.get(pid, 0.0) for pid, used in db1.items()) / args.repeat * 1000
            backends = set(db0) | set(db1)
            median, p95 = statistics.median(samples), percentile(samples, 0.95)
            out[name] = {"median_ms": round(median, 1), "p95_ms": round(p95, 1), "web_cpu_ms": round(web_ms, 1),
                         "db_cpu_ms": round(db_ms, 1), "backends": len(backends), "results": results,
                         "samples_ms": [round(s, 2) for s in samples]}  # fmt: skip
            print(f"{name:24s} {results:5d} results: median {median:6.1f} ms, p95 {p95:6.1f} ms, "
                  f"max {max(samples):6.1f}; CPU per request: gunicorn {web_ms:5.1f} ms, PostgreSQL {db_ms:5.1f} ms "
                  f"({len(backends)} connections)")  # fmt: skip
        print(f"load average {os.getloadavg()[0]:.2f} after")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
