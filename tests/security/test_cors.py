"""CSRF and CORS (SECURITY.md G7): a hostile Origin gets no CORS header on any door (pages, API, DICOMweb, sign-in,
schema), not even when an origin is allowed for DICOMweb; a cross-origin write with the victim's session cookie is
refused even when it carries a valid CSRF token, and changes nothing."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from tenants.models import ApiToken
from tenants.scoping import tenant_scope
from tests.tenants.factories import totp_device_for

pytestmark = pytest.mark.django_db

EVIL = "https://evil.example"
VIEWER = "https://viewer.example"
PATHS = [
    "/",
    "/t/north/",
    "/t/north/studies/",
    "/accounts/login/",
    "/api/v1/t/north/members/",
    "/api/v1/t/north/tokens/",
    "/api/schema/",
    "/dicomweb/north/studies",
    "/dicomweb/north/wado",
]


def _cors_headers(response) -> list[str]:
    return [name for name in response.headers if name.lower().startswith("access-control-")]


@pytest.fixture
def session_client(admin_a) -> Client:
    """A browser session of admin_a (password and TOTP) whose requests go through Django's CSRF checks."""
    from django_otp import DEVICE_ID_SESSION_KEY

    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_a)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = totp_device_for(admin_a).persistent_id
    session.save()
    return client


def test_a_hostile_origin_gets_no_cors_header_on_any_door(settings, tenant_a, admin_a, api_client_for, session_client):
    settings.DICOMWEB_CORS_ORIGINS = [VIEWER]  # an allowed viewer exists: evil still gets nothing
    bearer = api_client_for(admin_a, tenant_a)
    seen = 0
    for path in PATHS:
        for client in (bearer, session_client, Client()):
            for response in (
                client.get(path, HTTP_ORIGIN=EVIL),
                client.options(path, HTTP_ORIGIN=EVIL, HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
                               HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, content-type"),
                client.post(path, {}, HTTP_ORIGIN=EVIL),
            ):  # fmt: skip
                assert _cors_headers(response) == [], (path, response.status_code)
                seen += 1
    assert seen == len(PATHS) * 9
    # The control: the allowed viewer does get them on DICOMweb, so the check above can fail.
    allowed = bearer.get("/dicomweb/north/studies", HTTP_ORIGIN=VIEWER)
    assert allowed["Access-Control-Allow-Origin"] == VIEWER
    assert "Access-Control-Allow-Credentials" not in allowed  # cookies never cross origins


def _csrf_token(client: Client) -> str:
    page = client.get("/t/north/tokens/")
    assert page.status_code == 200
    match = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.content)
    assert match, "the page carries a CSRF token"
    return match.group(1).decode()


def test_a_cross_origin_write_with_the_session_and_its_csrf_token_is_refused(tenant_a, admin_a, session_client):
    token = _csrf_token(session_client)

    def count() -> int:
        with tenant_scope(tenant_a):
            return ApiToken.objects.count()

    before = count()
    for url, body, kwargs in (
        ("/api/v1/t/north/tokens/", '{"name": "from evil"}', {"content_type": "application/json"}),
        ("/t/north/tokens/", {"name": "from evil", "csrfmiddlewaretoken": token}, {}),
    ):
        refused = session_client.post(url, body, HTTP_ORIGIN=EVIL, HTTP_X_CSRFTOKEN=token, **kwargs)
        assert refused.status_code == 403, url
        assert _cors_headers(refused) == []
        assert count() == before

    # The same write from the portal's own origin goes through, so the refusal above is the Origin's doing.
    same = session_client.post("/api/v1/t/north/tokens/", '{"name": "from here"}', content_type="application/json",
                               HTTP_ORIGIN="http://testserver", HTTP_X_CSRFTOKEN=token)  # fmt: skip
    assert same.status_code == 201, same.content
    assert count() == before + 1
