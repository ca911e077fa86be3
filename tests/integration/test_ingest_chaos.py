"""Nothing lost (issue 3): real Celery workers on Redis, one killed with SIGKILL in the middle of an ingest, and a
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

from audit.events import EventType
from audit.models import AuditChain, AuditEvent
from audit.selectors import audit_chain_verify
from portal.celery import app as celery_app
from studies import services
from studies.dicom.synthetic import make_instance, make_study
from studies.models import Blob, IngestItem, Instance
from studies.storage.blobs import blob_read
from studies.tasks import ingest_sweep_task
from tenants.models import Tenant
from tenants.scoping import tenant_scope
from tests.integration.conftest import RestartableWorker, redis_queue_forget

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

STALE_SECONDS = 2
KILL_AT = 150  # the position of the large instance, during which the worker is killed
FINAL = {s.value for s in IngestItem.FINAL_STATES}
RECEIVED_LINE = re.compile(r"Task studies\.tasks\.ingest_process\[([0-9a-f-]+)\] received")
SUCCEEDED_LINE = re.compile(r"Task studies\.tasks\.ingest_process\[([0-9a-f-]+)\] succeeded in [^:]+: '(\w+)'")


@pytest.fixture
def worker(restartable_celery_worker: RestartableWorker) -> RestartableWorker:
    restartable_celery_worker.env["INGEST_STALE_SECONDS"] = str(STALE_SECONDS)
    return restartable_celery_worker


def wait_for(predicate: Callable[[], bool], *, what: str, worker: RestartableWorker, timeout: float = 45) -> None:
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


def sweep_until_final(tenant: Tenant, worker: RestartableWorker, *, count: int, timeout: float = 45) -> int:
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
        stored_events = Counter(
            AuditEvent.objects.filter(event_type=EventType.INSTANCES_STORED).values_list("target_id", flat=True)
        )
        assert stored_events == Counter({str(i.public_id): 1 for i in instances})
        assert not AuditEvent.objects.filter(
            event_type__in=[EventType.INGEST_REJECTED, EventType.INGEST_CONFLICT]
        ).exists()
        attempts = Counter(i.attempts for i in items)
    verification = audit_chain_verify(chain=AuditChain.objects.get(tenant=tenant))
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


def test_a_worker_killed_mid_ingest_loses_nothing_and_duplicates_nothing(worker, tenant_a, capsys):
    sent = make_study(series=4, instances_per_series=50, patient_id="CHAOS01")
    # One large multi-frame instance in the stream keeps the worker inside one item for a while: the kill lands
    # while that item is claimed (`processing`) and its storing transaction is open.
    study_uid = str(pydicom.dcmread(io.BytesIO(sent[0]), stop_before_pixels=True).StudyInstanceUID)
    sent[KILL_AT] = make_instance(study_uid=study_uid, patient_id="CHAOS01", rows=512, columns=512, frames=40,
                                  series_number=5, series_description="Large multi-frame")  # fmt: skip
    large_sha256 = hashlib.sha256(sent[KILL_AT]).hexdigest()
    # As in production (sweeper stale time 2 min, visibility 13 min), the sweeper takes the dead worker's item
    # back before Redis redelivers its message.
    worker.visibility_timeout = 15
    batch = uuid.uuid4()
    started = time.monotonic()
    worker.start()
    with tenant_scope(tenant_a):
        for data in sent:
            receive(data, batch)
        large = IngestItem.objects.get(sha256=large_sha256)
        wait_for(lambda: IngestItem.objects.filter(pk=large.pk, state=IngestItem.State.PROCESSING).exists(),
                 what="the worker to claim the large instance", worker=worker)  # fmt: skip
        worker.kill()
        killed_at = time.monotonic()
        at_kill = states(tenant_a)
        large.refresh_from_db()
    assert large.state == IngestItem.State.PROCESSING  # left behind by the dead worker
    assert 20 <= at_kill[IngestItem.State.STORED] < len(sent)
    first_received, _ = task_lines(worker.output(0))
    first_finished = {task for task, _ in SUCCEEDED_LINE.findall(worker.output(0))}
    in_flight = [task for task in first_received if task not in first_finished]
    assert in_flight  # acks_late: the message of the item being worked on was never acknowledged

    worker.start()
    sweeps = sweep_until_final(tenant_a, worker, count=len(sent))
    all_final = time.monotonic()
    # reject_on_worker_lost / acks_late: Redis gives the unacknowledged message back after the visibility timeout.
    for task in in_flight:
        wait_for(lambda t=task: re.search(rf"\[{t}\] succeeded", worker.output(1)) is not None,
                 what=f"the unacknowledged message {task} to come back", worker=worker,
                 timeout=worker.visibility_timeout + 15)  # fmt: skip
    wait_for(lambda: queue_length(worker.queue) == 0, what="the queue to drain", worker=worker)

    figures = assert_stored_exactly_once(tenant_a, sent)
    # At most the blob the killed worker was writing is left behind: ciphertext whose key rolled back with its row.
    assert max(figures["primary"].orphans, figures["replica"].orphans, figures["quarantine"].orphans) <= 1
    second_received, second_results = task_lines(worker.output(1))
    redelivered = [task for task in in_flight if task in second_received]
    redelivery_results = dict(SUCCEEDED_LINE.findall(worker.output(1)))
    with tenant_scope(tenant_a):
        large.refresh_from_db()
    assert large.state == IngestItem.State.STORED
    assert large.attempts == 2  # claimed by the dead worker, then once more: never stored twice
    with capsys.disabled():
        print(
            f"\n[chaos kill] sent={len(sent)} at_kill={dict(at_kill)} final={dict(states(tenant_a))} "
            f"duplicates=0 sweeps_sent={sweeps} in_flight_at_kill={len(in_flight)} "
            f"redelivered_by_redis={len(redelivered)} redelivery_result="
            f"{[redelivery_results.get(t) for t in redelivered]} second_worker_results={dict(second_results)} "
            f"attempts={figures['attempts']} orphans(primary/replica/quarantine)={figures['primary'].orphans}/"
            f"{figures['replica'].orphans}/{figures['quarantine'].orphans} audit_events={figures['audit_events']} "
            f"kill_to_all_stored={all_final - killed_at:.1f}s total={time.monotonic() - started:.1f}s"
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
