"""The ingestion pipeline through the real services, database and blob stores (Celery eager)."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import timedelta

import pydicom
import pytest
from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.files.storage import storages
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from audit.events import EventType
from audit.models import AuditEvent, SecurityAlert
from portal.celery import app as celery_app
from studies import services
from studies.dicom.synthetic import make_instance, make_study
from studies.models import Blob, IngestItem, Instance, Patient, Series, Study
from studies.scanning import eicar_test_bytes
from studies.storage.blobs import blob_read
from tenants.scoping import tenant_scope
from tests.brokers import redis_queue_forget

pytestmark = pytest.mark.django_db(transaction=True)  # ingest_receive queues processing on commit


def receive(data: bytes, *, actor=None, source=IngestItem.Source.UPLOAD, batch=None) -> IngestItem:
    item = services.ingest_receive(source=source, batch=batch or uuid.uuid4(), data=data, actor=actor,
                                   filename="x.dcm")  # fmt: skip
    item.refresh_from_db()
    return item


def test_a_study_is_indexed_encrypted_and_replicated(tenant_a, technologist_a):
    files = make_study(series=2, instances_per_series=3, patient_name="DOE^JANE", patient_id="MRN123")
    with tenant_scope(tenant_a):
        items = [receive(f, actor=technologist_a) for f in files]
        assert {i.state for i in items} == {IngestItem.State.STORED}
        study = Study.objects.get()
        assert (study.number_of_series, study.number_of_instances) == (2, 6)
        assert study.patient.name == "DOE^JANE"
        assert Series.objects.filter(thumbnail__isnull=False).count() == 2
        instance = Instance.objects.select_related("blob").first()
        raw = storages["blobs"].open(instance.blob.storage_name).read()
        assert b"DICM" not in raw
        assert b"DOE^JANE" not in raw
        assert b"MRN123" not in raw
        assert storages["replica"].open(instance.blob.storage_name).read() == raw
        assert blob_read(blob=instance.blob)[128:132] == b"DICM"
        # Quarantine copies are gone once stored.
        assert not Blob.objects.filter(kind=Blob.Kind.QUARANTINE).exists()
        events = AuditEvent.objects.filter(event_type=EventType.INSTANCES_STORED)
        assert events.count() == 6
        event = events.first()
        assert event.actor_user == technologist_a
        assert {"type": "patient", "id": "MRN123", "name": "DOE^JANE"} in event.participants


def test_the_replica_serves_when_the_primary_copy_is_damaged(tenant_a):
    with tenant_scope(tenant_a):
        receive(make_instance())
        instance = Instance.objects.select_related("blob").get()
        path = storages["blobs"].path(instance.blob.storage_name)
        with open(path, "r+b") as handle:
            handle.seek(100)
            handle.write(b"\xff\xff")
        assert blob_read(blob=instance.blob)[128:132] == b"DICM"


def test_same_bytes_twice_are_stored_once_and_different_bytes_are_a_conflict(tenant_a):
    data = make_instance()
    with tenant_scope(tenant_a):
        first, again = receive(data), receive(data)
        assert (first.state, again.state) == (IngestItem.State.STORED, IngestItem.State.DUPLICATE)
        assert Instance.objects.count() == 1
        uid = Instance.objects.get().sop_instance_uid
        other = receive(make_instance(sop_uid=uid, pixel_seed=9))
        assert other.state == IngestItem.State.CONFLICT
        assert "different content" in other.reason
        assert other.quarantine is not None  # kept for review, never replacing what is stored
        assert Instance.objects.get().sha256 == first.sha256
        assert AuditEvent.objects.filter(event_type=EventType.INGEST_CONFLICT).count() == 1


def test_the_same_instance_in_other_bytes_is_a_duplicate_decided_by_content_hashes_taken_then(tenant_a):
    """The worker stores an instance without its content hash (a SHA-256 over its pixel data that only a second
    object of the same SOP Instance UID needs): that object's hash and the stored one's are taken when it comes,
    and the stored one's is kept. Other bytes (a description the hash does not cover) of the same instance are a
    duplicate; other pixel data under the same UIDs is a conflict."""
    from pydicom.uid import generate_uid

    from studies.dicom.parse import parse
    from studies.services.ingest import ingest_limits

    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    data = make_instance(study_uid=study, series_uid=series, sop_uid=sop, series_description="first")
    with tenant_scope(tenant_a):
        assert receive(data).state == IngestItem.State.STORED
        stored = Instance.objects.get()
        assert stored.content_sha256 == ""
        other_bytes = make_instance(study_uid=study, series_uid=series, sop_uid=sop, series_description="again")
        assert other_bytes != data
        again = receive(other_bytes)
        assert again.state == IngestItem.State.DUPLICATE
        assert again.reason == "already stored with the same content"
        stored.refresh_from_db()
        assert stored.content_sha256 == parse(data, limits=ingest_limits())[0].content_sha256 != ""
        other_pixels = make_instance(study_uid=study, series_uid=series, sop_uid=sop, pixel_seed=9)
        assert receive(other_pixels).state == IngestItem.State.CONFLICT
        assert Instance.objects.count() == 1


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"this is not a dicom file at all" * 10, "not a DICOM"),
        (make_instance()[:-1000], "truncated"),
    ],
)
def test_bad_files_are_rejected_with_a_reason_and_nothing_stored(tenant_a, data, words):
    with tenant_scope(tenant_a):
        item = receive(data)
        assert item.state == IngestItem.State.REJECTED
        assert words in item.reason
        assert item.quarantine is not None
        assert not Instance.objects.exists()
        event = AuditEvent.objects.get(event_type=EventType.INGEST_REJECTED)
        assert event.outcome == 4


def test_malware_is_rejected_and_raises_an_alert(tenant_a):
    infected = make_instance() + eicar_test_bytes()
    with tenant_scope(tenant_a):
        item = receive(infected)
        assert item.state == IngestItem.State.REJECTED
        assert "Malware" in item.reason
        alert = SecurityAlert.objects.get()
        assert alert.kind == "malware"
        assert alert.event.event_type == EventType.MALWARE_DETECTED
        assert not Instance.objects.exists()


def test_an_executable_preamble_is_rejected_and_other_preambles_are_zeroed(tenant_a):
    data = make_instance()
    pe = b"MZ" + b"\x90" * 126 + data[128:]
    text = b"some vendor text".ljust(128, b"\x01") + data[128:]
    with tenant_scope(tenant_a):
        item = receive(pe)
        assert item.state == IngestItem.State.REJECTED
        assert "executable" in item.reason
        assert SecurityAlert.objects.count() == 1
        item = receive(text)
        assert item.state == IngestItem.State.STORED
        stored = blob_read(blob=Instance.objects.select_related("blob").get().blob)
        assert stored[:128] == b"\0" * 128
        assert stored[128:] == data[128:]


def test_processing_is_claimed_once(tenant_a):
    with tenant_scope(tenant_a):
        item = receive(make_instance())
        assert services.ingest_process(item_id=item.pk) is None  # already stored: nothing to do


@contextmanager
def messages_lost_by_the_broker(sent: Counter | None = None):
    """Tasks sent inside go to a real Redis queue that no worker reads, which is then deleted: what a Redis restart
    without persistence does to queued work. With `sent`, the queued messages are counted by task name first."""
    conf = celery_app.conf
    queue = f"lost-{uuid.uuid4().hex[:10]}"
    saved = conf.task_always_eager, conf.task_default_queue, conf.task_routes
    conf.task_always_eager, conf.task_default_queue, conf.task_routes = False, queue, {}
    try:
        yield
    finally:
        if sent is not None:
            with celery_app.connection_for_write() as conn:
                for raw in conn.default_channel.client.lrange(queue, 0, -1):
                    sent[json.loads(raw)["headers"]["task"]] += 1
        conf.task_always_eager, conf.task_default_queue, conf.task_routes = saved
        redis_queue_forget(queue)


@override_settings(INGEST_STALE_SECONDS=60)
def test_the_sweeper_takes_back_items_the_broker_lost(tenant_a):
    with tenant_scope(tenant_a):
        with messages_lost_by_the_broker():
            item = services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=make_instance())
        assert IngestItem.objects.get(pk=item.pk).state == IngestItem.State.RECEIVED
        assert services.ingest_requeue_stale() == 0  # not stale yet
        IngestItem.objects.filter(pk=item.pk).update(updated_at=timezone.now() - timedelta(minutes=5))
        assert services.ingest_requeue_stale() == 1
        assert IngestItem.objects.get(pk=item.pk).state == IngestItem.State.STORED
        # A worker that died holding an item: claimed long ago, still processing.
        with messages_lost_by_the_broker():
            item2 = services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=make_instance())
        IngestItem.objects.filter(pk=item2.pk).update(
            state=IngestItem.State.PROCESSING, claimed_at=timezone.now() - timedelta(minutes=5)
        )
        assert services.ingest_requeue_stale() == 1
        assert IngestItem.objects.get(pk=item2.pk).state == IngestItem.State.STORED


def test_another_tenant_sees_nothing(tenant_a, tenant_b, radiologist_a, outsider_b):
    from studies.selectors import study_list

    with tenant_scope(tenant_a):
        receive(make_instance())
        assert study_list(actor=radiologist_a).count() == 1
    with tenant_scope(tenant_b):
        assert study_list(actor=outsider_b).count() == 0
        assert not Study.objects.exists()


def test_counts_stay_exact_when_four_workers_store_one_study_at_once(tenant_a):
    """Counters are increments in the indexing transaction, not a recount under a lock: four threads (four
    database connections) storing one study's instances at once, new series among them, lose no increment."""
    files = make_study(series=3, instances_per_series=8)
    with tenant_scope(tenant_a), messages_lost_by_the_broker():
        items = [services.ingest_receive(source=IngestItem.Source.CSTORE, batch=uuid.uuid4(), data=f) for f in files]
    ids = [item.pk for item in items]
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(share: list[int]) -> None:
        try:
            start.wait()
            with tenant_scope(tenant_a):
                for item_id in share:
                    services.ingest_process(item_id=item_id)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(ids[n::4],)) for n in range(4)]
    # The thumbnail tasks go to a queue nobody reads: run eagerly in four threads at once, they would leave
    # Celery's process-wide "inside a task" flag set for the tests that follow.
    with messages_lost_by_the_broker():
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    with tenant_scope(tenant_a):
        assert set(IngestItem.objects.values_list("state", flat=True)) == {IngestItem.State.STORED}
        study = Study.objects.get()
        assert (study.number_of_series, study.number_of_instances, study.modalities) == (3, 24, "CT")
        assert sorted(Series.objects.values_list("number_of_instances", flat=True)) == [8, 8, 8]
        assert Instance.objects.count() == 24
        services.study_counts_refresh(study_id=study.pk)  # the recount from the rows agrees
        study.refresh_from_db()
        assert (study.number_of_series, study.number_of_instances) == (3, 24)


