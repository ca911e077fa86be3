"""Audit browser and verification benchmark (`make bench`): the browser's filtered queries at 10 million events.

Sets up its own PostgreSQL database (`enclave_bench_audit`, dropped and created again on each run), migrates it
(the events' table partitioned by month, audit migration 0009) and fills it:

- `--tenants` tenants (default 10) made by the real services, the first with a compliance officer who reads;
- `--events` synthetic events (default 10,000,000) made in PostgreSQL with generate_series, in batches, half of
  them the first tenant's, the rest spread over the others, over the last `--months` months (default 12: one
  partition each) and 200 people per tenant, from 1,000 source addresses; the kinds are weighted like a working
  archive (image reads most, then searches, sign-ins, stores, refusals), the reads naming one of 100,000 patients
  and a study of theirs as participants, like the real writer does. Their hashes are synthetic (the browser never
  reads them) and their sequence numbers start at 1,000,000,000 (these chains are not verified). The secondary
  indexes are dropped for the load and made again afterwards (as `pg_indexes` listed them: the migration's),
  then the table is ANALYZEd;
- a separate tenant whose chain is genuine: `--verify-events` events (default 1,000,000) made by the real
  chain code (AuditEvent.compute_hash over each row and the previous hash), copied in with COPY.

Then, in this process, through the real selector of the browser (`audit.selectors.audit_trail_page`, 50 rows a
page, the events and the django-auditlog side merged as the page does), each common query `--repeat` times
(after `--warmup`), each time with another value (patient, person, address, window): the first page unfiltered,
a deep keyset page (a cursor months back), by patient, by study, by person (first page and deep), by event type
in a 7-day window, by source address, by failed outcome. Median and p95 in ms. And `audit_chain_verify` over
the genuine chain: events per second. `--explain` prints the plan of each query once.

Prints a table and writes var/bench/audit-<time>.json with the machine, the load average before and after,
and the sizes. The database is dropped at the end unless `--keep`.

    .venv/bin/python -m bench.audit [--events 10000000 --verify-events 1000000 --repeat 30] [--keep] [--explain]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402  (after the sys.path line, for `python bench/audit.py`)
    PG_SERVER,
    bench_cleanup,
    bench_environment,
    django_on_fresh_database,
    log,
    machine,
    stores_env,
)

DB_NAME = "enclave_bench_audit"
REDIS_URL = "redis://127.0.0.1:6379/11"
TENANT_SLUG = "bencha"
PEOPLE = 200  # per tenant
PATIENTS = 100_000  # per tenant
ADDRESSES = 1_000
SYNTHETIC_SEQUENCE = 1_000_000_000
PAGE = 50


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="synthetic events in all")
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--months", type=int, default=12, help="months back the events span")
    parser.add_argument("--verify-events", type=int, default=1_000_000, help="events of the genuine chain")
    parser.add_argument("--batch", type=int, default=500_000, help="synthetic events per INSERT")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--explain", action="store_true", help="print each query's plan once")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument(
        "--reuse", action="store_true", help="measure the database kept by a previous `--keep` run (no fill)"
    )
    return parser.parse_args()


def bench_env(tmp: Path) -> dict[str, str]:
    env = bench_environment(
        db_url=f"{PG_SERVER}/{DB_NAME}", redis_url=REDIS_URL, var_dir=tmp / "var", log_level="WARNING"
    )
    return stores_env(env, tmp / "stores", "")


def provision(tenants: int) -> tuple[list[Any], Any, Any]:
    """The tenants (the first one read), its compliance officer, and the tenant of the genuine chain."""
    from django.db import transaction

    from audit.context import audit_context
    from tenants import services
    from tenants.models import Role, User

    made = []
    with audit_context(system_principal="bench/audit.py"), transaction.atomic():
        for n in range(tenants):
            slug = TENANT_SLUG if n == 0 else f"bencha{n}"
            made.append(services.tenant_create(slug=slug, name=f"Audit benchmark {n}", ae_title=f"BENCHA{n}"))
        officer = User(username="bencha-officer", email="bencha@bench.enclave.invalid")
        officer.set_unusable_password()
        officer.save()
        services.membership_grant_by_operator(
            tenant=made[0], user=officer, role=Role.COMPLIANCE_OFFICER, reason="benchmark"
        )
        chained = services.tenant_create(slug="benchv", name="Audit benchmark, genuine chain", ae_title="BENCHV")
    return made, officer, chained


# The kinds of synthetic events and their weights (of 20): reads most, then searches, sign-ins, stores, refusals.
KINDS = (
    ("INSTANCES_ACCESSED", 8, 0, True),
    ("STUDIES_QUERIED", 3, 0, True),
    ("INSTANCES_RETRIEVED", 2, 0, True),
    ("LOGIN_SUCCEEDED", 2, 0, False),
    ("INSTANCES_STORED", 2, 0, True),
    ("LOGIN_FAILED", 1, 4, False),
    ("ACCESS_DENIED", 1, 4, False),
    ("LOGOUT", 1, 0, False),
)


def kinds_table() -> str:
    """A VALUES list `(slot, event_type, event_id, display, type code, type display, action, outcome, patient)`,
    one row per twentieth, from the real EventType specs."""
    from audit.events import EventType

    rows = []
    slot = 0
    for name, weight, outcome, names_patient in KINDS:
        event = EventType[name]
        spec = event.spec
        code = spec.event_type.value if spec.event_type else ""
        display = spec.event_type.display if spec.event_type else ""
        for _ in range(weight):
            rows.append(
                f"({slot}, {event.value}, '{spec.event_id.value}', '{spec.event_id.display}', '{code}', "
                f"'{display}', '{spec.action}', {outcome}, {str(names_patient).lower()})"
            )
            slot += 1
    assert slot == 20
    return ",\n".join(rows)


def fill_synthetic(*, tenants: list[Any], events: int, months: int, batch: int) -> float:
    """`events` synthetic events of `tenants` (half the first's) over the last `months` months, in SQL. Seconds."""
    from django.db import connection

    from audit.models import AuditChain

    chains = [AuditChain.objects.get(tenant=tenant) for tenant in tenants]
    chain_of = ", ".join(
        f"({n}, {chain.pk}, {tenant.pk})" for n, (chain, tenant) in enumerate(zip(chains, tenants, strict=True))
    )
    others = len(tenants) - 1
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    start = end - timedelta(days=30 * months)
    step_us = int((end - start).total_seconds() * 1e6 / events)
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'audit_auditevent'"
                       " AND indexname NOT IN (SELECT conname FROM pg_constraint)")  # fmt: skip
        secondary = cursor.fetchall()
        for name, _ in secondary:
            cursor.execute(f"DROP INDEX {name}")
        for first in range(0, events, batch):
            last = min(events, first + batch) - 1
            t0 = time.monotonic()
            cursor.execute(
                f"""
                WITH kinds (slot, event_type, event_id, event_id_display, type_code, type_display, action, outcome,
                            names_patient) AS (VALUES {kinds_table()}),
                     chains (n, chain_id, tenant_id) AS (VALUES {chain_of}),
                     rows AS (
                        SELECT i,
                               CASE WHEN mod(i, 2) = 0 OR %s = 0 THEN 0 ELSE 1 + mod(i / 2, GREATEST(%s, 1)) END AS n,
                               mod(abs(hashint8extended(i, 1)), 20) AS slot,
                               mod(abs(hashint8extended(i, 2)), %s) AS person,
                               mod(abs(hashint8extended(i, 3)), %s) AS patient,
                               mod(abs(hashint8extended(i, 4)), %s) AS address
                        FROM generate_series(%s::bigint, %s::bigint) AS i)
                INSERT INTO audit_auditevent (public_id, chain_id, tenant_id, sequence, occurred_at, event_type,
                    event_id, event_id_display, event_type_code, event_type_display, action, outcome,
                    outcome_description, actor_user_id, actor_username, actor_role, system_principal, source_address,
                    target_type, target_id, participants, request_id, extra, prev_hash, hash)
                SELECT gen_random_uuid(), c.chain_id, c.tenant_id, {SYNTHETIC_SEQUENCE} + r.i,
                       %s::timestamptz + make_interval(secs => r.i * {step_us} / 1e6),
                       k.event_type, k.event_id, k.event_id_display, k.type_code, k.type_display, k.action, k.outcome,
                       CASE WHEN k.outcome > 0 THEN 'refused' ELSE '' END, NULL, 'user' || r.person, 'radiologist', '',
                       ('10.' || (r.address / 250) || '.' || mod(r.address, 250) || '.7')::inet,
                       CASE WHEN k.names_patient THEN 'studies.study' ELSE '' END,
                       CASE WHEN k.names_patient THEN '1.2.826.0.1.3680043.10.1.' || r.patient ELSE '' END,
                       CASE WHEN k.names_patient THEN jsonb_build_array(
                           jsonb_build_object('type', 'patient', 'id', 'P' || lpad(r.patient::text, 7, '0'),
                                              'name', 'PATIENT^' || r.patient),
                           jsonb_build_object('type', 'study', 'id', '1.2.826.0.1.3680043.10.1.' || r.patient))
                       ELSE '[]'::jsonb END,
                       md5(r.i::text), '{{}}'::jsonb, md5((r.i - 1)::text) || md5((r.i - 1)::text),
                       md5(r.i::text) || md5(r.i::text)
                FROM rows r JOIN kinds k ON k.slot = r.slot JOIN chains c ON c.n = r.n
                """,  # noqa: S608 # nosec B608 (numbers and the real EventType specs only)
                [others, others, PEOPLE, PATIENTS, ADDRESSES, first, last, start],
            )
            log(f"events {first:,}..{last:,} in {time.monotonic() - t0:.1f} s")
        cursor.execute("SET maintenance_work_mem = '256MB'")
        for name, definition in secondary:
            t0 = time.monotonic()
            # pg_indexes shows a partitioned table's index as `ON ONLY` it (the parent alone, invalid until each
            # partition has its own): made again without ONLY, PostgreSQL builds it on every partition.
            cursor.execute(definition.replace(" ON ONLY ", " ON "))
            log(f"index {name} made again in {time.monotonic() - t0:.1f} s")
        cursor.execute("ANALYZE audit_auditevent")
    return time.monotonic() - started


