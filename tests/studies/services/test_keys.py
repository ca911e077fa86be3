"""Key rotation (issue 13): tenant and master keys rotated without rewriting images, interrupted half-way and run
again; every image still reads, the old version retired, each step on the audit trail. Through the real pipeline
and the real command."""

from __future__ import annotations

import base64
import hashlib
from datetime import date

import pytest
from django.core.files.storage import storages
from django.core.management import CommandError, call_command
from django.test import override_settings

from audit.events import EventType
from audit.models import AuditEvent
from studies.models import Blob, Instance, Series, StudyKey, TenantKey
from studies.services import master_key_rotate, tenant_key_rotate
from studies.storage import envelope
from studies.storage.blobs import PRIMARY, REPLICA, BlobUnreadable, blob_data_key, blob_delete, blob_read, blob_write
from studies.storage.keys import study_key_cache, study_key_file_name, tenant_key
from tenants.scoping import tenant_scope
from tests.studies.retention_fixtures import stored_study

pytestmark = pytest.mark.django_db

NEW_MASTER = base64.b64encode(b"\x02" * 32).decode()


class Interrupted(Exception):
    pass


def _stop_after(count: int):
    done = [0]

    def step() -> None:
        done[0] += 1
        if done[0] == count:
            raise Interrupted

    return step


def _legacy(blob: Blob) -> Blob:
    """Make `blob` as it was stored before blobs had keys of their own: its data key wrapped by the tenant key,
    no key row, no key files."""
    data_key = blob_data_key(blob=blob)
    own = blob.study_key
    blob.wrapped_key = envelope.wrap_data_key(
        tenant_key=tenant_key(1), data_key=data_key, tenant_id=blob.tenant_id, blob_id=str(blob.public_id)
    )
    blob.study_key, blob.key_version = None, 1
    blob.save(update_fields=["wrapped_key", "study_key", "key_version"])
    if own is not None:
        for store in (PRIMARY, REPLICA):
            storages[store].delete(study_key_file_name(tenant_id=blob.tenant_id, key_id=own.key_id, version=1))
        own.delete()
    study_key_cache.clear()
    return blob


def _archive(tenant, prefix: str) -> None:
    """Two studies through the pipeline (8 instances, 4 thumbnails, 2 study keys) and 3 tenant-wrapped blobs (as
    exports were stored before they had keys of their own)."""
    stored_study(tenant, patient_id=f"{prefix}-1", study_date=date(2021, 1, 1))
    stored_study(tenant, patient_id=f"{prefix}-2", study_date=date(2022, 1, 1))
    with tenant_scope(tenant):
        for n in range(3):
            _legacy(blob_write(kind=Blob.Kind.EXPORT, data=f"export {n}".encode() * 100))


def _all_read(tenant) -> int:
    """Read every blob of the tenant as a fresh process would (nothing cached) and check its hash."""
    study_key_cache.clear()
    with tenant_scope(tenant):
        blobs = list(Blob.objects.exclude(kind=Blob.Kind.QUARANTINE).select_related("study_key"))
        for blob in blobs:
            assert hashlib.sha256(blob_read(blob=blob)).hexdigest() == blob.sha256
        return len(blobs)