def test_pipeline_bookkeeping_is_on_the_dicom_audit_trail_not_in_django_auditlog(tenant_a, technologist_a):
    files = make_study(series=1, instances_per_series=3)
    with tenant_scope(tenant_a):
        for data in files:
            assert receive(data, actor=technologist_a).state == IngestItem.State.STORED

        def logged(model: str) -> int:
            kind = ContentType.objects.get(app_label="studies", model=model)
            return LogEntry.objects.filter(content_type=kind).count()

        # Blob rows and item states are bookkeeping: none in django-auditlog ...
        assert logged("blob") == 0
        assert logged("ingestitem") == 0
        # ... nor the Instance rows, written in bulk per batch: each is in the INSTANCES_STORED event of its
        # storing (its public id, and its SOP Instance UID in the study's entry). The patient data it brought is
        # in django-auditlog.
        assert logged("instance") == 0
        assert (logged("patient"), logged("study")) == (1, 1)
        # Its creation; its thumbnail is recorded by an UPDATE, pipeline bookkeeping as its counts are.
        assert logged("series") == 1
        assert not LogEntry.objects.filter(
            action=LogEntry.Action.UPDATE, changes__has_key="number_of_instances"
        ).exists()
        events = AuditEvent.objects.filter(event_type=EventType.INSTANCES_STORED)
        recorded = Counter(public_id for event in events for public_id in event.extra["instances"])
        assert recorded == Counter({str(i.public_id): 1 for i in Instance.objects.all()})
        listed = [uid for event in events for p in event.participants if p["type"] == "study"
                  for uid in p["detail"]["instances"]]  # fmt: skip
        assert sorted(listed) == sorted(Instance.objects.values_list("sop_instance_uid", flat=True))
        # A person's change of patient data is still in django-auditlog.
        study = Study.objects.get()
        study.description = "Corrected description"
        study.save()
        assert logged("study") == 2