def fill_genuine(*, tenant: Any, count: int) -> float:
    """`count` events of `tenant` chained by the real code (compute_hash), copied in; the chain head moved to the
    last. Seconds."""
    import uuid

    from django.db import connection, transaction

    from audit.events import EventType
    from audit.models import AuditChain, AuditEvent

    spec = EventType.INSTANCES_ACCESSED.spec
    columns = ("public_id", "chain_id", "tenant_id", "sequence", "occurred_at", "event_type", "event_id",
               "event_id_display", "event_type_code", "event_type_display", "action", "outcome",
               "outcome_description", "actor_username", "actor_role", "system_principal", "source_address",
               "target_type", "target_id", "participants", "request_id", "extra", "prev_hash", "hash")  # fmt: skip
    started = time.monotonic()
    with transaction.atomic():
        chain = AuditChain.objects.select_for_update().get(tenant=tenant)
        sequence, prev_hash = chain.last_sequence, chain.last_hash
        at = datetime.now(UTC) - timedelta(days=20)
        raw = connection.connection  # psycopg's connection, for COPY
        # One row object, its fields set for each event: the real compute_hash, without a model per event.
        row = AuditEvent(
            chain=chain, tenant=tenant, event_type=EventType.INSTANCES_ACCESSED.value, event_id=spec.event_id.value,
            event_id_display=spec.event_id.display, event_type_code=spec.event_type.value if spec.event_type else "",
            event_type_display=spec.event_type.display if spec.event_type else "", action=spec.action, outcome=0,
            outcome_description="", actor_role="radiologist", system_principal="", target_type="studies.study",
            request_id="",
        )  # fmt: skip
        with raw.cursor() as cursor, cursor.copy(f"COPY audit_auditevent ({', '.join(columns)}) FROM STDIN") as copy:
            for n in range(count):
                sequence += 1
                at += timedelta(milliseconds=1)
                patient = n % PATIENTS
                row.public_id, row.sequence, row.occurred_at = uuid.uuid4(), sequence, at
                row.actor_username, row.source_address = f"user{n % PEOPLE}", f"10.9.{n % 250}.7"
                row.target_id = f"1.2.826.0.1.3680043.10.2.{patient}"
                row.participants = [{"type": "patient", "id": f"V{patient:07d}", "name": f"PATIENT^{patient}"},
                                    {"type": "study", "id": row.target_id}]  # fmt: skip
                row.extra, row.prev_hash = {"frames": n % 7}, prev_hash
                row.hash = row.compute_hash(prev_hash)
                prev_hash = row.hash
                copy.write_row([
                    str(row.public_id), chain.pk, tenant.pk, row.sequence, row.occurred_at, row.event_type,
                    row.event_id, row.event_id_display, row.event_type_code, row.event_type_display, row.action,
                    row.outcome, row.outcome_description, row.actor_username, row.actor_role, row.system_principal,
                    row.source_address, row.target_type, row.target_id, json.dumps(row.participants),
                    row.request_id, json.dumps(row.extra), row.prev_hash, row.hash,
                ])  # fmt: skip
                if n and n % 200_000 == 0:
                    log(f"genuine chain: {n:,} events")
        chain.last_sequence, chain.last_hash = sequence, prev_hash
        chain.save(update_fields=["last_sequence", "last_hash"])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE audit_auditevent")
    return time.monotonic() - started


