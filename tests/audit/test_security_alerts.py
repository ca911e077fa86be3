"""Security alerts (issue 12): the rules find exactly the seeded anomalies of a tenant's event stream and nothing
else, raise once, and keep their evidence; the alert queue and an alert's page, acknowledged, escalated or closed
with a note by a compliance officer; read-only for auditors; another tenant's alert is a 404."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.events import EventType, Outcome
from audit.models import SecurityAlert
from audit.rules import security_rules_evaluate
from audit.services import security_alert_raise
from tenants.scoping import tenant_scope
from tests.audit.helpers import events_of, last_event, record

pytestmark = pytest.mark.django_db

ALERTS = "/t/north/audit/alerts/"


def _seed_stream(tenant_a, tenant_b, radiologist_a, technologist_a):
    """Anomalies: 6 failed sign-ins of mallory, one lockout, 11 refusals of the radiologist. Noise under the
    thresholds: 4 failed sign-ins of alice, 3 refusals of the technologist, ordinary reads. Tenant B: the same
    mallory burst, which is B's alone."""
    seeded = {"mallory": [], "lockout": None, "denied": []}
    for _ in range(5):
        seeded["mallory"].append(record(tenant_a, EventType.LOGIN_FAILED, actor_username="mallory", outcome=4))
    seeded["mallory"].append(record(tenant_a, EventType.MFA_FAILED, actor_username="Mallory", outcome=4))
    seeded["lockout"] = record(tenant_a, EventType.LOCKED_OUT, actor_username="mallory", outcome=8)
    for _ in range(4):
        record(tenant_a, EventType.LOGIN_FAILED, actor_username="alice", outcome=4)
    for _ in range(11):
        seeded["denied"].append(record(tenant_a, EventType.ACCESS_DENIED, actor=radiologist_a, outcome=4))
    for _ in range(3):
        record(tenant_a, EventType.ACCESS_DENIED, actor=technologist_a, outcome=4)
    for _ in range(20):
        record(tenant_a, EventType.INSTANCES_ACCESSED, actor=radiologist_a)
    for _ in range(6):
        record(tenant_b, EventType.LOGIN_FAILED, actor_username="mallory", outcome=4)
    return seeded


def _evaluate(tenant, **kwargs):
    with tenant_scope(tenant):
        return security_rules_evaluate(tenant=tenant, **kwargs)


def test_rules_find_exactly_the_seeded_anomalies(tenant_a, tenant_b, radiologist_a, technologist_a):
    seeded = _seed_stream(tenant_a, tenant_b, radiologist_a, technologist_a)

    raised = _evaluate(tenant_a)

    found = {(alert.kind, alert.subject) for alert in raised}
    assert found == {
        ("repeated_failed_logins", "mallory"),
        ("locked_out", str(seeded["lockout"].public_id)),
        ("access_denied_burst", "north-radiologist"),
    }
    by_kind = {alert.kind: alert for alert in raised}
    assert by_kind["repeated_failed_logins"].evidence == [str(e.public_id) for e in seeded["mallory"]]
    assert by_kind["access_denied_burst"].evidence == [str(e.public_id) for e in seeded["denied"]]
    assert all(alert.tenant == tenant_a and alert.status == SecurityAlert.Status.OPEN for alert in raised)
    matched = events_of(tenant_a, EventType.SECURITY_RULE_MATCHED)
    assert len(matched) == 3
    assert matched[0].event_id == "110113"

    # Idempotent: a second run (the next minute's beat) raises nothing more; tenant B's burst is B's own.
    assert _evaluate(tenant_a) == []
    assert [(a.kind, a.subject) for a in _evaluate(tenant_b)] == [("repeated_failed_logins", "mallory")]
    # Past the window, the same events no longer match.
    later = timezone.now() + timedelta(hours=2)
    assert _evaluate(tenant_a, now=later) == []


def test_a_burst_that_goes_on_raises_again_only_after_the_window(tenant_a, tenant_b, radiologist_a, technologist_a):
    _seed_stream(tenant_a, tenant_b, radiologist_a, technologist_a)
    _evaluate(tenant_a)
    for _ in range(5):
        record(tenant_a, EventType.LOGIN_FAILED, actor_username="mallory", outcome=4)
    assert _evaluate(tenant_a) == []
    with tenant_scope(tenant_a):
        assert SecurityAlert.objects.filter(kind="repeated_failed_logins").count() == 1


