"""The study's access page: shares listed, made with a member or an outside physician, revoked; 404 for
another tenant's or an invisible study, 403 (recorded) for a member without `tenants.share_studies`."""

from __future__ import annotations

import uuid

import pytest
from django.core import mail

from audit.events import EventType
from audit.models import AuditEvent
from studies.models import StudyShare
from tenants import access
from tenants.models import Membership, User
from tenants.scoping import tenant_scope
from tests.studies.access_fixtures import referrer_make, study_make

pytestmark = pytest.mark.django_db


@pytest.fixture
def referrer_a(make_member, tenant_a):
    return referrer_make(make_member, tenant_a)


def url(tenant, study) -> str:
    return f"/t/{tenant.slug}/studies/{study.public_id}/access/"


def test_share_with_a_member_then_revoke(tenant_a, radiologist_a, referrer_a, client_for):
    study = study_make(tenant_a)
    client = client_for(radiologist_a)
    page = client.get(url(tenant_a, study))
    assert page.status_code == 200
    assert b"not shared with anyone" in page.content
    response = client.post(url(tenant_a, study), {"action": "member", "grantee": referrer_a.username, "days": 2})
    assert response.status_code == 302
    with tenant_scope(tenant_a):
        share = StudyShare.objects.get()
        assert access.has_perm(referrer_a, "studies.view_study", study)
        assert AuditEvent.objects.filter(event_type=EventType.STUDY_SHARED).count() == 1
    page = client.get(url(tenant_a, study))
    assert f"share-{share.public_id}".encode() in page.content
    revoke = f"{url(tenant_a, study)}shares/{share.public_id}/revoke/"
    assert client.post(revoke).status_code == 302
    with tenant_scope(tenant_a):
        assert not access.has_perm(referrer_a, "studies.view_study", study)
        assert AuditEvent.objects.filter(event_type=EventType.SHARE_REVOKED).count() == 1


def test_bad_input_is_shown_on_the_form(tenant_a, radiologist_a, referrer_a, client_for):
    study = study_make(tenant_a)
    client = client_for(radiologist_a)
    response = client.post(url(tenant_a, study), {"action": "member", "grantee": referrer_a.username, "days": 999})
    assert response.status_code == 400
    response = client.post(url(tenant_a, study), {"action": "outside", "email": "not-an-email", "days": 2})
    assert response.status_code == 400


def test_inviting_an_outside_physician_grants_nothing_before_acceptance(
    tenant_a, radiologist_a, client_for, django_capture_on_commit_callbacks
):
    """The whole journey (acceptance, MFA, revocation) is in test_outside_share.py."""
    study = study_make(tenant_a)
    mail.outbox.clear()
    data = {"action": "outside", "email": "ext@clinic.example", "first_name": "Ext", "last_name": "Doc", "days": 3}
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(radiologist_a).post(url(tenant_a, study), data)
    assert response.status_code == 302
    assert not User.objects.filter(email="ext@clinic.example").exists()
    with tenant_scope(tenant_a):
        assert not StudyShare.objects.exists()
        assert not Membership.objects.filter(user__email="ext@clinic.example").exists()
    assert len(mail.outbox) == 1
    assert str(study.public_id) in mail.outbox[0].body
    assert "/invitations/inv_" in mail.outbox[0].body


def test_without_share_studies_403_and_recorded(tenant_a, referrer_a, client_for):
    own = study_make(tenant_a, referring_key="DOE^JOHN")  # visible to the referrer: names them
    response = client_for(referrer_a).get(url(tenant_a, own))
    assert response.status_code == 403
    with tenant_scope(tenant_a):
        denied = AuditEvent.objects.get(event_type=EventType.ACCESS_DENIED)
    assert denied.actor_user == referrer_a
    assert denied.outcome == 4


def test_an_invisible_or_foreign_study_is_the_same_404(tenant_a, tenant_b, referrer_a, outsider_b, client_for):
    study = study_make(tenant_a)
    missing = client_for(referrer_a).get(f"/t/{tenant_a.slug}/studies/{uuid.uuid4()}/access/")
    invisible = client_for(referrer_a).get(url(tenant_a, study))
    foreign = client_for(outsider_b).get(f"/t/{tenant_b.slug}/studies/{study.public_id}/access/")
    other_tenant_url = client_for(outsider_b).get(url(tenant_a, study))
    assert missing.status_code == invisible.status_code == foreign.status_code == other_tenant_url.status_code == 404
    assert missing.content == invisible.content == foreign.content


def test_only_image_roles_are_offered_and_anyone_else_is_refused_with_the_reason(
    tenant_a, radiologist_a, referrer_a, admin_a, compliance_a, client_for
):
    study = study_make(tenant_a)
    client = client_for(radiologist_a)
    page = client.get(url(tenant_a, study)).content.decode()
    assert f'value="{referrer_a.username}"' in page
    assert f'value="{admin_a.username}"' not in page
    assert f'value="{compliance_a.username}"' not in page

    response = client.post(url(tenant_a, study), {"action": "member", "grantee": compliance_a.username, "days": 2})

    assert response.status_code == 400
    assert "(compliance officer) sees no images" in response.content.decode()
    with tenant_scope(tenant_a):
        assert not StudyShare.objects.exists()
