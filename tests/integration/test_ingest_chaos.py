"""Nothing lost (issue 3): real Celery workers on Redis, killed with SIGKILL in the middle of an ingest, and a
queue lost as a Redis restart without persistence loses it. After a restart and the sweeper, every instance is
stored exactly once, readable, audited once, and the audit chain verifies.

The workers come from `restartable_celery_worker`: unacknowledged messages come back after a few seconds (not
production's minutes), and INGEST_STALE_SECONDS is short for them, so the sweeper takes back stuck items soon. As
in production, the sweeper's stale time is shorter than the broker's visibility timeout: the sweeper recovers a
dead worker's item first, and the message Redis redelivers later finds it taken.
"""

from __future__ import annotations

import hashlib
import io
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from django.core.files.storage import storages
from django.db import connection
from pydicom.uid import generate_uid

from audit.events import EventType
from audit.models import AuditEvent
from audit.selectors import audit_chain_verify
from portal.celery import app as celery_app
from studies import services
from studies.dicom.synthetic import make_instance, make_study
from studies.models import Blob, IngestItem, Instance, Series, Study
from studies.storage.blobs import blob_read
from studies.tasks import ingest_sweep_task
from tenants.models import Tenant
from tenants.scoping import tenant_scope
from tests.brokers import redis_queue_forget
from tests.chains import chain_of
from tests.integration.conftest import RestartableWorker
from tests.integration.held_rows import RowHeld

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

STALE_SECONDS = 2
KILL_AT = (100, 150)  # the positions of the large instances, during which the workers are killed
FINAL = {s.value for s in IngestItem.FINAL_STATES}
RECEIVED_LINE = re.compile(r"Task studies\.tasks\.ingest_process\[([0-9a-f-]+)\] received")
SUCCEEDED_LINE = re.compile(r"Task studies\.tasks\.ingest_process\[([0-9a-f-]+)\] succeeded in [^:]+: '(\w+)'")


@pytest.fixture
def worker(restartable_celery_worker: RestartableWorker) -> RestartableWorker:
    restartable_celery_worker.env["INGEST_STALE_SECONDS"] = str(STALE_SECONDS)
    return restartable_celery_worker


# Generous bounds: on a loaded 2-core CI machine the worker goes through the first hundred items (and their
# thumbnails) several times slower than on a quiet one. The bounds only cap a hung run; the checks are unchanged.
def wait_for(predicate: Callable[[], bool], *, what: str, worker: RestartableWorker, timeout: float = 150) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if worker.process is not None and worker.process.poll() is not None:
            pytest.fail(f"the worker exited early while waiting for {what}:\n{worker.output(-1)}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; worker log:\n{worker.output(-1)[-6000:]}")
        time.sleep(0.05)


def states(tenant: Tenant) -> Counter[str]:
    with tenant_scope(tenant):
        return Counter(IngestItem.objects.values_list("state", flat=True))


def queue_length(queue: str) -> int:
    with celery_app.connection_for_write() as conn:
        return int(conn.default_channel.client.llen(queue))


def sweep_until_final(tenant: Tenant, worker: RestartableWorker, *, count: int, timeout: float = 150) -> int:
    """What beat does every minute in production, sooner: once the queue is drained, send the sweeper through the
    broker to the worker; again every few seconds until all `count` items are final. Returns the sweeps sent."""
    sweeps, last = 0, 0.0
    deadline = time.monotonic() + timeout
    while True:
        current = states(tenant)
        if sum(current.values()) == count and set(current) <= FINAL:
            return sweeps
        if time.monotonic() > deadline:
            pytest.fail(f"items not final after {sweeps} sweeps: {dict(current)}\n{worker.output(-1)[-6000:]}")
        if queue_length(worker.queue) == 0 and time.monotonic() - last > STALE_SECONDS + 1:
            ingest_sweep_task.delay()
            sweeps, last = sweeps + 1, time.monotonic()
        time.sleep(0.1)


@dataclass(frozen=True)
class StoreCount:
    files: int
    orphans: int
    missing: int


