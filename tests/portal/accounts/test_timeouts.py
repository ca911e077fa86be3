"""Automatic logoff (HIPAA 164.312(a)(2)(iii)): idle and absolute limits, on the audit trail, and said on the
sign-in page."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.contrib.sessions.models import Session
from django.test import Client, override_settings

from audit.events import EventType
from audit.models import AuditEvent
from portal.middleware import SESSION_AUTH_AT, SESSION_LAST_SEEN
from tests.portal.accounts.flows import LOGIN, MFA, password_step
from tests.tenants.factories import totp_device_for, totp_now

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    device = totp_device_for(user)
    client = Client()
    password_step(client, user.username)
    assert client.post(MFA, {"otp_token": totp_now(device)}).status_code == 302
    assert client.get("/t/north/").status_code == 200
    return client


def age(client: Client, key: str, seconds: float) -> str:
    session = client.session
    session[key] = time.time() - seconds
    session.save()
    return session.session_key


@override_settings(SESSION_IDLE_TIMEOUT=timedelta(seconds=1))
def test_idle_session_is_ended_and_the_login_page_says_why(tenant_a, radiologist_a):
    client = signed_in(radiologist_a)
    old_key = age(client, SESSION_LAST_SEEN, 5)

    response = client.get("/t/north/")
    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN}?next=/t/north/"
    assert not Session.objects.filter(session_key=old_key).exists()
    event = AuditEvent.unscoped_objects.get(event_type=EventType.SESSION_EXPIRED)
    assert event.actor_user == radiologist_a
    assert event.tenant == tenant_a
    assert event.extra == {"reason": "idle"}

    page = client.get(response["Location"])
    assert b"You were signed out after 1 second without activity" in page.content
    assert b"without activity" not in client.get(LOGIN).content  # said once


def test_idle_message_uses_the_configured_minutes(tenant_a, radiologist_a):
    client = signed_in(radiologist_a)
    age(client, SESSION_LAST_SEEN, django_settings.SESSION_IDLE_TIMEOUT.total_seconds() + 1)
    client.get("/t/north/")
    assert b"after 15 minutes without activity" in client.get(LOGIN).content


@override_settings(SESSION_ABSOLUTE_TIMEOUT=timedelta(seconds=2))
def test_absolute_limit_ends_even_an_active_session(tenant_a, radiologist_a):
    client = signed_in(radiologist_a)
    old_key = age(client, SESSION_AUTH_AT, 10)  # signed in long ago, active a moment ago

    response = client.get("/t/north/")
    assert response["Location"].startswith(LOGIN)
    assert not Session.objects.filter(session_key=old_key).exists()
    assert AuditEvent.unscoped_objects.get(event_type=EventType.SESSION_EXPIRED).extra == {"reason": "absolute"}
    assert client.get("/api/schema/").status_code in (401, 403)
    assert b"a session lasts at most 2 seconds" in client.get(LOGIN).content


@override_settings(SESSION_IDLE_TIMEOUT=timedelta(seconds=1))
def test_the_timer_logout_is_a_logout_event_with_the_node_as_requestor(tenant_a, radiologist_a):
    """SECURITY.md A3: the timer logout writes Audit(110114 User Authentication, type 110123 Logout), the person
    signed out as the subject and the node (not the person) as the one that acted, once."""
    client = signed_in(radiologist_a)
    age(client, SESSION_LAST_SEEN, 5)
    before = AuditEvent.unscoped_objects.count()

    assert client.get("/t/north/").status_code == 302

    [event] = AuditEvent.unscoped_objects.filter(event_type=EventType.SESSION_EXPIRED)
    assert (event.event_id, event.event_id_display) == ("110114", "User Authentication")
    assert (event.event_type_code, event.event_type_display) == ("110123", "Logout")
    assert event.outcome == 0
    assert event.system_principal == "enclave:session-timeout"
    assert event.actor_user == radiologist_a
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert AuditEvent.unscoped_objects.count() == before + 1
    client.get("/t/north/")  # the next request is anonymous: no second logout
    assert AuditEvent.unscoped_objects.filter(event_type=EventType.SESSION_EXPIRED).count() == 1
