"""The ingest worker's CPU per CT instance, batch by batch, in one process: for A/B runs of the worker's code.

A fresh database of its own (`--db`, dropped at the end unless `--keep`) and Redis database (`--redis`, flushed),
the built-in scanner, encryption and auditing on. `--rounds` rounds, each: `--batch` CT of 512 x 512 (0.53 MB,
bench/ingest.py's `generate`, one study, one series: a stream into a series that exists, as most batches are)
received as the DICOM listener receives them (`ingest_receive`, queue=False), then processed as the worker's task
processes them (`_claim_batch` and `_process_claimed` in the task's context, the empty claim that ends a task
included). Per round, of the processing alone: this process's CPU (`time.process_time`), the PostgreSQL backend's
CPU (/proc/<pid>/schedstat) and the statements. The first `--warm` rounds are left out (caches, prepared
statements, the series' creation); medians and each round's figures are printed. `--profile FILE` writes cProfile
statistics of the measured rounds' processing.

    .venv/bin/python -m bench.worker_cost --db enclave_h4_wc --redis redis://127.0.0.1:6379/4 [--rounds 25]
        [--batch 10] [--warm 3] [--profile out.prof] [--json out.json]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402  (the path above first)
    bench_cleanup,
    django_on_fresh_database,
    generate,
    in_process_environment,
    log,
    provision,
)


def _backend_cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def _wrap_steps(steps: dict[str, float]) -> None:
    """Replace the worker's steps by wrappers that add up their CPU time (nested steps count in both)."""
    from studies import scanning
    from studies.dicom import parse as dicom_parse
    from studies.services import ingest
    from studies.storage import blobs

    def timed(name: str, function: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            cpu = time.process_time()
            try:
                return function(*a, **k)
            finally:
                steps[name] = steps.get(name, 0.0) + time.process_time() - cpu

        return wrapper

    for module, names in (
        (ingest, ("_claim_batch", "_checked", "blob_read_sealed", "_check", "_store_all", "_blobs_and_rows",
                  "_series_for", "_counts_add", "_stored_events", "blob_promote", "blob_study_key_ids",
                  "_verdicts_signal")),
        (scanning, ("scan",)),
        (dicom_parse, ("parse",)),
        (blobs, ("_file_link", "blob_sealed_put", "blob_data_key", "_file_put", "_folder_make")),
        (blobs.os, ("replace", "chmod", "open", "fdopen", "link", "stat")),
    ):  # fmt: skip
        for name in names:
            setattr(module, name, timed(f"{module.__name__.rsplit('.', 1)[-1]}.{name}", getattr(module, name)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="enclave_bench_worker")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--warm", type=int, default=3)
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--steps", action="store_true", help="CPU ms per instance of the batch's steps (wrapped)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    tmp = in_process_environment(prefix="enclave-worker-cost-", db_name=args.db, redis_url=args.redis, batch=args.batch)
    try:
        django_on_fresh_database(db_name=args.db, redis_url=args.redis)
        from auditlog.context import set_actor
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        from audit.context import audit_context
        from portal.web.task_context import task_context
        from studies.models import IngestItem
        from studies.services import ingest as ingest_service
        from tenants.scoping import tenant_scope

        steps: dict[str, float] = {}
        if args.steps:
            _wrap_steps(steps)
        files = generate(tmp / "set", studies=1, series=1, per_series=args.rounds * args.batch)
        target = provision("wc")
        tenant = target.tenant
        with tenant_scope(tenant):
            from devices.models import Device

            device = Device.objects.get(ae_title__iexact=target.device_ae)
        batch = uuid.uuid4()
        study_keys: dict = {}
        profiler = cProfile.Profile(time.process_time) if args.profile else None  # CPU, not wall time
        rows = []
        for n in range(args.rounds):
            datas = [path.read_bytes() for path in files[n * args.batch : (n + 1) * args.batch]]
            with (
                tenant_scope(tenant),
                audit_context(source_address="127.0.0.1", system_principal=f"dicom:{target.device_ae}"),
                set_actor(None, remote_addr="127.0.0.1"),
            ):
                for data in datas:
                    ingest_service.ingest_receive(source=IngestItem.Source.CSTORE, batch=batch, data=data,
                                                  device=device, source_address="127.0.0.1", queue=False,
                                                  study_keys=study_keys)  # fmt: skip
            connection.ensure_connection()
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pid = int(cursor.fetchone()[0])
            measured = n >= args.warm
            if n == args.warm:
                steps.clear()
            with CaptureQueriesContext(connection) as queries:
                backend0, cpu0 = _backend_cpu_ns(pid), time.process_time()
                if profiler is not None and measured:
                    profiler.enable()
                with task_context(tenant_id=tenant.pk, principal="enclave:ingest"):
                    done = 0
                    while ids := ingest_service._claim_batch(None):
                        ingest_service._process_claimed(ids)
                        done += len(ids)
                if profiler is not None and measured:
                    profiler.disable()
                cpu, backend = time.process_time() - cpu0, _backend_cpu_ns(pid) - backend0
            if done != len(datas):
                raise SystemExit(f"round {n}: {done} of {len(datas)} processed")
            rows.append({
                "round": n,
                "worker_ms_per_instance": round(cpu * 1000 / len(datas), 3),
                "postgres_ms_per_instance": round(backend / 1e6 / len(datas), 3),
                "statements": len(queries.captured_queries),
            })  # fmt: skip
        with tenant_scope(tenant):
            states = {s: IngestItem.objects.filter(state=s).count() for s in IngestItem.State.values}
        if states[IngestItem.State.STORED] != args.rounds * args.batch:
            raise SystemExit(f"not every instance was stored: {states}")
        kept = rows[args.warm :]
        result = {
            "rounds": len(kept),
            "batch": args.batch,
            "worker_ms_per_instance_median": round(statistics.median(r["worker_ms_per_instance"] for r in kept), 3),
            "worker_ms_per_instance_min": min(r["worker_ms_per_instance"] for r in kept),
            "postgres_ms_per_instance_median": round(statistics.median(r["postgres_ms_per_instance"] for r in kept), 3),
            "statements_per_round_median": statistics.median(r["statements"] for r in kept),
            "load_average": os.getloadavg(),
        }
        if args.steps:
            count = len(kept) * args.batch
            result["steps_cpu_ms_per_instance"] = {k: round(v * 1000 / count, 3) for k, v in steps.items()}
        log(json.dumps(result))
        if profiler is not None:
            profiler.dump_stats(str(args.profile))
        if args.json:
            args.json.write_text(json.dumps({"result": result, "rounds": rows}, indent=2))
        return 0
    finally:
        bench_cleanup(db_name=args.db, redis_url=args.redis, tmp=tmp, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