def blob_files(tenant: Tenant, store: str, kind: str) -> StoreCount:
    """Files of one kind in one store against the Blob rows that reference them. An orphan is ciphertext whose
    row (and with it the wrapped data key) rolled back: nobody can ever read it."""
    root = Path(storages[store].location)
    folder = root / f"t{tenant.pk}" / kind
    on_disk = {str(p.relative_to(root)) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()
    with tenant_scope(tenant):
        referenced = set(Blob.objects.filter(kind=kind).values_list("storage_name", flat=True))
    return StoreCount(files=len(on_disk), orphans=len(on_disk - referenced), missing=len(referenced - on_disk))


def assert_stored_exactly_once(tenant: Tenant, sent: list[bytes]) -> dict[str, object]:
    """Every sent instance stored once, readable with the bytes sent, audited once; the chain verifies."""
    uids = {str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID) for data in sent}
    with tenant_scope(tenant):
        items = list(IngestItem.objects.all())
        assert len(items) == len(sent)
        assert Counter(i.state for i in items) == {IngestItem.State.STORED: len(sent)}
        assert all(i.quarantine_id is None for i in items)
        instances = list(Instance.objects.select_related("blob"))
        assert len(instances) == len(sent)
        assert {i.sop_instance_uid for i in instances} == uids
        assert sorted(i.sha256 for i in instances) == sorted(i.sha256 for i in items)
        assert {i.instance_id for i in items} == {i.pk for i in instances}
        for instance in instances:
            assert blob_read(blob=instance.blob)[128:132] == b"DICM"
        # One event per study and batch (issue 10), each listing its instances: every instance in exactly one.
        extras = AuditEvent.objects.filter(event_type=EventType.INSTANCES_STORED).values_list("extra", flat=True)
        stored_events = Counter(public_id for extra in extras for public_id in extra["instances"])
        assert stored_events == Counter({str(i.public_id): 1 for i in instances})
        assert not AuditEvent.objects.filter(
            event_type__in=[EventType.INGEST_REJECTED, EventType.INGEST_CONFLICT]
        ).exists()
        attempts = Counter(i.attempts for i in items)
    verification = audit_chain_verify(chain=chain_of(tenant))
    assert verification.ok, verification
    primary = blob_files(tenant, "blobs", Blob.Kind.INSTANCE)
    replica = blob_files(tenant, "replica", Blob.Kind.INSTANCE)
    quarantine = blob_files(tenant, "quarantine", Blob.Kind.QUARANTINE)
    assert (primary.missing, replica.missing) == (0, 0)
    assert primary.files - primary.orphans == len(sent)
    assert replica.files - replica.orphans == len(sent)
    return {"attempts": dict(attempts), "primary": primary, "replica": replica, "quarantine": quarantine,
            "audit_events": verification.events}  # fmt: skip


def task_lines(log: str) -> tuple[list[str], Counter[str]]:
    """Ingest task ids as received, in order, and the results of those that finished."""
    return RECEIVED_LINE.findall(log), Counter(result for _, result in SUCCEEDED_LINE.findall(log))


def receive(data: bytes, batch: uuid.UUID) -> None:
    services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=batch, data=data, filename="chaos.dcm")


def instance_files(tenant: Tenant) -> set[Path]:
    return set((Path(storages["blobs"].location) / f"t{tenant.pk}" / Blob.Kind.INSTANCE).rglob("*"))


def unacknowledged(log: str) -> list[str]:
    """Ingest tasks a worker received and never finished: their messages were not acknowledged (acks_late)."""
    finished = {task for task, _ in SUCCEEDED_LINE.findall(log)}
    return [task for task in RECEIVED_LINE.findall(log) if task not in finished]


def series_held(tenant: Tenant, *, study_uid: str, series_uid: str) -> RowHeld:
    """An uncommitted Series row with `series_uid`, held by another connection until the block ends (then rolled
    back). A worker that inserts a series with the same UID waits on the unique index meanwhile."""

    def insert() -> None:
        study = Study.objects.get(study_instance_uid=study_uid)
        Series.objects.create(tenant=tenant, study=study, series_instance_uid=series_uid)

    return RowHeld(tenant, insert, what="series row")


