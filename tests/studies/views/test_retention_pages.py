"""The retention pages (policies, proposal queue, holds) through the browser client: success, another tenant's
object 404, a member without `tenants.manage_retention` 403 with ACCESS_DENIED, and the audit record."""

from __future__ import annotations

import uuid
from datetime import date

import pytest
from django.core.files.storage import storages

from audit.events import EventType
from audit.models import AuditEvent
from studies.models import Instance, LegalHold, RetentionPolicy, RetentionProposal, RetentionTombstone, Study
from studies.services import retention
from studies.storage.blobs import PRIMARY, REPLICA
from tenants.scoping import tenant_scope
from tests.studies.retention_fixtures import policy_make, stored_study

pytestmark = pytest.mark.django_db


def url(tenant, rest: str = "") -> str:
    return f"/t/{tenant.slug}/retention/{rest}"


def denied(tenant, user) -> int:
    with tenant_scope(tenant):
        return AuditEvent.objects.filter(event_type=EventType.ACCESS_DENIED, actor_user=user).count()


def test_policies_page(tenant_a, tenant_b, admin_a, admin_b, radiologist_a, client_for):
    admin = client_for(admin_a)
    assert b'id="policies-empty"' in admin.get(url(tenant_a)).content
    bad = admin.post(url(tenant_a), {"name": "", "years_after_last_study": "-1"})
    assert bad.status_code == 400
    made = admin.post(url(tenant_a), {"name": "Mammography", "modality": "mg", "years_after_last_study": "10"})
    assert made.status_code == 302
    with tenant_scope(tenant_a):
        policy = RetentionPolicy.objects.get()
        assert policy.modality == "MG"
        assert AuditEvent.objects.filter(event_type=EventType.RETENTION_POLICY_SET, actor_user=admin_a).count() == 1
    assert b"Mammography" in admin.get(url(tenant_a)).content

    radiologist = client_for(radiologist_a)
    assert radiologist.get(url(tenant_a)).status_code == 403
    assert radiologist.post(url(tenant_a, f"policies/{policy.public_id}/stop/")).status_code == 403
    assert denied(tenant_a, radiologist_a) == 2

    other = client_for(admin_b)
    assert other.get(url(tenant_a)).status_code == 404  # not a member of tenant A
    stop_other = other.post(url(tenant_b, f"policies/{policy.public_id}/stop/"))
    stop_random = other.post(url(tenant_b, f"policies/{uuid.uuid4()}/stop/"))
    assert stop_other.status_code == stop_random.status_code == 404
    assert stop_other.content == stop_random.content

    assert admin.post(url(tenant_a, f"policies/{policy.public_id}/stop/")).status_code == 302
    with tenant_scope(tenant_a):
        policy.refresh_from_db()
    assert not policy.active


def test_proposal_queue_two_people_delete(
    tenant_a, tenant_b, admin_a, compliance_a, admin_b, radiologist_a, client_for, django_capture_on_commit_callbacks
):
    study = stored_study(tenant_a, patient_id="RETP-1", study_date=date(2008, 6, 1))
    policy_make(tenant_a, admin_a, years=7)
    with tenant_scope(tenant_a):
        retention.retention_proposals_make()
        proposal = RetentionProposal.objects.get()
        names = [i.blob.storage_name for i in Instance.objects.filter(series__study=study).select_related("blob")]
    queue = url(tenant_a, "proposals/")
    decide = url(tenant_a, f"proposals/{proposal.public_id}/")

    admin = client_for(admin_a)
    shown = admin.get(queue)
    assert shown.status_code == 200
    assert f'id="proposal-{proposal.public_id}"'.encode() in shown.content
    with tenant_scope(tenant_a):  # the queue shows study data: the read is recorded
        assert AuditEvent.objects.filter(event_type=EventType.INSTANCES_ACCESSED, actor_user=admin_a).exists()

    radiologist = client_for(radiologist_a)
    assert radiologist.get(queue).status_code == 403
    assert radiologist.post(decide, {"decision": "approve"}).status_code == 403
    assert denied(tenant_a, radiologist_a) == 2

    other = client_for(admin_b)
    from_b = other.post(url(tenant_b, f"proposals/{proposal.public_id}/"), {"decision": "approve"})
    random = other.post(url(tenant_b, f"proposals/{uuid.uuid4()}/"), {"decision": "approve"})
    assert from_b.status_code == random.status_code == 404
    assert from_b.content == random.content

    assert admin.post(decide, {"decision": "approve"}).status_code == 302
    again = admin.post(decide, {"decision": "approve"})
    assert again.status_code == 400
    assert b"second person" in again.content
    with tenant_scope(tenant_a):
        assert Study.objects.filter(pk=study.pk).exists()

    with django_capture_on_commit_callbacks(execute=True):
        assert client_for(compliance_a).post(decide, {"decision": "approve"}).status_code == 302
    with tenant_scope(tenant_a):
        assert not Study.objects.filter(pk=study.pk).exists()
        assert RetentionTombstone.objects.get().approved_by == compliance_a
        assert AuditEvent.objects.filter(event_type=EventType.STUDY_DELETED, actor_user=compliance_a).count() == 1
    for name in names:
        assert not storages[PRIMARY].exists(name)
        assert not storages[REPLICA].exists(name)
    page = admin.get(url(tenant_a)).content
    assert study.study_instance_uid.encode() in page  # the tombstone is listed
    assert b'id="proposals-empty"' in admin.get(queue).content


