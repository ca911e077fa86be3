"""Issue 12 in Debian's Chromium: a compliance officer filters the trail by patient, opens an event, exports CSV,
acknowledges an alert, opens an incident from it and the accounting of disclosures for a patient; an outside
auditor's attempt to open a study is refused and shows on the trail; the dashboard's screenshot is kept."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from audit.events import EventType
from audit.models import AuditEvent, Incident, SecurityAlert
from audit.services import audit_event_record, security_alert_raise
from tenants.scoping import tenant_scope
from tests.studies.access_fixtures import study_make
from tests.tenants.factories import totp_device_for, totp_now

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PASSWORD = "correct horse battery staple 42"  # pragma: allowlist secret (the test users' password)


def sign_in(page, live_server, user, username: str, next_url: str) -> None:
    device = totp_device_for(user)
    page.goto(f"{live_server.url}/accounts/login/?next={next_url}")
    main = page.locator("main")
    main.locator("input[name=username]").fill(username)
    main.locator("input[name=password]").fill(PASSWORD)
    main.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(r"/accounts/mfa/"))
    main.locator("input[name=otp_token]").fill(totp_now(device))
    main.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(re.escape(next_url)))


def test_a_compliance_officer_works_the_trail_and_an_auditor_is_refused_a_study(
    live_server, browser, tenant_a, compliance_a, radiologist_a, auditor_a
):
    study = study_make(tenant_a)
    with tenant_scope(tenant_a):
        patient_id = study.patient.patient_id
        named = [{"type": "patient", "id": patient_id, "name": study.patient.name}]
        for _ in range(2):
            audit_event_record(event=EventType.INSTANCES_RETRIEVED, actor=radiologist_a, target=study,
                               participants=named)  # fmt: skip
        audit_event_record(event=EventType.INSTANCES_RETRIEVED, actor=radiologist_a,
                           participants=[{"type": "patient", "id": "SOMEONE-ELSE", "name": "OTHER^ONE"}])  # fmt: skip
        alert = security_alert_raise(kind="bulk_retrieval", summary="north-radiologist read many records",
                                     event=EventType.SECURITY_RULE_MATCHED, tenant=tenant_a,
                                     subject="north-radiologist")  # fmt: skip

    officer = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = officer.new_page()
    page.set_default_timeout(15_000)
    sign_in(page, live_server, compliance_a, "north-compliance", "/t/north/audit/")
    main = page.locator("main")

    # Filter by patient: only that patient's two reads, and the patient never reaches the address bar.
    main.get_by_label("Patient ID").fill(patient_id)
    main.get_by_role("button", name="Filter").click()
    page.wait_for_load_state()
    rows = main.locator("table.audit tbody tr")
    assert rows.count() == 2
    assert patient_id not in page.url
    # Open one event: every A.5 field, the patient among the participants.
    rows.first.locator("a").first.click()
    page.wait_for_url(re.compile(r"/t/north/audit/events/"))
    assert patient_id in main.inner_text()
    page.go_back()
    page.wait_for_load_state()
    # Export the filtered view as CSV.
    with page.expect_download() as download:
        main.get_by_role("link", name="Export CSV").click()
    csv_text = Path(download.value.path()).read_text()
    assert patient_id in csv_text
    assert "SOMEONE-ELSE" not in csv_text

    # Acknowledge the alert, then open an incident from it.
    page.goto(f"{live_server.url}/t/north/audit/alerts/{alert.public_id}/")
    main.get_by_label("Note").fill("Looking into it with the radiology lead.")
    main.get_by_role("button", name="Save").click()
    page.wait_for_load_state()
    assert "Acknowledged" in main.inner_text()
    main.get_by_label("Title (no patient data: it is mailed)").fill("Bulk reads by one account")
    main.get_by_role("button", name="Open an incident").click()
    page.wait_for_url(re.compile(r"/t/north/audit/incidents/"))
    assert "Notify each affected individual" in main.inner_text()

    # The accounting of disclosures for the patient (POSTed: nothing in the address).
    page.goto(f"{live_server.url}/t/north/audit/disclosures/")
    main.get_by_label("Patient ID").fill(patient_id)
    main.get_by_label("Include every access (reads and searches)").check()
    main.get_by_role("button", name="Show").click()
    page.wait_for_load_state()
    assert "north-radiologist" in main.inner_text()
    assert patient_id not in page.url

    # The dashboard, kept as a screenshot.
    page.goto(f"{live_server.url}/t/north/audit/dashboard/")
    assert main.locator("svg").count() == 4
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "audit-dashboard.png"), full_page=True)
    officer.close()

    # An outside auditor asks for the study's page: refused, and the refusal is on the trail.
    auditor = browser.new_context(viewport={"width": 1280, "height": 900})
    auditor_page = auditor.new_page()
    auditor_page.set_default_timeout(15_000)
    sign_in(auditor_page, live_server, auditor_a, "north-auditor", "/t/north/audit/")
    response = auditor_page.goto(f"{live_server.url}/t/north/studies/{study.public_id}/")
    assert response is not None
    assert response.status in (403, 404)
    auditor.close()

    with tenant_scope(tenant_a):
        refused = AuditEvent.objects.filter(
            actor_user=auditor_a, event_type__in=[EventType.ACCESS_DENIED, EventType.OBJECT_NOT_FOUND]
        )
        assert refused.exists()
        assert SecurityAlert.objects.get(pk=alert.pk).status == SecurityAlert.Status.ACKNOWLEDGED
        assert Incident.objects.get().alerts.get() == alert
        assert AuditEvent.objects.filter(actor_user=compliance_a, event_type=EventType.AUDIT_LOG_USED).count() >= 5
