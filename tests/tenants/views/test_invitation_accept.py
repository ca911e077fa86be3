"""The invitation link through HTTP: a new person creates an account and enrols TOTP; an existing account accepts
after signing in with it; a link works once, and not after it expired or was withdrawn."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import urlparse

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone

from audit.events import EventType
from tenants.models import Invitation, Membership, Role, User
from tenants.scoping import tenant_scope
from tests.portal.accounts.flows import MFA, MFA_SETUP, code_for_secret, password_step, secret_on_page
from tests.tenants.factories import totp_device_for, totp_now
from tests.tenants.helpers import events, last_event, membership_of

NEW_PASSWORD = "pale orange lantern over quiet harbour"
ACCEPT = "/invitations/accept/"


def invite(client_for, admin, email, role=Role.RADIOLOGIST, capture=None) -> str:
    """The administrator invites `email` from the members page; returns the path of the link in the e-mail."""
    with capture(execute=True):
        response = client_for(admin).post("/t/north/members/invite/", {"email": email, "role": role})
    assert response.status_code == 302
    url = re.search(r"https?://\S+/invitations/inv_\S+/", mail.outbox[-1].body).group(0)
    return urlparse(url).path


@pytest.fixture
def south_referrer(make_member, tenant_b):
    return make_member(tenant_b, Role.REFERRING_PHYSICIAN, "south-referrer")


def test_a_new_person_creates_an_account_then_enrols_totp(
    client_for, tenant_a, admin_a, django_capture_on_commit_callbacks
):
    link = invite(client_for, admin_a, "dana@example.org", capture=django_capture_on_commit_callbacks)
    browser = Client()

    opened = browser.get(link)
    assert opened.status_code == 302
    assert opened["Location"] == ACCEPT  # the token leaves the URL
    page = browser.get(ACCEPT)
    assert page.status_code == 200
    assert "Join North Hospital Group" in page.content.decode()
    assert "radiologist" in page.content.decode()

    mismatch = browser.post(
        ACCEPT, {"action": "create", "username": "dana", "password1": NEW_PASSWORD, "password2": "other"}
    )
    weak = browser.post(ACCEPT, {"action": "create", "username": "dana", "password1": "dana", "password2": "dana"})
    taken = browser.post(
        ACCEPT,
        {"action": "create", "username": "North-Admin", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD},
    )
    assert mismatch.status_code == weak.status_code == taken.status_code == 400
    assert not User.objects.filter(username="dana").exists()

    created = browser.post(
        ACCEPT, {"action": "create", "username": "dana", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD}
    )
    assert created.status_code == 302
    assert created["Location"].startswith("/accounts/login/")
    dana = User.objects.get(username="dana")
    assert dana.email == "dana@example.org"
    assert membership_of(dana, tenant_a).role == Role.RADIOLOGIST
    event = last_event(tenant_a, EventType.INVITATION_ACCEPTED)
    assert event.actor_user == dana
    assert event.extra["new_account"] is True

    # then the first sign-in, as today: password, then enrol an authenticator
    signin = Client()
    step = password_step(signin, "dana", NEW_PASSWORD, next_url="/t/north/")
    assert step["Location"].startswith(MFA_SETUP)
    setup = signin.get(step["Location"])
    done = signin.post(MFA_SETUP, {"otp_token": code_for_secret(secret_on_page(setup.content)), "next": "/t/north/"})
    assert done.status_code == 200
    assert signin.get("/t/north/").status_code == 200

    assert browser.get(link).status_code == 400  # single use


def test_an_existing_account_accepts_after_signing_in_with_it(
    client_for, tenant_a, tenant_b, admin_a, south_referrer, django_capture_on_commit_callbacks
):
    link = invite(
        client_for, admin_a, south_referrer.email, role=Role.TECHNOLOGIST, capture=django_capture_on_commit_callbacks
    )
    with tenant_scope(tenant_a):
        assert not Membership.objects.filter(user=south_referrer).exists()  # not before accepting

    anonymous = Client()
    anonymous.get(link)
    asked = anonymous.post(ACCEPT, {"action": "accept"})
    assert asked.status_code == 302
    assert asked["Location"].startswith("/accounts/login/")
    with tenant_scope(tenant_a):
        assert not Membership.objects.filter(user=south_referrer).exists()

    browser = client_for(south_referrer)
    assert browser.get(link).status_code == 302
    page = browser.get(ACCEPT).content.decode()
    assert "Accept as south-referrer" in page
    accepted = browser.post(ACCEPT, {"action": "accept"})

    assert accepted.status_code == 302
    assert accepted["Location"] == "/t/north/"
    assert membership_of(south_referrer, tenant_a).role == Role.TECHNOLOGIST
    assert browser.get("/t/north/").status_code == 200
    assert browser.get("/t/south/").status_code == 200
    event = last_event(tenant_a, EventType.INVITATION_ACCEPTED)
    assert event.actor_user == south_referrer
    assert event.extra["new_account"] is False
    assert events(tenant_b, EventType.INVITATION_ACCEPTED) == []
    assert client_for(south_referrer).get(link).status_code == 400  # used


def test_expired_withdrawn_and_forged_links_are_refused(
    client_for, tenant_a, admin_a, radiologist_a, django_capture_on_commit_callbacks
):
    expired = invite(client_for, admin_a, "late@example.org", capture=django_capture_on_commit_callbacks)
    withdrawn = invite(client_for, admin_a, "gone@example.org", capture=django_capture_on_commit_callbacks)
    with tenant_scope(tenant_a):
        Invitation.objects.filter(email="late@example.org").update(expires_at=timezone.now() - timedelta(minutes=1))
        gone = Invitation.objects.get(email="gone@example.org")
    assert client_for(admin_a).post(f"/t/north/members/invitations/{gone.public_id}/revoke/").status_code == 302

    for path in (expired, withdrawn, "/invitations/inv_forged-token/"):
        response = client_for(radiologist_a).get(path)
        assert response.status_code == 400
        assert "not valid" in response.content.decode()
    assert Client().get(ACCEPT).status_code == 400  # nothing in the session
    assert last_event(tenant_a, EventType.INVITATION_REVOKED).actor_user == admin_a


def test_a_current_member_cannot_accept_twice_into_the_same_tenant(
    client_for, tenant_a, admin_a, radiologist_a, django_capture_on_commit_callbacks
):
    link = invite(client_for, admin_a, radiologist_a.email, capture=django_capture_on_commit_callbacks)
    browser = client_for(radiologist_a)
    browser.get(link)
    refused = browser.post(ACCEPT, {"action": "accept"})

    assert refused.status_code == 400
    assert "already a member" in refused.content.decode()
    assert events(tenant_a, EventType.INVITATION_ACCEPTED) == []


def test_signing_in_from_the_invitation_comes_back_to_it(
    client_for, tenant_a, admin_a, south_referrer, django_capture_on_commit_callbacks
):
    link = invite(client_for, admin_a, south_referrer.email, capture=django_capture_on_commit_callbacks)
    device = totp_device_for(south_referrer)
    browser = Client()
    browser.get(link)

    step = password_step(browser, "south-referrer", next_url=ACCEPT)
    assert step["Location"].startswith(MFA)
    verified = browser.post(MFA, {"otp_token": totp_now(device), "next": ACCEPT})
    assert verified["Location"] == ACCEPT
    assert "Accept as south-referrer" in browser.get(ACCEPT).content.decode()  # the invitation survived sign-in
    assert browser.post(ACCEPT, {"action": "accept"})["Location"] == "/t/north/"
    assert membership_of(south_referrer, tenant_a).is_current()
