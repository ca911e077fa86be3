"""Shares through the real services: who may share, what the grantee sees, revocation, expiry, outside
physicians, and the audit trail."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.utils import timezone

from audit.events import EventType
from audit.models import AuditEvent
from studies import services
from studies.models import StudyShare
from studies.selectors import study_get, study_list
from tenants import access
from tenants.models import Role, User
from tenants.scoping import tenant_scope
from tests.studies.access_fixtures import referrer_make, study_make

pytestmark = pytest.mark.django_db


@pytest.fixture
def referrer_a(make_member, tenant_a):
    return referrer_make(make_member, tenant_a)


def sees(user, tenant, study) -> bool:
    with tenant_scope(tenant):
        return study_list(actor=user).filter(pk=study.pk).exists()


def share(tenant, actor, study, grantee, *, hours=24):
    with tenant_scope(tenant):
        return services.share_create(
            actor=actor, study=study, grantee=grantee, expires_at=timezone.now() + timedelta(hours=hours), note="2nd op"
        )


def test_a_share_shows_the_study_and_is_audited(tenant_a, radiologist_a, referrer_a):
    study = study_make(tenant_a)
    assert not sees(referrer_a, tenant_a, study)
    with tenant_scope(tenant_a), pytest.raises(access.NotVisible):
        study_get(actor=referrer_a, public_id=study.public_id)
    row = share(tenant_a, radiologist_a, study, referrer_a)
    assert sees(referrer_a, tenant_a, study)
    with tenant_scope(tenant_a):
        event = AuditEvent.objects.get(event_type=EventType.STUDY_SHARED)
    assert event.actor_user == radiologist_a
    assert event.target_id == str(row.public_id)
    types = {p["type"]: p for p in event.participants}
    assert types["patient"]["id"] == study.patient.patient_id
    assert types["study"]["id"] == study.study_instance_uid
    assert types["user"]["id"] == str(referrer_a.subject_uuid)


def test_a_revoked_share_stops_at_once_and_is_audited(tenant_a, radiologist_a, referrer_a):
    study = study_make(tenant_a)
    row = share(tenant_a, radiologist_a, study, referrer_a)
    with tenant_scope(tenant_a):
        services.share_revoke(actor=radiologist_a, share=row)
        services.share_revoke(actor=radiologist_a, share=row)  # idempotent
        assert AuditEvent.objects.filter(event_type=EventType.SHARE_REVOKED).count() == 1
        assert not access.has_perm(referrer_a, "studies.view_study", study)
    assert not sees(referrer_a, tenant_a, study)


def test_an_expired_share_stops_at_once_and_the_cleanup_removes_its_grant(tenant_a, radiologist_a, referrer_a):
    study = study_make(tenant_a)
    row = share(tenant_a, radiologist_a, study, referrer_a)
    with tenant_scope(tenant_a):
        StudyShare.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert not sees(referrer_a, tenant_a, study)
    with tenant_scope(tenant_a):
        assert services.shares_expired_cleanup() == 1
    # A new share works again at once (the grant is made afresh).
    share(tenant_a, radiologist_a, study, referrer_a)
    assert sees(referrer_a, tenant_a, study)


def test_a_member_without_share_studies_is_refused(tenant_a, radiologist_a, referrer_a, technologist_a):
    own = study_make(tenant_a, referring_key="DOE^JOHN")  # the referrer sees it: names them
    assert sees(referrer_a, tenant_a, own)
    with tenant_scope(tenant_a), pytest.raises(access.Forbidden):
        services.share_create(
            actor=referrer_a, study=own, grantee=technologist_a, expires_at=timezone.now() + timedelta(days=1)
        )
    other = study_make(tenant_a)
    with tenant_scope(tenant_a), pytest.raises(access.NotVisible):
        services.share_create(
            actor=referrer_a, study=other, grantee=technologist_a, expires_at=timezone.now() + timedelta(days=1)
        )


def test_the_grantee_must_be_a_current_member_and_limits_hold(tenant_a, radiologist_a, referrer_a, outsider_b):
    study = study_make(tenant_a)
    with tenant_scope(tenant_a):
        with pytest.raises(ValidationError):
            services.share_create(
                actor=radiologist_a, study=study, grantee=outsider_b, expires_at=timezone.now() + timedelta(days=1)
            )
        with pytest.raises(ValidationError):
            services.share_create(
                actor=radiologist_a, study=study, grantee=referrer_a, expires_at=timezone.now() + timedelta(days=90)
            )
        with pytest.raises(ValidationError):
            services.share_create(
                actor=radiologist_a, study=study, grantee=referrer_a, expires_at=timezone.now() - timedelta(days=1)
            )
    share(tenant_a, radiologist_a, study, referrer_a)
    with tenant_scope(tenant_a), pytest.raises(ValidationError):
        share(tenant_a, radiologist_a, study, referrer_a)  # already shared


def test_another_tenants_study_is_not_visible(tenant_a, tenant_b, radiologist_a, outsider_b, admin_b):
    study = study_make(tenant_a)
    with tenant_scope(tenant_b), pytest.raises(access.NotVisible):
        services.share_create(
            actor=outsider_b, study=study, grantee=admin_b, expires_at=timezone.now() + timedelta(days=1)
        )


def test_an_outside_physician_is_invited_and_nothing_is_granted_before_acceptance(
    tenant_a, radiologist_a, django_capture_on_commit_callbacks
):
    study = study_make(tenant_a)
    mail.outbox.clear()
    with tenant_scope(tenant_a), django_capture_on_commit_callbacks(execute=True):
        pending = services.share_invite_outside(
            actor=radiologist_a, study=study, email="Dr.Who@Clinic.example", first_name="Wendy", last_name="Who",
            days=3,
        )  # fmt: skip
    assert not User.objects.filter(email__iexact="dr.who@clinic.example").exists()
    with tenant_scope(tenant_a):
        invitation = pending.invitation
        assert (invitation.email, invitation.role, invitation.purpose) == (
            "dr.who@clinic.example",
            Role.REFERRING_PHYSICIAN,
            "share",
        )
        assert invitation.ends_at == pending.expires_at
        assert invitation.expires_at <= pending.expires_at
        assert not StudyShare.objects.exists()
        assert AuditEvent.objects.filter(event_type=EventType.INVITATION_SENT, target_id=str(invitation.public_id))
        assert not AuditEvent.objects.filter(event_type__in=[EventType.MEMBER_ADDED, EventType.STUDY_SHARED])
    assert len(mail.outbox) == 1
    body = mail.outbox[0].body
    assert f"/t/{tenant_a.slug}/studies/{study.public_id}/" in body
    assert "/invitations/inv_" in body
    assert study.patient.name not in body
    assert study.patient.patient_id not in body


def test_a_referrer_cannot_invite(tenant_a, referrer_a):
    own = study_make(tenant_a, referring_key="DOE^JOHN")
    with tenant_scope(tenant_a), pytest.raises(access.Forbidden):
        services.share_invite_outside(
            actor=referrer_a, study=own, email="x@example.org", first_name="X", last_name="Y", days=3
        )
    assert not User.objects.filter(username="x@example.org").exists()


@pytest.mark.parametrize("persona", ["admin_a", "compliance_a", "auditor_a"])
def test_roles_that_see_no_images_receive_no_share_and_are_told_why(tenant_a, radiologist_a, persona, request):
    grantee = request.getfixturevalue(persona)
    study = study_make(tenant_a)
    with tenant_scope(tenant_a), pytest.raises(ValidationError) as refused:
        services.share_create(
            actor=radiologist_a, study=study, grantee=grantee, expires_at=timezone.now() + timedelta(days=1)
        )
    message = refused.value.message_dict["grantee"][0]
    assert "sees no images" in message
    assert "radiologists, technologists and referring physicians" in message
    with tenant_scope(tenant_a):
        assert not StudyShare.objects.exists()
        assert not access.has_perm(grantee, "studies.view_study", study)
        assert not AuditEvent.objects.filter(event_type=EventType.STUDY_SHARED).exists()


@pytest.mark.parametrize("role", [Role.RADIOLOGIST, Role.TECHNOLOGIST, Role.REFERRING_PHYSICIAN])
def test_each_image_role_may_receive_a_share(tenant_a, radiologist_a, make_member, role):
    grantee = make_member(tenant_a, role, f"north-{role}-2")
    study = study_make(tenant_a)
    assert share(tenant_a, radiologist_a, study, grantee).grantee == grantee
