"""Query and retrieve benchmark (`make bench`): QIDO-RS search latency at 100,000 instances, WADO-RS retrieval.

Sets up its own PostgreSQL database (`enclave_bench_query`, dropped and created again on each run) and Redis
database (/10, flushed), migrates it and fills one tenant:

- one real series (`--real-instances`, default 100 CT instances, 512 x 512, 16-bit) ingested through the real
  pipeline (`ingest_receive`, then the ingest task run in-process): encrypted blobs, hashes, thumbnails. The
  WADO-RS figures come from it.
- the rest of the index (patients, studies, series, instances up to `--patients/--studies/--series/--instances`
  in all) made with `bulk_create` inside the tenant scope: realistic names, IDs, dates, accession numbers and
  modalities. Each of these instances points at a Blob row of its own (Instance.blob is one-to-one) with no
  object behind it: QIDO-RS never reads blobs. bulk_create bypasses django-auditlog's change log, which is fine
  for a fixture; the reads measured here are audited as in production. The tables are ANALYZEd afterwards, as
  their owner.

gunicorn (2 sync workers) serves the portal on that database; one client thread sends the requests, one at a
time, with the bearer token of a radiologist (who sees every study of the tenant). Each QIDO-RS search is sent
`--warmup` times, then `--repeat` times (exact-match keys take a different patient, accession or UID each time;
the date range a different month), and its latency (request to last byte) is reported as median and p95. Each
search also gets the same selector timed in-process (the database and ORM share of the figure). WADO-RS: the
real series is retrieved `--retrievals` times (multipart/related; type="application/dicom"): MB/s is the body's
bytes over the wall time, with the time to first byte; and rendered frames (JPEG) of its instances. Every read
writes its audit event inside the request (a Query event per search, a Retrieve event per retrieval, folded
Accessed events for rendered frames), so the audit cost is part of every figure; the run checks that the audit
trail grew by exactly the number of reads. The Query event's writer is also timed alone (in-process) for 1, 100
and 1,000 results, to show its share.

Prints a table and writes var/bench/query-<time>.json. Every process started is stopped and the temporary data,
database and Redis database are removed at the end. Settings as bench/ingest.py (portal.settings.local, DEBUG
off, persistent connections).

    .venv/bin/python -m bench.query [--instances 100000 --studies 10000 ...] [--repeat 50 --warmup 5] [--keep]
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
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402  (after the sys.path line, for `python bench/query.py`)
    GUNICORN,
    MB,
    PG_SERVER,
    PYTHON,
    BenchError,
    Processes,
    Started,
    _signals_raise,
    bench_cleanup,
    bench_environment,
    django_on_fresh_database,
    free_port,
    log,
    machine,
    memory_of,
    stores_env,
)

DB_NAME = "enclave_bench_query"
REDIS_URL = "redis://127.0.0.1:6379/10"
GUNICORN_WORKERS = 2
TENANT_SLUG = "benchq"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
FIXTURE_ROWS, FIXTURE_COLUMNS = 512, 512


def _words(text: str) -> list[str]:
    return text.split()


# Name pools, drawn uniformly: each family name (SMITH among them) is about 1 % of the patients.
FAMILY = _words(
    "SMITH JOHNSON WILLIAMS BROWN JONES GARCIA MILLER DAVIS RODRIGUEZ MARTINEZ HERNANDEZ LOPEZ GONZALEZ WILSON "
    "ANDERSON THOMAS TAYLOR MOORE JACKSON MARTIN LEE PEREZ THOMPSON WHITE HARRIS SANCHEZ CLARK RAMIREZ LEWIS "
    "ROBINSON WALKER YOUNG ALLEN KING WRIGHT SCOTT TORRES NGUYEN HILL FLORES GREEN ADAMS NELSON BAKER HALL "
    "RIVERA CAMPBELL MITCHELL CARTER ROBERTS MUELLER SCHMIDT SCHNEIDER FISCHER WEBER MEYER WAGNER BECKER "
    "SCHULZ HOFFMANN DUBOIS MOREAU LAURENT ROSSI RUSSO FERRARI ESPOSITO BIANCHI ROMANO COLOMBO KOWALSKI "
    "NOWAK WISNIEWSKI JANSEN DEVRIES BAKKER VISSER SMIT MEIJER DEBOER MULDER OKAFOR ADEYEMI MENSAH TANAKA "
    "SUZUKI WATANABE KIM PARK CHOI CHEN WANG LI ZHANG LIU YANG HUANG ZHAO SINGH KUMAR SHARMA PATEL"
)
GIVEN = _words(
    "JAMES MARY ROBERT PATRICIA JOHN JENNIFER MICHAEL LINDA DAVID ELIZABETH WILLIAM BARBARA RICHARD SUSAN "
    "JOSEPH JESSICA THOMAS SARAH CHARLES KAREN MARIA ANNA PETER ANNE PAUL CLAIRE LUCAS EMMA NOAH SOPHIE "
    "HANS ANJA MARCO GIULIA PIOTR AGNIESZKA JAN SANNE CHIDI AMARA HIROSHI YUKI MINJUN JIWOO WEI LING ARJUN PRIYA"
)
REFERRERS = [f"{f}^{g}" for f, g in zip(FAMILY[::7], GIVEN[::3], strict=False)]
SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
}
# (modalities of the study's series, description, share of studies); series of a study cycle through its list.
STUDY_KINDS = (
    (("CT",), "CT CHEST WITH CONTRAST", 14),
    (("CT",), "CT HEAD WITHOUT CONTRAST", 10),
    (("CT",), "CT ABDOMEN PELVIS", 8),
    (("MR",), "MR BRAIN", 9),
    (("MR",), "MR KNEE LEFT", 5),
    (("MR",), "MR LUMBAR SPINE", 5),
    (("CR",), "XR CHEST 2 VIEWS", 14),
    (("DX",), "XR HAND RIGHT", 6),
    (("US",), "US ABDOMEN COMPLETE", 12),
    (("MG",), "MAMMOGRAPHY SCREENING BILATERAL", 8),
    (("PT", "CT"), "PET-CT WHOLE BODY FDG", 4),
    (("NM",), "NM BONE SCAN WHOLE BODY", 3),
    (("CT", "MR"), "CT AND MR PELVIS", 2),
)
# How many instances a series of each modality tends to have, relative to the others.
INSTANCE_WEIGHT = {"CT": 10.0, "MR": 8.0, "PT": 8.0, "NM": 2.0, "CR": 0.3, "DX": 0.3, "US": 1.0, "MG": 0.3}


# Setup
# ------------------------------------------------------------------------------


def bench_env(tmp: Path) -> dict[str, str]:
    """The environment of this process and of gunicorn: bench/ingest.py's settings, on this benchmark's database
    and Redis database, with blob stores under `tmp`."""
    env = bench_environment(
        db_url=f"{PG_SERVER}/{DB_NAME}", redis_url=REDIS_URL, var_dir=tmp / "var", log_level="WARNING"
    )
    return stores_env(env, tmp / "stores", "")


@dataclass
class Target:
    tenant: Any
    user: Any
    token: str


def provision() -> Target:
    """The tenant and a radiologist with an API token, through the real services."""
    from django.db import transaction

    from audit.context import audit_context
    from tenants import services
    from tenants.models import Role, User
    from tenants.scoping import tenant_scope

    with audit_context(system_principal="bench/query.py"), transaction.atomic():
        tenant = services.tenant_create(slug=TENANT_SLUG, name="Query benchmark", ae_title="BENCHQUERY")
        user = User(username="benchq-radiologist", email="benchq@bench.enclave.invalid")
        user.set_unusable_password()
        user.save()
        services.membership_grant_by_operator(tenant=tenant, user=user, role=Role.RADIOLOGIST, reason="benchmark")
        with tenant_scope(tenant):
            _, raw = services.api_token_create(actor=user, tenant=tenant, name="benchmark")
    return Target(tenant=tenant, user=user, token=raw)


@dataclass
class RealSeries:
    study_uid: str
    series_uid: str
    sop_uids: list[str]
    megabytes: float
    seconds: float


def ingest_real(target: Target, count: int) -> RealSeries:
    """`count` CT instances of one series through the ingest pipeline (quarantine, checks, encryption, index,
    thumbnail), the tasks run in this process instead of by a worker."""
    from celery import current_app as app
    from pydicom.uid import generate_uid

    from audit.context import audit_context
    from studies.dicom.synthetic import make_instance
    from studies.models import IngestItem, Instance
    from studies.services.ingest import ingest_receive
    from tenants.scoping import tenant_scope

    app.conf.task_always_eager = True
    study_uid, series_uid, batch = generate_uid(), generate_uid(), uuid.uuid4()
    size = 0
    started = time.monotonic()
    with tenant_scope(target.tenant), audit_context(system_principal="bench/query.py"):
        for number in range(1, count + 1):
            data = make_instance(
                patient_id="BENCHQ0001",
                patient_name="QUERY^BENCH",
                study_uid=study_uid,
                series_uid=series_uid,
                modality="CT",
                rows=512,
                columns=512,
                bits=16,
                instance_number=number,
                accession="BENCHQACC1",
                study_description="Synthetic benchmark CT",
                series_description="Synthetic axial",
                study_date=date(2024, 6, 3),
                pixel_seed=number,
            )
            size += len(data)
            ingest_receive(source=IngestItem.Source.UPLOAD, batch=batch, data=data, filename=f"{number}.dcm")
        seconds = time.monotonic() - started
        stored = IngestItem.objects.filter(state=IngestItem.State.STORED).count()
        sop_uids = list(
            Instance.objects.filter(series__series_instance_uid=series_uid)
            .order_by("instance_number")
            .values_list("sop_instance_uid", flat=True)
        )
    app.conf.task_always_eager = False
    if stored != count or len(sop_uids) != count:
        raise BenchError(f"ingest of the real series: {stored} of {count} stored")
    return RealSeries(study_uid, series_uid, sop_uids, size / MB, seconds)


def _spread(rng: random.Random, owners: int, total: int, weights: list[float] | None = None) -> list[int]:
    """`total` children over `owners` parents: one each, the rest at random (by `weights`)."""
    counts = [1] * owners
    for index in rng.choices(range(owners), weights=weights, k=total - owners):
        counts[index] += 1
    return counts


def table_statistics_update(tables: tuple[str, ...]) -> None:
    """ANALYZE `tables` as their owner. The application's role owns no table, so its ANALYZE is skipped with only a
    warning; with autovacuum off (or not yet run) the planner then plans on a guess (one row per table) and the
    searches join by nested loops over every patient: 155 ms instead of 0.2 ms by PatientID at 20,000 instances."""
    from tenants.db.roles import as_owner

    with as_owner() as connection, connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"ANALYZE {table}")


def fixture(target: Target, *, patients: int, studies: int, series: int, instances: int, seed: int) -> dict[str, Any]:
    """The bulk of the index, made with bulk_create in the tenant scope. Returns what the searches ask for."""
    from django.db import transaction
    from django.utils import timezone
    from pydicom.uid import generate_uid

    from studies.models import Blob, Instance, Patient, Series, Study, person_name_key
    from tenants.scoping import tenant_scope

    if not patients <= studies <= series <= instances:
        raise BenchError("the fixture needs patients <= studies <= series <= instances")
    rng = random.Random(seed)
    tenant = target.tenant
    batch = 5000
    first_day, days = date(2020, 1, 1), (date(2024, 12, 31) - date(2020, 1, 1)).days
    now = timezone.now()
    with tenant_scope(tenant), transaction.atomic():
        patient_rows = Patient.objects.bulk_create(
            [
                Patient(
                    tenant=tenant,
                    patient_id=f"MRN{1000000 + n:07d}",
                    name=f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}",
                    birth_date=date(1930, 1, 1) + timedelta(days=rng.randrange(365 * 90)),
                    sex=rng.choice("FM"),
                )
                for n in range(patients)
            ],
            batch_size=batch,
        )
        per_patient = _spread(rng, patients, studies)
        kinds = rng.choices(STUDY_KINDS, weights=[k[2] for k in STUDY_KINDS], k=studies)
        series_per_study = _spread(rng, studies, series)
        study_rows: list[Study] = []
        owners = [p for p, n in zip(patient_rows, per_patient, strict=True) for _ in range(n)]
        rng.shuffle(owners)
        for n, (patient, kind) in enumerate(zip(owners, kinds, strict=True)):
            referrer = rng.choice(REFERRERS)
            modalities = sorted({kind[0][i % len(kind[0])] for i in range(series_per_study[n])})
            study_rows.append(
                Study(
                    tenant=tenant,
                    patient=patient,
                    study_instance_uid=generate_uid(),
                    study_date=first_day + timedelta(days=rng.randrange(days + 1)),
                    study_time=dtime(rng.randrange(7, 20), rng.randrange(60), rng.randrange(60)),
                    accession_number=f"A{20000000 + n:08d}",
                    description=kind[1],
                    referring_physician=referrer,
                    referring_physician_key=person_name_key(referrer),
                    modalities="\\".join(modalities),
                    number_of_series=series_per_study[n],
                )
            )
        Study.objects.bulk_create(study_rows, batch_size=batch)
        series_rows: list[Series] = []
        for study, kind, count in zip(study_rows, kinds, series_per_study, strict=True):
            for number in range(1, count + 1):
                modality = kind[0][(number - 1) % len(kind[0])]
                series_rows.append(
                    Series(
                        tenant=tenant,
                        study=study,
                        series_instance_uid=generate_uid(),
                        modality=modality,
                        description=f"{kind[1].split()[0]} series {number}",
                        series_number=number,
                    )
                )
        per_series = _spread(rng, len(series_rows), instances, [INSTANCE_WEIGHT[s.modality] for s in series_rows])
        for row, count in zip(series_rows, per_series, strict=True):
            row.number_of_instances = count
        Series.objects.bulk_create(series_rows, batch_size=batch)
        totals: dict[int, int] = {}
        for row in series_rows:
            totals[id(row.study)] = totals.get(id(row.study), 0) + row.number_of_instances
        for study in study_rows:
            study.number_of_instances = totals[id(study)]
        Study.objects.bulk_update(study_rows, ["number_of_instances"], batch_size=batch)
        done = 0
        for start in range(0, len(series_rows), 1000):
            blobs: list[Blob] = []
            rows: list[Instance] = []
            for row in series_rows[start : start + 1000]:
                for number in range(1, row.number_of_instances + 1):
                    blob = Blob(
                        tenant=tenant,
                        kind=Blob.Kind.INSTANCE,
                        storage_name=f"bench-fixture/{uuid.uuid4().hex}",
                        size=526_000,
                        sha256="0" * 64,
                        wrapped_key=b"",
                        key_version=1,
                        replicated_at=now,
                    )
                    blobs.append(blob)
                    rows.append(
                        Instance(
                            tenant=tenant,
                            series=row,
                            sop_instance_uid=generate_uid(),
                            sop_class_uid=SOP_CLASS[row.modality],
                            transfer_syntax_uid=EXPLICIT_LE,
                            instance_number=number,
                            rows=FIXTURE_ROWS,
                            columns=FIXTURE_COLUMNS,
                            size=526_000,
                            sha256="0" * 64,
                            blob=blob,
                        )
                    )
            Blob.objects.bulk_create(blobs, batch_size=batch)
            Instance.objects.bulk_create(rows, batch_size=batch)
            done += len(rows)
    table_statistics_update(("studies_patient", "studies_study", "studies_series", "studies_instance", "studies_blob"))
    picked_studies = rng.sample(study_rows, min(200, len(study_rows)))
    picked_series = rng.sample(series_rows, min(200, len(series_rows)))
    return {
        "patient_ids": [s.patient.patient_id for s in picked_studies],
        "accessions": [s.accession_number for s in picked_studies],
        "study_uids": [s.study_instance_uid for s in picked_studies],
        "series": [(s.study.study_instance_uid, s.series_instance_uid) for s in picked_series],
        "instances": done,
        "smith_patients": sum(1 for p in patient_rows if p.name.startswith("SMITH^")),
    }


# Requests
# ------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = share * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary_ms(seconds: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 1),
        "p95_ms": round(percentile(ms, 0.95), 1),
        "min_ms": round(min(ms), 1),
        "max_ms": round(max(ms), 1),
        "samples_ms": [round(v, 1) for v in ms],  # in the order sent
    }


@dataclass
class Search:
    name: str
    request: Callable[[int], tuple[str, dict[str, str]]]  # i -> (path under the tenant's root, params)
    level: str = "STUDY"


@dataclass
class SearchResult:
    name: str
    example: str
    latency: dict[str, float] = field(default_factory=dict)
    selector: dict[str, float] = field(default_factory=dict)
    results: dict[str, float] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    audit_events_added: int = 0
    audit_events_expected: int = 0


def searches(picked: dict[str, Any], real: RealSeries) -> list[Search]:
    months = [(year, month) for year in range(2020, 2025) for month in range(1, 13)]

    def month_range(i: int) -> str:
        year, month = months[i % len(months)]
        last = (date(year + (month == 12), month % 12 + 1, 1) - timedelta(days=1)).day
        return f"{year}{month:02d}01-{year}{month:02d}{last:02d}"

    def pick(key: str, i: int) -> Any:
        return picked[key][i % len(picked[key])]

    return [
        Search("PatientID exact", lambda i: ("studies", {"PatientID": pick("patient_ids", i)})),
        Search("PatientName=SMITH*", lambda i: ("studies", {"PatientName": "SMITH*"})),
        Search("StudyDate one month", lambda i: ("studies", {"StudyDate": month_range(i)})),
        Search("AccessionNumber", lambda i: ("studies", {"AccessionNumber": pick("accessions", i)})),
        Search("ModalitiesInStudy=CT limit=50", lambda i: ("studies", {"ModalitiesInStudy": "CT", "limit": "50"})),
        Search("StudyInstanceUID", lambda i: ("studies", {"StudyInstanceUID": pick("study_uids", i)})),
        Search("series of a study", lambda i: (f"studies/{pick('study_uids', i)}/series", {}), "SERIES"),
        Search(
            "instances of a series",
            lambda i: ("studies/{}/series/{}/instances".format(*pick("series", i)), {}),
            "IMAGE",
        ),
        Search(
            f"instances of the {len(real.sop_uids)}-instance series",
            lambda i: (f"studies/{real.study_uid}/series/{real.series_uid}/instances", {}),
            "IMAGE",
        ),
    ]


def audit_count(target: Target, event_type: int | None = None) -> int:
    from audit.models import AuditEvent

    qs = AuditEvent.unscoped_objects.filter(tenant=target.tenant)
    return qs.filter(event_type=event_type).count() if event_type is not None else qs.count()


def run_search(session: Any, base: str, target: Target, search: Search, *, warmup: int, repeat: int) -> SearchResult:
    from audit.events import EventType

    headers = {"Authorization": f"Bearer {target.token}", "Accept": "application/dicom+json"}
    path, params = search.request(0)
    result = SearchResult(name=search.name, example="/".join(p[:12] for p in path.split("/")) + _qs(params))
    before = audit_count(target)
    timings: list[float] = []
    counts: list[int] = []
    for i in range(warmup + repeat):
        path, params = search.request(i)
        t0 = time.perf_counter()
        response = session.get(f"{base}/{path}", params=params, headers=headers, timeout=120)
        body = response.content
        elapsed = time.perf_counter() - t0
        result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1
        if response.status_code not in (200, 204):
            raise BenchError(f"{search.name}: HTTP {response.status_code}: {body[:300]!r}")
        if i >= warmup:
            timings.append(elapsed)
            counts.append(len(json.loads(body)) if response.status_code == 200 else 0)
    result.latency = summary_ms(timings)
    result.results = {"min": min(counts), "median": statistics.median(counts), "max": max(counts)}
    result.audit_events_added = audit_count(target) - before
    result.audit_events_expected = warmup + repeat
    queried = audit_count(target, int(EventType.STUDIES_QUERIED))
    if result.audit_events_added != result.audit_events_expected:
        raise BenchError(f"{search.name}: {result.audit_events_added} audit events for {warmup + repeat} searches")
    log(
        f"{search.name}: median {result.latency['median_ms']} ms, p95 {result.latency['p95_ms']} ms, "
        f"results {result.results} (Query events so far: {queried})"
    )
    return result


def _qs(params: dict[str, str]) -> str:
    return ("?" + "&".join(f"{k}={v}" for k, v in params.items())) if params else ""


def selector_timing(target: Target, search: Search, *, warmup: int, repeat: int) -> dict[str, float]:
    """The search's queryset alone (the database and the ORM, series prefetched), in this process: what of the
    HTTP figure is the database's."""
    from django.conf import settings

    from studies.selectors import attribute_lookup, qido_search
    from tenants.scoping import tenant_scope

    timings = []
    with tenant_scope(target.tenant):
        for i in range(warmup + repeat):
            path, params = search.request(i)
            parts = path.split("/")
            study = parts[1] if len(parts) > 2 else None
            series = parts[3] if len(parts) > 4 else None
            matches = [(attribute_lookup(k), v) for k, v in params.items() if k != "limit"]
            page = int(params.get("limit", settings.DICOMWEB_QIDO_MAX_RESULTS))
            t0 = time.perf_counter()
            qs = qido_search(actor=target.user, level=search.level, matches=matches, study_uid=study, series_uid=series)
            list(qs[: page + 1])
            if i >= warmup:
                timings.append(time.perf_counter() - t0)
    return summary_ms(timings)


