"""PostgreSQL's CPU per small instance, statement by statement: where the 64 x 64 instances' database time goes.

bench/orthanc.py's `--small-cstore` sends bench/query.py's index as small Part-10 files (64 x 64, 16-bit; 1 patient
per 20 instances, 1 study per 10, 1 series per 4) to the listener; there PostgreSQL's backends spent about 6.4 ms
of CPU per instance against 1.4 ms per CT instance. This runs the same instances through the same code in one
process, without the network and the Celery worker around it, so that every statement can be timed on the server:

- receipt, as the listener does it: `ingest_receive` per object (queue=False, one study-key cache for the run);
- the pipeline, as the worker does it: `_claim_batch` and `_process_claimed` until nothing waits, in batches of
  `--batch` (INGEST_BATCH_SIZE);
- the thumbnails, as the `series_thumbnail` task does it: `series_thumbnail_make` per new series.

Each statement runs inside a Django execute_wrapper that reads the backend's CPU time from /proc/<pid>/schedstat
(nanoseconds on the CPU; the backend is on this machine) before and after it: the server's CPU per statement,
which a loaded machine inflates far less than wall time. Statements are grouped by their text with the literals,
placeholders and IN / VALUES lists folded. Per phase it prints the CPU ms per instance of this process
(time.process_time, the wrapper's own cost included) and of the backend (all of it, and the part inside the timed
statements: the rest is COMMIT and the protocol), the statements per instance, and the groups that cost most.

Its own database (`--db`, dropped and created again, and dropped at the end unless `--keep`) and Redis database
(`--redis`, flushed); `--index N` first bulk-writes bench/query.py's index of N instances into another tenant (the
tables and their indexes then hold N rows, as in bench/orthanc.py's run), and the first `--count` of its
instances are the small files sent. `--chunks K` sends them in K rounds (each measured on its own: the cost of a
statement that reads the tenant's rows grows with the rounds), and `--analyze-between` ANALYZEs the tables as
their owner between rounds, as autovacuum would in production (this server runs with autovacuum off).

    .venv/bin/python -m bench.small_cost --db enclave_h5 --redis redis://127.0.0.1:6379/5 [--index 20000]
        [--count 2000] [--batch 50] [--chunks 1] [--analyze-between] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402  (the path above first)
    bench_cleanup,
    django_on_fresh_database,
    in_process_environment,
    log,
    provision,
)

TABLES = ("studies_patient", "studies_study", "studies_series", "studies_instance", "studies_blob",
          "studies_ingestitem")  # fmt: skip


def backend_cpu_ns(pid: int) -> int:
    """Nanoseconds a process has spent on the CPU (the first field of /proc/<pid>/schedstat)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


_FOLD = [
    (re.compile(r"'(?:[^']|'')*'"), "?"),  # string literals
    (re.compile(r"\b\d+(?:\.\d+)?\b"), "?"),  # numbers
    (re.compile(r"%s"), "?"),  # placeholders
    (re.compile(r"\((?:\s*\?\s*,?)+\)"), "(?)"),  # (?, ?, ...)
    (re.compile(r"(?:\(\?\)\s*,\s*)+\(\?\)"), "(?)"),  # VALUES (?), (?), ...
    (re.compile(r"\bs\d+_x\d+\b|\"?s[0-9a-f]{8,}_x\d+\"?"), "sp"),  # savepoint names
    (re.compile(r"\s+"), " "),
]


def fold(sql: str) -> str:
    """A statement's text with its literals, placeholders, lists and savepoint names folded: its group."""
    for pattern, replacement in _FOLD:
        sql = pattern.sub(replacement, sql)
    return sql.strip()


