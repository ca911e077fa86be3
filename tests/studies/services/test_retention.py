"""Retention through the real parts: proposals by the daily job, two-person approval, deletion that shreds."""

from __future__ import annotations

from datetime import date

import pytest
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import storages

from audit.events import EventType
from audit.models import AuditEvent
from studies.models import Blob, Instance, RetentionProposal, RetentionTombstone, Series, Study
from studies.services import retention
from studies.storage.blobs import PRIMARY, REPLICA, BlobUnreadable, blob_read
from studies.tasks import retention_proposals_make_task
from tenants.scoping import tenant_scope
from tests.studies.retention_fixtures import policy_make, stored_study

pytestmark = pytest.mark.django_db


def _blobs_of(study: Study) -> list[Blob]:
    return [i.blob for i in Instance.objects.filter(series__study=study).select_related("blob")]


def test_old_study_is_proposed_approved_by_two_people_and_shredded(
    tenant_a, admin_a, compliance_a, django_capture_on_commit_callbacks
):
    old = stored_study(tenant_a, patient_id="RET-OLD", study_date=date(2010, 3, 4))
    recent = stored_study(tenant_a, patient_id="RET-NEW", study_date=date(2024, 3, 4))
    policy = policy_make(tenant_a, admin_a, years=7)
    with tenant_scope(tenant_a):
        blobs = _blobs_of(old)
        assert len(blobs) == 4
        saved = {b.storage_name: storages[PRIMARY].open(b.storage_name, "rb").read() for b in blobs}
        wrapped = [bytes(b.wrapped_key) for b in blobs]
        uids = sorted(Instance.objects.filter(series__study=old).values_list("sop_instance_uid", flat=True))

        assert retention.retention_proposals_make() == 1
        assert retention.retention_proposals_make() == 0  # idempotent
        proposal = RetentionProposal.objects.get()
        assert proposal.study_id == old.pk
        assert proposal.policy_id == policy.pk
        assert proposal.due_on == date(2017, 3, 4)

        retention.retention_proposal_approve(actor=admin_a, proposal=proposal)
        with pytest.raises(ValidationError, match="second person"):
            retention.retention_proposal_approve(actor=admin_a, proposal=proposal)
        assert Study.objects.filter(pk=old.pk).exists()  # one person alone deleted nothing

        with django_capture_on_commit_callbacks(execute=True):
            retention.retention_proposal_approve(actor=compliance_a, proposal=proposal)

        assert not Study.objects.filter(pk=old.pk).exists()
        assert not Series.objects.filter(study_id=old.pk).exists()
        assert not Instance.objects.filter(sop_instance_uid__in=uids).exists()
        assert not Blob.objects.filter(pk__in=[b.pk for b in blobs]).exists()
        for key in wrapped:  # the wrapped data keys are gone from the database
            assert not Blob.unscoped_objects.filter(wrapped_key=key).exists()
        for name in saved:
            assert not storages[PRIMARY].exists(name)
            assert not storages[REPLICA].exists(name)
        # A saved copy of the ciphertext, put back, is of no use: no row holds its key any more.
        name, ciphertext = next(iter(saved.items()))
        storages[PRIMARY].save(name, ContentFile(ciphertext))
        with pytest.raises(Blob.DoesNotExist):
            Blob.objects.get(storage_name=name)
        stale = blobs[1]
        with pytest.raises(BlobUnreadable):  # nor the copies that were deleted
            blob_read(blob=stale)

        tombstone = RetentionTombstone.objects.get()
        assert tombstone.study_instance_uid == old.study_instance_uid
        assert tombstone.study_date == date(2010, 3, 4)
        assert sorted(tombstone.sop_instance_uids) == uids
        assert len(tombstone.series_instance_uids) == 2
        assert (tombstone.first_approved_by, tombstone.approved_by) == (admin_a, compliance_a)
        assert tombstone.policy == policy
        proposal.refresh_from_db()
        assert proposal.status == RetentionProposal.Status.DELETED
        assert proposal.study_id is None

        assert Study.objects.filter(pk=recent.pk, number_of_instances=4, number_of_series=2).exists()
        events = AuditEvent.objects.filter(tenant=tenant_a)
        assert events.filter(event_type=EventType.RETENTION_PROPOSED).count() == 1
        assert events.filter(event_type=EventType.RETENTION_APPROVED, actor_user=admin_a).count() == 1
        deleted = events.get(event_type=EventType.STUDY_DELETED)
        assert deleted.actor_user == compliance_a
        assert old.study_instance_uid in str(deleted.participants)


