"""The share and break-glass API (SECURITY.md A2: empty justification -> 400, with one -> 201)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.events import EventType
from audit.models import AuditEvent
from studies.models import BreakGlassGrant, StudyShare
from tenants.scoping import tenant_scope
from tests.studies.access_fixtures import fresh_code, referrer_make, study_make

pytestmark = pytest.mark.django_db


@pytest.fixture
def referrer_a(make_member, tenant_a):
    return referrer_make(make_member, tenant_a)


@pytest.fixture
def api_client_for(api_client_for):
    """The shared fixture's clients, sending JSON bodies (the API accepts JSON only)."""

    def make(user, tenant):
        client = api_client_for(user, tenant)
        client.default_format = "json"
        return client

    return make


def test_break_glass_api(tenant_a, tenant_b, referrer_a, outsider_b, api_client_for, django_assert_max_num_queries):
    study = study_make(tenant_a, accession="API-1")
    client = api_client_for(referrer_a, tenant_a)
    base = f"/api/v1/t/{tenant_a.slug}"
    assert client.get(f"{base}/studies/{study.public_id}/shares/").status_code in (403, 404, 405)
    empty = client.post(f"{base}/break-glass/", {"study": "API-1", "reason": "", "otp_token": fresh_code(referrer_a)})
    assert empty.status_code == 400
    assert "reason" in empty.json()["errors"] or "reason" in str(empty.json())
    with django_assert_max_num_queries(80):
        ok = client.post(
            f"{base}/break-glass/", {"study": "API-1", "reason": "trauma", "otp_token": fresh_code(referrer_a)}
        )
    assert ok.status_code == 201, ok.content
    assert ok.json()["purpose_of_use"] == "ETREAT"
    with tenant_scope(tenant_a):
        assert BreakGlassGrant.objects.count() == 1
        assert AuditEvent.objects.filter(event_type=EventType.BREAK_GLASS_STARTED, outcome=0).count() == 1
    # Tenant B's user: tenant A's URL is a 404; in tenant B the accession names nothing.
    other = api_client_for(outsider_b, tenant_b)
    body = {"study": "API-1", "reason": "x", "otp_token": "123456"}
    assert other.post(f"{base}/break-glass/", body).status_code == 404


def test_share_api(tenant_a, tenant_b, radiologist_a, referrer_a, outsider_b, api_client_for):
    study = study_make(tenant_a)
    client = api_client_for(radiologist_a, tenant_a)
    url = f"/api/v1/t/{tenant_a.slug}/studies/{study.public_id}/shares/"
    created = client.post(url, {"grantee": referrer_a.username, "days": 2})
    assert created.status_code == 201, created.content
    with tenant_scope(tenant_a):
        share = StudyShare.objects.get()
        assert share.expires_at > timezone.now() + timedelta(days=1)
        assert AuditEvent.objects.filter(event_type=EventType.STUDY_SHARED).count() == 1
    assert client.delete(f"{url}{share.public_id}/").status_code == 204
    with tenant_scope(tenant_a):
        assert AuditEvent.objects.filter(event_type=EventType.SHARE_REVOKED).count() == 1
    # A referrer sees their own study but may not share it: 403.
    own = study_make(tenant_a, referring_key="DOE^JOHN")
    refused = api_client_for(referrer_a, tenant_a).post(
        f"/api/v1/t/{tenant_a.slug}/studies/{own.public_id}/shares/", {"grantee": radiologist_a.username, "days": 1}
    )
    assert refused.status_code == 403
    with tenant_scope(tenant_a):
        assert AuditEvent.objects.filter(event_type=EventType.ACCESS_DENIED, actor_user=referrer_a).count() == 1
    # Another tenant's study is the same 404 as a made-up id.
    other = api_client_for(outsider_b, tenant_b)
    foreign = other.post(f"/api/v1/t/{tenant_b.slug}/studies/{study.public_id}/shares/", {"grantee": "x", "days": 1})
    missing = other.post(f"/api/v1/t/{tenant_b.slug}/studies/{uuid.uuid4()}/shares/", {"grantee": "x", "days": 1})
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json()


def test_share_api_refuses_a_role_that_sees_no_images_with_the_reason(tenant_a, radiologist_a, admin_a, api_client_for):
    study = study_make(tenant_a)
    url = f"/api/v1/t/{tenant_a.slug}/studies/{study.public_id}/shares/"

    refused = api_client_for(radiologist_a, tenant_a).post(url, {"grantee": admin_a.username, "days": 2})

    assert refused.status_code == 400
    assert "sees no images" in str(refused.json())
    with tenant_scope(tenant_a):
        assert not StudyShare.objects.exists()


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "0", "Expires after (days)"])
def test_a_malformed_study_id_is_the_same_404_as_a_missing_one(tenant_a, radiologist_a, api_client_for, bad_id):
    """Found by schemathesis (tests/security/test_schemathesis.py): a study id that is not a UUID was a 400 naming
    the field, where a missing study is a 404; the answer must not tell a malformed id from an unknown one."""
    study = study_make(tenant_a, accession="API-MALFORMED")
    client = api_client_for(radiologist_a, tenant_a)
    base = f"/api/v1/t/{tenant_a.slug}/studies"
    missing = client.delete(f"{base}/{uuid.uuid4()}/shares/{uuid.uuid4()}/")
    for url in (f"{base}/{bad_id}/shares/{uuid.uuid4()}/", f"{base}/{bad_id}/shares/invitations/{uuid.uuid4()}/"):
        response = client.delete(url)
        assert response.status_code == 404, (url, response.content)
        assert response.json() == missing.json()
    assert client.post(f"{base}/{bad_id}/shares/", {"grantee": "x", "days": 1}).status_code == 404
    # the same study's own id, but a malformed share id: still the share's 404
    assert client.delete(f"{base}/{study.public_id}/shares/{bad_id}/").status_code == 404