class StatementMeter:
    """Every statement on Django's default connection, timed on the server (the backend's CPU ns, /proc) while
    `active()`; grouped by `fold`."""

    def __init__(self) -> None:
        self.groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # group -> [count, backend ns]
        self.pid = 0

    def _wrap(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        before = backend_cpu_ns(self.pid)
        try:
            return execute(sql, params, many, context)
        finally:
            spent = backend_cpu_ns(self.pid) - before
            group = self.groups[fold(sql)]
            group[0] += 1
            group[1] += spent

    @contextmanager
    def active(self) -> Iterator[StatementMeter]:
        from django.db import connection

        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            self.pid = int(cursor.fetchone()[0])
        with connection.execute_wrapper(self._wrap):
            yield self


def phase(name: str, instances: int, body: Callable[[], Any], *, top: int) -> dict[str, Any]:
    """Run `body` with every statement timed; the phase's figures per instance."""
    from django.db import connection

    meter = StatementMeter()
    with meter.active():
        pid = meter.pid
        backend0, own0, t0 = backend_cpu_ns(pid), time.process_time(), time.monotonic()
        body()
        backend, own, wall = backend_cpu_ns(pid) - backend0, time.process_time() - own0, time.monotonic() - t0
    if connection.connection is not None and meter.pid != pid:  # pragma: no cover - a reconnect mid-phase
        raise RuntimeError("the connection changed during the phase: its backend's CPU is not all counted")
    statements = sum(count for count, _ in meter.groups.values())
    timed = sum(ns for _, ns in meter.groups.values())
    ranked = sorted(meter.groups.items(), key=lambda kv: -kv[1][1])
    figure: dict[str, Any] = {
        "phase": name,
        "instances": instances,
        "python_cpu_ms_per_instance": round(own * 1000 / instances, 3),
        "postgres_cpu_ms_per_instance": round(backend / 1e6 / instances, 3),
        "postgres_in_statements_ms_per_instance": round(timed / 1e6 / instances, 3),
        "statements_per_instance": round(statements / instances, 2),
        "wall_s": round(wall, 1),
        "top": [
            {
                "ms_per_instance": round(ns / 1e6 / instances, 3),
                "per_instance": round(count / instances, 3),
                "us_each": round(ns / 1e3 / count, 1),
                "sql": sql[:300],
            }
            for sql, (count, ns) in ranked[:top]
        ],
    }
    log(
        f"{name}: {instances} instances, CPU ms per instance: this process {figure['python_cpu_ms_per_instance']}, "
        f"PostgreSQL {figure['postgres_cpu_ms_per_instance']} ({figure['postgres_in_statements_ms_per_instance']} "
        f"in statements), {figure['statements_per_instance']} statements per instance"
    )
    for row in figure["top"]:
        log(
            f"  {row['ms_per_instance']:7.3f} ms/inst {row['per_instance']:7.3f}x {row['us_each']:8.1f} us  "
            f"{row['sql']}"
        )
    return figure


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="enclave_bench_small")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--index", type=int, default=20000, help="instances of bench/query.py's index, bulk-written")
    parser.add_argument("--count", type=int, default=2000, help="of those, the small instances sent")
    parser.add_argument("--batch", type=int, default=50, help="INGEST_BATCH_SIZE")
    parser.add_argument("--chunks", type=int, default=1, help="send the instances in this many rounds")
    parser.add_argument(
        "--analyze-between", action="store_true",
        help="ANALYZE the tables as their owner between rounds (what autovacuum does in production)",
    )  # fmt: skip
    parser.add_argument("--top", type=int, default=25, help="statement groups shown per phase")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    tmp = in_process_environment(prefix="enclave-small-cost-", db_name=args.db, redis_url=args.redis, batch=args.batch)
    try:
        django_on_fresh_database(db_name=args.db, redis_url=args.redis)
        from auditlog.context import set_actor
        from django.conf import settings
        from django.db.models import Count

        from audit.context import audit_context
        from bench.orthanc import index_files, index_fixture
        from bench.query import table_statistics_update
        from portal.web.task_context import task_context
        from studies.models import IngestItem, Series
        from studies.services import ingest as ingest_service
        from studies.services import series_thumbnail_make
        from tenants.scoping import tenant_scope

        index_target, _ = index_fixture(args.index, 10)
        count = index_files(index_target, tmp / "files")
        files = sorted((tmp / "files").iterdir())[: min(args.count, count)]
        datas = [path.read_bytes() for path in files]
        target = provision("sc")
        tenant = target.tenant
        with tenant_scope(tenant):
            from devices.models import Device

            device = Device.objects.get(ae_title__iexact=target.device_ae)
        log(f"index of {count} instances in tenant {index_target.tenant.slug}; sending {len(datas)} small "
            f"instances ({sum(map(len, datas)) / len(datas):.0f} bytes each) to {tenant.slug}, batches of "
            f"{settings.INGEST_BATCH_SIZE}")  # fmt: skip
        batch = uuid.uuid4()
        study_keys: dict[str, Any] = {}

        def receive(datas: list[bytes]) -> None:
            with (
                tenant_scope(tenant),
                audit_context(source_address="127.0.0.1", system_principal=f"dicom:{target.device_ae}"),
                set_actor(None, remote_addr="127.0.0.1"),
            ):
                for data in datas:
                    ingest_service.ingest_receive(source=IngestItem.Source.CSTORE, batch=batch, data=data,
                                                  device=device, source_address="127.0.0.1", queue=False,
                                                  study_keys=study_keys)  # fmt: skip

        def process() -> None:
            with task_context(tenant_id=tenant.pk, principal="enclave:ingest"):
                while ids := ingest_service._claim_batch(None):
                    ingest_service._process_claimed(ids)

        def thumbnails() -> None:
            with task_context(tenant_id=tenant.pk, principal="enclave:thumbnails"):
                for one in Series.objects.filter(thumbnail__isnull=True).order_by("pk"):
                    series_thumbnail_make(series=one)

        figures: list[dict[str, Any]] = []
        size = math.ceil(len(datas) / args.chunks)
        for n, start in enumerate(range(0, len(datas), size)):
            chunk = datas[start : start + size]
            tag = f", chunk {n + 1} of {args.chunks}" if args.chunks > 1 else ""
            figures.append(phase(f"receipt (listener){tag}", len(chunk), partial(receive, chunk), top=args.top))
            figures.append(phase(f"pipeline (worker){tag}", len(chunk), process, top=args.top))
            figures.append(phase(f"thumbnails (worker){tag}", len(chunk), thumbnails, top=args.top))
            if args.analyze_between and start + size < len(datas):
                table_statistics_update(TABLES)
                log(f"ANALYZE as the owner: {', '.join(TABLES)}")
        with tenant_scope(tenant):
            states = dict(IngestItem.objects.values_list("state").annotate(n=Count("id")).order_by())
            series = Series.objects.count()
            with_thumbnail = Series.objects.filter(thumbnail__isnull=False).count()
        log(f"items by state {states}; {series} series, {with_thumbnail} with a thumbnail")
        if states != {IngestItem.State.STORED: len(datas)}:
            raise SystemExit(f"not every instance was stored: {states}")
        total = {
            key: round(sum(f[key] * f["instances"] for f in figures) / len(datas), 3)
            for key in ("python_cpu_ms_per_instance", "postgres_cpu_ms_per_instance", "statements_per_instance")
        }
        log(f"all phases, per instance: {total}")
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "phases": figures,
                                             "total": total, "series": series}, indent=2))  # fmt: skip
        return 0
    finally:
        bench_cleanup(db_name=args.db, redis_url=args.redis, tmp=tmp, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
