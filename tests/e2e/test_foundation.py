"""A tenant administrator's first day, in Debian's Chromium: sign in, enrol an authenticator, manage members,
read the audit trail. Everything through the real pages of the live server."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from django_otp.oath import TOTP

from audit.events import EventType
from audit.models import AuditEvent
from tenants.models import Invitation, Membership, Role
from tenants.scoping import tenant_scope
from tests.chains import chain_of
from tests.tenants.factories import DEFAULT_PASSWORD

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _code_for(secret: str) -> str:
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    return f"{TOTP(key).token():06d}"


def test_admin_signs_in_enrols_manages_members_and_reads_the_audit_trail(
    live_server, page, tenant_a, admin_a, radiologist_a
):
    ARTIFACTS.mkdir(exist_ok=True)
    main = page.locator("main")

    # Password first; no authenticator yet, so the portal asks to set one up.
    page.goto(f"{live_server.url}/t/north/members/")
    assert "/accounts/login/" in page.url
    main.locator("input[name=username]").fill("north-admin")
    main.locator("input[name=password]").fill(DEFAULT_PASSWORD)
    main.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(r"/accounts/mfa/setup/"))
    assert page.locator("img[alt*='QR'], svg").first.is_visible()
    secret = page.locator("#totp-secret").inner_text().strip().replace(" ", "")
    page.screenshot(path=str(ARTIFACTS / "foundation-enrol.png"), full_page=True)

    # A wrong code is refused with a message; the right one enrols and shows the backup codes once.
    main.locator("input[name=otp_token]").fill("000000" if _code_for(secret) != "000000" else "111111")
    main.locator("button[type=submit]").click()
    assert main.locator(".errorlist").first.is_visible()
    page.wait_for_timeout(1500)  # django-otp throttles the next try after a failure: 1 s, then doubling
    main.locator("input[name=otp_token]").fill(_code_for(secret))
    main.locator("button[type=submit]").click()
    codes = page.locator("#backup-codes li")
    codes.first.wait_for()
    assert codes.count() == 10
    main.get_by_role("link", name=re.compile("continue", re.I)).click()

    # Back where they were going: the members page.
    page.wait_for_url(re.compile(r"/t/north/members/"))
    assert main.get_by_role("cell", name="north-radiologist", exact=True).is_visible()

    # Invite a technologist: the invitation is queued; nobody joins before accepting it.
    form = page.locator("#add-member")
    form.locator("input[name=email]").fill("newtech@example.org")
    form.locator("select[name=role]").select_option(Role.TECHNOLOGIST)
    form.locator("button[type=submit]").click()
    page.wait_for_load_state()
    assert "is queued for sending" in main.locator(".messages").first.inner_text()
    with tenant_scope(tenant_a):
        invited = Invitation.objects.get(email="newtech@example.org")
        assert not Membership.objects.filter(user__email="newtech@example.org").exists()
    assert invited.role == Role.TECHNOLOGIST

    # Make the radiologist a technologist, in that member's row.
    with tenant_scope(tenant_a):
        radiologist = Membership.objects.get(user=radiologist_a)
    row = page.locator(f"#member-{radiologist.public_id}")
    row.get_by_text("Manage").click()
    row.locator("select[name=role]").select_option(Role.TECHNOLOGIST)
    row.get_by_role("button", name="Change role").click()
    page.wait_for_load_state()
    with tenant_scope(tenant_a):
        assert Membership.objects.get(user=radiologist_a).role == Role.TECHNOLOGIST
    page.screenshot(path=str(ARTIFACTS / "foundation-members.png"), full_page=True)

    # The audit trail shows all of it, newest first, and opening it is itself recorded.
    page.locator("header").get_by_role("link", name="Audit").click()
    page.wait_for_url(re.compile(r"/t/north/audit/"))
    text = main.locator("table").first.inner_text()
    sent = EventType.INVITATION_SENT.spec.description
    for words in (sent, "Role changed", "Signed in with password and MFA", "Enrolled an authenticator"):
        assert words in text, words
    assert text.index("Role changed") < text.index(sent)  # newest first
    page.screenshot(path=str(ARTIFACTS / "foundation-audit.png"), full_page=True)
    with tenant_scope(tenant_a):
        assert AuditEvent.objects.filter(event_type=EventType.AUDIT_LOG_USED, actor_user=admin_a).exists()
        # Every event of the session kept the chain whole.
        from audit.selectors import audit_chain_verify

        assert audit_chain_verify(chain=chain_of(tenant_a)).ok
