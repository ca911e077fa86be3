"""One URL, one class per HTTP method: the dispatcher keeps authentication, CSRF and error shapes intact."""

from __future__ import annotations

from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY

from tenants.models import Role
from tests.tenants.factories import totp_device_for
from tests.tenants.helpers import problem

URL = "/api/v1/t/north/members/"


def test_a_verified_browser_session_may_use_the_api(client_for, tenant_a, admin_a):
    response = client_for(admin_a).get(URL)

    assert response.status_code == 200
    assert response.json()["count"] == 1


def test_a_session_without_its_second_factor_is_401(tenant_a, admin_a):
    client = Client()
    client.force_login(admin_a)

    assert client.get(URL).status_code == 401


def test_session_writes_need_the_csrf_token(tenant_a, admin_a):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_a)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = totp_device_for(admin_a).persistent_id
    session.save()
    body = {"email": "csrf@example.org", "role": Role.RADIOLOGIST}

    response = client.post("/api/v1/t/north/invitations/", body, content_type="application/json")

    assert response.status_code == 403
    assert "CSRF" in problem(response)["detail"]


def test_a_method_no_operation_handles_is_a_405_problem(api_client_for, tenant_a, admin_a):
    client = api_client_for(admin_a, tenant_a)

    put = client.put(URL, {}, format="json")
    get_token = client.get("/api/v1/t/north/tokens/00000000-0000-4000-8000-000000000000/")

    assert put.status_code == get_token.status_code == 405
    assert problem(put)["status"] == 405


def test_a_non_member_gets_404_before_405(api_client_for, tenant_b, outsider_b):
    response = api_client_for(outsider_b, tenant_b).put(URL, {}, format="json")

    assert response.status_code == 404
