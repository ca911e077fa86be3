"""Break-glass through the real services (SECURITY.md A2): reason and a fresh TOTP code to start, the study
visible for a few hours, a Security Alert and an email, the end recorded at expiry, the review queue."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.test import override_settings
from django.utils import timezone

from audit.events import EventType, Outcome
from audit.models import AuditEvent, SecurityAlert
from studies import services
from studies.models import BreakGlassGrant
from studies.selectors import break_glass_review_list, study_get
from studies.tasks import break_glass_expire_task
from tenants import access
from tenants.scoping import tenant_scope
from tests.studies.access_fixtures import fresh_code, referrer_make, study_make

pytestmark = pytest.mark.django_db


@pytest.fixture
def referrer_a(make_member, tenant_a):
    return referrer_make(make_member, tenant_a)


def start(tenant, user, *, reason="Unconscious patient in the trauma bay", step=0, **target):
    with tenant_scope(tenant):
        return services.break_glass_start(actor=user, reason=reason, otp_token=fresh_code(user, step=step), **target)


def test_break_glass_opens_the_study_alerts_and_emails(
    tenant_a, referrer_a, compliance_a, django_capture_on_commit_callbacks
):
    study = study_make(tenant_a, accession="ER-1")
    with tenant_scope(tenant_a), pytest.raises(access.NotVisible):
        study_get(actor=referrer_a, public_id=study.public_id)
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        grant = start(tenant_a, referrer_a, identifier="er-1")
    assert grant.study == study
    assert grant.purpose_of_use == "ETREAT"
    assert timedelta(hours=3, minutes=59) < grant.expires_at - timezone.now() <= timedelta(hours=4)
    with tenant_scope(tenant_a):
        assert study_get(actor=referrer_a, public_id=study.public_id) == study
        event = AuditEvent.objects.get(event_type=EventType.BREAK_GLASS_STARTED, outcome=Outcome.SUCCESS)
        alert = SecurityAlert.objects.get(kind="break_glass")
    assert (event.event_id, event.event_type_code) == ("110113", "110127")
    assert event.actor_user == referrer_a
    assert event.extra["purpose_of_use"] == "ETREAT"
    kinds = {p["type"]: p for p in event.participants}
    assert kinds["patient"]["id"] == study.patient.patient_id
    assert kinds["study"]["id"] == study.study_instance_uid
    assert kinds["user"]["id"] == str(referrer_a.subject_uuid)
    assert alert.event_id == event.pk
    assert [m.to for m in mail.outbox] == [[compliance_a.email]]
    assert study.patient.name not in mail.outbox[0].body
    assert "/break-glass/review/" in mail.outbox[0].body


def test_an_empty_reason_is_refused(tenant_a, referrer_a):
    study = study_make(tenant_a)
    with pytest.raises(ValidationError) as info:
        start(tenant_a, referrer_a, reason="   ", study=study)
    assert "reason" in info.value.message_dict
    with tenant_scope(tenant_a):
        assert not BreakGlassGrant.objects.exists()


def test_a_wrong_or_reused_code_is_refused_and_recorded(tenant_a, referrer_a):
    study = study_make(tenant_a)
    start(tenant_a, referrer_a, study=study, step=0)
    other = study_make(tenant_a)
    with pytest.raises(ValidationError) as info:
        start(tenant_a, referrer_a, study=other, step=0)  # the same code again
    assert "otp_token" in info.value.message_dict
    with tenant_scope(tenant_a), pytest.raises(ValidationError):
        services.break_glass_start(actor=referrer_a, reason="emergency", otp_token="000000", study=other)
    with tenant_scope(tenant_a):
        failures = AuditEvent.objects.filter(event_type=EventType.BREAK_GLASS_STARTED, outcome=Outcome.MINOR_FAILURE)
        assert failures.count() == 2
        assert AuditEvent.objects.filter(event_type=EventType.MFA_FAILED).count() == 2
        assert BreakGlassGrant.objects.count() == 1


def test_only_clinicians_who_cannot_see_the_study(tenant_a, compliance_a, admin_a, radiologist_a, referrer_a):
    study = study_make(tenant_a)
    for user in (compliance_a, admin_a):
        with pytest.raises(access.Forbidden):
            start(tenant_a, user, study=study)
    with pytest.raises(ValidationError):
        start(tenant_a, radiologist_a, study=study)  # sees every study already
    with pytest.raises(ValidationError):
        start(tenant_a, referrer_a, identifier="NO-SUCH-ACCESSION")


def test_expiry_hides_the_study_and_the_job_records_the_end(tenant_a, referrer_a):
    study = study_make(tenant_a)
    grant = start(tenant_a, referrer_a, study=study)
    with tenant_scope(tenant_a):
        BreakGlassGrant.objects.filter(pk=grant.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
        with pytest.raises(access.NotVisible):
            study_get(actor=referrer_a, public_id=study.public_id)
    assert break_glass_expire_task.delay().get() == 1  # eager: the fan-out runs the tenant's task at once
    assert break_glass_expire_task.delay().get() == 0  # idempotent
    with tenant_scope(tenant_a):
        grant.refresh_from_db()
        assert grant.ended_at is not None
        event = AuditEvent.objects.get(event_type=EventType.BREAK_GLASS_ENDED)
    assert (event.event_id, event.event_type_code) == ("110113", "110138")
    assert event.actor_user is None
    assert event.system_principal == "enclave:break-glass-expiry"
    assert {p["type"] for p in event.participants} >= {"patient", "study", "user"}


def test_the_user_may_end_it_early(tenant_a, referrer_a, radiologist_a):
    study = study_make(tenant_a)
    grant = start(tenant_a, referrer_a, study=study)
    with tenant_scope(tenant_a):
        with pytest.raises(access.NotVisible):
            services.break_glass_end(actor=radiologist_a, grant=grant)
        services.break_glass_end(actor=referrer_a, grant=grant)
        assert not access.has_perm(referrer_a, "studies.view_study", study)
        assert AuditEvent.objects.get(event_type=EventType.BREAK_GLASS_ENDED).actor_user == referrer_a


@override_settings(BREAK_GLASS_HOURS=1)
def test_the_duration_is_configurable(tenant_a, referrer_a):
    grant = start(tenant_a, referrer_a, study=study_make(tenant_a))
    assert grant.expires_at - timezone.now() <= timedelta(hours=1)


def test_review_queue_and_sign_off(tenant_a, referrer_a, compliance_a, radiologist_a, auditor_a):
    grant = start(tenant_a, referrer_a, study=study_make(tenant_a))
    with tenant_scope(tenant_a):
        assert list(break_glass_review_list(actor=compliance_a)) == [grant]
        for user in (radiologist_a, auditor_a, referrer_a):
            with pytest.raises(access.Forbidden):
                services.break_glass_review(actor=user, grant=grant, verdict="appropriate")
            with pytest.raises(access.Forbidden):
                break_glass_review_list(actor=user)
        with pytest.raises(ValidationError):
            services.break_glass_review(actor=compliance_a, grant=grant, verdict="inappropriate")  # needs a note
        services.break_glass_review(actor=compliance_a, grant=grant, verdict="appropriate", note="trauma, ok")
        assert list(break_glass_review_list(actor=compliance_a)) == []
        with pytest.raises(ValidationError):
            services.break_glass_review(actor=compliance_a, grant=grant, verdict="appropriate")  # once only
        event = AuditEvent.objects.get(event_type=EventType.BREAK_GLASS_REVIEWED)
    assert event.actor_user == compliance_a
    assert event.extra["verdict"] == "appropriate"


def test_another_tenants_study_is_not_reachable(tenant_a, tenant_b, make_member):
    from tenants.models import Role
    from tests.tenants.factories import totp_device_for

    study = study_make(tenant_a, accession="CROSS-1")
    south_referrer = make_member(tenant_b, Role.REFERRING_PHYSICIAN, "south-referrer")
    totp_device_for(south_referrer)
    with pytest.raises(access.NotVisible):
        start(tenant_b, south_referrer, study=study)
    with pytest.raises(ValidationError):
        start(tenant_b, south_referrer, identifier="CROSS-1", step=1)  # not found in the caller's tenant
    with tenant_scope(tenant_a):
        assert not BreakGlassGrant.objects.exists()
