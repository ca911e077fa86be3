"""Break-glass in Debian's Chromium: a referring physician signs in (password and TOTP pages), types a study's
accession number, a reason and a fresh TOTP code, then sees the study; a compliance officer signs it off."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from audit.events import EventType
from audit.models import AuditEvent
from studies.models import BreakGlassGrant
from tenants.scoping import tenant_scope
from tests.e2e.test_upload import sign_in
from tests.studies.access_fixtures import referrer_make, study_make
from tests.tenants.factories import totp_device_for, totp_now

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def test_break_glass_then_review(live_server, browser, tenant_a, make_member, compliance_a):
    ARTIFACTS.mkdir(exist_ok=True)
    referrer = referrer_make(make_member, tenant_a)
    study = study_make(tenant_a, accession="ER-2024-17")

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    device = totp_device_for(referrer)
    sign_in(page, live_server.url, referrer.username, device, "/t/north/break-glass/")
    main = page.locator("main")
    expect(main.locator("#break-glass-warning")).to_contain_text("Only for an emergency")
    expect(main.locator("#break-glass-grants")).to_contain_text("You have not used emergency access here.")

    form = main.locator("#break-glass-form")
    form.locator("input[name=identifier]").fill("ER-2024-17")
    form.locator("textarea[name=reason]").fill("Unconscious patient in the trauma bay, prior CT needed")
    form.locator("input[name=otp_token]").fill(totp_now(device, offset_steps=1))  # the sign-in code is spent
    form.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(r"/t/north/break-glass/$"))
    expect(page.locator(".messages")).to_contain_text("Emergency access granted")
    with tenant_scope(tenant_a):
        grant = BreakGlassGrant.objects.get()
    row = main.locator(f"#grant-{grant.public_id}")
    expect(row).to_contain_text(study.patient.patient_id)
    expect(row).to_contain_text("ER-2024-17")
    expect(row).to_contain_text("Open")
    assert "ER-2024-17" not in page.url
    page.screenshot(path=str(ARTIFACTS / "break-glass.png"), full_page=True)
    context.close()

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    sign_in(page, live_server.url, compliance_a.username, totp_device_for(compliance_a), "/t/north/break-glass/review/")
    main = page.locator("main")
    card = main.locator(f"#review-{grant.public_id}")
    expect(card).to_contain_text("Unconscious patient in the trauma bay")
    card.get_by_label("Appropriate", exact=True).check()
    card.locator("textarea[name=note]").fill("Trauma team confirmed")
    card.get_by_role("button", name="Sign off").click()
    page.wait_for_url(re.compile(r"/t/north/break-glass/review/$"))
    expect(main.locator("#review-empty")).to_be_visible()
    expect(main.locator("#reviewed")).to_contain_text("Trauma team confirmed")
    page.screenshot(path=str(ARTIFACTS / "break-glass-review.png"), full_page=True)
    context.close()

    with tenant_scope(tenant_a):
        grant.refresh_from_db()
        assert grant.review == BreakGlassGrant.Review.APPROPRIATE
        assert grant.reviewed_by == compliance_a
        assert AuditEvent.objects.filter(event_type=EventType.BREAK_GLASS_STARTED, outcome=0).count() == 1
        assert AuditEvent.objects.filter(event_type=EventType.BREAK_GLASS_REVIEWED).count() == 1