# One item per task, as a worker takes them when it keeps up.
@override_settings(INGEST_BATCH_SIZE=1, INGEST_BATCH_ROUNDS=1)
def test_a_series_thumbnail_is_queued_a_few_times_not_once_per_instance(tenant_a):
    sent: Counter = Counter()
    files = make_study(series=1, instances_per_series=9)
    with tenant_scope(tenant_a), messages_lost_by_the_broker(sent):
        batch = uuid.uuid4()
        items = [services.ingest_receive(source=IngestItem.Source.CSTORE, batch=batch, data=f) for f in files]
        for item in items:
            assert services.ingest_process(item_id=item.pk).state == IngestItem.State.STORED
    # The new series, then (no thumbnail made, since these messages are lost) at 2, 4 and 8 instances.
    assert sent["studies.tasks.series_thumbnail"] == 4
    # One per receipt, and one per task that stopped after its one batch while items still waited.
    assert sent["studies.tasks.ingest_process"] == 9 + 8


@override_settings(INGEST_STALE_SECONDS=60)
def test_the_sweeper_queues_a_waiting_item_again_once_per_window_not_at_every_sweep(tenant_a):
    """An item that only waits behind a long queue is not queued again by every sweep (issue 10: 14 sweeps added
    23,460 duplicate messages under load); a claim that outlived its worker is handed back once."""
    sent: Counter = Counter()
    with tenant_scope(tenant_a), messages_lost_by_the_broker(sent):
        waiting = services.ingest_receive(source=IngestItem.Source.CSTORE, batch=uuid.uuid4(), data=make_instance())
        dead = services.ingest_receive(source=IngestItem.Source.CSTORE, batch=uuid.uuid4(), data=make_instance())
        long_ago = timezone.now() - timedelta(minutes=5)
        IngestItem.objects.filter(pk=waiting.pk).update(updated_at=long_ago)
        IngestItem.objects.filter(pk=dead.pk).update(state=IngestItem.State.PROCESSING, claimed_at=long_ago)
        assert services.ingest_requeue_stale() == 2
        assert services.ingest_requeue_stale() == 0  # the next sweeps, within the window: nothing again
        assert services.ingest_requeue_stale() == 0
        dead.refresh_from_db()
        assert (dead.state, dead.claimed_at) == (IngestItem.State.RECEIVED, None)
        assert IngestItem.objects.get(pk=waiting.pk).state == IngestItem.State.RECEIVED
    assert sent["studies.tasks.ingest_process"] == 4  # two from the doors, one each from the first sweep


