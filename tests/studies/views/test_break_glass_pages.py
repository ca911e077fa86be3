"""The break-glass page and the review queue (SECURITY.md A2), through the browser client."""

from __future__ import annotations

import pytest
from django.core import mail

from audit.events import EventType
from audit.models import AuditEvent, SecurityAlert
from studies.models import BreakGlassGrant
from tenants.scoping import tenant_scope
from tests.studies.access_fixtures import fresh_code, referrer_make, study_make

pytestmark = pytest.mark.django_db


@pytest.fixture
def referrer_a(make_member, tenant_a):
    return referrer_make(make_member, tenant_a)


def page(tenant) -> str:
    return f"/t/{tenant.slug}/break-glass/"


def test_break_glass_from_the_page_then_review(
    tenant_a, referrer_a, compliance_a, radiologist_a, client_for, django_capture_on_commit_callbacks
):
    study = study_make(tenant_a, accession="ER-7")
    client = client_for(referrer_a)
    assert client.get(page(tenant_a)).status_code == 200
    empty = client.post(page(tenant_a), {"identifier": "ER-7", "reason": "", "otp_token": fresh_code(referrer_a)})
    assert empty.status_code == 400
    assert b"State why" in empty.content
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        data = {"identifier": "ER-7", "reason": "Stroke alert", "otp_token": fresh_code(referrer_a, step=1)}
        response = client.post(page(tenant_a), data)
    assert response.status_code == 302
    shown = client.get(page(tenant_a))
    assert study.patient.patient_id.encode() in shown.content  # the study is open to them now
    assert b"ER-7" not in response["Location"].encode()  # the identifier never reaches a URL
    assert len(mail.outbox) == 1
    with tenant_scope(tenant_a):
        grant = BreakGlassGrant.objects.get()
        assert SecurityAlert.objects.filter(kind="break_glass").count() == 1

    review = f"/t/{tenant_a.slug}/break-glass/review/"
    assert client_for(radiologist_a).get(review).status_code == 403
    assert client_for(radiologist_a).post(f"{review}{grant.public_id}/", {"verdict": "appropriate"}).status_code == 403
    officer = client_for(compliance_a)
    queue = officer.get(review)
    assert queue.status_code == 200
    assert queue.content.count(b'id="review-') == 1
    signed = officer.post(f"{review}{grant.public_id}/", {"verdict": "appropriate", "note": "stroke pathway"})
    assert signed.status_code == 302
    assert b'id="review-empty"' in officer.get(review).content
    with tenant_scope(tenant_a):
        assert AuditEvent.objects.filter(event_type=EventType.BREAK_GLASS_REVIEWED).count() == 1
        assert AuditEvent.objects.filter(event_type=EventType.ACCESS_DENIED, actor_user=radiologist_a).count() == 2


def test_a_wrong_code_is_refused_on_the_page(tenant_a, referrer_a, client_for):
    study_make(tenant_a, accession="ER-8")
    response = client_for(referrer_a).post(
        page(tenant_a), {"identifier": "ER-8", "reason": "emergency", "otp_token": "000000"}
    )
    assert response.status_code == 400
    with tenant_scope(tenant_a):
        assert not BreakGlassGrant.objects.exists()


def test_non_clinicians_are_refused(tenant_a, compliance_a, admin_a, client_for):
    for user in (compliance_a, admin_a):
        assert client_for(user).get(page(tenant_a)).status_code == 403


def test_ending_early_and_other_tenants(tenant_a, tenant_b, referrer_a, outsider_b, client_for):
    study = study_make(tenant_a, accession="ER-9")
    client = client_for(referrer_a)
    client.post(page(tenant_a), {"identifier": "ER-9", "reason": "trauma", "otp_token": fresh_code(referrer_a)})
    with tenant_scope(tenant_a):
        grant = BreakGlassGrant.objects.get()
    # Another tenant's user: the URL of tenant A is a 404, and in their own tenant the grant does not exist.
    assert client_for(outsider_b).post(f"{page(tenant_a)}{grant.public_id}/end/").status_code == 404
    assert client_for(outsider_b).post(f"{page(tenant_b)}{grant.public_id}/end/").status_code == 404
    assert client.post(f"{page(tenant_a)}{grant.public_id}/end/").status_code == 302
    assert study.patient.patient_id.encode() not in client.get(page(tenant_a)).content
    with tenant_scope(tenant_a):
        assert AuditEvent.objects.filter(event_type=EventType.BREAK_GLASS_ENDED).count() == 1