def test_tenant_rotation_interrupted_half_way_then_run_again_leaves_every_image_readable(
    tenant_a, tenant_b, django_capture_on_commit_callbacks
):
    _archive(tenant_a, "ROT-A")
    _archive(tenant_b, "ROT-B")
    with tenant_scope(tenant_a):
        ciphertext = {b.storage_name: storages[PRIMARY].open(b.storage_name, "rb").read() for b in Blob.objects.all()}
        assert StudyKey.objects.filter(key_version=1).count() == 2
        assert Blob.objects.filter(study_key__isnull=True, key_version=1).count() == 3

        with django_capture_on_commit_callbacks(execute=True), pytest.raises(Interrupted):
            tenant_key_rotate(step=_stop_after(4))  # the 3 export keys and one of the 2 study keys
        assert set(TenantKey.objects.filter(active=True).values_list("version", flat=True)) == {1, 2}
        assert Blob.objects.filter(study_key__isnull=True, key_version=2).count() == 3
        assert sorted(StudyKey.objects.values_list("key_version", flat=True)) == [1, 2]
    assert _all_read(tenant_a) == 15  # half-way, everything reads

    with django_capture_on_commit_callbacks(execute=True):
        call_command("rotate_keys", tenant=tenant_a.slug)
    with tenant_scope(tenant_a):
        old, new = TenantKey.objects.order_by("version")
        assert (old.version, old.active, bytes(old.wrapped)) == (1, False, b"")
        assert old.retired_at is not None
        assert (new.version, new.active) == (2, True)
        assert not Blob.objects.filter(study_key__isnull=True, key_version=1).exists()
        assert set(StudyKey.objects.values_list("key_version", flat=True)) == {2}
        for key in StudyKey.objects.all():
            for store in (PRIMARY, REPLICA):
                assert storages[store].exists(study_key_file_name(tenant_id=tenant_a.pk, key_id=key.key_id, version=2))
                # The old version's file stays for the backups taken before (test_backups shows when it goes).
                assert storages[store].exists(study_key_file_name(tenant_id=tenant_a.pk, key_id=key.key_id, version=1))
        # No image was rewritten: the ciphertext files are byte for byte those of before.
        for name, data in ciphertext.items():
            assert storages[PRIMARY].open(name, "rb").read() == data
        # New keys are wrapped by the new version (an export's own key, like a study's).
        after = blob_write(kind=Blob.Kind.EXPORT, data=b"after")
        assert after.key_version == 0
        assert StudyKey.objects.get(pk=after.study_key_id).key_version == 2
    assert _all_read(tenant_a) == 16
    assert _all_read(tenant_b) == 15
    with tenant_scope(tenant_b):  # the other tenant's keys were not touched
        assert list(TenantKey.objects.values_list("version", "active")) == [(1, True)]

    with tenant_scope(tenant_a):
        events = AuditEvent.objects.all()
        assert events.filter(event_type=EventType.TENANT_KEY_ROTATION_STARTED).count() == 1  # the rerun resumed
        done = events.get(event_type=EventType.TENANT_KEY_ROTATED)
        assert done.system_principal == "manage.py rotate_keys"
        assert done.extra["resumed"] is True
        assert (done.extra["blobs_rewrapped"], done.extra["study_keys_rewrapped"], done.extra["retired"]) == (0, 1, [1])

        # A second rotation starts a new version and retires the second.
        with django_capture_on_commit_callbacks(execute=True):
            report = tenant_key_rotate()
        assert (report.version, report.resumed, report.retired) == (3, False, [2])
        assert report.blobs == 3
        assert report.study_keys == 3
    assert _all_read(tenant_a) == 16


def test_a_retired_version_cannot_open_anything_and_reads_fail_closed(tenant_a, django_capture_on_commit_callbacks):
    _archive(tenant_a, "RET-V")
    with tenant_scope(tenant_a):
        with django_capture_on_commit_callbacks(execute=True):
            tenant_key_rotate()
        study_key_cache.clear()
        blob = Blob.objects.filter(kind=Blob.Kind.INSTANCE).first()
        assert blob is not None
        key = blob.study_key
        # Put the row back on the retired version, as a stale restore would: it no longer opens.
        StudyKey.objects.filter(pk=key.pk).update(key_version=1)
        with pytest.raises(BlobUnreadable):
            blob_read(blob=Blob.objects.get(pk=blob.pk))