def test_waiting_items_are_stored_as_one_batch_with_one_event_per_study(tenant_a, technologist_a):
    """Issue 10: one task takes the items that wait (here: every message lost, as when a worker is busy), writes
    their rows in bulk, counts once per series and study, and records one INSTANCES_STORED event per study with
    every instance in it. A bad object, malware and a repeated SOP Instance UID in the batch are decided alone."""
    sent: Counter = Counter()
    first, second = make_study(series=2, instances_per_series=4), make_study(series=1, instances_per_series=3)
    copy = first[0]
    bad, infected = b"not dicom" * 40, make_instance() + eicar_test_bytes()
    with tenant_scope(tenant_a), messages_lost_by_the_broker(sent):
        batch = uuid.uuid4()
        items = [services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=batch, data=f, actor=technologist_a)
                 for f in [*first, bad, *second, infected, copy]]  # fmt: skip
        assert services.ingest_process(item_id=items[3].pk).state == IngestItem.State.STORED
        assert all(services.ingest_process(item_id=item.pk) is None for item in items)  # all taken by the first
        states = [IngestItem.objects.get(pk=item.pk).state for item in items]
        assert states == [IngestItem.State.STORED] * 8 + [IngestItem.State.REJECTED] + [
            IngestItem.State.STORED] * 3 + [IngestItem.State.REJECTED, IngestItem.State.DUPLICATE]  # fmt: skip
        assert set(IngestItem.objects.values_list("attempts", flat=True)) == {1}
        assert Instance.objects.count() == 11
        counts = sorted(Study.objects.values_list("number_of_series", "number_of_instances"))
        assert counts == [(1, 3), (2, 8)]
        assert sorted(Series.objects.values_list("number_of_instances", flat=True)) == [3, 4, 4]
        stored = list(AuditEvent.objects.filter(event_type=EventType.INSTANCES_STORED))
        assert len(stored) == 2  # one per study
        assert sorted(e.extra["count"] for e in stored) == [3, 8]
        assert {e.target_type for e in stored} == {"studies.study"}
        assert {e.actor_user_id for e in stored} == {technologist_a.pk}
        for event in stored:
            study = Study.objects.get(public_id=event.target_id)
            entry = next(p for p in event.participants if p["type"] == "study")
            assert sorted(entry["detail"]["instances"]) == sorted(
                Instance.objects.filter(series__study=study).values_list("sop_instance_uid", flat=True)
            )
        assert AuditEvent.objects.filter(event_type=EventType.INGEST_REJECTED).count() == 1
        assert SecurityAlert.objects.filter(kind="malware").count() == 1
        # Promoted, not encrypted again: every instance blob is its item's quarantine row, under its study's key,
        # and no quarantine copy is left for the stored ones.
        for instance in Instance.objects.select_related("blob"):
            assert instance.blob.kind == Blob.Kind.INSTANCE
            assert instance.blob.study_key_id is not None
            assert blob_read(blob=instance.blob)[128:132] == b"DICM"
            assert storages["replica"].exists(instance.blob.storage_name)
        assert Blob.objects.filter(kind=Blob.Kind.QUARANTINE).count() == 2  # the bad and the infected one
    assert sent["studies.tasks.series_thumbnail"] == 3  # one per new series


def test_the_quarantined_ciphertext_is_promoted_as_it_is(tenant_a):
    """Sealed under the study's key at receipt, the quarantine copy becomes the archive copy byte for byte (same
    row, same data key); a zeroed preamble changes the bytes, so that one is encrypted anew."""
    data = make_instance()
    text = b"some vendor text".ljust(128, b"\x01") + make_instance()[128:]
    with tenant_scope(tenant_a), messages_lost_by_the_broker():
        item = services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=data)
        other = services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=text)
        quarantined = storages["quarantine"].open(item.quarantine.storage_name).read()
        quarantine_id, quarantine_name = item.quarantine.public_id, item.quarantine.storage_name
        assert item.quarantine.study_key_id is not None
        services.ingest_process(item_id=item.pk)
        item.refresh_from_db()
        other.refresh_from_db()
        assert (item.state, other.state) == (IngestItem.State.STORED, IngestItem.State.STORED)
        instance = Instance.objects.select_related("blob").get(pk=item.instance_id)
        assert instance.blob.public_id == quarantine_id  # the same row and data key, now in the archive
        assert not storages["quarantine"].exists(quarantine_name)
        assert storages["blobs"].open(instance.blob.storage_name).read() == quarantined
        assert storages["replica"].open(instance.blob.storage_name).read() == quarantined
        assert instance.sha256 == item.sha256
        zeroed = Instance.objects.select_related("blob").get(pk=other.instance_id)
        assert blob_read(blob=zeroed.blob)[:128] == bytes(128)
        assert zeroed.sha256 != other.sha256
        assert not Blob.objects.filter(kind=Blob.Kind.QUARANTINE).exists()


