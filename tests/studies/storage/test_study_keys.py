"""Study keys (issue 13): a study deleted by retention cannot be opened from a saved copy of its ciphertext and a
database backup taken before, even with the master key; other studies still read. Through the real pipeline."""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
from datetime import date

import pydicom
import pytest
from django.conf import settings
from django.core.files.storage import storages
from django.test import override_settings

from audit.events import EventType
from audit.models import AuditEvent
from studies.models import Blob, Export, Instance, RetentionProposal, Series, Study, StudyKey, TenantKey
from studies.services import export_request, export_run, retention
from studies.storage import envelope
from studies.storage.blobs import PRIMARY, QUARANTINE, REPLICA, blob_delete, blob_read, blob_write
from studies.storage.keys import (
    KEY_FILE_MAGIC,
    _StudyKeyCache,
    study_key_cache,
    study_key_file_name,
)
from tenants.scoping import tenant_scope
from tests.studies.retention_fixtures import policy_make, stored_study

pytestmark = pytest.mark.django_db


@dataclass
class Backup:
    """What a database backup holds of a study, and the ciphertext someone kept: nothing else."""

    blobs: list[dict]
    tenant_keys: dict[int, bytes]
    study_keys: dict[int, tuple[str, int]]
    ciphertext: dict[str, bytes]


def _study_blobs(study: Study) -> list[Blob]:
    instances = [i.blob for i in Instance.objects.filter(series__study=study).select_related("blob")]
    thumbnails = [s.thumbnail for s in Series.objects.filter(study=study).select_related("thumbnail") if s.thumbnail]
    return instances + thumbnails


def _backup(study: Study) -> Backup:
    return _backup_of(_study_blobs(study))


def _backup_of(blobs: list[Blob]) -> Backup:
    return Backup(
        blobs=[
            {
                "public_id": str(b.public_id),
                "tenant_id": b.tenant_id,
                "storage_name": b.storage_name,
                "sha256": b.sha256,
                "wrapped_key": bytes(b.wrapped_key),
                "key_version": b.key_version,
                "study_key_id": b.study_key_id,
            }
            for b in blobs
        ],
        tenant_keys={k.version: bytes(k.wrapped) for k in TenantKey.objects.all()},
        study_keys={k.pk: (k.key_id, k.key_version) for k in StudyKey.objects.all()},
        ciphertext={
            b.storage_name: storages[QUARANTINE if b.kind == Blob.Kind.QUARANTINE else PRIMARY]
            .open(b.storage_name, "rb")
            .read()
            for b in blobs
        },
    )


def _forensic_open(backup: Backup, row: dict) -> bytes:
    """Everything an attacker with the backup, the saved ciphertext, the master key and the blob stores as they
    are now can try, without the application's code paths or its in-memory caches."""
    master = base64.b64decode(settings.MASTER_KEY)
    tenant_id = row["tenant_id"]
    tenant_keys = {
        v: envelope.unwrap_tenant_key(master_key=master, wrapped=w, tenant_id=tenant_id, version=v)
        for v, w in backup.tenant_keys.items()
    }
    data_key = None
    if row["study_key_id"] is not None:
        key_id, _ = backup.study_keys[row["study_key_id"]]
        for version, kek in tenant_keys.items():
            name = study_key_file_name(tenant_id=tenant_id, key_id=key_id, version=version)
            for store in (PRIMARY, REPLICA):
                if storages[store].exists(name):
                    content = storages[store].open(name, "rb").read()[len(KEY_FILE_MAGIC) :]
                    study_key = envelope.unwrap_study_key(
                        tenant_key=kek, wrapped=content, tenant_id=tenant_id, key_id=key_id, version=version
                    )
                    data_key = envelope.unwrap_data_key_by_study(
                        study_key=study_key, wrapped=row["wrapped_key"], tenant_id=tenant_id, blob_id=row["public_id"]
                    )
    if data_key is None:  # the study key is nowhere: try the tenant keys directly
        for kek in tenant_keys.values():
            try:
                data_key = envelope.unwrap_data_key(
                    tenant_key=kek, wrapped=row["wrapped_key"], tenant_id=tenant_id, blob_id=row["public_id"]
                )
            except envelope.DecryptionError:
                continue
    if data_key is None:
        raise envelope.DecryptionError("no key in the backup or the stores opens this blob")
    return envelope.decrypt(
        backup.ciphertext[row["storage_name"]], data_key=data_key, tenant_id=tenant_id, blob_id=row["public_id"]
    )