def reused(tenants: int) -> tuple[list[Any], Any, Any]:
    """The tenants, officer and genuine chain's tenant of a kept database (`--reuse`)."""
    from tenants.models import Tenant, User

    slugs = [TENANT_SLUG if n == 0 else f"bencha{n}" for n in range(tenants)]
    found = {tenant.slug: tenant for tenant in Tenant.objects.filter(slug__in=slugs)}
    return (
        [found[slug] for slug in slugs],
        User.objects.get(username="bencha-officer"),
        Tenant.objects.get(slug="benchv"),
    )


# The browser's queries
# ------------------------------------------------------------------------------


def summary_ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median_ms": round(statistics.median(ordered) * 1000, 1), "p95_ms": round(p95 * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1), "n": len(ordered)}  # fmt: skip


def queries(rng: random.Random, months: int) -> list[tuple[str, Any]]:
    """(name, function of the repetition number returning (filters, cursor)) for each common query."""
    from audit.selectors import TRAIL_EVENT, TrailCursor, TrailFilters

    now = datetime.now(UTC)

    def deep_cursor() -> TrailCursor:
        back = timedelta(days=rng.uniform(30, 30 * (months - 1)))
        return TrailCursor(at=now - back, kind=TRAIL_EVENT, row_id=2**62)

    def patient() -> str:
        return f"P{rng.randrange(PATIENTS):07d}"

    def window() -> tuple[datetime, datetime]:
        until = now - timedelta(days=rng.uniform(1, 30 * months - 8))
        return until - timedelta(days=7), until

    def typed(_: int) -> tuple[Any, Any]:
        since, until = window()
        return TrailFilters(event_type=_event_type(rng), since=since, until=until), None

    return [
        ("first page, no filter", lambda _: (TrailFilters(), None)),
        ("deep keyset page, no filter", lambda _: (TrailFilters(), deep_cursor())),
        ("by patient", lambda _: (TrailFilters(patient_id=patient()), None)),
        ("by study", lambda _: (TrailFilters(study_uid=f"1.2.826.0.1.3680043.10.1.{rng.randrange(PATIENTS)}"), None)),
        ("by user, first page", lambda _: (TrailFilters(username=f"USER{rng.randrange(PEOPLE)}"), None)),
        ("by user, deep page", lambda _: (TrailFilters(username=f"user{rng.randrange(PEOPLE)}"), deep_cursor())),
        ("by event type, 7-day window", typed),
        ("by source address", lambda _: (TrailFilters(source_address=_address(rng)), None)),
        ("by source address, deep page", lambda _: (TrailFilters(source_address=_address(rng)), deep_cursor())),
        ("failed outcome", lambda _: (TrailFilters(outcome=4), None)),
    ]