def test_statements_per_instance_in_a_batch(tenant_a, capsys):
    """Issue 10's figure, counted: statements per instance of receipt and of processing, for 12 instances of one
    series received while no worker runs (then one task takes all 12), the series' first instance included."""
    from django.db import connection as conn
    from django.test.utils import CaptureQueriesContext

    files = make_study(series=1, instances_per_series=12)
    with tenant_scope(tenant_a), messages_lost_by_the_broker():
        batch = uuid.uuid4()
        logged_before = LogEntry.objects.count()
        with CaptureQueriesContext(conn) as received:
            items = [services.ingest_receive(source=IngestItem.Source.CSTORE, batch=batch, data=f) for f in files]
        with CaptureQueriesContext(conn) as processed:
            assert services.ingest_process(item_id=items[0].pk).state == IngestItem.State.STORED
        assert set(IngestItem.objects.values_list("state", flat=True)) == {IngestItem.State.STORED}
        logged = LogEntry.objects.count() - logged_before
        assert not LogEntry.objects.filter(content_type__model="instance").exists()
    per_receive, per_process = len(received) / len(files), len(processed) / len(files)
    with capsys.disabled():
        print(f"\n[statements] receive {per_receive:.2f} / process {per_process:.2f} per instance "
              f"(batch of {len(files)}); django-auditlog rows {logged / len(files):.2f} per instance")  # fmt: skip
    # One statement per object (the blob and the item in one INSERT, committing on its own: was BEGIN, two INSERTs
    # and COMMIT), and the tenant's and the study's first keys with the first object.
    assert per_receive <= 4.5
    assert per_process <= 6  # was 20.0 per instance, one task per instance
    # The new patient, study and series, and the tenant's and the study's first keys; no Instance row: each is in
    # its INSTANCES_STORED event.
    assert logged == 5


def test_a_batch_of_new_series_looks_each_row_up_once_and_writes_the_verdicts_without_a_subquery(tenant_a):
    """A batch of small instances makes many new patients, studies and series: their rows are found missing by one
    SELECT per table for the batch (not one per new row), and the items' verdicts are one UPDATE that names each
    item's instance (not a subquery per item, which PostgreSQL answered by reading every instance of the tenant
    when its statistics predated the tenant's rows: docs/BENCHMARKS.md, h5 branch, session 3). Every row is
    still right: each item points at its own instance, counts and patients are exact."""
    from django.db import connection as conn
    from django.test.utils import CaptureQueriesContext

    files = []
    for n in range(3):  # three patients, each with a study of two series of two instances, and one existing
        files += make_study(series=2, instances_per_series=2, patient_id=f"SMALL{n}", patient_name=f"SMALL^{n}")
    with tenant_scope(tenant_a), messages_lost_by_the_broker():
        existing = receive(make_instance(patient_id="SMALL0", patient_name="SMALL^0"))
        assert services.ingest_process(item_id=existing.pk).state == IngestItem.State.STORED
        batch = uuid.uuid4()
        items = [services.ingest_receive(source=IngestItem.Source.CSTORE, batch=batch, data=f) for f in files]
        with CaptureQueriesContext(conn) as processed:
            assert services.ingest_process(item_id=items[0].pk).state == IngestItem.State.STORED
        sql = [q["sql"] for q in processed.captured_queries]
        for table, key in (("studies_patient", "patient_id"), ("studies_study", "study_instance_uid"),
                           ("studies_series", "series_instance_uid")):  # fmt: skip
            by_key = [q for q in sql if q.startswith("SELECT") and f'FROM "{table}"' in q
                      and f'"{table}"."{key}"' in q.split("WHERE")[-1]]  # fmt: skip
            assert len(by_key) == 1, table  # the batch's rows by their key, once
        verdicts = [q for q in sql if q.startswith('UPDATE "studies_ingestitem"') and '"instance_id"' in q]
        assert len(verdicts) == 1
        assert "SELECT" not in verdicts[0]
        for item in IngestItem.objects.filter(batch=batch).select_related("instance"):
            assert item.state == IngestItem.State.STORED
            assert item.quarantine_id is None
            assert item.instance.blob_id is not None
            assert item.sop_instance_uid == item.instance.sop_instance_uid
        assert len({i.instance_id for i in IngestItem.objects.filter(batch=batch)}) == len(files)
        assert Patient.objects.filter(patient_id__startswith="SMALL").count() == 3
        assert Study.objects.count() == 4  # the existing instance's study and three new ones
        assert sorted(Series.objects.values_list("number_of_instances", flat=True)) == [1] + [2] * 6


@override_settings(INGEST_BATCH_SIZE=2, INGEST_BATCH_ROUNDS=20)
def test_one_wake_up_processes_every_waiting_item_batch_after_batch(tenant_a):
    """A door that wakes the worker once for many items (the DICOM listener: `queue=False`, then `ingest_wake`)
    loses none: the task goes on claiming the waiting items, a batch at a time, until none waits."""
    sent: Counter = Counter()
    files = make_study(series=1, instances_per_series=5)
    with tenant_scope(tenant_a):
        with messages_lost_by_the_broker(sent):
            items = [services.ingest_receive(source=IngestItem.Source.CSTORE, batch=uuid.uuid4(), data=f, queue=False)
                     for f in files]  # fmt: skip
        assert sent["studies.tasks.ingest_process"] == 0  # nothing queued at the commits
        assert services.ingest_process(item_id=items[-1].pk).state == IngestItem.State.STORED
        assert set(IngestItem.objects.values_list("state", flat=True)) == {IngestItem.State.STORED}
        assert Study.objects.get().number_of_instances == 5