def audit_timing(target: Target, sizes: tuple[int, ...] = (1, 100, 1000), repeat: int = 20) -> dict[str, float]:
    """The audit share of a search: `studies_query_record` alone, in this process, for a result of 1, 100 and
    1,000 studies (each study adds a patient and a study participant to the event). Median ms by size."""
    from studies.models import Study
    from studies.services.reads import studies_query_record
    from tenants.scoping import tenant_scope

    out: dict[str, float] = {}
    with tenant_scope(target.tenant):
        for size in sizes:
            studies = list(Study.objects.select_related("patient")[:size])
            timings = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                studies_query_record(
                    actor=target.user,
                    resource="bench",
                    query_string="StudyDate=20230301-20230331",
                    studies=studies,
                    results=len(studies),
                    source_address="127.0.0.1",
                )
                timings.append(time.perf_counter() - t0)
            out[f"{len(studies)}_studies_median_ms"] = round(statistics.median(timings[2:]) * 1000, 1)
    return out


@dataclass
class Retrieval:
    instances: int
    stored_megabytes: float
    runs: list[dict[str, float]] = field(default_factory=list)
    rendered: dict[str, float] = field(default_factory=dict)
    audit: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        rates = [r["megabytes_per_second"] for r in self.runs]
        return {
            "instances": self.instances,
            "stored_megabytes": round(self.stored_megabytes, 1),
            "runs": self.runs,
            "megabytes_per_second_median": round(statistics.median(rates), 1),
            "seconds_median": round(statistics.median(r["seconds"] for r in self.runs), 3),
            "first_byte_ms_median": round(statistics.median(r["first_byte_ms"] for r in self.runs), 1),
            "rendered_frames": self.rendered,
            "audit": self.audit,
        }


