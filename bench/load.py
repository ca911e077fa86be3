"""Load test (`make bench`, issue 10): 50 concurrent users on the browser pages and the API paths against gunicorn,
with locust, headless, for a bounded time; throughput and p99 per path, and the error count (which must be 0).

Sets up its own PostgreSQL database (`enclave_bench_load`, dropped and created again) and Redis database (/12,
flushed), migrates it, and makes through the real services one tenant with `--people` radiologists, each with a
verified browser session (password and TOTP done) and an API token: the simulated users are people of their own,
as 50 people are, so no person's rate limit is what is measured. The address limits are raised (every simulated
user comes from 127.0.0.1). The index holds a bulk fixture (bench/query.py's, by default 2,000 studies and 20,000
instances) and one real series ingested through the pipeline (for WADO-RS).

gunicorn is started as `make run` starts it (scripts/run.sh: gthread, `WEB_CONCURRENCY` workers, 2 x cores + 1 by
default, 8 threads each), DEBUG off, persistent connections. locust runs in one process beside it on the same
machine, so the figures include its CPU. Half the users are browser users, half API users (bench/locust_portal.py).

Prints a table and writes var/bench/load-<time>.json; `--markdown` also prints the table as Markdown for
docs/BENCHMARKS.md. Exits non-zero when any request failed. Every process started is stopped and the database,
Redis database and temporary folder removed at the end.

    .venv/bin/python -m bench.load [--users 50] [--seconds 60] [--people 50]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402  (after the sys.path line, for `python bench/load.py`)
    GUNICORN,
    PG_SERVER,
    BenchError,
    Processes,
    Started,
    bench_cleanup,
    bench_environment,
    django_on_fresh_database,
    free_port,
    log,
    machine,
    memory_of,
    stores_env,
)

DB_NAME = "enclave_bench_load"
REDIS_URL = "redis://127.0.0.1:6379/12"
LOCUST = str(Path(sys.executable).with_name("locust"))
TENANT_SLUG = "benchload"
THREADS = 8
GRACE_SECONDS = 60  # beyond --seconds, for locust to stop its users and write its figures
# Every simulated user comes from 127.0.0.1: the address limits would be what is measured.
RATE_LIMITS = {
    "login": {"person": "20/hour", "address": "60/hour"},
    "search": {"person": "300/minute", "token": "300/minute", "address": "1000000/minute"},
    "retrieve": {"person": "3000/minute", "token": "3000/minute", "address": "1000000/minute"},
    "export": {"person": "100/hour", "token": "100/hour", "address": "200/hour"},
}


@dataclass
class Target:
    tenant: Any


def provision(people: int) -> tuple[Target, list[dict[str, str]]]:
    """The tenant and `people` radiologists, each with a verified browser session and an API token."""
    from django.conf import settings
    from django.db import transaction
    from django.test import Client
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from audit.context import audit_context
    from tenants import services
    from tenants.models import Role, User
    from tenants.scoping import tenant_scope

    made: list[dict[str, str]] = []
    with audit_context(system_principal="bench/load.py"):
        with transaction.atomic():
            tenant = services.tenant_create(slug=TENANT_SLUG, name="Load benchmark", ae_title="BENCHLOAD")
        for n in range(people):
            with transaction.atomic():
                user = User(username=f"benchload-{n:03d}", email=f"benchload{n:03d}@bench.enclave.invalid")
                user.set_unusable_password()
                user.save()
                services.membership_grant_by_operator(
                    tenant=tenant, user=user, role=Role.RADIOLOGIST, reason="benchmark"
                )
                device = TOTPDevice.objects.create(user=user, name="benchmark", confirmed=True)
                with tenant_scope(tenant):
                    _, token = services.api_token_create(actor=user, tenant=tenant, name="benchmark")
            browser = Client()
            browser.force_login(user)
            session = browser.session
            session[DEVICE_ID_SESSION_KEY] = device.persistent_id
            session.save()
            made.append({"session": session.session_key or "", "token": token})
    if settings.SESSION_COOKIE_NAME != "sessionid":
        log(f"session cookie: {settings.SESSION_COOKIE_NAME}")
    return Target(tenant=tenant), made


def plan(target: Target, people: list[dict[str, str]], picked: dict[str, Any], real: Any) -> dict[str, Any]:
    """What bench/locust_portal.py reads: who the users are and what they ask for."""
    from django.conf import settings

    from studies.models import Study
    from tenants.scoping import tenant_scope

    uids = [*picked["study_uids"][:100], real.study_uid]
    with tenant_scope(target.tenant):
        public_ids = [
            str(p) for p in Study.objects.filter(study_instance_uid__in=uids).values_list("public_id", flat=True)
        ]
    return {
        "slug": TENANT_SLUG,
        "session_cookie": settings.SESSION_COOKIE_NAME,
        "people": people,
        "patient_ids": picked["patient_ids"][:100],
        "study_uids": picked["study_uids"][:100],
        "study_public_ids": public_ids,
        "series": [list(pair) for pair in picked["series"][:100]],
        "real_instances": [[real.study_uid, real.series_uid, uid] for uid in real.sop_uids],
    }


def gunicorn_start(processes: Processes, env: dict[str, str], workers: int) -> tuple[Started, str]:
    """gunicorn as scripts/run.sh starts it, on a free loopback port; ready once every worker has answered."""
    import requests

    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def answers(_: Started) -> bool:
        try:
            return requests.get(f"{base}/accounts/login/", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    argv = [
        GUNICORN, "portal.wsgi:application", "-c", "portal/gunicorn_conf.py", "--bind", f"127.0.0.1:{port}",
        "--worker-class", "gthread", "--workers", str(workers), "--threads", str(THREADS), "--timeout", "120",
        "--graceful-timeout", "10", "--no-control-socket", "--error-logfile", "-",
    ]  # fmt: skip
    web = processes.start("gunicorn", argv, {**env, "PORTAL_BASE_URL": base}, answers)
    for _ in range(4 * workers):  # every worker has loaded the application
        requests.get(f"{base}/accounts/login/", timeout=30)
    return web, base


def locust_run(
    processes: Processes, env: dict[str, str], *, base: str, plan_path: Path, users: int, seconds: int, tmp: Path
) -> tuple[list[dict[str, Any]], int]:
    """locust, headless, `users` users started within 5 s, for `seconds`; its per-path figures and exit status."""
    prefix = tmp / "locust"
    argv = [
        LOCUST, "-f", str(ROOT / "bench" / "locust_portal.py"), "--headless", "--host", base,
        "--users", str(users), "--spawn-rate", str(max(users // 5, 1)), "--run-time", f"{seconds}s",
        "--stop-timeout", "10", "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING",
    ]  # fmt: skip
    started = processes.start("locust", argv, {**env, "LOAD_PLAN": str(plan_path)}, lambda s: True)
    try:
        status = started.process.wait(timeout=seconds + GRACE_SECONDS)
    except Exception as exc:
        raise BenchError(f"locust did not end within {seconds + GRACE_SECONDS} s:\n{started.output()[-4000:]}") from exc
    stats = prefix.with_name("locust_stats.csv")
    if not stats.exists():
        raise BenchError(f"locust wrote no figures (status {status}):\n{started.output()[-4000:]}")
    with stats.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    failures = prefix.with_name("locust_failures.csv")
    if failures.exists() and failures.read_text().count("\n") > 1:
        log(f"locust failures:\n{failures.read_text()[:4000]}")
    return rows, status


def figures(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def number(row: dict[str, Any], key: str) -> float:
        value = row.get(key) or "0"
        return float(value) if value != "N/A" else 0.0

    return [
        {
            "path": row["Name"],
            "requests": int(number(row, "Request Count")),
            "failures": int(number(row, "Failure Count")),
            "per_second": round(number(row, "Requests/s"), 1),
            "median_ms": round(number(row, "Median Response Time")),
            "p95_ms": round(number(row, "95%")),
            "p99_ms": round(number(row, "99%")),
            "max_ms": round(number(row, "Max Response Time")),
        }
        for row in rows
    ]


def print_table(table: list[dict[str, Any]], *, markdown: bool) -> None:
    if markdown:
        print("| path | requests | errors | req/s | median ms | p95 ms | p99 ms | max ms |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in table:
            print(
                f"| {r['path']} | {r['requests']} | {r['failures']} | {r['per_second']} | {r['median_ms']} | "
                f"{r['p95_ms']} | {r['p99_ms']} | {r['max_ms']} |"
            )
        return
    head = f"{'path':<40}{'requests':>9}{'errors':>7}{'req/s':>7}{'median':>8}{'p95':>7}{'p99':>7}{'max':>7}"
    print(head)
    print("-" * len(head))
    for r in table:
        print(
            f"{r['path'][:40]:<40}{r['requests']:>9}{r['failures']:>7}{r['per_second']:>7}{r['median_ms']:>8}"
            f"{r['p95_ms']:>7}{r['p99_ms']:>7}{r['max_ms']:>7}"
        )
    print("(ms: response times as locust saw them, over one kept-alive connection per user)")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50, help="concurrent simulated users")
    parser.add_argument("--seconds", type=int, default=60, help="how long the load runs")
    parser.add_argument("--people", type=int, default=50, help="distinct people (sessions and tokens) they use")
    parser.add_argument("--workers", type=int, default=None, help="gunicorn workers (default 2 x cores + 1)")
    parser.add_argument("--studies", type=int, default=2000, help="studies in the bulk fixture")
    parser.add_argument("--instances", type=int, default=20000, help="instances in the bulk fixture")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown too")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and database")
    return parser.parse_args()


def main() -> int:
    args = arguments()
    if not Path(LOCUST).exists():
        raise SystemExit(f"{LOCUST} is missing: .venv/bin/pip install locust (requirements.txt lists it)")
    workers = args.workers or int(os.environ.get("WEB_CONCURRENCY") or 2 * (os.cpu_count() or 1) + 1)
    tmp = Path(tempfile.mkdtemp(prefix="enclave-bench-load-"))
    load_before = [round(v, 2) for v in os.getloadavg()]
    log(f"load average before: {load_before}; working in {tmp}")
    env = bench_environment(
        db_url=f"{PG_SERVER}/{DB_NAME}", redis_url=REDIS_URL, var_dir=tmp / "var", log_level="WARNING"
    )
    env = stores_env(env, tmp / "stores", "")
    env["RATE_LIMITS"] = json.dumps(RATE_LIMITS)
    os.environ.clear()
    os.environ.update(env)
    processes = Processes(tmp)
    try:
        django_on_fresh_database(db_name=DB_NAME, redis_url=REDIS_URL)
        from django.core.management import call_command

        call_command("collectstatic", interactive=False, verbosity=0)  # the pages name hashed static files
        info = machine()
        from bench.query import fixture, ingest_real

        target, people = provision(args.people)
        studies = args.studies
        picked = fixture(
            target, patients=max(studies // 2, 1), studies=studies, series=studies * 2, instances=args.instances,
            seed=4,
        )  # fmt: skip
        real = ingest_real(target, 20)
        plan_path = tmp / "plan.json"
        plan_path.write_text(json.dumps(plan(target, people, picked, real)))
        log(f"{len(people)} people, {picked['instances']} instances in the fixture; gunicorn with {workers} workers")
        web, base = gunicorn_start(processes, env, workers)
        load_start = [round(v, 2) for v in os.getloadavg()]
        log(f"locust: {args.users} users for {args.seconds} s against {base}")
        rows, status = locust_run(
            processes, env, base=base, plan_path=plan_path, users=args.users, seconds=args.seconds, tmp=tmp
        )
        load_end = [round(v, 2) for v in os.getloadavg()]
        memory = memory_of(web)
        table = figures(rows)
        print()
        print_table(table, markdown=False)
        if args.markdown:
            print()
            print_table(table, markdown=True)
        total = next((r for r in table if r["path"] == "Aggregated"), None)
        errors = total["failures"] if total else -1
        out = ROOT / "var" / "bench"
        out.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        path = out / f"load-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
        path.write_text(
            json.dumps(
                {
                    "date": now.isoformat(timespec="seconds"),
                    "command": " ".join([Path(sys.executable).name, "-m", "bench.load", *sys.argv[1:]]),
                    "machine": info,
                    "load_average": {"before": load_before, "at_start": load_start, "at_end": load_end},
                    "settings": {
                        "users": args.users,
                        "seconds": args.seconds,
                        "people": len(people),
                        "gunicorn": f"gthread, {workers} workers x {THREADS} threads",
                        "fixture_instances": picked["instances"],
                    },
                    "gunicorn_memory": memory,
                    "paths": table,
                    "locust_status": status,
                },
                indent=2,
            )
        )
        print(
            f"\ngunicorn: {memory['sum_mb']} MB resident at peak in all (largest worker {memory['children_max_mb']} "
            f"MB), {memory['cpu_s']} CPU s; load average {load_start} at start, {load_end} at end"
        )
        print(f"Written: {path.relative_to(ROOT)}")
        if errors != 0:
            log(f"{errors} requests failed (locust exit status {status})")
            return 1
        return 0
    finally:
        processes.stop_all()
        with contextlib.suppress(Exception):
            bench_cleanup(db_name=DB_NAME, redis_url=REDIS_URL, tmp=tmp, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
