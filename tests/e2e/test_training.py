"""In the browser: a compliance officer opens the training matrix (with its charts), filters by role and approves
a self-reported completion; a radiologist whose training lapsed sees why on the study page."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from playwright.sync_api import expect

from audit.events import EventType
from tenants.models import Role
from tenants.scoping import tenant_scope
from tests.e2e.conftest import ARTIFACTS
from tests.e2e.test_upload import sign_in
from tests.studies.access_fixtures import study_make
from tests.tenants.factories import totp_device_for
from tests.training.helpers import PDF, adopt, last_event, record, require, today
from training import services
from training.models import Completion

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_officer_filters_the_matrix_and_approves_then_the_lapsed_radiologist_sees_why(
    live_server, browser, tenant_a, compliance_a, radiologist_a, technologist_a
):
    course = adopt(tenant_a, compliance_a)
    require(tenant_a, compliance_a, course, role=Role.RADIOLOGIST)
    require(tenant_a, compliance_a, course, role=Role.TECHNOLOGIST)
    record(tenant_a, compliance_a, radiologist_a, course, expires_on=today() - timedelta(days=1))
    with tenant_scope(tenant_a):
        pending = services.completion_record(actor=technologist_a, user=technologist_a, course=course,
                                             completed_on=today(), evidence=PDF)  # fmt: skip
    study = study_make(tenant_a, accession="GATE-1")

    officer = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = officer.new_page()
    page.set_default_timeout(15_000)
    sign_in(page, live_server.url, compliance_a.username, totp_device_for(compliance_a), "/t/north/training/matrix/")
    expect(page.locator("#coverage-chart svg")).to_be_visible()
    expect(page.locator("#training-matrix")).to_contain_text("north-radiologist")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "training-matrix.png"), full_page=True)
    page.locator("#matrix-filters select[name=role]").select_option("technologist")
    page.locator("#matrix-filters").get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"role=technologist"))
    expect(page.locator("#training-matrix")).not_to_contain_text("north-radiologist")
    expect(page.locator("#training-matrix")).to_contain_text("north-technologist")

    page.get_by_role("link", name="Approvals").click()
    row = page.locator(f"#pending-{pending.public_id}")
    row.locator("form").first.locator("input[name=reason]").fill("Certificate checked")
    row.get_by_role("button", name="Approve").click()
    page.wait_for_url(re.compile(r"/training/approvals/$"))
    expect(page.locator(".messages")).to_contain_text("approved")
    with tenant_scope(tenant_a):
        assert Completion.objects.get(pk=pending.pk).status == Completion.Status.APPROVED
    assert last_event(tenant_a, EventType.TRAINING_COMPLETION_APPROVED).actor_user == compliance_a
    officer.close()

    clinician = browser.new_context(viewport={"width": 1280, "height": 900})
    page = clinician.new_page()
    page.set_default_timeout(15_000)
    study_path = f"/t/north/studies/{study.public_id}/"
    sign_in(page, live_server.url, radiologist_a.username, totp_device_for(radiologist_a), study_path)
    expect(page.locator("#refusal")).to_contain_text(
        f"Training “HIPAA Security Awareness” lapsed on {(today() - timedelta(days=1)).isoformat()}"
    )
    page.screenshot(path=str(ARTIFACTS / "training-refusal.png"), full_page=True)
    page.get_by_role("link", name="Go to my training").click()
    expect(page.locator("#training-status")).to_contain_text("access blocked")
    clinician.close()
