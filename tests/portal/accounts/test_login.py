"""The password step: where it leads, `next`, lockout per (user name, address), audit of refusals, sessions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.conf import settings as django_settings
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from audit.events import EventType, Outcome
from audit.models import AuditEvent
from tenants.models import Role, UserSession
from tests.portal.accounts.flows import LOGIN, LOGOUT, MFA, MFA_SETUP, password_step
from tests.tenants.factories import totp_device_for, totp_now

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(tenant_a, make_member):
    return make_member(tenant_a, Role.RADIOLOGIST, "alice")


@pytest.fixture
def bob(tenant_a, make_member):
    return make_member(tenant_a, Role.RADIOLOGIST, "bob")


def test_login_page_is_plain_html(db):
    response = Client().get(LOGIN)
    assert response.status_code == 200
    assert b'name="username"' in response.content
    assert b'name="password"' in response.content
    assert b'style="' not in response.content


def test_password_leads_to_enrolment_or_to_the_code_check(alice, bob):
    totp_device_for(bob)
    assert password_step(Client(), "alice")["Location"] == f"{MFA_SETUP}?next=%2F"
    assert password_step(Client(), "bob")["Location"] == f"{MFA}?next=%2F"
    assert password_step(Client(), "ALICE")["Location"].startswith(MFA_SETUP)  # user names ignore case


@pytest.mark.parametrize(
    ("asked", "kept"),
    [
        ("/t/north/audit/?page=2", "%2Ft%2Fnorth%2Faudit%2F%3Fpage%3D2"),
        ("https://evil.example/", "%2F"),
        ("//evil.example/", "%2F"),
        ("/\\evil.example/", "%2F"),
        ("javascript:alert(1)", "%2F"),
    ],
)
def test_next_is_kept_only_when_it_is_a_path_of_this_site(alice, asked, kept):
    response = password_step(Client(), "alice", next_url=asked)
    assert response["Location"] == f"{MFA_SETUP}?next={kept}"


def test_wrong_password_is_refused_and_audited_without_the_password(alice, tenant_a):
    response = password_step(Client(), "alice", "not the password at all")
    assert response.status_code == 200
    assert b"The user name or password is not right." in response.content
    event = AuditEvent.unscoped_objects.get(event_type=EventType.LOGIN_FAILED)
    assert event.tenant == tenant_a
    assert event.actor_user == alice
    assert event.outcome == Outcome.MINOR_FAILURE
    assert event.source_address == "127.0.0.1"

    password_step(Client(), "nobody-here", "secret guess 123")
    unknown = AuditEvent.unscoped_objects.filter(event_type=EventType.LOGIN_FAILED).latest("id")
    assert unknown.tenant is None  # the platform chain
    assert unknown.actor_user is None
    assert unknown.actor_username == "nobody-here"
    for row in AuditEvent.unscoped_objects.all():
        assert "not the password" not in str(row.__dict__)
        assert "secret guess" not in str(row.__dict__)


def test_five_bad_passwords_lock_alice_from_that_address_but_not_bob(alice, bob, settings):
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        response = password_step(Client(), "alice", f"wrong password {attempt}")
    assert response.status_code == 429  # the attempt that reaches the limit already says so

    locked = password_step(Client(), "alice")  # the right password
    assert locked.status_code == 429
    assert b"Too many failed attempts" in locked.content
    assert b"try again in 30 minutes" in locked.content.lower()
    assert b"ask an administrator" in locked.content
    assert locked["Retry-After"] == "1800"

    assert password_step(Client(), "bob")["Location"].startswith(MFA_SETUP)  # shared hospital address

    lockouts = AuditEvent.unscoped_objects.filter(event_type=EventType.LOCKED_OUT)
    assert lockouts.count() == 1
    assert lockouts.get().actor_user == alice
    assert lockouts.get().event_id == "110113"
    failures = AuditEvent.unscoped_objects.filter(event_type=EventType.LOGIN_FAILED, actor_user=alice)
    assert failures.count() == settings.AXES_FAILURE_LIMIT + 1
    assert set(failures.values_list("outcome", flat=True)) == {Outcome.MINOR_FAILURE}
    assert failures.latest("id").outcome_description.startswith("refused: locked out")

    # after the cool-off, alice signs in again
    AccessAttempt.objects.filter(username="alice").update(attempt_time=timezone.now() - timedelta(minutes=31))
    assert password_step(Client(), "alice")["Location"].startswith(MFA_SETUP)


def test_changing_the_case_of_the_user_name_buys_no_extra_attempts(alice, settings):
    for attempt, name in enumerate(["alice", "Alice", "ALICE", "aLice", "alicE"][: settings.AXES_FAILURE_LIMIT]):
        password_step(Client(), name, f"wrong password {attempt}")
    assert password_step(Client(), "alice").status_code == 429


def test_the_session_key_changes_at_sign_in_and_the_old_cookie_is_anonymous_after_sign_out(alice, tenant_a):
    device = totp_device_for(alice)
    client = Client()
    anonymous = client.session
    anonymous["probe"] = 1
    anonymous.save()
    before = client.cookies[django_settings.SESSION_COOKIE_NAME].value

    password_step(client, "alice")
    after = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    assert after != before
    assert not Session.objects.filter(session_key=before).exists()
    assert UserSession.objects.filter(session_key=after, user=alice).exists()
    client.post(MFA, {"otp_token": totp_now(device)})
    assert client.get("/t/north/").status_code == 200

    assert client.get(LOGOUT).status_code == 405  # sign-out is a POST (base.html's button)
    response = client.post(LOGOUT, follow=True)
    assert response.redirect_chain[-1][0] == LOGIN
    assert b"You have signed out." in response.content
    assert not Session.objects.filter(session_key=after).exists()
    logout = AuditEvent.unscoped_objects.get(event_type=EventType.LOGOUT)
    assert logout.actor_user == alice
    assert logout.tenant == tenant_a
    assert logout.event_type_code == "110123"

    replay = Client()
    replay.cookies[django_settings.SESSION_COOKIE_NAME] = after
    response = replay.get("/t/north/")
    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN)
    assert replay.get("/api/schema/").status_code in (401, 403)


def test_a_signed_in_person_is_sent_on_from_the_login_page(radiologist_a, client_for):
    response = client_for(radiologist_a).get(LOGIN + "?next=/t/north/")
    assert response.status_code == 302
    assert response["Location"] == "/t/north/"
