"""Fixity and repair, replica catch-up, orphan cleanup and restore from the replica (issue 13), through the real
services and the real stores: each test runs on folders and on S3 (moto's server mode, started by the tests)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Iterator
from datetime import date, timedelta

import pytest
from django.core.files.storage import FileSystemStorage, storages
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone

from audit.events import EventType
from audit.models import AuditEvent, SecurityAlert
from studies.models import Blob, BlobCursor, Instance
from studies.services import fixity
from studies.storage import envelope
from studies.storage.blobs import (
    PRIMARY,
    QUARANTINE,
    REPLICA,
    BlobUnreadable,
    blob_data_key,
    blob_delete,
    blob_read,
    blob_sealed_check,
    blob_sealed_put,
    blob_sealed_read,
    blob_write,
)
from studies.storage.keys import study_key_ensure
from studies.tasks import blob_fixity_check_all_task, blob_orphans_remove_all_task, blob_replicas_catch_up_all_task
from tenants.scoping import tenant_scope
from tests.studies.retention_fixtures import stored_study
from tests.studies.storage.s3_server import S3Server, s3_server_fixture, s3_storages

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    yield from s3_server_fixture()


@pytest.fixture(params=["fs", "s3"])
def stores(request, tmp_path, monkeypatch) -> Iterator[str]:
    """Fresh blob stores for the test: folders under tmp_path, or buckets on the local S3 server."""
    if request.param == "fs":
        config = {
            name: {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": tmp_path / name}}
            for name in (PRIMARY, REPLICA, QUARANTINE)
        }
        from django.conf import settings

        config = {**settings.STORAGES, **config}
    else:
        config = s3_storages(request.getfixturevalue("s3_server"), monkeypatch)
    with override_settings(STORAGES=config):
        yield request.param


STUDY_UID = "1.2.826.0.1.3680043.8.498.4242"


def _plain_blobs(count: int, size: int = 3000) -> list[Blob]:
    """Random instance blobs of one study (one study key for them all, as ingest would have)."""
    return [
        blob_write(kind=Blob.Kind.INSTANCE, data=os.urandom(size), study_instance_uid=STUDY_UID) for _ in range(count)
    ]


def _good_in(store: str, blob: Blob) -> bool:
    sealed = blob_sealed_read(store=store, name=blob.storage_name)
    data = blob_sealed_check(blob=blob, sealed=sealed, data_key=blob_data_key(blob=blob))
    return hashlib.sha256(data).hexdigest() == blob.sha256


def _flip_byte(store: str, name: str, at: int = 100) -> None:
    sealed = bytearray(blob_sealed_read(store=store, name=name))
    sealed[at] ^= 0x01
    blob_sealed_put(store=store, name=name, sealed=bytes(sealed))


def _wipe(store: str) -> None:
    """The whole store gone: the folder removed, or every object of the bucket deleted."""
    storage = storages[store]
    if isinstance(storage, FileSystemStorage):
        shutil.rmtree(storage.location)
    else:
        storage.bucket.objects.all().delete()
        assert list(storage.bucket.objects.all()) == []


def test_a_flipped_byte_in_a_primary_blob_is_found_alerted_and_repaired(stores, tenant_a):
    study = stored_study(tenant_a, patient_id="FIX-1", study_date=date(2024, 1, 2))
    with tenant_scope(tenant_a):
        instance = Instance.objects.filter(series__study=study).select_related("blob").first()
        blob = instance.blob
        original = blob_sealed_read(store=PRIMARY, name=blob.storage_name)
        _flip_byte(PRIMARY, blob.storage_name)
        assert _good_in(REPLICA, blob)  # the replica is still good
        with pytest.raises(envelope.DecryptionError):
            _good_in(PRIMARY, blob)

        report = fixity.blob_fixity_check(max_blobs=1000)

        assert report.checked == Blob.objects.exclude(kind=Blob.Kind.QUARANTINE).count()
        assert (report.repaired, report.unavailable) == (1, 0)
        assert _good_in(PRIMARY, blob)  # the primary copy alone decrypts to the stored hash again
        assert blob_sealed_read(store=PRIMARY, name=blob.storage_name) == original
        assert blob_read(blob=blob)
        alert = SecurityAlert.objects.get(kind="blob_fixity")
        assert alert.severity == SecurityAlert.Severity.HIGH
        assert alert.subject == str(blob.public_id)
        assert alert.evidence == [f"blob:{blob.public_id}", "blobs: does not decrypt to the stored size and SHA-256"]
        assert alert.event.event_type == EventType.BLOB_FIXITY_FAILED
        participants = {p["type"] for p in alert.event.participants}
        assert {"studies.blob", "studies.study", "studies.patient"} <= participants
        assert AuditEvent.objects.filter(event_type=EventType.BLOB_REPAIRED).count() == 1

        # The next cycle finds nothing more.
        BlobCursor.objects.filter(job=BlobCursor.Job.FIXITY).update(last_blob_id=0)
        again = fixity.blob_fixity_check(max_blobs=1000)
        assert (again.repaired, again.unavailable) == (0, 0)
        assert SecurityAlert.objects.filter(kind="blob_fixity").count() == 1


def test_a_missing_primary_copy_is_repaired_from_the_replica(stores, tenant_a):
    with tenant_scope(tenant_a):
        (blob,) = _plain_blobs(1)
        storages[PRIMARY].delete(blob.storage_name)
        report = fixity.blob_fixity_check(max_blobs=10)
        assert report.repaired == 1
        assert _good_in(PRIMARY, blob)
        assert SecurityAlert.objects.get(kind="blob_fixity").evidence[1] == "blobs: missing"


def test_both_copies_bad_marks_the_blob_unavailable_and_alerts_critical_once(stores, tenant_a):
    with tenant_scope(tenant_a):
        good, bad = _plain_blobs(2)
        _flip_byte(PRIMARY, bad.storage_name)
        storages[REPLICA].delete(bad.storage_name)

        report = fixity.blob_fixity_check(max_blobs=10)

        assert (report.checked, report.repaired, report.unavailable) == (2, 0, 1)
        bad.refresh_from_db()
        assert bad.damaged_at is not None
        alert = SecurityAlert.objects.get(kind="blob_unavailable")
        assert alert.severity == SecurityAlert.Severity.CRITICAL
        assert sorted(alert.evidence[1:]) == [
            "blobs: does not decrypt to the stored size and SHA-256",
            "replica: missing",
        ]
        with pytest.raises(BlobUnreadable):  # never the corrupt bytes
            blob_read(blob=bad)
        assert blob_read(blob=good)
        # Checked again in the next cycle: still damaged, not alerted twice.
        fixity.blob_fixity_check(max_blobs=10)
        fixity.blob_fixity_check(max_blobs=10)
        assert SecurityAlert.objects.filter(kind="blob_unavailable").count() == 1


def test_fixity_walks_the_cycle_in_rate_limited_runs_and_keeps_its_place(stores, tenant_a, settings):
    with tenant_scope(tenant_a):
        blobs = _plain_blobs(5)
        first = fixity.blob_fixity_check(max_blobs=2)
        assert (first.checked, first.cycle_completed) == (2, False)
        cursor = BlobCursor.objects.get(job=BlobCursor.Job.FIXITY)
        assert cursor.last_blob_id == blobs[1].pk
        # A byte budget stops a run after the blob that crosses it.
        by_bytes = fixity.blob_fixity_check(max_blobs=100, max_bytes=1)
        assert by_bytes.checked == 1
        rest = fixity.blob_fixity_check(max_blobs=100)
        assert (rest.checked, rest.cycle_completed) == (2, True)
        cursor.refresh_from_db()
        assert (cursor.last_blob_id, cursor.last_cycle_completed_at is not None) == (0, True)
        # The default share: every blob once per cycle at one run per interval (here 5 blobs over 2 runs).
        settings.BLOB_FIXITY_CYCLE_DAYS, settings.BLOB_FIXITY_INTERVAL_SECONDS = 2, 86400
        assert fixity.blob_fixity_check().checked == 3


def test_catch_up_restores_missing_and_never_written_replica_copies(stores, tenant_a):
    with tenant_scope(tenant_a):
        lost, never, fine = _plain_blobs(3)
        storages[REPLICA].delete(lost.storage_name)
        storages[REPLICA].delete(never.storage_name)
        Blob.objects.filter(pk=never.pk).update(replicated_at=None)  # the replica store failed at write time

        assert fixity.blob_replicas_catch_up() == 2

        for blob in (lost, never, fine):
            assert _good_in(REPLICA, blob)
        never.refresh_from_db()
        assert never.replicated_at is not None
        event = AuditEvent.objects.get(event_type=EventType.BLOBS_REPLICATED)
        assert event.extra["written"] == 2
        assert fixity.blob_replicas_catch_up() == 0  # idempotent


def test_a_replica_store_down_at_write_time_is_mended_by_the_catch_up_task(stores, tenant_a, monkeypatch):
    with tenant_scope(tenant_a):
        replica = storages[REPLICA]

        def refuse(*args, **kwargs):
            raise OSError("replica store unreachable")

        study_key_ensure(tenant=tenant_a, study_instance_uid=STUDY_UID)  # the study's key files were written before
        monkeypatch.setattr(replica, "save", refuse)
        (blob,) = _plain_blobs(1)
        monkeypatch.undo()
        assert blob.replicated_at is None
        assert not replica.exists(blob.storage_name)
    assert blob_replicas_catch_up_all_task.delay().get() >= 1  # fans out per tenant (eager in the tests)
    with tenant_scope(tenant_a):
        assert _good_in(REPLICA, blob)


def test_orphans_older_than_the_grace_are_removed_young_and_referenced_ones_kept(stores, tenant_a):
    with tenant_scope(tenant_a):
        (kept,) = _plain_blobs(1)
        folder = kept.storage_name.rsplit("/", 1)[0]
        orphan = f"{folder}/{'0' * 32}"
        other_kind = f"t{tenant_a.pk}/{Blob.Kind.THUMBNAIL}/ab/{'1' * 32}"
        key_file = f"t{tenant_a.pk}/keys/study-1.key"
        backup = f"t{tenant_a.pk}/backups/db.dump"
        for store in (PRIMARY, REPLICA):
            for name in (orphan, other_kind, key_file, backup):
                blob_sealed_put(store=store, name=name, sealed=b"ciphertext nobody references")

        young = fixity.blob_orphans_remove()
        assert young == {PRIMARY: 0, REPLICA: 0, QUARANTINE: 0}  # inside the grace: maybe an open transaction
        later = timezone.now() + timedelta(hours=25)
        removed = fixity.blob_orphans_remove(now=later)

        assert removed == {PRIMARY: 2, REPLICA: 2, QUARANTINE: 0}
        for store in (PRIMARY, REPLICA):
            assert not storages[store].exists(orphan)
            assert not storages[store].exists(other_kind)
            assert storages[store].exists(key_file)  # keys/ and backups/ are never ours to judge
            assert storages[store].exists(backup)
            assert storages[store].exists(kept.storage_name)  # a referenced blob never goes, however old
        assert blob_read(blob=kept)
        events = AuditEvent.objects.filter(event_type=EventType.BLOB_ORPHANS_REMOVED).order_by("sequence")
        assert [(e.extra["store"], e.extra["removed"]) for e in events] == [(PRIMARY, 2), (REPLICA, 2)]
    assert blob_orphans_remove_all_task.delay().get() >= 1


def test_the_primary_store_deleted_entirely_is_restored_from_the_replica(stores, tenant_a, tenant_b):
    with tenant_scope(tenant_a):
        blobs_a = _plain_blobs(7, size=5000)
        key_file = f"t{tenant_a.pk}/keys/study-1.key"
        blob_sealed_put(store=REPLICA, name=key_file, sealed=b"wrapped study key")
    with tenant_scope(tenant_b):
        blobs_b = _plain_blobs(2)
    _wipe(PRIMARY)
    with tenant_scope(tenant_a), pytest.raises(FileNotFoundError):
        blob_sealed_read(store=PRIMARY, name=blobs_a[0].storage_name)

    out = io.StringIO()
    call_command("restore_blobs", "--from-replica", "--tenant", tenant_a.slug, stdout=out)

    assert f"tenant {tenant_a.slug}: 7 blobs restored, 0 failed, 2 key files copied" in out.getvalue()
    assert "GB/min" in out.getvalue()
    with tenant_scope(tenant_a):
        for blob in blobs_a:
            assert _good_in(PRIMARY, blob)  # every hash matches, from the primary alone
        assert blob_sealed_read(store=PRIMARY, name=key_file) == b"wrapped study key"
        event = AuditEvent.objects.get(event_type=EventType.BLOBS_RESTORED)
        assert (event.extra["restored"], event.extra["failed"], event.outcome) == (7, 0, 0)
        assert not BlobCursor.objects.exists()  # finished: the next run starts over
    with tenant_scope(tenant_b):  # --tenant restored one tenant only
        assert not storages[PRIMARY].exists(blobs_b[0].storage_name)

    everyone = io.StringIO()
    call_command("restore_blobs", "--from-replica", stdout=everyone)  # every tenant
    assert f"tenant {tenant_b.slug}: 2 blobs restored, 0 failed" in everyone.getvalue()
    with tenant_scope(tenant_b):
        for blob in blobs_b:
            assert _good_in(PRIMARY, blob)


def test_restore_resumes_after_an_interruption_and_names_bad_replica_copies(stores, tenant_a):
    with tenant_scope(tenant_a):
        blobs = _plain_blobs(5)
        _wipe(PRIMARY)
        _flip_byte(REPLICA, blobs[4].storage_name)

        def killed(report):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            fixity.blob_restore_from_replica(batch_size=2, progress=killed)
        assert BlobCursor.objects.get(job=BlobCursor.Job.RESTORE).last_blob_id == blobs[1].pk

        report = fixity.blob_restore_from_replica(batch_size=2)

        assert (report.resumed_after, report.restored, report.failed) == (blobs[1].pk, 2, 1)
        assert report.failures == [f"{blobs[4].public_id}: DecryptionError"]
        for blob in blobs[:4]:
            assert _good_in(PRIMARY, blob)
        assert not storages[PRIMARY].exists(blobs[4].storage_name)  # a bad replica copy is never written
        assert AuditEvent.objects.get(event_type=EventType.BLOBS_RESTORED).outcome == 4


def test_restore_blobs_exits_1_when_a_replica_copy_is_bad(stores, tenant_a):
    with tenant_scope(tenant_a):
        (blob,) = _plain_blobs(1)
        _flip_byte(REPLICA, blob.storage_name)
    with pytest.raises(CommandError) as raised:
        call_command("restore_blobs", "--from-replica", "--tenant", tenant_a.slug, stdout=io.StringIO(),
                     stderr=io.StringIO())  # fmt: skip
    assert raised.value.returncode == 1
    with pytest.raises(CommandError) as unknown:
        call_command("restore_blobs", "--from-replica", "--tenant", "no-such-tenant", stdout=io.StringIO())
    assert unknown.value.returncode == 2


def test_the_fixity_task_fans_out_to_every_tenant(stores, tenant_a, tenant_b):
    with tenant_scope(tenant_b):
        (blob,) = _plain_blobs(1)
        storages[REPLICA].delete(blob.storage_name)
    assert blob_fixity_check_all_task.delay().get() >= 2
    with tenant_scope(tenant_b):
        assert _good_in(REPLICA, blob)
        assert SecurityAlert.objects.get(kind="blob_fixity").tenant == tenant_b
    with tenant_scope(tenant_a):
        assert not SecurityAlert.objects.filter(kind="blob_fixity").exists()


def test_s3_objects_carry_the_server_side_encryption_header_over_our_ciphertext(s3_server, tenant_a, monkeypatch):
    plaintext = b"PLAINTEXT-MARKER " * 200
    with override_settings(STORAGES=s3_storages(s3_server, monkeypatch)), tenant_scope(tenant_a):
        blob = blob_write(kind=Blob.Kind.INSTANCE, data=plaintext)
        for store in (PRIMARY, REPLICA):
            storage = storages[store]
            key = f"{storage.location}/{blob.storage_name}"
            head = storage.connection.meta.client.head_object(Bucket=storage.bucket_name, Key=key)
            assert head["ServerSideEncryption"] == "AES256"
            raw = storage.bucket.Object(key).get()["Body"].read()
            assert b"PLAINTEXT-MARKER" not in raw  # our envelope encryption stays under the server's
            assert raw == blob_sealed_read(store=store, name=blob.storage_name)
        assert blob_read(blob=blob) == plaintext


def test_a_damaged_instance_is_never_served_wado_answers_503(tenant_a, radiologist_a, api_client_for):
    """SECURITY.md A7: a byte flipped in both copies, the fixity job run -> alert, the instance marked, and a
    retrieve answers 503 with the reason, never the corrupt bytes; the rest of the study is still served."""
    study = stored_study(tenant_a, patient_id="FIX-A7", study_date=date(2024, 5, 6))
    with tenant_scope(tenant_a):
        damaged, *others = Instance.objects.filter(series__study=study).select_related("blob", "series")
        for store in (PRIMARY, REPLICA):
            _flip_byte(store, damaged.blob.storage_name)
        assert fixity.blob_fixity_check(max_blobs=1000).unavailable == 1
        assert SecurityAlert.objects.get(kind="blob_unavailable").severity == SecurityAlert.Severity.CRITICAL
        sound = next(i for i in others if i.series_id != damaged.series_id)
    client = api_client_for(radiologist_a, tenant_a)
    base = f"/dicomweb/{tenant_a.slug}/studies/{study.study_instance_uid}"
    accept = 'multipart/related; type="application/dicom"'

    answer = client.get(
        f"{base}/series/{damaged.series.series_instance_uid}/instances/{damaged.sop_instance_uid}", HTTP_ACCEPT=accept
    )
    assert answer.status_code == 503
    assert answer.json()["code"] == "instance_unavailable"
    assert client.get(f"{base}/series/{damaged.series.series_instance_uid}", HTTP_ACCEPT=accept).status_code == 503
    served = client.get(
        f"{base}/series/{sound.series.series_instance_uid}/instances/{sound.sop_instance_uid}", HTTP_ACCEPT=accept
    )
    assert served.status_code == 200
    with tenant_scope(tenant_a):
        assert blob_read(blob=sound.blob) in b"".join(served.streaming_content)


def test_blob_write_read_and_delete_work_on_every_store_kind(stores, tenant_a, django_capture_on_commit_callbacks):
    data = os.urandom(7000)
    with tenant_scope(tenant_a):
        blob = blob_write(kind=Blob.Kind.INSTANCE, data=data)
        name = blob.storage_name
        assert blob_read(blob=blob) == data
        assert storages[PRIMARY].exists(name)
        assert storages[REPLICA].exists(name)
        with django_capture_on_commit_callbacks(execute=True):
            blob_delete(blob=blob)
        assert not storages[PRIMARY].exists(name)
        assert not storages[REPLICA].exists(name)