def _address(rng: random.Random) -> str:
    n = rng.randrange(ADDRESSES)
    return f"10.{n // 250}.{n % 250}.7"


def _event_type(rng: random.Random) -> int:
    from audit.events import EventType

    return int(EventType[rng.choice([k[0] for k in KINDS])].value)


def measure(*, officer: Any, tenant: Any, rng: random.Random, months: int, warmup: int, repeat: int,
            explain: bool) -> dict[str, dict[str, float]]:  # fmt: skip
    from django.db import connection

    from audit.selectors import _trail_sides, audit_trail_page
    from tenants.scoping import tenant_scope

    results = {}
    with tenant_scope(tenant):
        for name, make in queries(rng, months):
            timings, rows = [], 0
            for i in range(warmup + repeat):
                filters, cursor = make(i)
                t0 = time.perf_counter()
                keys, _ = audit_trail_page(actor=officer, filters=filters, after=cursor, size=PAGE)
                elapsed = time.perf_counter() - t0
                if i >= warmup:
                    timings.append(elapsed)
                    rows += len(keys)
                if explain and i == warmup:
                    events, _changes = _trail_sides(actor=officer, filters=filters, cursor=cursor)
                    sql, params = events.order_by("-trail_at", "-trail_id")[: PAGE + 1].query.sql_with_params()
                    with connection.cursor() as c:
                        c.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
                        print(f"--- {name}\n" + "\n".join(row[0] for row in c.fetchall()))
            results[name] = {**summary_ms(timings), "rows_per_page": round(rows / repeat, 1)}
            log(f"{name}: {results[name]}")
    return results