def test_minors_and_mammography_are_kept_longer(tenant_a, admin_a):
    child = stored_study(tenant_a, patient_id="RET-CHILD", study_date=date(2012, 1, 1), birth=date(2010, 1, 1))
    mammo = stored_study(tenant_a, patient_id="RET-MG", study_date=date(2018, 1, 1), modality="MG")
    unknown_birth = stored_study(tenant_a, patient_id="RET-NOBIRTH", study_date=date(2001, 1, 1), birth=None)
    policy_make(tenant_a, admin_a, years=7, until_age=21)
    policy_make(tenant_a, admin_a, modality="MG", years=10)
    with tenant_scope(tenant_a):
        assert retention.retention_proposals_make(today=date(2026, 12, 6)) == 0
        assert retention.retention_proposals_make(today=date(2028, 1, 2)) == 1  # mammography: 10 years
        assert RetentionProposal.objects.get().study_id == mammo.pk
        assert retention.retention_proposals_make(today=date(2031, 1, 2)) == 1  # the child turned 21
        assert RetentionProposal.objects.filter(study=child).exists()
        assert not RetentionProposal.objects.filter(study=unknown_birth).exists()  # in doubt, keep


def test_a_later_study_of_the_patient_extends_the_keep(tenant_a, admin_a):
    stored_study(tenant_a, patient_id="RET-TWICE", study_date=date(2010, 1, 1))
    stored_study(tenant_a, patient_id="RET-TWICE", study_date=date(2023, 1, 1))
    policy_make(tenant_a, admin_a, years=7)
    with tenant_scope(tenant_a):
        assert retention.retention_proposals_make() == 0


def test_a_held_study_is_never_proposed_nor_deleted(tenant_a, admin_a, compliance_a):
    study = stored_study(tenant_a, patient_id="RET-HOLD", study_date=date(2009, 1, 1))
    policy_make(tenant_a, admin_a, years=7)
    with tenant_scope(tenant_a):
        assert retention.retention_proposals_make() == 1
        proposal = RetentionProposal.objects.get()
        retention.retention_proposal_approve(actor=admin_a, proposal=proposal)
        hold = retention.legal_hold_place(actor=compliance_a, patient=study.patient, reason="Litigation 2026-17")
        proposal.refresh_from_db()
        assert proposal.status == RetentionProposal.Status.CANCELLED
        with pytest.raises(ValidationError):
            retention.retention_proposal_approve(actor=compliance_a, proposal=proposal)
        assert retention.retention_proposals_make() == 0
        assert Study.objects.filter(pk=study.pk).exists()

        with pytest.raises(ValidationError):
            retention.legal_hold_lift(actor=compliance_a, hold=hold, reason="")
        retention.legal_hold_lift(actor=compliance_a, hold=hold, reason="Case closed")
        assert retention.retention_proposals_make() == 1
        events = AuditEvent.objects.filter(tenant=tenant_a)
        assert events.filter(event_type=EventType.LEGAL_HOLD_PLACED).count() == 1
        assert events.filter(event_type=EventType.LEGAL_HOLD_LIFTED).count() == 1


def test_a_study_hold_blocks_approval_of_an_open_proposal(tenant_a, admin_a, compliance_a):
    study = stored_study(tenant_a, patient_id="RET-SHOLD", study_date=date(2009, 1, 1))
    policy_make(tenant_a, admin_a, years=7)
    with tenant_scope(tenant_a):
        retention.retention_proposals_make()
        proposal = RetentionProposal.objects.get()
        retention.retention_proposal_approve(actor=admin_a, proposal=proposal)
        retention.legal_hold_place(actor=admin_a, study=study, reason="Subpoena")
        with pytest.raises(ValidationError):
            retention.retention_proposal_approve(actor=compliance_a, proposal=proposal)
        assert Study.objects.filter(pk=study.pk).exists()


def test_the_beat_job_fans_out_per_tenant_and_is_idempotent(tenant_a, tenant_b, admin_a, admin_b):
    stored_study(tenant_a, patient_id="RET-A", study_date=date(2005, 1, 1))
    stored_study(tenant_b, patient_id="RET-B", study_date=date(2005, 1, 1))
    stored_study(tenant_b, patient_id="RET-B2", study_date=date(2025, 1, 1))
    policy_make(tenant_a, admin_a, years=7)
    policy_make(tenant_b, admin_b, years=7)
    assert retention_proposals_make_task() >= 2
    retention_proposals_make_task()
    for tenant in (tenant_a, tenant_b):
        with tenant_scope(tenant):
            assert RetentionProposal.objects.count() == 1
            assert AuditEvent.objects.filter(event_type=EventType.RETENTION_PROPOSED).count() == 1