@override_settings(INGEST_BATCH_SIZE=2, INGEST_BATCH_ROUNDS=2)
def test_a_task_that_stops_after_its_rounds_queues_a_message_for_the_rest(tenant_a):
    sent: Counter = Counter()
    files = make_study(series=1, instances_per_series=5)
    with tenant_scope(tenant_a), messages_lost_by_the_broker(sent):
        items = [services.ingest_receive(source=IngestItem.Source.CSTORE, batch=uuid.uuid4(), data=f, queue=False)
                 for f in files]  # fmt: skip
        services.ingest_process(item_id=items[0].pk)
        states = Counter(IngestItem.objects.values_list("state", flat=True))
    assert states == Counter({IngestItem.State.STORED: 4, IngestItem.State.RECEIVED: 1})
    assert sent["studies.tasks.ingest_process"] == 1


def test_a_message_whose_item_is_taken_still_claims_what_waits(tenant_a):
    """After a scanner outage, the retried message of a batch whose own item was decided finds the items that
    batch gave back (they have no message of their own when a door woke the worker once for them)."""
    with tenant_scope(tenant_a), messages_lost_by_the_broker():
        first, second = (
            services.ingest_receive(source=IngestItem.Source.CSTORE, batch=uuid.uuid4(), data=f, queue=False)
            for f in make_study(series=1, instances_per_series=2)
        )
        IngestItem.objects.filter(pk=first.pk).update(state=IngestItem.State.STORED)  # decided by an earlier batch
        assert services.ingest_process(item_id=first.pk) is None  # not this call's item...
        assert IngestItem.objects.get(pk=second.pk).state == IngestItem.State.STORED  # ...but the waiting one is done


@override_settings(INGEST_STALE_SECONDS=60)
def test_items_whose_wake_up_was_lost_are_queued_by_the_sweeper(tenant_a):
    """A listener killed after committing items but before waking the worker loses nothing: the rows are the
    truth, and the sweeper queues them."""
    sent: Counter = Counter()
    with tenant_scope(tenant_a), messages_lost_by_the_broker(sent):
        items = [services.ingest_receive(source=IngestItem.Source.CSTORE, batch=uuid.uuid4(), data=f, queue=False)
                 for f in make_study(series=1, instances_per_series=3)]  # fmt: skip
        IngestItem.objects.update(updated_at=timezone.now() - timedelta(minutes=5))
        assert services.ingest_requeue_stale() == 3
    assert sent["studies.tasks.ingest_process"] == 3
    with tenant_scope(tenant_a):
        services.ingest_process(item_id=items[0].pk)
        assert set(IngestItem.objects.values_list("state", flat=True)) == {IngestItem.State.STORED}


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_quarantine_copy_altered_before_processing_is_refused_as_lost(tenant_a, where):
    """The worker trusts the quarantined ciphertext only if every chunk authenticates (the tags bind the blob, its
    tenant, each chunk's index and the last chunk): one byte changed at the start or the end of the file, and the
    object is refused as lost, never indexed or promoted."""
    with tenant_scope(tenant_a):
        with messages_lost_by_the_broker():
            item = services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=make_instance())
        quarantine = item.quarantine
        path = storages["quarantine"].path(quarantine.storage_name)
        with open(path, "rb") as handle:
            raw = bytearray(handle.read())
        raw[40 if where == "first" else -3] ^= 0x01
        with open(path, "wb") as handle:
            handle.write(raw)
        done = services.ingest_process(item_id=item.pk)
        assert (done.state, done.failure) == (IngestItem.State.REJECTED, IngestItem.Failure.LOST)
        assert not Instance.objects.exists()
        assert Blob.objects.filter(pk=quarantine.pk, kind=Blob.Kind.QUARANTINE).exists()  # kept for review


@override_settings(INGEST_BATCH_SIZE=50, INGEST_GATHER_SECONDS=0.25)
def test_after_a_short_batch_the_task_lets_the_streams_next_objects_gather_into_one_batch(tenant_a, monkeypatch):
    """The first batch is taken at once; after a batch short of INGEST_BATCH_SIZE the task waits
    INGEST_GATHER_SECONDS before claiming again, and what arrived meanwhile (here: four objects of the same
    association, received through the real door while the clock is moved on) is one batch: one INSTANCES_STORED
    event for them, not one per object."""
    from studies.services import ingest

    files = make_study(series=1, instances_per_series=5)
    batch = uuid.uuid4()
    waits: list[float] = []

    def door_keeps_sending(*, tenant_id: int, timeout: float) -> bool:  # the wait, as the association goes on
        waits.append(timeout)
        if len(waits) == 1:
            for data in files[1:]:
                services.ingest_receive(source=IngestItem.Source.CSTORE, batch=batch, data=data, queue=False)
        time.sleep(timeout)
        return False  # the listener signals no receipt: the wait runs its course

    with tenant_scope(tenant_a), messages_lost_by_the_broker():
        first = services.ingest_receive(source=IngestItem.Source.CSTORE, batch=batch, data=files[0], queue=False)
        monkeypatch.setattr(ingest, "_received_wait", door_keeps_sending)
        assert services.ingest_process(item_id=first.pk).state == IngestItem.State.STORED
        monkeypatch.undo()
        # After the batch of 1, and after the batch of 4 (then nothing waits): each the whole gathering time.
        assert len(waits) == 2
        assert all(0.2 < wait <= 0.25 for wait in waits)
        assert set(IngestItem.objects.values_list("state", flat=True)) == {IngestItem.State.STORED}
        counts = sorted(e.extra["count"] for e in AuditEvent.objects.filter(event_type=EventType.INSTANCES_STORED))
        assert counts == [1, 4]


