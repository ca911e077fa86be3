"""A batch's promoted copies (studies.storage.blobs.blob_promote): a row counts its replica only once that copy is
written, per row within a batch; a primary copy that fails rolls the batch back, its items then stored one by one,
each once, and the quarantined files go only once what promoted them commits."""

from __future__ import annotations

import logging
import os
import uuid

import pytest
from django.core.files.storage import storages

from audit.events import EventType
from audit.models import AuditEvent
from studies import services
from studies.dicom.synthetic import make_study
from studies.models import Blob, IngestItem, Instance
from studies.storage.blobs import PRIMARY, QUARANTINE, REPLICA, blob_name, blob_read
from tenants.scoping import tenant_scope
from tests.studies.services.test_ingest import messages_lost_by_the_broker

pytestmark = pytest.mark.django_db(transaction=True)  # ingest_receive queues processing on commit


def _received(count: int) -> tuple[list[IngestItem], list[bytes]]:
    """`count` instances of one series received as one batch while no worker runs (call inside a tenant scope and
    `messages_lost_by_the_broker`), and their bytes."""
    batch, sent = uuid.uuid4(), make_study(series=1, instances_per_series=count)
    return [services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=batch, data=data) for data in sent], sent


def _stored(item: IngestItem) -> Instance:
    item.refresh_from_db()
    assert item.state == IngestItem.State.STORED
    return Instance.objects.select_related("blob").get(pk=item.instance_id)


def _archive_path(store: str, item: IngestItem) -> str:
    assert item.quarantine is not None
    name = blob_name(tenant_id=item.tenant_id, kind=Blob.Kind.INSTANCE, blob_id=item.quarantine.public_id)
    return storages[store].path(name)


def test_a_replica_copy_that_fails_leaves_its_row_unreplicated_and_the_batch_stored(tenant_a, monkeypatch, caplog):
    real_replace = os.replace
    with tenant_scope(tenant_a), messages_lost_by_the_broker():
        items, _ = _received(3)
        failing = _archive_path(REPLICA, items[1])

        def replace(source, target):
            if target == failing:
                raise OSError("the replica store's disk is full")
            real_replace(source, target)

        monkeypatch.setattr(os, "replace", replace)
        with caplog.at_level(logging.WARNING, logger="studies.storage.blobs"):
            services.ingest_process(item_id=items[0].pk)
        stored = [_stored(item) for item in items]

    assert [instance.blob.replicated_at is not None for instance in stored] == [True, False, True]
    assert [storages[REPLICA].exists(instance.blob.storage_name) for instance in stored] == [True, False, True]
    assert all(storages[PRIMARY].exists(instance.blob.storage_name) for instance in stored)
    assert "not replicated; the catch-up job will copy it" in caplog.text
    assert not [name for name in os.listdir(os.path.dirname(failing)) if name.endswith(".tmp")]


def test_a_primary_copy_that_fails_on_the_thread_rolls_the_batch_back_and_each_item_is_stored_once(
    tenant_a, monkeypatch
):
    """The first attempt at one primary copy fails (no hard link, then its write): the batch's transaction rolls
    back, with the quarantine removals it had registered; the items are stored one by one, each once."""
    real_link, real_replace = os.link, os.replace
    with tenant_scope(tenant_a), messages_lost_by_the_broker():
        items, sent = _received(3)
        quarantined = [storages[QUARANTINE].path(item.quarantine.storage_name) for item in items]
        failing = _archive_path(PRIMARY, items[2])
        failures: list[str] = []

        def link(source, target, **kwargs):
            if target.startswith(failing) and not failures:
                raise OSError("no hard links here")
            return real_link(source, target, **kwargs)

        def replace(source, target):
            if target == failing and not failures:
                failures.append(target)
                raise OSError("the primary store's disk is full")
            real_replace(source, target)

        monkeypatch.setattr(os, "link", link)
        monkeypatch.setattr(os, "replace", replace)
        services.ingest_process(item_id=items[0].pk)
        assert failures == [failing]
        stored = [_stored(item) for item in items]
        assert Instance.objects.count() == 3
        assert not Blob.objects.filter(kind=Blob.Kind.QUARANTINE).exists()
        # Stored one by one after the batch rolled back: an INSTANCES_STORED event each, none for the batch.
        assert AuditEvent.objects.filter(event_type=EventType.INSTANCES_STORED).count() == 3
        for instance, data in zip(stored, sent, strict=True):
            assert blob_read(blob=instance.blob) == data
            assert instance.blob.replicated_at is not None
            assert storages[REPLICA].exists(instance.blob.storage_name)

    assert not [path for path in quarantined if os.path.exists(path)]  # removed once the stored batches committed