def test_master_rotation_interrupted_then_run_again_then_swapped(
    tenant_a, tenant_b, django_capture_on_commit_callbacks
):
    _archive(tenant_a, "MST-A")
    _archive(tenant_b, "MST-B")
    with tenant_scope(tenant_a), django_capture_on_commit_callbacks(execute=True):
        tenant_key_rotate()  # tenant A has versions 1 (retired) and 2; B has 1
    with override_settings(MASTER_KEY_NEW=NEW_MASTER):
        with tenant_scope(tenant_b):
            with pytest.raises(Interrupted):
                master_key_rotate(step=_stop_after(1))
            assert master_key_rotate() == 0  # B's only key was done before the interruption
        assert _all_read(tenant_a) == 15  # under way: both master keys open keys
        assert _all_read(tenant_b) == 15
        call_command("rotate_keys", master=True)
    new = base64.b64decode(NEW_MASTER)
    for tenant in (tenant_a, tenant_b):
        with tenant_scope(tenant):
            for row in TenantKey.objects.filter(retired_at__isnull=True):
                envelope.unwrap_tenant_key(
                    master_key=new, wrapped=bytes(row.wrapped), tenant_id=tenant.pk, version=row.version
                )
    with override_settings(MASTER_KEY=NEW_MASTER, MASTER_KEY_NEW=""):  # the operator's swap
        assert _all_read(tenant_a) == 15
        assert _all_read(tenant_b) == 15
    with tenant_scope(tenant_a):  # the old master key alone opens nothing any more
        study_key_cache.clear()
        blob = Blob.objects.filter(kind=Blob.Kind.INSTANCE).first()
        assert blob is not None
        with pytest.raises(BlobUnreadable):
            blob_read(blob=blob)
    with tenant_scope(tenant_a):
        assert AuditEvent.objects.filter(event_type=EventType.MASTER_KEY_ROTATED).count() == 1
    with tenant_scope(tenant_b):
        assert AuditEvent.objects.filter(event_type=EventType.MASTER_KEY_ROTATED).count() == 2


def test_master_rotation_needs_a_new_master_key(tenant_a):
    with pytest.raises(CommandError, match="MASTER_KEY_NEW"):
        call_command("rotate_keys", master=True)


def test_the_command_needs_a_known_tenant_or_a_choice():
    with pytest.raises(CommandError, match="No tenant"):
        call_command("rotate_keys", tenant="no-such-tenant")
    with pytest.raises(CommandError, match="Say which"):
        call_command("rotate_keys")


def test_blobs_stored_before_study_keys_are_adopted_by_their_study(tenant_a, django_capture_on_commit_callbacks):
    stored_study(tenant_a, patient_id="ADOPT-1", study_date=date(2020, 5, 5))
    with tenant_scope(tenant_a):
        # Make the study as it was stored before study keys: data keys wrapped by the tenant key, no key files.
        kek = tenant_key(1)
        study_key_cache.clear()
        blobs = [i.blob for i in Instance.objects.select_related("blob__study_key")] + [
            s.thumbnail for s in Series.objects.select_related("thumbnail__study_key") if s.thumbnail
        ]
        for blob in blobs:
            data_key = blob_data_key(blob=blob)
            blob.wrapped_key = envelope.wrap_data_key(
                tenant_key=kek, data_key=data_key, tenant_id=tenant_a.pk, blob_id=str(blob.public_id)
            )
            blob.study_key, blob.key_version = None, 1
            blob.save(update_fields=["wrapped_key", "study_key", "key_version"])
        StudyKey.objects.all().delete()
        export = _legacy(blob_write(kind=Blob.Kind.EXPORT, data=b"old export" * 50))
        certificate = _legacy(blob_write(kind=Blob.Kind.CERTIFICATE, data=b"old certificate" * 50))
        assert _all_read(tenant_a) == 8

        with django_capture_on_commit_callbacks(execute=True):
            call_command("rotate_keys", tenant=tenant_a.slug, adopt_study_keys=True)
        assert not Blob.objects.filter(kind__in=["instance", "thumbnail"], study_key__isnull=True).exists()
        assert StudyKey.objects.count() == 1 + 2  # the study's, and one of its own for each legacy blob
        assert Blob.objects.filter(study_key__isnull=False, key_version=0).count() == 6 + 2
        assert Blob.objects.get(pk=export.pk).study_key != Blob.objects.get(pk=certificate.pk).study_key
        call_command("rotate_keys", tenant=tenant_a.slug, adopt_study_keys=True)  # idempotent
    assert _all_read(tenant_a) == 8
    with tenant_scope(tenant_a):
        event = AuditEvent.objects.get(event_type=EventType.STUDY_KEYS_ADOPTED)
        assert event.extra["blobs_rewrapped"] == 8
        # Deleting an adopted export now destroys its own key with it.
        export = Blob.objects.get(pk=export.pk)
        own = export.study_key
        with django_capture_on_commit_callbacks(execute=True):
            blob_delete(blob=export)
        assert not StudyKey.objects.filter(pk=own.pk).exists()
        assert not storages[REPLICA].exists(study_key_file_name(tenant_id=tenant_a.pk, key_id=own.key_id, version=1))