def series_insert_waiting() -> bool:
    """True when some backend waits on a lock while inserting a series: the worker, on the held row's UID."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
            ['INSERT INTO "studies_series"%'],
        )
        return bool(cursor.fetchone()[0])


def test_workers_killed_mid_ingest_lose_nothing_and_duplicate_nothing(worker, tenant_a, capsys):
    sent = make_study(series=4, instances_per_series=50, patient_id="CHAOS01")
    # Two large multi-frame instances in the stream keep the worker inside one item for a while, so that each kill
    # lands at a known point: just after the claim, and in the middle of the storing transaction.
    # Each large instance opens a series of its own: the second one's series is what the test holds (below).
    study_uid = str(pydicom.dcmread(io.BytesIO(sent[0]), stop_before_pixels=True).StudyInstanceUID)
    series_uids = [str(generate_uid()) for _ in KILL_AT]
    for number, (position, series_uid) in enumerate(zip(KILL_AT, series_uids, strict=True), 1):
        sent[position] = make_instance(study_uid=study_uid, series_uid=series_uid, patient_id="CHAOS01", rows=512,
                                       columns=512, frames=40, series_number=4 + number, instance_number=1,
                                       series_description="Large multi-frame")  # fmt: skip
    # As in production (sweeper stale time 2 min, visibility 13 min), the sweeper normally takes a dead worker's
    # item back before Redis redelivers its message; either way one of them finds the item taken.
    worker.visibility_timeout = 20
    batch = uuid.uuid4()
    started = time.monotonic()
    with tenant_scope(tenant_a):
        for data in sent:
            receive(data, batch)
        large = [IngestItem.objects.get(sha256=hashlib.sha256(sent[p]).hexdigest()) for p in KILL_AT]
        # The worker starts once everything is received: a batch takes the items waiting (up to 50), so a worker
        # that ran during the receipt would keep up with it and store the first large instance before the test
        # could look. Now its batches are predictable: the first large instance is in the third, the second
        # large one in the first batch of the next worker (the items of the dead worker's batch are still held).
        worker.start()

        def claimed(item: IngestItem) -> Callable[[], bool]:
            return lambda: IngestItem.objects.filter(pk=item.pk, state=IngestItem.State.PROCESSING).exists()

        # Kill 1: right after the worker claimed the first large instance, before anything of it is stored.
        wait_for(claimed(large[0]), what="the claim of the first large instance", worker=worker)
        worker.kill()
        first_kill = time.monotonic()
        at_first_kill = states(tenant_a)
        assert claimed(large[0])()
        assert 20 <= at_first_kill[IngestItem.State.STORED] < len(sent)
        # Mid-batch: the dead worker held a whole batch (the large instance and the items claimed with it), not one
        # item: every one of them must still come out stored exactly once.
        assert at_first_kill[IngestItem.State.PROCESSING] > 1

        # Kill 2: a new worker goes on with the queue; it is killed once the second large instance's ciphertext
        # is on disk, inside the transaction that would index it. To make "inside" certain rather than a race with
        # the commit, another connection holds an uncommitted row with that instance's new series UID: the
        # worker's insert of the series waits on the unique index, after the blob is written and before commit.
        with series_held(tenant_a, study_uid=study_uid, series_uid=series_uids[1]):
            worker.start()
            wait_for(claimed(large[1]), what="the claim of the second large instance", worker=worker)
            before = instance_files(tenant_a)
            wait_for(lambda: bool(instance_files(tenant_a) - before), what="the large blob being written",
                     worker=worker, timeout=60)  # fmt: skip
            wait_for(series_insert_waiting, what="the worker to wait on the held series",
                     worker=worker, timeout=60)  # fmt: skip
            worker.kill()
            at_second_kill = states(tenant_a)
            assert claimed(large[1])(), "the storing transaction committed before the kill"
            assert at_second_kill[IngestItem.State.PROCESSING] > 1  # a batch inside its storing transaction
    in_flight = unacknowledged(worker.output(0)) + unacknowledged(worker.output(1))
    assert len(in_flight) == 2  # acks_late: each dead worker held the message of its large instance

    worker.start()
    sweeps = sweep_until_final(tenant_a, worker, count=len(sent))
    all_final = time.monotonic()
    # acks_late + reject_on_worker_lost: Redis gives each unacknowledged message back after the visibility timeout.
    for task in in_flight:
        wait_for(lambda t=task: re.search(rf"\[{t}\] succeeded", worker.output(2)) is not None,
                 what=f"the unacknowledged message {task} to come back", worker=worker,
                 timeout=worker.visibility_timeout + 15)  # fmt: skip
    wait_for(lambda: queue_length(worker.queue) == 0, what="the queue to drain", worker=worker)

    figures = assert_stored_exactly_once(tenant_a, sent)
    with tenant_scope(tenant_a):
        attempts = [IngestItem.objects.get(pk=item.pk).attempts for item in large]
    assert attempts == [2, 2]  # claimed by the dead worker, then once more: never stored twice
    # Nothing left behind: the second dead worker had written its batch's promoted copies (the quarantined
    # ciphertext, under the archive's name, which follows from the blob's id), and its retry wrote the same
    # copies under the same names again.
    assert figures["primary"].orphans == 0
    assert figures["replica"].orphans == 0
    assert figures["quarantine"].orphans == 0
    _, last_results = task_lines(worker.output(2))
    redelivery_results = dict(SUCCEEDED_LINE.findall(worker.output(2)))
    with capsys.disabled():
        print(
            f"\n[chaos kill] sent={len(sent)} at_first_kill={dict(at_first_kill)} "
            f"at_second_kill={dict(at_second_kill)} final={dict(states(tenant_a))} duplicates=0 "
            f"sweeps_sent={sweeps} unacked_at_kills={len(in_flight)} redelivered_by_redis={len(in_flight)} "
            f"redelivery_results={[redelivery_results[t] for t in in_flight]} last_worker_results={dict(last_results)} "
            f"attempts={figures['attempts']} orphans(primary/replica/quarantine)={figures['primary'].orphans}/"
            f"{figures['replica'].orphans}/{figures['quarantine'].orphans} audit_events={figures['audit_events']} "
            f"first_kill_to_all_stored={all_final - first_kill:.1f}s total={time.monotonic() - started:.1f}s"
        )


def test_a_queue_lost_by_redis_is_recovered_by_the_sweeper(worker, tenant_a, capsys):
    sent = make_study(series=2, instances_per_series=25, patient_id="CHAOS02")
    batch = uuid.uuid4()
    started = time.monotonic()
    with tenant_scope(tenant_a):  # no worker consumes: every message waits in Redis
        for data in sent:
            receive(data, batch)
    assert queue_length(worker.queue) == len(sent)
    # What a Redis restart without persistence does to this queue: its messages and bindings are gone.
    forgotten = redis_queue_forget(worker.queue)
    flushed_at = time.monotonic()
    assert queue_length(worker.queue) == 0

    worker.start()
    time.sleep(1)
    assert states(tenant_a) == {IngestItem.State.RECEIVED: len(sent)}  # nothing comes by itself
    sweeps = sweep_until_final(tenant_a, worker, count=len(sent))
    all_final = time.monotonic()
    wait_for(lambda: queue_length(worker.queue) == 0, what="the queue to drain", worker=worker)

    figures = assert_stored_exactly_once(tenant_a, sent)
    assert (figures["primary"].orphans, figures["replica"].orphans, figures["quarantine"].orphans) == (0, 0, 0)
    received, results = task_lines(worker.output())
    with capsys.disabled():
        print(
            f"\n[chaos flush] sent={len(sent)} lost_messages={len(sent)} redis_keys_deleted={forgotten} "
            f"final={dict(states(tenant_a))} duplicates=0 sweeps_sent={sweeps} ingest_tasks_run={len(received)} "
            f"results={dict(results)} attempts={figures['attempts']} "
            f"flush_to_all_stored={all_final - flushed_at:.1f}s total={time.monotonic() - started:.1f}s"
        )