def test_one_batch_writes_each_item_its_own_verdict_instance_and_blob_name(tenant_a):
    """The batch's UPDATEs give each row its own value (a CASE on the primary key, studies.services.ingest._PerRow):
    each item its own instance, SOP Instance UID and reason (a zeroed preamble is said on that item only), each
    promoted blob its own archive name."""
    sent: Counter = Counter()
    blobs = make_study(series=1, instances_per_series=4)
    blobs[2] = b"vendor text".ljust(128, b"\x01") + blobs[2][128:]  # a preamble to zero: encrypted anew, not promoted
    with tenant_scope(tenant_a), messages_lost_by_the_broker(sent):
        batch = uuid.uuid4()
        items = [services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=batch, data=data) for data in blobs]
        services.ingest_process(item_id=items[0].pk)
        assert AuditEvent.objects.filter(event_type=EventType.INSTANCES_STORED).count() == 1  # one batch
        for n, item in enumerate(items):
            item.refresh_from_db()
            uid = pydicom.dcmread(io.BytesIO(blobs[n]), stop_before_pixels=True).SOPInstanceUID
            instance = Instance.objects.select_related("blob").get(sop_instance_uid=uid)
            assert (item.state, item.instance_id, item.sop_instance_uid) == (
                IngestItem.State.STORED, instance.pk, instance.sop_instance_uid)  # fmt: skip
            assert item.reason == ("preamble zeroed" if n == 2 else "")
            assert item.quarantine_id is None
            assert instance.blob.kind == Blob.Kind.INSTANCE
            assert instance.blob.storage_name == f"t{tenant_a.pk}/instance/{instance.blob.public_id.hex[:2]}/" + (
                instance.blob.public_id.hex)  # fmt: skip
            assert storages["blobs"].exists(instance.blob.storage_name)
            assert blob_read(blob=instance.blob)[:128] == (b"\0" * 128 if n == 2 else blobs[n][:128])
        assert Blob.objects.filter(kind=Blob.Kind.QUARANTINE).count() == 0


def _same_size_files(count: int) -> list[bytes]:
    """`count` instances of one series whose files are all of one size (UIDs of one length)."""
    study, series = "1.2.826.0.1.3680043.10.1.1", "1.2.826.0.1.3680043.10.1.2"
    files = [make_instance(study_uid=study, series_uid=series, sop_uid=f"1.2.826.0.1.3680043.10.2.{10000 + n}")
             for n in range(count)]  # fmt: skip
    assert len({len(f) for f in files}) == 1
    return files


@pytest.mark.parametrize(("budget_in_files", "batches"), [(2, [3, 2, 1]), (0.5, [2, 1, 1, 1, 1])])
def test_a_claim_takes_the_waiting_items_oldest_first_up_to_the_byte_budget(tenant_a, budget_in_files, batches):
    """One statement claims the message's item and the items waiting with it, oldest first, while their bytes stay
    within INGEST_BATCH_BYTES (the message's own item aside); the first waiting item is always taken, so an item
    larger than the budget is still a batch (of its own when nothing else is claimed with it)."""
    files, batch = _same_size_files(6), uuid.uuid4()  # one association: one event per study and batch
    with tenant_scope(tenant_a), messages_lost_by_the_broker():
        items = [services.ingest_receive(source=IngestItem.Source.CSTORE, batch=batch, data=f, queue=False)
                 for f in files]  # fmt: skip
        with override_settings(INGEST_BATCH_BYTES=int(budget_in_files * len(files[0])), INGEST_GATHER_SECONDS=0):
            assert services.ingest_process(item_id=items[0].pk).state == IngestItem.State.STORED
        events = AuditEvent.objects.filter(event_type=EventType.INSTANCES_STORED).order_by("sequence")
        assert [e.extra["count"] for e in events] == batches
        # Oldest first: each batch holds the items received after the previous batch's.
        item_of = {str(i.instance.public_id): i.pk for i in IngestItem.objects.select_related("instance")}
        taken = [sorted(item_of[public_id] for public_id in e.extra["instances"]) for e in events]
        assert [pk for batch in taken for pk in batch] == [item.pk for item in items]
        assert set(IngestItem.objects.values_list("attempts", flat=True)) == {1}