def test_members_without_the_right_cannot_act(tenant_a, admin_a, radiologist_a):
    study = stored_study(tenant_a, patient_id="RET-PERM", study_date=date(2005, 1, 1))
    policy_make(tenant_a, admin_a, years=7)
    from tenants import access

    with tenant_scope(tenant_a):
        retention.retention_proposals_make()
        proposal = RetentionProposal.objects.get()
        with pytest.raises(access.Forbidden):
            retention.retention_proposal_approve(actor=radiologist_a, proposal=proposal)
        with pytest.raises(access.Forbidden):
            retention.legal_hold_place(actor=radiologist_a, study=study, reason="x")


def test_deletion_after_a_lifted_hold_keeps_the_hold_and_flushes_folded_reads(
    tenant_a, admin_a, compliance_a, radiologist_a, django_capture_on_commit_callbacks
):
    from django.utils import timezone

    from studies.models import ReadTally

    study = stored_study(tenant_a, patient_id="RET-LIFTED", study_date=date(2009, 1, 1))
    policy_make(tenant_a, admin_a, years=7)
    with tenant_scope(tenant_a):
        hold = retention.legal_hold_place(actor=compliance_a, study=study, reason="Audit request")
        retention.legal_hold_lift(actor=compliance_a, hold=hold, reason="Done")
        now = timezone.now()
        ReadTally.objects.create(
            tenant=tenant_a,
            user=radiologist_a,
            study=study,
            event_type=EventType.INSTANCES_ACCESSED,
            window_started_at=now,
            first_sequence=1,
            folded=3,
            last_read_at=now,
        )
        assert retention.retention_proposals_make() == 1
        proposal = RetentionProposal.objects.get()
        retention.retention_proposal_approve(actor=compliance_a, proposal=proposal)
        with django_capture_on_commit_callbacks(execute=True):
            retention.retention_proposal_approve(actor=admin_a, proposal=proposal)
        assert not Study.objects.filter(pk=study.pk).exists()
        hold.refresh_from_db()
        assert hold.study_id is None
        assert hold.study_instance_uid == study.study_instance_uid
        folded = AuditEvent.objects.filter(event_type=EventType.INSTANCES_ACCESSED, actor_user=radiologist_a)
        assert folded.count() == 1
        assert folded.get().extra["folded_reads"] == 3


def test_a_quarantined_object_of_the_study_is_shredded_with_it(
    tenant_a, admin_a, compliance_a, django_capture_on_commit_callbacks
):
    """A conflicting copy kept in quarantine is sealed under its study's key since receipt (issue 10): the
    study's deletion takes it along instead of being refused by the key's protected rows."""
    import uuid

    from studies.dicom.synthetic import make_instance
    from studies.models import IngestItem
    from studies.services import ingest_receive

    old = stored_study(tenant_a, patient_id="RET-Q", study_date=date(2010, 3, 4))
    policy_make(tenant_a, admin_a, years=7)
    with tenant_scope(tenant_a):
        stored = Instance.objects.filter(series__study=old).select_related("series").first()
        conflict = make_instance(study_uid=old.study_instance_uid, series_uid=stored.series.series_instance_uid,
                                 sop_uid=stored.sop_instance_uid, patient_id="RET-Q", pixel_seed=7)  # fmt: skip
        with django_capture_on_commit_callbacks(execute=True):
            item = ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=conflict)
        item.refresh_from_db()
        assert item.state == IngestItem.State.CONFLICT
        kept = item.quarantine
        assert kept is not None
        assert kept.study_key_id is not None
        assert retention.retention_proposals_make() == 1
        proposal = RetentionProposal.objects.get()
        retention.retention_proposal_approve(actor=admin_a, proposal=proposal)
        with django_capture_on_commit_callbacks(execute=True):
            retention.retention_proposal_approve(actor=compliance_a, proposal=proposal)
        assert not Study.objects.filter(pk=old.pk).exists()
        assert not Blob.objects.filter(pk=kept.pk).exists()
        assert not storages["quarantine"].exists(kept.storage_name)
        item.refresh_from_db()
        assert (item.state, item.quarantine_id) == (IngestItem.State.CONFLICT, None)
