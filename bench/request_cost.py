"""The fixed cost of a DICOMweb request: SQL statements, Redis commands and CPU per QIDO-RS search, in-process.

Not a latency figure (the machine is shared: wall times are noise). Each search of issue 10's small-tenant three
(studies by PatientID, series of a study, instances of a series) is sent through Django's test client, so through
the whole middleware stack, DRF, the bearer token, the rate limits, the permission decision, the search and its
audit event, as gunicorn would serve it but without the socket. Per search it prints the SQL statements
(CaptureQueriesContext) and Redis commands (redis-py's execute_command, a script or pipeline counting as one) of
one request, and the median CPU time (`time.process_time`) of `--repeat` requests; `--steps` adds the CPU time of
each step of the request's preamble called on its own. Figures: docs/BENCHMARKS.md, "The fixed cost of a DICOMweb
request".

It makes its own database (`--db`, default enclave_bench_cost, dropped at the end unless `--keep`) and uses Redis
database `--redis` (flushed), with bench/query.py's radiologist, token and a 2,000-instance index; rate limits
lifted as bench/orthanc.py lifts them.

    .venv/bin/python -m bench.request_cost [--repeat 200] [--steps] [--db enclave_bench_cost_me --redis 11]
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest import PG_SERVER, bench_cleanup, bench_environment, django_on_fresh_database, stores_env  # noqa: E402
from bench.orthanc import NO_RATE_LIMITS  # noqa: E402


def redis_counter() -> list[int]:
    """Count redis-py commands from now on (a pipeline's or a script's round trip counts once)."""
    import redis

    count = [0]
    execute, pipeline_execute = redis.Redis.execute_command, redis.client.Pipeline.execute

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return execute(self, *args, **kwargs)

    def counted_pipeline(self: Any, *args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return pipeline_execute(self, *args, **kwargs)

    redis.Redis.execute_command = counted  # type: ignore[method-assign]
    redis.client.Pipeline.execute = counted_pipeline  # type: ignore[method-assign]
    return count


def round_trip_counter() -> list[int]:
    """Count PostgreSQL round trips from now on: every execute of a psycopg cursor (the tenant scope's own
    `set_config`, when it is sent apart, included: CaptureQueriesContext sees only Django's statements) and every
    command psycopg sends for a transaction (BEGIN, COMMIT)."""
    import psycopg

    count = [0]
    execute = psycopg.Cursor.execute

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return execute(self, *args, **kwargs)

    def counted_command(self: Any, *args: Any, **kwargs: Any) -> Any:  # BEGIN, COMMIT, ROLLBACK, SAVEPOINT...
        count[0] += 1
        return exec_command(self, *args, **kwargs)

    exec_command = psycopg.Connection._exec_command
    psycopg.Cursor.execute = counted  # type: ignore[method-assign]
    psycopg.Connection._exec_command = counted_command  # type: ignore[method-assign]
    return count


def cpu_ms(call: Callable[[], Any], repeat: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeat):
        t0 = time.process_time()
        call()
        samples.append(time.process_time() - t0)
    return statistics.median(samples) * 1000


def _sender(client: Any, url: Callable[[int], str]) -> Callable[[], Any]:
    """A call that sends the next request of a search (another patient, study or series each time)."""
    step = iter(range(10**9))
    return lambda: client.get(url(next(step)))


def requests_measured(token: str, picked: dict[str, Any], repeat: int, profile: str = "") -> None:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_ACCEPT="application/dicom+json",
                    REMOTE_ADDR="127.0.0.1", HTTP_HOST="127.0.0.1:8000")  # fmt: skip
    base = "/dicomweb/benchq"
    searches: dict[str, Callable[[int], str]] = {
        "by PatientID": lambda i: f"{base}/studies?PatientID={picked['patient_ids'][i % 200]}",
        "series of a study": lambda i: f"{base}/studies/{picked['study_uids'][i % 200]}/series",
        "instances of a series": lambda i: "{}/studies/{}/series/{}/instances".format(base, *picked["series"][i % 200]),
    }
    commands, trips = redis_counter(), round_trip_counter()
    for name, url in searches.items():
        for i in range(5):
            answer = client.get(url(i))
            if answer.status_code != 200:
                raise SystemExit(f"{name}: {answer.status_code} {answer.content[:200]!r}")
        commands[0] = trips[0] = 0
        with CaptureQueriesContext(connection) as queries:
            client.get(url(7))
        sent, statements, round_trips = (
            commands[0],
            len(queries),
            trips[0],
        )  # now: the log is read lazily, and the next request clears it
        if os.environ.get("REQUEST_COST_SQL"):  # every statement of the one request, to see which are left
            for query in queries.captured_queries:
                print(f"    {query['sql'][:160]}")
        median = cpu_ms(_sender(client, url), repeat)
        print(f"{name:24s} {statements:3d} SQL statements ({round_trips} round trips), {sent:2d} Redis commands, "
              f"{median:6.2f} ms CPU (median)")  # fmt: skip
        if profile:  # cProfile of `repeat` more requests of this search, for pstats (shares, not ms)
            import cProfile

            send = _sender(client, url)
            profiler = cProfile.Profile(time.process_time)
            profiler.runcall(lambda send=send: [send() for _ in range(repeat)])
            profiler.dump_stats(f"{profile}-{name.replace(' ', '_')}.prof")


def steps_measured(token: str, repeat: int) -> None:
    from django.db import connection

    from portal.web.limits import limit_hit
    from studies.services.reads import studies_query_record
    from tenants import access
    from tenants.models import Tenant, User
    from tenants.scoping import tenant_scope
    from tenants.selectors import api_token_authenticate
    from training.selectors import training_block_get

    tenant, user = Tenant.objects.get(slug="benchq"), User.objects.get(username="benchq-radiologist")

    def round_trip() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchall()

    steps: dict[str, Callable[[], Any]] = {
        "token (api_token_authenticate)": lambda: api_token_authenticate(raw=token),
        "rate limits (limit_hit, 3 kinds)": lambda: limit_hit(
            "search",
            person=str(user.pk),
            token="ApiToken:0",  # noqa: S106 (a counter's key, not a secret)
            address="127.0.0.1",
        ),
        "membership (membership_current_get)": lambda: access.membership_current_get(user=user, tenant=tenant),
        "training gate (training_block_get)": lambda: training_block_get(user=user),
        "tenant permissions (tenant_permissions)": lambda: access.tenant_permissions(user, tenant),
        "Query event (studies_query_record)": lambda: studies_query_record(
            actor=user,
            resource="studies",
            query_string="PatientID=X",
            results=0,
            source_address="127.0.0.1",
            actor_role="radiologist",
        ),
        "one round trip (SELECT 1)": round_trip,
    }
    with tenant_scope(tenant):
        for name, call in steps.items():
            print(f"  {name:38s} {cpu_ms(call, repeat):6.3f} ms CPU")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--steps", action="store_true")
    parser.add_argument("--db", default="enclave_bench_cost")
    parser.add_argument("--redis", type=int, default=11)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--profile", default="", help="write a cProfile of each search to PROFILE-<search>.prof")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the child process: the state file it measures with
    args = parser.parse_args()
    if args.measure:
        import django

        django.setup()
        state = json.loads(Path(args.measure).read_text())
        requests_measured(state["token"], state["picked"], args.repeat, args.profile)
        if args.steps:
            steps_measured(state["token"], args.repeat)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="enclave-cost-"))
    redis_url = f"redis://127.0.0.1:6379/{args.redis}"
    env = bench_environment(db_url=f"{PG_SERVER}/{args.db}", redis_url=redis_url, var_dir=tmp / "var",
                            log_level="WARNING")  # fmt: skip
    env = {**stores_env(env, tmp / "stores", ""), "RATE_LIMITS": NO_RATE_LIMITS}
    os.environ.update(env)
    (tmp / "var" / "staticfiles").mkdir(parents=True, exist_ok=True)
    try:
        django_on_fresh_database(db_name=args.db, redis_url=redis_url)
        from bench import query

        target = query.provision()
        picked = query.fixture(target, patients=100, studies=200, series=500, instances=2000, seed=1)
        state = tmp / "state.json"
        state.write_text(json.dumps({"token": target.token, "picked": picked}))
        print(f"load average {os.getloadavg()[0]:.2f} before")
        # Measured in a process of its own, started on the ready database as a gunicorn worker would be.
        argv = [sys.executable, "-m", "bench.request_cost", "--measure", str(state), "--repeat", str(args.repeat)]
        argv += [*(["--steps"] if args.steps else []), *(["--profile", args.profile] if args.profile else [])]
        subprocess.run(argv, check=True, cwd=ROOT, env=os.environ.copy())
        print(f"load average {os.getloadavg()[0]:.2f} after")
    finally:
        bench_cleanup(db_name=args.db, redis_url=redis_url, tmp=tmp, keep=args.keep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