@override_settings(INGEST_STALE_SECONDS=60)
def test_a_processing_item_is_claimed_again_only_by_its_own_message_once_its_claim_is_stale(tenant_a):
    """A claim that outlived its worker (claimed longer ago than INGEST_STALE_SECONDS) is taken again by the item's
    own message, with one attempt more; a live claim is left to its worker, however long the item waited before
    (its `updated_at`); and no other message's claim takes a `processing` item, stale or not, from the waiting
    items: the sweeper hands a dead claim back as `received` first."""
    files = make_study(series=1, instances_per_series=3)
    with tenant_scope(tenant_a), messages_lost_by_the_broker():
        dead, live, other = (services.ingest_receive(source=IngestItem.Source.CSTORE, batch=uuid.uuid4(), data=f,
                                                     queue=False) for f in files)  # fmt: skip
        now = timezone.now()
        IngestItem.objects.filter(pk=dead.pk).update(
            state=IngestItem.State.PROCESSING, claimed_at=now - timedelta(minutes=5), attempts=1
        )
        IngestItem.objects.filter(pk=live.pk).update(
            state=IngestItem.State.PROCESSING, claimed_at=now - timedelta(seconds=10), attempts=1,
            updated_at=now - timedelta(minutes=10),
        )  # fmt: skip
        # Another message: it takes the waiting item, and neither claim.
        assert services.ingest_process(item_id=other.pk).state == IngestItem.State.STORED
        states = dict(IngestItem.objects.values_list("pk", "state"))
        assert (states[dead.pk], states[live.pk]) == (IngestItem.State.PROCESSING, IngestItem.State.PROCESSING)
        # The live claim's own message: not this call's to process.
        assert services.ingest_process(item_id=live.pk) is None
        live.refresh_from_db()
        assert (live.state, live.attempts) == (IngestItem.State.PROCESSING, 1)
        # The dead claim's own message takes it again.
        done = services.ingest_process(item_id=dead.pk)
        assert (done.state, done.attempts) == (IngestItem.State.STORED, 2)


def test_two_workers_claiming_at_once_take_each_item_exactly_once(tenant_a):
    """Two workers (two database connections) claiming the same waiting items at once, batch after batch: every
    item is claimed by one of them, none by both (FOR UPDATE SKIP LOCKED, then an UPDATE of rows still
    `received`), each with one attempt."""
    from studies.services import ingest

    with tenant_scope(tenant_a), messages_lost_by_the_broker():
        items = [services.ingest_receive(source=IngestItem.Source.CSTORE, batch=uuid.uuid4(), data=f, queue=False)
                 for f in make_study(series=2, instances_per_series=15)]  # fmt: skip
    claims: list[list[int]] = [[], []]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def claim(mine: list[int]) -> None:
        try:
            start.wait()
            with tenant_scope(tenant_a):
                while taken := ingest._claim_batch(None):
                    mine.extend(taken)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(claims[n],)) for n in range(2)]
    with override_settings(INGEST_BATCH_SIZE=3):  # settings are process-wide: overridden here, not in the threads
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    assert not set(claims[0]) & set(claims[1])
    assert sorted(claims[0] + claims[1]) == sorted(item.pk for item in items)
    with tenant_scope(tenant_a):
        assert set(IngestItem.objects.values_list("state", "attempts")) == {(IngestItem.State.PROCESSING, 1)}


def test_a_claim_never_takes_another_tenants_waiting_items(tenant_a, tenant_b):
    with tenant_scope(tenant_b), messages_lost_by_the_broker():
        theirs = services.ingest_receive(source=IngestItem.Source.CSTORE, batch=uuid.uuid4(), data=make_instance(),
                                         queue=False)  # fmt: skip
    with tenant_scope(tenant_a), messages_lost_by_the_broker():
        ours = services.ingest_receive(source=IngestItem.Source.CSTORE, batch=uuid.uuid4(), data=make_instance(),
                                       queue=False)  # fmt: skip
        assert services.ingest_process(item_id=ours.pk).state == IngestItem.State.STORED
        assert services.ingest_process(item_id=theirs.pk) is None  # not an item of this scope
    with tenant_scope(tenant_b):
        theirs.refresh_from_db()
        assert (theirs.state, theirs.attempts, theirs.claimed_at) == (IngestItem.State.RECEIVED, 0, None)


def test_a_batch_into_a_series_that_exists_has_a_fixed_cost_in_statements(tenant_a):
    """The fixed cost of a batch (docs/BENCHMARKS.md, h2 branch, session 6): for a stream into a series that exists,
    14 statements whatever the batch's size, and one more for the claim that finds nothing left (24 before): the
    claim in one statement, the study keys read with the items, both counts in one statement, the tenant not read
    again for the audit event. The counts stay exact."""
    from django.db import connection as conn
    from django.test.utils import CaptureQueriesContext

    files = make_study(series=1, instances_per_series=21)
    statements = []
    with tenant_scope(tenant_a), messages_lost_by_the_broker(), override_settings(INGEST_GATHER_SECONDS=0):
        first = services.ingest_receive(source=IngestItem.Source.CSTORE, batch=uuid.uuid4(), data=files[0])
        assert services.ingest_process(item_id=first.pk).state == IngestItem.State.STORED  # the series exists
        for part in (files[1:2], files[2:]):  # a batch of 1, then one of 19
            batch = uuid.uuid4()
            items = [services.ingest_receive(source=IngestItem.Source.CSTORE, batch=batch, data=f, queue=False)
                     for f in part]  # fmt: skip
            with CaptureQueriesContext(conn) as processed:
                assert services.ingest_process(item_id=items[0].pk).state == IngestItem.State.STORED
            statements.append([q["sql"] for q in processed.captured_queries])
        series = Series.objects.select_related("study").get()
        assert (series.number_of_instances, series.study.number_of_instances) == (21, 21)
    for sql in statements:
        assert len(sql) == 15
        assert not [q for q in sql if 'FROM "tenants_tenant"' in q or 'FROM "studies_studykey"' in q]
        assert len([q for q in sql if '"studies_study" SET' in q]) == 1  # with the series' count
        assert len([q for q in sql if 'UPDATE "studies_ingestitem"' in q and "SKIP LOCKED" in q]) == 2  # two claims
