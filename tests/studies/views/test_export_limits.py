"""RATE_LIMITS["export"] on the export pages (SECURITY.md G11: the export past the limit is a 429 with Retry-After,
and the limit follows the person across addresses). Per day, so that no window ends within the test."""

from __future__ import annotations

import pytest
from django.test import override_settings

from audit.events import EventType
from audit.models import AuditEvent
from studies.models import Export
from tenants.scoping import tenant_scope
from tests.studies.views.test_export_pages import export_url, study_a  # noqa: F401 -- a fixture

pytestmark = pytest.mark.django_db


def test_an_export_past_the_persons_limit_is_a_429_page_whatever_the_address(
    tenant_a,
    radiologist_a,
    study_a,  # noqa: F811 -- the fixture imported above
    client_for,
    django_capture_on_commit_callbacks,
):
    client = client_for(radiologist_a)
    url = export_url(tenant_a, study_a)
    with override_settings(RATE_LIMITS={"export": {"person": "1/day"}}):
        with django_capture_on_commit_callbacks(execute=True):
            first = client.post(url, {"kind": "deidentified"}, REMOTE_ADDR="10.77.0.1")
        second = client.post(url, {"kind": "deidentified"}, REMOTE_ADDR="10.77.0.2")
    assert first.status_code == 302
    assert second.status_code == 429
    assert int(second["Retry-After"]) > 0
    with tenant_scope(tenant_a):
        assert Export.objects.count() == 1
        [event] = AuditEvent.objects.filter(event_type=EventType.RATE_LIMITED)
    assert event.extra == {"action": "export", "kind": "person", "limit": "1/day", "door": "pages"}
    assert event.actor_user == radiologist_a