def verify_rate(chained: Any) -> dict[str, float]:
    from audit.models import AuditChain
    from audit.selectors import audit_chain_verify

    chain = AuditChain.objects.get(tenant=chained)
    t0 = time.perf_counter()
    result = audit_chain_verify(chain=chain)
    seconds = time.perf_counter() - t0
    if not result.ok:
        raise RuntimeError(f"the genuine chain does not verify: {result}")
    return {"events": result.events, "seconds": round(seconds, 1), "events_per_s": round(result.events / seconds)}


def main() -> int:
    args = arguments()
    tmp = Path(tempfile.mkdtemp(prefix="enclave-bench-audit-"))
    load_before = [round(v, 2) for v in os.getloadavg()]
    log(f"load average before: {load_before}; working in {tmp}")
    env = bench_env(tmp)
    os.environ.clear()
    os.environ.update(env)
    try:
        if args.reuse:
            import django

            django.setup()
            tenants, officer, chained = reused(args.tenants)
            fill_s = genuine_s = 0.0
            info = machine()
            info["load_average_before"] = load_before
        else:
            django_on_fresh_database(db_name=DB_NAME, redis_url=REDIS_URL)
            from audit.services import audit_partitions_ensure

            info = machine()
            info["load_average_before"] = load_before
            # Partitions for every month the events span (the job makes them ahead; these months are past).
            today = datetime.now(UTC).date()
            first = (datetime.now(UTC) - timedelta(days=30 * args.months + 31)).date().replace(day=1)
            months_back = (today.year - first.year) * 12 + today.month - first.month
            partitions = audit_partitions_ensure(months_ahead=months_back, today=first)
            tenants, officer, chained = provision(args.tenants)
            fill_s = fill_synthetic(tenants=tenants, events=args.events, months=args.months, batch=args.batch)
            log(f"{args.events:,} synthetic events in {fill_s:.0f} s over {len(partitions)} new partitions")
            genuine_s = fill_genuine(tenant=chained, count=args.verify_events)
            log(f"{args.verify_events:,} genuinely chained events in {genuine_s:.0f} s")
        load_mid = [round(v, 2) for v in os.getloadavg()]
        rng = random.Random(args.seed)
        results = measure(officer=officer, tenant=tenants[0], rng=rng, months=args.months, warmup=args.warmup,
                          repeat=args.repeat, explain=args.explain)  # fmt: skip
        verify = verify_rate(chained)
        log(f"audit_chain_verify: {verify}")
        load_after = [round(v, 2) for v in os.getloadavg()]
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM audit_auditevent WHERE tenant_id = %s", [tenants[0].pk])
            tenant_rows = cursor.fetchone()[0]
            cursor.execute(
                "SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))) FROM pg_inherits"
                " WHERE inhparent = 'audit_auditevent'::regclass"
            )
            size = cursor.fetchone()[0]
        print()
        print(f"{args.events:,} events ({tenant_rows:,} of the tenant read), {args.months} months, table {size}")
        print(f"{'query (audit_trail_page, 50 a page)':<36}{'median ms':>10}{'p95 ms':>8}{'max ms':>8}{'rows':>6}")
        for name, figures in results.items():
            print(f"{name:<36}{figures['median_ms']:>10}{figures['p95_ms']:>8}{figures['max_ms']:>8}"
                  f"{figures['rows_per_page']:>6}")  # fmt: skip
        print(f"audit_chain_verify: {verify['events']:,} events in {verify['seconds']} s = "
              f"{verify['events_per_s']:,} events/s")  # fmt: skip
        print(f"load average: before {load_before}, after the fill {load_mid}, at the end {load_after}")
        out = ROOT / "var" / "bench"
        out.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        path = out / f"audit-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
        document = {
            "when": now.isoformat(), "machine": info, "events": args.events, "tenant_events": tenant_rows,
            "months": args.months, "tenants": args.tenants, "table_size": size, "fill_seconds": round(fill_s),
            "genuine_seconds": round(genuine_s), "queries": results, "verify": verify,
            "load_average": {"before": load_before, "after_fill": load_mid, "end": load_after},
        }  # fmt: skip
        path.write_text(json.dumps(document, indent=2))
        print(f"written {path}")
        return 0
    finally:
        bench_cleanup(db_name=DB_NAME, redis_url=REDIS_URL, tmp=tmp, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