@pytest.fixture
def alert_a(tenant_a, tenant_b, radiologist_a, technologist_a):
    _seed_stream(tenant_a, tenant_b, radiologist_a, technologist_a)
    return next(alert for alert in _evaluate(tenant_a) if alert.kind == "repeated_failed_logins")


def test_queue_lists_open_alerts_and_is_recorded(client_for, tenant_a, compliance_a, alert_a):
    response = client_for(compliance_a).get(ALERTS)
    assert response.status_code == 200
    assert alert_a in response.context["alerts"]
    assert "6 failed sign-ins of mallory" in response.content.decode()
    used = last_event(tenant_a, EventType.AUDIT_LOG_USED)
    assert used.extra == {"alerts": "open", "results": 3}
    assert client_for(compliance_a).get(ALERTS, {"state": "acknowledged"}).context["alerts"] == []
    assert client_for(compliance_a).get(ALERTS, {"state": "bogus"}).status_code == 400


def test_compliance_officer_acknowledges_then_closes_with_a_note(client_for, tenant_a, compliance_a, alert_a):
    client = client_for(compliance_a)
    url = f"{ALERTS}{alert_a.public_id}/"
    page = client.get(url)
    assert page.status_code == 200
    assert len(page.context["evidence"]) == 7  # the rule's own event and the six failures
    assert page.context["may_handle"] is True

    acknowledged = client.post(url, {"state": "acknowledged", "note": "Looking into it"})
    assert acknowledged.status_code == 302
    with tenant_scope(tenant_a):
        alert_a.refresh_from_db()
    assert alert_a.status == SecurityAlert.Status.ACKNOWLEDGED
    assert alert_a.acknowledged_by == compliance_a
    assert alert_a.acknowledged_at is not None
    assert alert_a.note == "Looking into it"
    handled = last_event(tenant_a, EventType.SECURITY_ALERT_HANDLED)
    assert handled.actor_user == compliance_a
    assert handled.extra == {"from": "open", "to": "acknowledged", "note": "Looking into it"}
    assert handled.target_id == str(alert_a.public_id)

    refused = client.post(url, {"state": "closed", "note": ""})
    assert refused.status_code == 400
    assert "a note is required" in refused.content.decode()
    assert client.post(url, {"state": "closed", "note": "Password spraying from a known scanner"}).status_code == 302
    with tenant_scope(tenant_a):
        alert_a.refresh_from_db()
    assert alert_a.status == SecurityAlert.Status.CLOSED
    assert client.post(url, {"state": "escalated", "note": "again"}).status_code == 400


def test_auditor_reads_but_may_not_handle(client_for, tenant_a, auditor_a, alert_a):
    client = client_for(auditor_a)
    url = f"{ALERTS}{alert_a.public_id}/"
    page = client.get(url)
    assert page.status_code == 200
    assert page.context["may_handle"] is False
    assert "Handle this alert" not in page.content.decode()
    refused = client.post(url, {"state": "acknowledged", "note": ""})
    assert refused.status_code == 403
    assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user == auditor_a
    with tenant_scope(tenant_a):
        alert_a.refresh_from_db()
    assert alert_a.status == SecurityAlert.Status.OPEN


def test_member_without_audit_permission_gets_403(client_for, tenant_a, radiologist_a, alert_a):
    assert client_for(radiologist_a).get(ALERTS).status_code == 403
    assert client_for(radiologist_a).get(f"{ALERTS}{alert_a.public_id}/").status_code == 403
    assert last_event(tenant_a, EventType.ACCESS_DENIED).extra["where"] == "AlertDetailView"


def test_another_tenants_alert_is_the_404_of_a_missing_one(client_for, tenant_a, tenant_b, compliance_a, outsider_b):
    theirs = security_alert_raise(
        kind="malware",
        summary="EICAR",
        event=EventType.MALWARE_DETECTED,
        tenant=tenant_b,
        outcome=Outcome.MAJOR_FAILURE,
    )
    client = client_for(compliance_a)
    other = client.get(f"{ALERTS}{theirs.public_id}/")
    missing = client.get(f"{ALERTS}{uuid.uuid4()}/")
    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content
    assert client.post(f"{ALERTS}{theirs.public_id}/", {"state": "acknowledged"}).status_code == 404
    assert client_for(outsider_b).get(ALERTS).status_code == 404  # not a member of north