def run_retrieval(
    session: Any, base: str, target: Target, real: RealSeries, *, retrievals: int, frames: int
) -> Retrieval:
    from django.db.models import Sum

    from audit.events import EventType
    from studies.models import ReadTally
    from tenants.scoping import tenant_scope

    auth = {"Authorization": f"Bearer {target.token}"}
    url = f"{base}/studies/{real.study_uid}/series/{real.series_uid}"
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    result = Retrieval(instances=len(real.sop_uids), stored_megabytes=real.megabytes)
    retrieved_before = audit_count(target, int(EventType.INSTANCES_RETRIEVED))
    for i in range(retrievals + 1):  # the first one warms up
        t0 = time.perf_counter()
        first = None
        size = 0
        tail = b""
        parts = 0
        with session.get(url, headers={**auth, "Accept": accept}, stream=True, timeout=600) as response:
            if response.status_code != 200:
                raise BenchError(f"series retrieval: HTTP {response.status_code}: {response.text[:300]}")
            boundary = response.headers["Content-Type"].split("boundary=")[1].split(";")[0].strip('"').encode()
            for chunk in response.iter_content(chunk_size=1 << 16):
                if first is None:
                    first = time.perf_counter() - t0
                size += len(chunk)
                parts += (tail + chunk).count(b"--" + boundary + b"\r\n")  # never split: the tail overlaps
                tail = chunk[-(len(boundary) + 3) :]
        elapsed = time.perf_counter() - t0
        if parts != len(real.sop_uids):
            raise BenchError(f"series retrieval: {parts} parts, expected {len(real.sop_uids)}")
        if i:
            result.runs.append(
                {
                    "seconds": round(elapsed, 3),
                    "first_byte_ms": round((first or 0) * 1000, 1),
                    "body_megabytes": round(size / MB, 2),
                    "megabytes_per_second": round(size / MB / elapsed, 1),
                }
            )
    retrieved = audit_count(target, int(EventType.INSTANCES_RETRIEVED)) - retrieved_before
    log(f"retrieval: {result.runs}")

    # Rendered frames: frame 1 of `frames` instances of the series, in order (a viewer scrolling), twice.
    accessed_before = audit_count(target, int(EventType.INSTANCES_ACCESSED))
    timings: list[float] = []
    sizes: list[int] = []
    chosen = real.sop_uids[:: max(1, len(real.sop_uids) // frames)][:frames]
    warmup = 3
    for i, sop in enumerate([*chosen[:warmup], *chosen, *chosen]):
        t0 = time.perf_counter()
        response = session.get(
            f"{url}/instances/{sop}/frames/1/rendered", headers={**auth, "Accept": "image/jpeg"}, timeout=60
        )
        body = response.content
        elapsed = time.perf_counter() - t0
        if response.status_code != 200 or not body.startswith(b"\xff\xd8"):
            raise BenchError(f"rendered frame: HTTP {response.status_code}: {body[:200]!r}")
        if i >= warmup:
            timings.append(elapsed)
            sizes.append(len(body))
    result.rendered = {**summary_ms(timings), "jpeg_kb_median": round(statistics.median(sizes) / 1000, 1)}
    accessed = audit_count(target, int(EventType.INSTANCES_ACCESSED)) - accessed_before
    with tenant_scope(target.tenant):
        folded = ReadTally.objects.aggregate(n=Sum("folded"))["n"] or 0
    renders = warmup + 2 * len(chosen)
    result.audit = {
        "retrievals": retrievals + 1,
        "retrieve_events": retrieved,
        "rendered_reads": renders,
        "accessed_events": accessed,
        "folded_reads": folded,
    }
    if retrieved != retrievals + 1 or accessed + folded != renders:
        raise BenchError(f"reads and audit disagree: {result.audit}")
    log(f"rendered: median {result.rendered['median_ms']} ms, p95 {result.rendered['p95_ms']} ms; audit {result.audit}")
    return result


def gunicorn_start(processes: Processes, env: dict[str, str], target: Target) -> tuple[Started, str]:
    import requests

    port = free_port()
    base = f"http://127.0.0.1:{port}/dicomweb/{TENANT_SLUG}"
    auth = {"Authorization": f"Bearer {target.token}"}

    def answers(_: Started) -> bool:
        try:
            requests.get(f"{base}/studies?limit=1", headers=auth, timeout=2)
        except requests.RequestException:
            return False
        return True

    argv = [GUNICORN, "portal.wsgi:application", "-w", str(GUNICORN_WORKERS), "-b", f"127.0.0.1:{port}"]
    web = processes.start(
        "gunicorn", [*argv, "--timeout", "300"], {**env, "PORTAL_BASE_URL": f"http://127.0.0.1:{port}"}, answers
    )
    for _ in range(2 * GUNICORN_WORKERS):  # both workers have loaded the application
        requests.get(f"{base}/studies?limit=1", headers=auth, timeout=30)
    return web, base


# Main
# ------------------------------------------------------------------------------


def print_table(results: list[SearchResult], retrieval: Retrieval) -> None:
    head = f"{'QIDO-RS search':<40}{'median ms':>10}{'p95 ms':>8}{'DB ms':>7}{'results':>9}  audit"
    print(head)
    print("-" * len(head))
    for r in results:
        count = r.results["median"]
        shown = f"{count:g}" if r.results["min"] == r.results["max"] else f"{count:g}*"
        print(
            f"{r.name:<40}{r.latency['median_ms']:>10.1f}{r.latency['p95_ms']:>8.1f}{r.selector['median_ms']:>7.1f}"
            f"{shown:>9}  +{r.audit_events_added}"
        )
    print("(DB ms: the selector alone, in-process, median; * median of varying counts)")
    d = retrieval.as_dict()
    print()
    print(
        f"WADO-RS series ({d['instances']} instances, {d['stored_megabytes']} MB): {d['megabytes_per_second_median']} "
        f"MB/s median, {d['seconds_median']} s, first byte {d['first_byte_ms_median']} ms "
        f"(runs: {', '.join(str(r['megabytes_per_second']) for r in d['runs'])} MB/s)"
    )
    rendered = d["rendered_frames"]
    print(
        f"Rendered frames (JPEG, 512x512): median {rendered['median_ms']} ms, p95 {rendered['p95_ms']} ms "
        f"over {rendered['n']}; audit {d['audit']}"
    )


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=5000, help="patients in all")
    parser.add_argument("--studies", type=int, default=10000, help="studies in all")
    parser.add_argument("--series", type=int, default=25000, help="series in all")
    parser.add_argument("--instances", type=int, default=100000, help="instances in all")
    parser.add_argument("--real-instances", type=int, default=100, help="instances of the real (ingested) series")
    parser.add_argument("--warmup", type=int, default=5, help="requests of each search before the timed ones")
    parser.add_argument("--repeat", type=int, default=50, help="timed requests of each search")
    parser.add_argument("--retrievals", type=int, default=5, help="timed retrievals of the real series")
    parser.add_argument("--frames", type=int, default=20, help="instances whose frame is rendered")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and database")
    return parser.parse_args()


def main() -> int:
    args = arguments()
    tmp = Path(tempfile.mkdtemp(prefix="enclave-bench-query-"))
    load_before = [round(v, 2) for v in os.getloadavg()]
    log(f"load average before: {load_before}; working in {tmp}")
    env = bench_env(tmp)
    os.environ.clear()
    os.environ.update(env)
    processes = Processes(tmp)
    try:
        django_on_fresh_database(db_name=DB_NAME, redis_url=REDIS_URL)
        import requests

        info = machine()
        info["load_average_before"] = load_before
        target = provision()
        real = ingest_real(target, args.real_instances)
        log(f"ingested the real series: {args.real_instances} instances, {real.megabytes:.1f} MB, {real.seconds:.1f} s")
        started = time.monotonic()
        picked = fixture(
            target,
            patients=args.patients - 1,
            studies=args.studies - 1,
            series=args.series - 1,
            instances=args.instances - args.real_instances,
            seed=args.seed,
        )
        fixture_seconds = time.monotonic() - started
        from studies.models import Instance, Patient, Series, Study
        from tenants.scoping import tenant_scope

        with tenant_scope(target.tenant):
            rows = {
                "patients": Patient.objects.count(),
                "studies": Study.objects.count(),
                "series": Series.objects.count(),
                "instances": Instance.objects.count(),
            }
        log(f"index: {rows} (fixture in {fixture_seconds:.1f} s; {picked['smith_patients']} patients named SMITH)")

        web, base = gunicorn_start(processes, env, target)
        session = requests.Session()
        results = []
        for search in searches(picked, real):
            result = run_search(session, base, target, search, warmup=args.warmup, repeat=args.repeat)
            result.selector = selector_timing(target, search, warmup=args.warmup, repeat=args.repeat)
            results.append(result)
        retrieval = run_retrieval(session, base, target, real, retrievals=args.retrievals, frames=args.frames)
        memory = memory_of(web)
        processes.stop("gunicorn")
        audit_share = audit_timing(target)  # after the checks above: these events are not reads
        log(f"audit event of a search, in-process: {audit_share}")

        print()
        print_table(results, retrieval)
        print(f"Query audit event alone (in-process, median ms by results): {audit_share}")
        out = ROOT / "var" / "bench"
        out.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        path = out / f"query-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
        document = {
            "date": now.isoformat(timespec="seconds"),
            "command": " ".join([Path(PYTHON).name, "-m", "bench.query", *sys.argv[1:]]),
            "machine": info,
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "index": rows,
            "fixture_seconds": round(fixture_seconds, 1),
            "smith_patients": picked["smith_patients"],
            "real_series": {
                "instances": args.real_instances,
                "megabytes": round(real.megabytes, 1),
                "ingest_seconds": round(real.seconds, 1),
            },
            "settings": {"gunicorn_workers": GUNICORN_WORKERS, "conn_max_age": 60, "debug": False, "clients": 1},
            "searches": [
                {
                    "name": r.name,
                    "example": r.example,
                    "latency": r.latency,
                    "selector_in_process": r.selector,
                    "results": r.results,
                    "statuses": r.statuses,
                    "audit_events_added": r.audit_events_added,
                }
                for r in results
            ],
            "retrieval": retrieval.as_dict(),
            "query_audit_event_in_process": audit_share,
            "gunicorn": memory,
        }
        path.write_text(json.dumps(document, indent=2))
        print(f"\nWritten: {path.relative_to(ROOT)}")
        return 0
    finally:
        processes.stop_all()
        bench_cleanup(db_name=DB_NAME, redis_url=REDIS_URL, tmp=tmp, keep=args.keep)


if __name__ == "__main__":
    with _signals_raise():
        sys.exit(main())
