"""A tenant admin lifts a member's sign-in lockout from the members page, as the lockout page promises."""

from __future__ import annotations

from django.test import Client

from audit.events import EventType
from tenants.models import Role
from tests.portal.accounts.flows import MFA_SETUP, password_step
from tests.tenants.helpers import last_event, membership_of

URL = "/t/north/members/"


def lock_out(username: str, settings) -> None:
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        password_step(Client(), username, f"wrong password {attempt}")
    assert password_step(Client(), username).status_code == 429


def test_admin_unlocks_a_locked_out_member(client_for, tenant_a, admin_a, make_member, settings):
    alice = make_member(tenant_a, Role.RADIOLOGIST, "alice")
    lock_out("alice", settings)
    admin = client_for(admin_a)
    unlock_url = f"{URL}{membership_of(alice, tenant_a).public_id}/unlock/"

    page = admin.get(URL).content.decode()
    assert "Sign-in locked" in page
    assert unlock_url in page

    response = admin.post(unlock_url)

    assert response.status_code == 302
    assert "alice can sign in again" in admin.get(URL).content.decode()
    assert password_step(Client(), "alice")["Location"].startswith(MFA_SETUP)
    event = last_event(tenant_a, EventType.ACCOUNT_UNLOCKED)
    assert event.actor_user == admin_a
    assert event.extra["attempts_cleared"] >= 1


def test_members_without_manage_members_cannot_unlock(client_for, tenant_a, compliance_a, make_member, settings):
    alice = make_member(tenant_a, Role.RADIOLOGIST, "alice")
    lock_out("alice", settings)

    response = client_for(compliance_a).post(f"{URL}{membership_of(alice, tenant_a).public_id}/unlock/")

    assert response.status_code == 403
    assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user == compliance_a
    assert password_step(Client(), "alice").status_code == 429


def test_another_tenants_member_cannot_be_unlocked(client_for, tenant_a, tenant_b, admin_a, outsider_b, settings):
    lock_out("south-radiologist", settings)
    south = membership_of(outsider_b, tenant_b).public_id

    other = client_for(admin_a).post(f"{URL}{south}/unlock/")
    missing = client_for(admin_a).post(f"{URL}00000000-0000-4000-8000-000000000000/unlock/")

    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content
    assert password_step(Client(), "south-radiologist").status_code == 429
