"""TOTP enrolment on first sign-in, the code check after, reuse refused, backup codes, lockout on wrong codes."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.test import Client
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.events import EventType, Outcome
from audit.models import AuditEvent
from tests.portal.accounts.flows import (
    MFA,
    MFA_SETUP,
    backup_codes_on_page,
    code_for_secret,
    enrol,
    password_step,
    secret_on_page,
    wrong_code,
)
from tests.tenants.factories import totp_device_for, totp_now

pytestmark = pytest.mark.django_db


def events(user, event: EventType):
    return AuditEvent.unscoped_objects.filter(actor_user=user, event_type=event)


def test_first_sign_in_enrols_then_second_sign_in_asks_for_a_code(tenant_a, radiologist_a, settings):
    client = Client()
    response = password_step(client, "north-radiologist", next_url="/t/north/")
    assert response.status_code == 302
    assert response["Location"] == f"{MFA_SETUP}?next=%2Ft%2Fnorth%2F"

    page = client.get(response["Location"])
    assert page.status_code == 200
    secret = secret_on_page(page.content)
    device = TOTPDevice.objects.get(user=radiologist_a, confirmed=False)
    assert secret == base64.b32encode(device.bin_key).decode().rstrip("=")
    assert b'src="data:image/svg+xml;base64,' in page.content  # the QR code, made here, no outside service
    assert b'style="' not in page.content
    assert b"<script>" not in page.content
    assert client.get(page.request["PATH_INFO"]).content.count(secret.encode()) == 1  # a reload keeps the key

    done = client.post(MFA_SETUP, {"otp_token": code_for_secret(secret), "next": "/t/north/"})
    assert done.status_code == 200
    codes = backup_codes_on_page(done.content)
    assert len(codes) == settings.MFA_BACKUP_CODE_COUNT == len(set(codes))
    assert b'href="/t/north/"' in done.content
    device.refresh_from_db()
    assert device.confirmed
    assert client.get("/t/north/").status_code == 200
    assert client.get("/api/schema/").status_code == 200
    assert events(radiologist_a, EventType.MFA_ENROLLED).filter(tenant=tenant_a).count() == 1
    assert events(radiologist_a, EventType.LOGIN_SUCCEEDED).count() == 1

    second = Client()
    response = password_step(second, "north-radiologist")
    assert response["Location"] == f"{MFA}?next=%2F"
    assert second.get(MFA_SETUP)["Location"].startswith(MFA)  # enrolled: no second enrolment
    response = second.post(MFA, {"otp_token": totp_now(device, offset_steps=1), "next": "/t/north/"})
    assert response.status_code == 302
    assert response["Location"] == "/t/north/"
    assert second.get("/t/north/").status_code == 200
    success = events(radiologist_a, EventType.LOGIN_SUCCEEDED).latest("id")
    assert success.extra == {"factor": "totp"}
    assert success.event_id == "110114"
    assert success.outcome == Outcome.SUCCESS


def test_password_only_session_reaches_no_tenant_page_and_no_api(tenant_a, radiologist_a):
    client = Client()
    password_step(client, "north-radiologist")
    response = client.get("/t/north/")
    assert response.status_code == 302
    assert response["Location"].startswith(MFA)
    assert client.get("/api/schema/").status_code in (401, 403)
    assert client.get("/api/v1/t/north/members/").status_code >= 400


def test_enrolment_refuses_a_wrong_code_and_is_only_for_people_without_an_authenticator(tenant_a, radiologist_a):
    anonymous = Client()
    assert anonymous.get(MFA_SETUP)["Location"].startswith("/accounts/login/")
    client = Client()
    password_step(client, "north-radiologist")
    client.get(MFA_SETUP)
    device = TOTPDevice.objects.get(user=radiologist_a, confirmed=False)
    response = client.post(MFA_SETUP, {"otp_token": wrong_code(device)})
    assert response.status_code == 200
    assert b"That code is not right" in response.content
    assert not TOTPDevice.objects.filter(user=radiologist_a, confirmed=True).exists()
    assert client.get("/t/north/")["Location"].startswith(MFA)


def test_a_verified_person_cannot_enrol_again(tenant_a, radiologist_a, client_for):
    client = client_for(radiologist_a)
    response = client.get(MFA_SETUP)
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert TOTPDevice.objects.filter(user=radiologist_a).count() == 1


def test_a_code_is_refused_the_second_time(tenant_a, radiologist_a):
    device = totp_device_for(radiologist_a)
    code = totp_now(device)
    first = Client()
    password_step(first, "north-radiologist")
    assert first.post(MFA, {"otp_token": code})["Location"] == "/"

    second = Client()
    password_step(second, "north-radiologist")
    response = second.post(MFA, {"otp_token": code})
    assert response.status_code == 200
    assert b"already used" in response.content
    assert second.get("/t/north/")["Location"].startswith(MFA)
    failed = events(radiologist_a, EventType.MFA_FAILED).get()
    assert failed.outcome == Outcome.MINOR_FAILURE
    assert failed.tenant == tenant_a

    # django-otp makes the next try wait after a wrong code, even with a right one ...
    fresh = totp_now(device, offset_steps=1)
    response = second.post(MFA, {"otp_token": fresh})
    assert b"wait" in response.content
    # ... and takes it once the wait is over.
    device.refresh_from_db()
    device.throttling_failure_timestamp -= timedelta(seconds=5)
    device.save(update_fields=["throttling_failure_timestamp"])
    assert second.post(MFA, {"otp_token": fresh})["Location"] == "/"


def test_a_backup_code_works_once(tenant_a, radiologist_a):
    codes = enrol(Client(), "north-radiologist")
    code = codes[3]

    client = Client()
    password_step(client, "north-radiologist")
    response = client.post(MFA, {"otp_token": code.upper(), "next": "/t/north/"}, follow=True)
    assert response.redirect_chain[0][0] == "/t/north/"
    assert b"backup code" in response.content
    assert f"{len(codes) - 1} left".encode() in response.content
    assert events(radiologist_a, EventType.LOGIN_SUCCEEDED).latest("id").extra["factor"] == "backup_code"
    assert not StaticToken.objects.filter(token=code).exists()

    again = Client()
    password_step(again, "north-radiologist")
    response = again.post(MFA, {"otp_token": code})
    assert response.status_code == 200
    assert again.get("/t/north/")["Location"].startswith(MFA)


def test_five_wrong_codes_sign_the_person_out_and_lock_them_out(tenant_a, radiologist_a, settings):
    device = totp_device_for(radiologist_a)
    client = Client()
    password_step(client, "north-radiologist")
    bad = wrong_code(device)
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert client.post(MFA, {"otp_token": bad}).status_code == 200
    response = client.post(MFA, {"otp_token": bad})
    assert response.status_code == 429
    assert b"Too many failed attempts" in response.content

    assert client.get("/t/north/")["Location"].startswith("/accounts/login/")  # signed out
    assert events(radiologist_a, EventType.MFA_FAILED).count() == settings.AXES_FAILURE_LIMIT
    assert events(radiologist_a, EventType.LOCKED_OUT).count() == 1
    # the right password does not help during the cool-off
    assert password_step(Client(), "north-radiologist").status_code == 429
    assert events(radiologist_a, EventType.LOCKED_OUT).count() == 1
    # the codes tried are not kept in axes' records
    assert bad not in "".join(AccessAttempt.objects.values_list("post_data", flat=True))


def test_mfa_page_needs_the_password_step_first(db):
    response = Client().get(MFA + "?next=/t/north/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=%2Ft%2Fnorth%2F"
