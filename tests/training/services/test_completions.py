"""Completions through the real services: recorded, self-reported and reviewed, corrected by supersession,
certificates sniffed, size-checked and stored encrypted in the blob store."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.core.files.storage import storages

from audit.events import EventType
from studies.storage.blobs import blob_read
from tenants import access
from tenants.scoping import tenant_scope
from tests.training.helpers import JPEG, PDF, PNG, last_event, record, today
from training import selectors, services
from training.models import Completion


def test_an_officer_records_a_completion_that_counts_at_once(tenant_a, compliance_a, radiologist_a, hipaa_required):
    completion = record(tenant_a, compliance_a, radiologist_a, hipaa_required.course,
                        expires_on=today() + timedelta(days=100))  # fmt: skip
    assert (completion.status, completion.source) == ("approved", "recorded")
    with tenant_scope(tenant_a):
        (status,) = selectors.person_status(user=radiologist_a)
    assert (status.state, status.expires_on, status.blocks) == ("current", completion.expires_on, False)
    event = last_event(tenant_a, EventType.TRAINING_COMPLETION_RECORDED)
    assert event.actor_user == compliance_a
    assert event.target_id == str(completion.public_id)


def test_the_expiry_defaults_to_the_course_validity(tenant_a, compliance_a, radiologist_a, hipaa):
    with tenant_scope(tenant_a):
        completion = services.completion_record(actor=compliance_a, user=radiologist_a, course=hipaa,
                                                completed_on=today(), evidence=PDF)  # fmt: skip
    assert completion.expires_on == hipaa.expiry_for(today())
    assert completion.expires_on.year == today().year + 1


@pytest.mark.parametrize(("data", "media_type"), [(PDF, "application/pdf"), (PNG, "image/png"), (JPEG, "image/jpeg")])
def test_a_certificate_is_stored_encrypted_and_read_back(tenant_a, compliance_a, radiologist_a, hipaa, data,
                                                         media_type):  # fmt: skip
    completion = record(tenant_a, compliance_a, radiologist_a, hipaa, expires_on=today() + timedelta(days=5),
                        evidence=data)  # fmt: skip
    assert completion.evidence_type == media_type
    with tenant_scope(tenant_a):
        completion = Completion.objects.select_related("evidence").get(pk=completion.pk)
        assert completion.evidence.kind == "certificate"
        with storages["blobs"].open(completion.evidence.storage_name, "rb") as handle:
            assert data not in handle.read()  # ciphertext at rest
        assert blob_read(blob=completion.evidence) == data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"MZ\x90\x00 an executable pretending", "PDF, PNG or JPEG"),
        (b"<html><script>alert(1)</script></html>", "PDF, PNG or JPEG"),
        (b"", "empty"),
    ],
)
def test_a_certificate_that_is_not_a_pdf_or_image_is_refused(tenant_a, compliance_a, radiologist_a, hipaa, data,
                                                             reason):  # fmt: skip
    with tenant_scope(tenant_a), pytest.raises(ValidationError) as exc:
        services.completion_record(actor=compliance_a, user=radiologist_a, course=hipaa, completed_on=today(),
                                   evidence=data, evidence_name="cert.pdf")  # fmt: skip
    assert reason in " ".join(exc.value.messages)
    with tenant_scope(tenant_a):
        assert not Completion.objects.exists()


def test_a_certificate_over_the_size_limit_is_refused(tenant_a, compliance_a, radiologist_a, hipaa, monkeypatch):
    monkeypatch.setattr(services, "EVIDENCE_MAX_BYTES", 100)
    with tenant_scope(tenant_a), pytest.raises(ValidationError, match="larger than"):
        services.completion_record(actor=compliance_a, user=radiologist_a, course=hipaa, completed_on=today(),
                                   evidence=PDF + b"x" * 200)  # fmt: skip


def test_a_course_that_needs_evidence_refuses_a_record_without_it(tenant_a, compliance_a, radiologist_a, hipaa):
    with tenant_scope(tenant_a), pytest.raises(ValidationError, match="certificate"):
        services.completion_record(actor=compliance_a, user=radiologist_a, course=hipaa, completed_on=today())


def test_a_future_completion_date_is_refused(tenant_a, compliance_a, radiologist_a, hipaa):
    with tenant_scope(tenant_a), pytest.raises(ValidationError, match="future"):
        services.completion_record(actor=compliance_a, user=radiologist_a, course=hipaa,
                                   completed_on=today() + timedelta(days=1), evidence=PDF)  # fmt: skip


def test_self_reported_waits_for_approval_and_does_not_count(tenant_a, radiologist_a, hipaa_required):
    with tenant_scope(tenant_a):
        completion = services.completion_record(
            actor=radiologist_a, user=radiologist_a, course=hipaa_required.course, completed_on=today(), evidence=PNG
        )
        assert (completion.status, completion.source) == ("pending", "self_reported")
        (status,) = selectors.person_status(user=radiologist_a)
        assert status.state == "missing"


def test_a_member_cannot_record_someone_elses_training(tenant_a, radiologist_a, technologist_a, hipaa):
    with tenant_scope(tenant_a), pytest.raises(access.Forbidden):
        services.completion_record(actor=radiologist_a, user=technologist_a, course=hipaa, completed_on=today(),
                                   evidence=PDF)  # fmt: skip


def test_approval_and_rejection_are_recorded_with_a_reason(tenant_a, compliance_a, radiologist_a, technologist_a,
                                                           hipaa):  # fmt: skip
    with tenant_scope(tenant_a):
        first = services.completion_record(actor=radiologist_a, user=radiologist_a, course=hipaa,
                                           completed_on=today(), evidence=PDF)  # fmt: skip
        second = services.completion_record(actor=technologist_a, user=technologist_a, course=hipaa,
                                            completed_on=today(), evidence=PDF)  # fmt: skip
        with pytest.raises(ValidationError, match="reason"):
            services.completion_approve(actor=compliance_a, completion=first, reason=" ")
        approved = services.completion_approve(actor=compliance_a, completion=first, reason="Certificate checked")
        rejected = services.completion_reject(actor=compliance_a, completion=second, reason="Wrong course")
        with pytest.raises(ValidationError, match="already"):
            services.completion_approve(actor=compliance_a, completion=second, reason="changed my mind")
    assert (approved.status, approved.reviewed_by, approved.review_reason) == ("approved", compliance_a,
                                                                               "Certificate checked")  # fmt: skip
    assert rejected.status == "rejected"
    assert last_event(tenant_a, EventType.TRAINING_COMPLETION_APPROVED).extra["reason"] == "Certificate checked"
    assert last_event(tenant_a, EventType.TRAINING_COMPLETION_REJECTED).extra["reason"] == "Wrong course"


def test_an_officers_own_training_is_reviewed_by_another(tenant_a, compliance_a, make_member, hipaa):
    from tenants.models import Role

    second = make_member(tenant_a, Role.COMPLIANCE_OFFICER, "north-compliance-2")
    with tenant_scope(tenant_a):
        own = services.completion_record(actor=compliance_a, user=compliance_a, course=hipaa, completed_on=today(),
                                         evidence=PDF)  # fmt: skip
        assert own.status == "pending"
        with pytest.raises(access.Forbidden) as refused:
            services.completion_approve(actor=compliance_a, completion=own, reason="mine")
        assert refused.value.code == "two_person_rule"
        assert services.completion_approve(actor=second, completion=own, reason="checked").status == "approved"


def test_a_correction_supersedes_and_keeps_the_history(tenant_a, compliance_a, radiologist_a, hipaa_required):
    wrong = record(tenant_a, compliance_a, radiologist_a, hipaa_required.course,
                   expires_on=today() - timedelta(days=3))  # fmt: skip
    with tenant_scope(tenant_a):
        fixed = services.completion_supersede(actor=compliance_a, completion=wrong, completed_on=today(),
                                              reason="Typed the wrong year")  # fmt: skip
        with pytest.raises(ValidationError, match="already been corrected"):
            services.completion_supersede(actor=compliance_a, completion=wrong, completed_on=today(), reason="again")
        wrong.refresh_from_db()
        (status,) = selectors.person_status(user=radiologist_a)
        assert Completion.objects.count() == 2
    assert (wrong.expires_on, wrong.status) == (today() - timedelta(days=3), "approved")  # untouched
    assert fixed.supersedes == wrong
    assert fixed.evidence_id == wrong.evidence_id
    assert status.state == "current"
    event = last_event(tenant_a, EventType.TRAINING_COMPLETION_SUPERSEDED)
    assert event.extra["reason"] == "Typed the wrong year"


def test_only_an_officer_corrects(tenant_a, compliance_a, radiologist_a, hipaa):
    completion = record(tenant_a, compliance_a, radiologist_a, hipaa, expires_on=today() + timedelta(days=3))
    with tenant_scope(tenant_a), pytest.raises(access.Forbidden):
        services.completion_supersede(actor=radiologist_a, completion=completion, completed_on=today(), reason="x")


def test_grace_days_delay_the_lapse(tenant_a, compliance_a, radiologist_a, hipaa):
    from tests.training.helpers import require

    require(tenant_a, compliance_a, hipaa, grace_days=5)
    record(tenant_a, compliance_a, radiologist_a, hipaa, expires_on=today() - timedelta(days=2))
    with tenant_scope(tenant_a):
        (status,) = selectors.person_status(user=radiologist_a)
        assert (status.state, status.blocks) == ("expired", False)
        assert selectors.training_block_get(user=radiologist_a) is None