def test_a_deleted_study_cannot_be_opened_from_a_backup_taken_before(
    tenant_a, admin_a, compliance_a, django_capture_on_commit_callbacks
):
    old = stored_study(tenant_a, patient_id="SHRED-OLD", study_date=date(2009, 6, 1))
    recent = stored_study(tenant_a, patient_id="SHRED-NEW", study_date=date(2024, 6, 1))
    policy_make(tenant_a, admin_a, years=7)
    with tenant_scope(tenant_a):
        backup = _backup(old)
        kinds = {b.kind for b in _study_blobs(old)}
        assert kinds == {Blob.Kind.INSTANCE, Blob.Kind.THUMBNAIL}
        assert all(row["study_key_id"] is not None and row["key_version"] == 0 for row in backup.blobs)
        assert len({row["study_key_id"] for row in backup.blobs}) == 1  # one key for the whole study
        # The procedure works while the study exists: the backup, the ciphertext and the key files open it.
        for row in backup.blobs:
            assert hashlib.sha256(_forensic_open(backup, row)).hexdigest() == row["sha256"]
        key_id, version = next(iter(backup.study_keys.values()))
        key_file = study_key_file_name(tenant_id=tenant_a.pk, key_id=key_id, version=version)
        assert storages[PRIMARY].exists(key_file)
        assert storages[REPLICA].exists(key_file)

        retention.retention_proposals_make()
        proposal = RetentionProposal.objects.get()
        retention.retention_proposal_approve(actor=admin_a, proposal=proposal)
        with django_capture_on_commit_callbacks(execute=True):
            retention.retention_proposal_approve(actor=compliance_a, proposal=proposal)
        study_key_cache.clear()  # a fresh process: nothing remembered

        assert not StudyKey.objects.filter(key_id=key_id).exists()
        assert not storages[PRIMARY].exists(key_file)
        assert not storages[REPLICA].exists(key_file)
        for row in backup.blobs:
            with pytest.raises(envelope.DecryptionError):
                _forensic_open(backup, row)

        # The study that was not deleted reads, through the application and from a backup taken now.
        kept = _study_blobs(recent)
        assert len(kept) == 6
        for blob in kept:
            assert hashlib.sha256(blob_read(blob=blob)).hexdigest() == blob.sha256
        later = _backup(recent)
        for row in later.blobs:
            assert hashlib.sha256(_forensic_open(later, row)).hexdigest() == row["sha256"]


def _key_files(tenant_id: int, key_id: str) -> list[str]:
    """Every file of a key (any tenant key version) left in either store."""
    top = 3
    names = [study_key_file_name(tenant_id=tenant_id, key_id=key_id, version=v) for v in range(1, top + 1)]
    return [f"{store}:{n}" for store in (PRIMARY, REPLICA) for n in names if storages[store].exists(n)]


def test_an_export_of_a_deleted_study_cannot_be_opened_from_a_backup_taken_before(
    tenant_a, admin_a, compliance_a, radiologist_a, django_capture_on_commit_callbacks
):
    old = stored_study(tenant_a, patient_id="EXP-OLD", study_date=date(2009, 6, 1))
    recent = stored_study(tenant_a, patient_id="EXP-NEW", study_date=date(2024, 6, 1))
    policy_make(tenant_a, admin_a, years=7)
    with tenant_scope(tenant_a):
        with django_capture_on_commit_callbacks(execute=True):
            both = export_request(actor=radiologist_a, studies=[old, recent])
        with django_capture_on_commit_callbacks(execute=True):
            kept = export_request(actor=radiologist_a, studies=[recent])
        both.refresh_from_db()
        kept.refresh_from_db()
        assert both.state == kept.state == Export.State.DONE
        blob = both.blob
        assert blob is not None
        assert blob.study_key_id is not None
        assert blob.key_version == 0
        # The export's key is its own, not the study's nor the tenant's.
        own_key = StudyKey.objects.get(pk=blob.study_key_id)
        assert not Blob.objects.filter(study_key=own_key).exclude(pk=blob.pk).exists()
        backup = _backup_of([blob])
        row = backup.blobs[0]
        # The procedure opens the export while its study exists.
        assert hashlib.sha256(_forensic_open(backup, row)).hexdigest() == row["sha256"]
        assert _key_files(tenant_a.pk, own_key.key_id)

        retention.retention_proposals_make()
        proposal = RetentionProposal.objects.get()
        retention.retention_proposal_approve(actor=admin_a, proposal=proposal)
        with django_capture_on_commit_callbacks(execute=True):
            retention.retention_proposal_approve(actor=compliance_a, proposal=proposal)
        study_key_cache.clear()

        both.refresh_from_db()
        assert (both.state, both.blob_id) == (Export.State.FAILED, None)
        assert "retention" in both.error
        assert not Blob.objects.filter(pk=blob.pk).exists()
        assert not StudyKey.objects.filter(pk=own_key.pk).exists()
        assert _key_files(tenant_a.pk, own_key.key_id) == []
        assert not storages[PRIMARY].exists(blob.storage_name)
        assert not storages[REPLICA].exists(blob.storage_name)
        with pytest.raises(envelope.DecryptionError):
            _forensic_open(backup, row)
        event = AuditEvent.objects.get(event_type=EventType.STUDY_DELETED)
        assert event.extra["exports_destroyed"] == [str(both.public_id)]

        # The export of the kept study alone is untouched and reads.
        kept.refresh_from_db()
        assert kept.state == Export.State.DONE
        assert kept.blob is not None
        assert hashlib.sha256(blob_read(blob=kept.blob)).hexdigest() == kept.blob.sha256