def test_reject_needs_a_reason(tenant_a, admin_a, compliance_a, client_for):
    stored_study(tenant_a, patient_id="RETP-2", study_date=date(2008, 6, 1))
    policy_make(tenant_a, admin_a, years=7)
    with tenant_scope(tenant_a):
        retention.retention_proposals_make()
        proposal = RetentionProposal.objects.get()
    decide = url(tenant_a, f"proposals/{proposal.public_id}/")
    officer = client_for(compliance_a)
    assert officer.post(decide, {"decision": "reject", "reason": ""}).status_code == 400
    assert officer.post(decide, {"decision": "reject", "reason": "Research cohort"}).status_code == 302
    with tenant_scope(tenant_a):
        proposal.refresh_from_db()
        assert proposal.status == RetentionProposal.Status.REJECTED
        assert proposal.reason == "Research cohort"
        assert AuditEvent.objects.filter(event_type=EventType.RETENTION_REJECTED, actor_user=compliance_a).count() == 1
        assert Study.objects.filter(patient__patient_id="RETP-2").exists()


def test_holds_page(tenant_a, tenant_b, admin_a, compliance_a, admin_b, radiologist_a, client_for):
    study = stored_study(tenant_a, patient_id="RETH-1", study_date=date(2008, 6, 1))
    policy_make(tenant_a, admin_a, years=7)
    with tenant_scope(tenant_a):
        retention.retention_proposals_make()
    holds = url(tenant_a, "holds/")
    officer = client_for(compliance_a)
    assert b'id="holds-empty"' in officer.get(holds).content
    assert officer.post(holds, {"study_instance_uid": "1.2.3.404", "reason": "x"}).status_code == 400
    assert officer.post(holds, {"patient_id": "RETH-1", "reason": ""}).status_code == 400
    placed = officer.post(holds, {"study_instance_uid": study.study_instance_uid, "reason": "Subpoena 17"})
    assert placed.status_code == 302
    assert study.study_instance_uid not in placed["Location"]
    with tenant_scope(tenant_a):
        hold = LegalHold.objects.get()
        assert RetentionProposal.objects.get().status == RetentionProposal.Status.CANCELLED
        assert AuditEvent.objects.filter(event_type=EventType.LEGAL_HOLD_PLACED, actor_user=compliance_a).count() == 1
        assert retention.retention_proposals_make() == 0
        assert not AuditEvent.objects.filter(event_type=EventType.INSTANCES_ACCESSED, actor_user=compliance_a).exists()
    shown = officer.get(holds)  # the hold names its study: the page is a recorded read
    assert study.study_instance_uid.encode() in shown.content
    with tenant_scope(tenant_a):
        read = AuditEvent.objects.get(event_type=EventType.INSTANCES_ACCESSED, actor_user=compliance_a)
        assert read.extra["kind"] == "legal holds"
        assert {(p["type"], p["id"]) for p in read.participants} >= {
            ("patient", "RETH-1"),
            ("study", study.study_instance_uid),
        }

    radiologist = client_for(radiologist_a)
    assert radiologist.get(holds).status_code == 403
    assert radiologist.post(url(tenant_a, f"holds/{hold.public_id}/lift/"), {"reason": "x"}).status_code == 403
    assert denied(tenant_a, radiologist_a) == 2

    other = client_for(admin_b)
    from_b = other.post(url(tenant_b, f"holds/{hold.public_id}/lift/"), {"reason": "x"})
    random = other.post(url(tenant_b, f"holds/{uuid.uuid4()}/lift/"), {"reason": "x"})
    assert from_b.status_code == random.status_code == 404
    assert from_b.content == random.content
    # Tenant B's admin cannot hold tenant A's study by typing its UID either.
    assert (
        other.post(url(tenant_b, "holds/"), {"study_instance_uid": study.study_instance_uid, "reason": "x"}).status_code
        == 400
    )

    assert officer.post(url(tenant_a, f"holds/{hold.public_id}/lift/"), {"reason": ""}).status_code == 302
    with tenant_scope(tenant_a):
        hold.refresh_from_db()
    assert hold.lifted_at is None  # no reason, no lift
    assert officer.post(url(tenant_a, f"holds/{hold.public_id}/lift/"), {"reason": "Case closed"}).status_code == 302
    with tenant_scope(tenant_a):
        hold.refresh_from_db()
    assert hold.lifted_at is not None
    assert hold.lifted_by == compliance_a
    with tenant_scope(tenant_a):
        assert AuditEvent.objects.filter(event_type=EventType.LEGAL_HOLD_LIFTED).count() == 1
        assert retention.retention_proposals_make() == 1
