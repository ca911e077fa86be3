"""The tenant's audit dashboard (issue 12): figures from the seeded events only, never another tenant's."""

from __future__ import annotations

import pytest

from audit.events import EventType
from audit.services import audit_digests_sign, security_alert_raise
from tests.audit.helpers import events_of, last_event, record

pytestmark = pytest.mark.django_db

URL = "/t/north/audit/dashboard/"


def test_dashboard_counts_the_seeded_events(client_for, tenant_a, tenant_b, compliance_a, radiologist_a, outsider_b):
    for _ in range(3):
        record(tenant_a, EventType.INSTANCES_ACCESSED, actor=radiologist_a)
    record(tenant_a, EventType.INSTANCES_STORED)
    record(tenant_a, EventType.INGEST_REJECTED, outcome=4)
    record(tenant_a, EventType.BREAK_GLASS_STARTED, actor=radiologist_a)
    security_alert_raise(kind="malware", summary="EICAR", event=EventType.MALWARE_DETECTED, tenant=tenant_a)
    for _ in range(5):
        record(tenant_b, EventType.INSTANCES_ACCESSED, actor=outsider_b)
    audit_digests_sign()

    response = client_for(compliance_a).get(URL)

    assert response.status_code == 200
    dashboard = response.context["dashboard"]
    today = dashboard.days[-1]
    assert len(dashboard.days) == 30
    assert (today["stored"], today["rejected"]) == (1, 1)
    assert today["refusals"] == 2  # the rejected object and the malware alert's event
    assert dashboard.top_readers == [{"user": "north-radiologist", "reads": 3}]
    assert dashboard.break_glass == {"started": 1, "reviewed": 0}
    assert dashboard.alerts_by_kind == [{"kind": "malware", "status": "open", "count": 1}]
    assert dashboard.last_digest is not None
    assert response.content.decode().count("<svg") == 4
    assert last_event(tenant_a, EventType.AUDIT_LOG_USED).extra == {"report": "dashboard"}


def test_dashboard_refusals(client_for, tenant_a, radiologist_a, outsider_b):
    assert client_for(radiologist_a).get(URL).status_code == 403
    assert last_event(tenant_a, EventType.ACCESS_DENIED).extra["where"] == "AuditDashboardView"
    assert client_for(outsider_b).get(URL).status_code == 404
    assert events_of(tenant_a, EventType.AUDIT_LOG_USED) == []


COMPLIANCE = "/t/north/audit/compliance/"
COMPLIANCE_PDF = "/t/north/audit/compliance.pdf"


def _sections(response) -> dict[str, dict[str, str]]:
    return {section.title: dict(section.rows) for section in response.context["sections"]}


def test_compliance_report(client_for, tenant_a, tenant_b, compliance_a, radiologist_a, admin_b, auditor_a, settings):
    from audit.tasks import audit_verification_run
    from tenants.scoping import tenant_scope

    with tenant_scope(tenant_a):
        audit_verification_run(tenant=tenant_a)
    security_alert_raise(kind="malware", summary="EICAR", event=EventType.MALWARE_DETECTED, tenant=tenant_a)
    security_alert_raise(kind="malware", summary="EICAR", event=EventType.MALWARE_DETECTED, tenant=tenant_b)

    response = client_for(compliance_a).get(COMPLIANCE)

    assert response.status_code == 200
    sections = _sections(response)
    # The compliance officer (signed in with TOTP), the radiologist and the auditor (not enrolled).
    assert sections["Multi-factor authentication"] == {
        "Current members": "3", "With an authenticator": "1 (33%)", "Without": "north-auditor, north-radiologist",
    }  # fmt: skip
    assert sections["Open security alerts"] == {"Warning": "0", "High": "1", "Critical": "0"}
    assert sections["Open incidents"] == {"Open": "0"}
    assert sections["Audit trail integrity"]["Last failed verification"] == "None"
    assert sections["Audit trail integrity"]["Last successful verification"] != "None yet"
    # What the other apps register: training, devices, encryption at rest.
    assert sections["Security training"]["Required courses"] == "0"
    assert sections["Devices holding patient data"]["Lost"] == "0"
    assert sections["Encryption at rest and replication"]["Objects without their replica copy"] == "0"
    # The public half of the digests' signing key is published on the report (never the private key).
    from audit import signing

    public = sections["Audit trail integrity"]["Digest signing key (Ed25519, public)"]
    assert public == signing.public_key_text() != ""
    assert public in response.content.decode()
    assert settings.AUDIT_SIGNING_KEY not in response.content.decode()
    verdicts = {section.title: section.ok for section in response.context["sections"]}
    assert verdicts["Multi-factor authentication"] is False
    assert verdicts["Open security alerts"] is False
    assert last_event(tenant_a, EventType.AUDIT_LOG_USED).extra == {"report": "compliance"}
    assert client_for(auditor_a).get(COMPLIANCE).status_code == 200  # an outside auditor reads the report
    assert client_for(radiologist_a).get(COMPLIANCE).status_code == 403
    assert client_for(admin_b).get(COMPLIANCE).status_code == 404


def test_compliance_report_as_pdf(client_for, tenant_a, compliance_a, radiologist_a, admin_b):
    pdf = client_for(compliance_a).get(COMPLIANCE_PDF)

    assert pdf.status_code == 200
    assert pdf["Content-Type"] == "application/pdf"
    assert pdf["Cache-Control"] == "no-store"
    assert pdf.content.startswith(b"%PDF-")
    for title in (b"Multi-factor authentication", b"Security training", b"Devices holding patient data",
                  b"Encryption at rest and replication", b"Audit trail integrity"):  # fmt: skip
        assert title in pdf.content
    assert last_event(tenant_a, EventType.AUDIT_LOG_USED).extra == {"report": "compliance", "format": "pdf"}
    assert client_for(radiologist_a).get(COMPLIANCE_PDF).status_code == 403
    assert client_for(admin_b).get(COMPLIANCE_PDF).status_code == 404


def test_the_dashboard_counts_instances_stored_not_events(client_for, tenant_a, compliance_a):
    """One INSTANCES_STORED event covers a study's instances of one ingest batch (issue 10): the day's figure is
    the instances it names."""
    record(tenant_a, EventType.INSTANCES_STORED, extra={"count": 7})
    record(tenant_a, EventType.INSTANCES_STORED, extra={"count": 5})

    response = client_for(compliance_a).get(URL)

    assert response.status_code == 200
    assert response.context["dashboard"].days[-1]["stored"] == 12