def test_a_deleted_certificate_or_quarantined_copy_cannot_be_opened_from_a_backup_taken_before(
    tenant_a, django_capture_on_commit_callbacks
):
    with tenant_scope(tenant_a):
        blobs = [
            blob_write(kind=Blob.Kind.CERTIFICATE, data=b"certificate " * 300),
            blob_write(kind=Blob.Kind.QUARANTINE, data=b"quarantined " * 300, replicate=False),
        ]
        keys = [StudyKey.objects.get(pk=b.study_key_id) for b in blobs]
        assert len({k.pk for k in keys}) == 2
        backup = _backup_of(blobs)
        for row in backup.blobs:
            assert hashlib.sha256(_forensic_open(backup, row)).hexdigest() == row["sha256"]
        for blob in blobs:
            with django_capture_on_commit_callbacks(execute=True):
                blob_delete(blob=blob)
        study_key_cache.clear()
        assert not StudyKey.objects.filter(pk__in=[k.pk for k in keys]).exists()
        for key in keys:
            assert _key_files(tenant_a.pk, key.key_id) == []
        for row in backup.blobs:
            with pytest.raises(envelope.DecryptionError):
                _forensic_open(backup, row)


def test_study_key_file_is_read_from_the_replica_when_the_primary_lost_it(tenant_a):
    study = stored_study(tenant_a, patient_id="KEY-REPLICA", study_date=date(2020, 1, 1))
    with tenant_scope(tenant_a):
        row = StudyKey.objects.get()
        name = study_key_file_name(tenant_id=tenant_a.pk, key_id=row.key_id, version=row.key_version)
        storages[PRIMARY].delete(name)
        study_key_cache.clear()
        instance = Instance.objects.filter(series__study=study).select_related("blob").first()
        assert instance is not None
        dataset = pydicom.dcmread(io.BytesIO(blob_read(blob=instance.blob)))
        assert dataset.SOPInstanceUID == instance.sop_instance_uid


def test_every_instance_of_a_study_shares_its_key_and_other_studies_do_not(tenant_a, tenant_b):
    stored_study(tenant_a, patient_id="KEY-A1", study_date=date(2020, 1, 1))
    stored_study(tenant_a, patient_id="KEY-A2", study_date=date(2020, 1, 2))
    stored_study(tenant_b, patient_id="KEY-B1", study_date=date(2020, 1, 1))
    with tenant_scope(tenant_a):
        assert StudyKey.objects.count() == 2
        for key in StudyKey.objects.all():
            assert Blob.objects.filter(study_key=key, kind=Blob.Kind.INSTANCE).count() == 4
    with tenant_scope(tenant_b):
        assert StudyKey.objects.count() == 1


@override_settings(STUDY_KEY_CACHE_SIZE=2)
def test_the_study_key_cache_is_bounded_and_least_recently_used_goes_first():
    cache = _StudyKeyCache()
    cache.put((1, 1), b"a" * 32)
    cache.put((1, 2), b"b" * 32)
    assert cache.get((1, 1)) == b"a" * 32  # now the most recent
    cache.put((1, 3), b"c" * 32)
    assert cache.get((1, 2)) is None
    assert cache.get((1, 1)) == b"a" * 32
    assert cache.get((1, 3)) == b"c" * 32
    cache.forget((1, 1))
    assert cache.get((1, 1)) is None


def test_an_export_queued_when_its_study_is_deleted_never_stores_its_zip(
    tenant_a, admin_a, compliance_a, radiologist_a, django_capture_on_commit_callbacks
):
    old = stored_study(tenant_a, patient_id="EXP-QUEUED", study_date=date(2009, 6, 1))
    policy_make(tenant_a, admin_a, years=7)
    with tenant_scope(tenant_a):
        with django_capture_on_commit_callbacks(execute=False):  # queued, its job not run yet
            export = export_request(actor=radiologist_a, studies=[old])
        assert Export.objects.get(pk=export.pk).state == Export.State.QUEUED
        retention.retention_proposals_make()
        proposal = RetentionProposal.objects.get()
        retention.retention_proposal_approve(actor=admin_a, proposal=proposal)
        with django_capture_on_commit_callbacks(execute=True):
            retention.retention_proposal_approve(actor=compliance_a, proposal=proposal)
        export.refresh_from_db()
        assert (export.state, export.blob_id) == (Export.State.FAILED, None)
        assert AuditEvent.objects.get(event_type=EventType.STUDY_DELETED).extra["exports_destroyed"] == [
            str(export.public_id)
        ]
        blobs_before = Blob.objects.filter(kind=Blob.Kind.EXPORT).count()
        assert export_run(export_id=export.pk) is None  # the job, run late: claims nothing, stores nothing
        assert Blob.objects.filter(kind=Blob.Kind.EXPORT).count() == blobs_before == 0
