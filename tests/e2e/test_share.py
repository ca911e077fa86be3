"""A radiologist shares a study with a referring physician in the browser; the physician opens it; the radiologist
revokes the share and it stops working at once."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from audit.events import EventType
from audit.models import AuditEvent
from studies.models import StudyShare
from tenants.scoping import tenant_scope
from tests.e2e.test_upload import sign_in
from tests.studies.access_fixtures import referrer_make, study_make
from tests.tenants.factories import totp_device_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _context(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    return context, page


def test_share_open_and_revoke(live_server, browser, tenant_a, radiologist_a, make_member, client_for):
    referrer = referrer_make(make_member, tenant_a)
    study = study_make(tenant_a, accession="SHARE-1", referring_key="ROE^RICHARD")  # not naming the referrer
    study_path = f"/t/north/studies/{study.public_id}/"

    # The referring physician (a signed-in session with both factors) cannot open it yet: the same 404 as a
    # study that does not exist.
    physician = client_for(referrer)
    assert physician.get(study_path).status_code == 404

    # The radiologist shares it from the study's access page.
    sharer, page = _context(browser)
    sign_in(page, live_server.url, radiologist_a.username, totp_device_for(radiologist_a), study_path)
    page.locator("main").get_by_role("link", name=re.compile("Share", re.I)).first.click()
    page.wait_for_url(re.compile(r"/access/$"))
    form = page.locator("#share-member")
    form.locator("select[name=grantee]").select_option(referrer.username)
    form.locator("input[name=note]").fill("Please review before the clinic")
    form.get_by_role("button", name="Share").click()
    page.wait_for_load_state()
    with tenant_scope(tenant_a):
        share = StudyShare.objects.get(study=study, grantee=referrer)
    expect(page.locator(f"#share-{share.public_id}")).to_be_visible()

    # The referring physician now opens the study page.
    opened = physician.get(study_path)
    assert opened.status_code == 200
    assert b"SHARE-1" in opened.content

    # Revoked in the browser: the physician's very next request is a 404.
    page.locator(f"#share-{share.public_id}").get_by_role("button", name="Revoke").click()
    page.wait_for_load_state()
    expect(page.locator(".messages")).to_be_visible()
    assert physician.get(study_path).status_code == 404
    sharer.close()

    with tenant_scope(tenant_a):
        shared = AuditEvent.objects.get(event_type=EventType.STUDY_SHARED)
        revoked = AuditEvent.objects.get(event_type=EventType.SHARE_REVOKED)
    assert shared.actor_user == radiologist_a
    assert revoked.actor_user == radiologist_a
