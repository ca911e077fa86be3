"""Security incidents (issue 12; SECURITY.md B11, D2): opened from an alert by a compliance officer, scoped by a
frozen, hash-referenced breach-scope query, decided and closed, each step on the trail and in django-auditlog; the
HITECH deadlines computed from the discovery date and the count affected; reminders mailed once each; high alerts
mailed. Read-only for auditors, refused for members without the right, a 404 for another tenant."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core import mail
from django.utils import timezone

from audit.events import EventType
from audit.incidents import incident_deadlines, incident_reminders_send, incident_scope_intact
from audit.models import Incident
from audit.services import security_alert_raise
from tenants.scoping import tenant_scope
from tests.audit.helpers import events_of, last_event, record

pytestmark = pytest.mark.django_db

INCIDENTS = "/t/north/audit/incidents/"


def deadlines_of(**fields) -> dict[str, date]:
    incident = Incident(discovered_at=datetime(2025, 3, 1, 9, 30, tzinfo=UTC), **fields)
    return {d.key: d.due for d in incident_deadlines(incident)}


def test_hitech_deadlines_follow_the_discovery_date_and_the_count():
    # SECURITY.md D2: discovered 2025-03-01, 600 affected in one state: individuals and HHS by 2025-04-30, media too.
    assert deadlines_of(affected_count=600, affected_by_state={"NY": 600}) == {
        "individuals": date(2025, 4, 30), "hhs": date(2025, 4, 30), "media": date(2025, 4, 30),
    }  # fmt: skip
    # 20 affected: the annual log to HHS, due 60 days after the end of the year of discovery.
    assert deadlines_of(affected_count=20) == {"individuals": date(2025, 4, 30), "hhs_log": date(2026, 3, 1)}
    # 600 spread so that no state has more than 500: no media notice.
    assert "media" not in deadlines_of(affected_count=600, affected_by_state={"NY": 500, "NJ": 100})
    assert deadlines_of(role=Incident.Role.BUSINESS_ASSOCIATE, affected_count=600) == {
        "covered_entity": date(2025, 4, 30)
    }
    assert deadlines_of(determination=Incident.Determination.LOW_PROBABILITY, affected_count=600) == {}


@pytest.fixture
def alert_a(tenant_a, compliance_a):
    with tenant_scope(tenant_a):
        return security_alert_raise(
            kind="bulk_retrieval", summary="north-radiologist read the records of 60 patients",
            event=EventType.SECURITY_RULE_MATCHED, tenant=tenant_a, subject="north-radiologist",
        )  # fmt: skip


def _open(client, alert, title="Bulk reads by one account"):
    return client.post(f"/t/north/audit/alerts/{alert.public_id}/incident/", {"title": title})


def test_a_compliance_officer_opens_scopes_decides_and_closes_an_incident(
    tenant_a, compliance_a, radiologist_a, alert_a, client_for
):
    # The reads the scope must find: two patients by the radiologist, one by someone else.
    def read(actor, patient_id):
        return record(tenant_a, EventType.INSTANCES_RETRIEVED, actor=actor,
                      participants=[{"type": "patient", "id": patient_id, "name": f"DOE^{patient_id}"},
                                    {"type": "study", "id": f"1.2.3.{patient_id}"}])  # fmt: skip

    read(radiologist_a, "P1")
    read(radiologist_a, "P2")
    read(compliance_a, "P3")
    client = client_for(compliance_a)

    opened = _open(client, alert_a)
    assert opened.status_code == 302
    with tenant_scope(tenant_a):
        incident = Incident.objects.get()
        assert list(incident.alerts.all()) == [alert_a]
    assert opened["Location"] == f"{INCIDENTS}{incident.public_id}/"
    assert incident.discovered_at == alert_a.raised_at  # discovery: when the alert was raised

    now = timezone.now()
    hour = timedelta(hours=1)
    scope = client.post(opened["Location"], {
        "action": "scope", "username": "north-radiologist",
        "start": (now - hour).strftime("%Y-%m-%d %H:%M"), "end": (now + hour).strftime("%Y-%m-%d %H:%M"),
    })  # fmt: skip
    assert scope.status_code == 302
    with tenant_scope(tenant_a):
        incident.refresh_from_db()
    assert [p["patient_id"] for p in incident.scope_snapshot] == ["P1", "P2"]
    assert incident.affected_count == 2
    assert incident_scope_intact(incident)
    scoped = last_event(tenant_a, EventType.INCIDENT_SCOPED)
    assert scoped.extra["sha256"] == incident.scope_sha256
    assert {p["id"] for p in scoped.participants if p["type"] == "patient"} == {"P1", "P2"}

    assert (
        client.post(
            opened["Location"], {"action": "decision", "text": "Account suspended; 4-factor review."}
        ).status_code
        == 302
    )
    # Closing needs a determination.
    refused = client.post(opened["Location"], {"action": "update", "status": "closed", "determination": "undetermined",
                                               "role": "covered_entity", "affected_count": 2})  # fmt: skip
    assert refused.status_code == 400
    assert b"Record the determination" in refused.content
    bad_states = client.post(opened["Location"], {"action": "update", "status": "assessing", "determination": "breach",
                                                  "role": "covered_entity", "affected_count": 2,
                                                  "affected_by_state": '{"New York": 2}'})  # fmt: skip
    assert bad_states.status_code == 400
    closed = client.post(opened["Location"], {"action": "update", "status": "closed", "determination": "breach",
                                              "role": "covered_entity", "affected_count": 2,
                                              "affected_by_state": '{"ny": 2}'})  # fmt: skip
    assert closed.status_code == 302
    with tenant_scope(tenant_a):
        incident.refresh_from_db()
    assert (incident.status, incident.affected_by_state) == ("closed", {"NY": 2})
    assert incident.closed_at is not None
    # Closed stays closed.
    assert client.post(opened["Location"], {"action": "decision", "text": "late"}).status_code == 400

    page = client.get(opened["Location"])
    assert page.status_code == 200
    assert b"Notify each affected individual" in page.content
    assert b"intact" in page.content

    for event in (EventType.INCIDENT_OPENED, EventType.INCIDENT_SCOPED, EventType.INCIDENT_DECISION_RECORDED,
                  EventType.INCIDENT_CLOSED):  # fmt: skip
        assert last_event(tenant_a, event).actor_user_id == compliance_a.pk
    used = last_event(tenant_a, EventType.AUDIT_LOG_USED)
    assert used.extra["incident"] == str(incident.public_id)
    # Every later edit of the incident is in django-auditlog too (B11), the scope masked there.
    changes = LogEntry.objects.filter(content_type=ContentType.objects.get_for_model(Incident),
                                      object_pk=str(incident.pk))  # fmt: skip
    assert changes.count() >= 3
    assert all("DOE^" not in str(change.changes) for change in changes)


def test_an_auditor_reads_incidents_but_cannot_change_them(tenant_a, compliance_a, auditor_a, technologist_a,
                                                            admin_b, alert_a, client_for):  # fmt: skip
    _open(client_for(compliance_a), alert_a)
    with tenant_scope(tenant_a):
        incident = Incident.objects.get()
    url = f"{INCIDENTS}{incident.public_id}/"
    auditor = client_for(auditor_a)
    assert auditor.get(INCIDENTS).status_code == 200
    assert auditor.get(url).status_code == 200
    assert auditor.post(url, {"action": "decision", "text": "mine"}).status_code == 403
    assert _open(auditor, alert_a).status_code == 403
    denied = last_event(tenant_a, EventType.ACCESS_DENIED)
    assert denied.actor_user_id == auditor_a.pk
    # A member without the audit right, another tenant, a made-up id.
    assert client_for(technologist_a).get(INCIDENTS).status_code == 403
    assert client_for(admin_b).get(url).status_code == 404
    assert client_for(compliance_a).get(f"{INCIDENTS}{uuid.uuid4()}/").status_code == 404
    with tenant_scope(tenant_a):
        assert Incident.objects.get().decisions.count() == 0


def test_deadline_reminders_are_mailed_once_each(tenant_a, compliance_a, alert_a, django_capture_on_commit_callbacks):
    compliance_a.email = "officer@north.example"
    compliance_a.save()
    with tenant_scope(tenant_a):
        discovered = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
        Incident.objects.create(tenant=tenant_a, title="Lost laptop", opened_by=compliance_a,
                                discovered_at=discovered, affected_count=3)  # fmt: skip
        mail.outbox.clear()
        with django_capture_on_commit_callbacks(execute=True):
            # Due 2026-11-30 (60 days from discovery).
            assert incident_reminders_send(tenant=tenant_a, today=date(2026, 10, 30)) == 0  # 31 days left: not yet
            assert incident_reminders_send(tenant=tenant_a, today=date(2026, 10, 31)) == 1  # 30 days: the first
            assert incident_reminders_send(tenant=tenant_a, today=date(2026, 11, 1)) == 0  # once
            assert incident_reminders_send(tenant=tenant_a, today=date(2026, 12, 2)) == 1  # 2 days late
    assert [m.to for m in mail.outbox] == [["officer@north.example"]] * 2
    assert "Notify each affected individual" in mail.outbox[0].body
    assert "30 days left" in mail.outbox[0].body
    assert "2 days late" in mail.outbox[1].body
    assert "Lost laptop" in mail.outbox[0].subject
    sent = events_of(tenant_a, EventType.INCIDENT_REMINDER_SENT)
    assert [e.extra["reminders"] for e in sent] == [["individuals:30"], ["individuals:0"]]


def test_high_alerts_are_mailed_to_the_compliance_officers_and_warnings_are_not(
    tenant_a, compliance_a, django_capture_on_commit_callbacks
):
    compliance_a.email = "officer@north.example"
    compliance_a.save()
    mail.outbox.clear()
    with tenant_scope(tenant_a), django_capture_on_commit_callbacks(execute=True):
        security_alert_raise(kind="malware", summary="Malware sent in", event=EventType.MALWARE_DETECTED,
                             tenant=tenant_a)  # fmt: skip
        security_alert_raise(kind="locked_out", summary="someone locked out", event=EventType.SECURITY_RULE_MATCHED,
                             tenant=tenant_a, severity="warning")  # fmt: skip
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["officer@north.example"]
    assert "Malware sent in" in mail.outbox[0].body
