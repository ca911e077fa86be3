"""A bearer-token DICOMweb read goes past the browser's middleware (portal.middleware.BearerReadMiddleware) and keeps
every other check; any other request, a DICOMweb read carrying a session cookie above all, gets every check it got
before."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.contrib.sessions.models import Session
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, RequestFactory, override_settings

from audit.events import EventType
from audit.models import AuditEvent
from portal import middleware
from portal.middleware import SESSION_LAST_SEEN, bearer_read
from tests.studies.dicomweb.reading import JSON

pytestmark = pytest.mark.django_db

SEARCH = "/dicomweb/north/studies"


@pytest.fixture
def timeout_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths SessionTimeoutMiddleware (one of BROWSER_MIDDLEWARE) was called for."""
    calls: list[str] = []
    original = middleware.SessionTimeoutMiddleware.__call__

    def spied(self: Any, request: Any) -> Any:
        calls.append(request.path)
        return original(self, request)

    monkeypatch.setattr(middleware.SessionTimeoutMiddleware, "__call__", spied)
    return calls


def _token_of(api: Any) -> str:
    return str(api._credentials["HTTP_AUTHORIZATION"])


def test_which_requests_are_bearer_reads() -> None:
    factory = RequestFactory()
    bearer = {"HTTP_AUTHORIZATION": "Bearer abc"}
    assert bearer_read(factory.get(SEARCH, **bearer))
    assert bearer_read(factory.head(SEARCH, **bearer))
    assert bearer_read(factory.get(SEARCH, HTTP_AUTHORIZATION="bearer abc", HTTP_COOKIE=""))  # an empty header
    assert not bearer_read(factory.post(SEARCH, **bearer))  # STOW-RS writes: every middleware
    assert not bearer_read(factory.get(SEARCH, HTTP_COOKIE="sessionid=x", **bearer))
    assert not bearer_read(factory.get(SEARCH, HTTP_COOKIE="csrftoken=x", **bearer))  # any cookie at all
    assert not bearer_read(factory.get("/api/v1/t/north/tokens/", **bearer))
    assert not bearer_read(factory.get(SEARCH))
    assert not bearer_read(factory.get(SEARCH, HTTP_AUTHORIZATION="Basic abc"))
    assert not bearer_read(factory.get(SEARCH, HTTP_AUTHORIZATION="Bearer"))
    assert not bearer_read(factory.get(SEARCH, HTTP_AUTHORIZATION="Bearer a b"))


@override_settings(DICOMWEB_CORS_ORIGINS=["https://viewer.example"])
def test_a_bearer_read_skips_the_browser_middleware_and_keeps_the_rest(
    api_client_for, tenant_a, radiologist_a, timeout_calls
):
    api = api_client_for(radiologist_a, tenant_a)
    answer = api.get(SEARCH, HTTP_ACCEPT=JSON, HTTP_ORIGIN="https://viewer.example", HTTP_X_REQUEST_ID="abcd-1234-ef")
    assert answer.status_code == 204
    assert timeout_calls == []  # the browser's middleware did not run
    assert "Cookie" not in answer.get("Vary", "")  # no session was read
    assert "Set-Cookie" not in answer
    # The middleware every request keeps: request id, security headers, CORS.
    assert answer["X-Request-ID"] == "abcd-1234-ef"
    assert answer["X-Frame-Options"] == "DENY"
    assert answer["Cache-Control"] == "no-store"
    assert answer["Content-Security-Policy"]
    assert answer["Permissions-Policy"]
    assert answer["X-Content-Type-Options"] == "nosniff"
    assert answer["Access-Control-Allow-Origin"] == "https://viewer.example"
    # The search's Query event, under the caller's name and the request's id.
    event = AuditEvent.unscoped_objects.filter(event_type=EventType.STUDIES_QUERIED).latest("sequence")
    assert (event.actor_user, event.request_id) == (radiologist_a, "abcd-1234-ef")


def test_a_bearer_read_fails_closed(api_client_for, tenant_a, tenant_b, radiologist_a, timeout_calls):
    stranger = Client(HTTP_AUTHORIZATION="Bearer not-a-token")
    answer = stranger.get(SEARCH, HTTP_ACCEPT=JSON)
    assert answer.status_code == 401
    assert b"Value" not in answer.content
    other_tenant = api_client_for(radiologist_a, tenant_a)
    assert other_tenant.get("/dicomweb/south/studies", HTTP_ACCEPT=JSON).status_code == 404
    assert timeout_calls == []


def test_a_dicomweb_read_with_a_session_gets_every_check(client_for, tenant_a, radiologist_a, timeout_calls):
    browser = client_for(radiologist_a)
    assert browser.get(SEARCH, HTTP_ACCEPT=JSON).status_code == 204
    assert timeout_calls == [SEARCH]
    session = browser.session
    session[SESSION_LAST_SEEN] = time.time() - 10_000  # past SESSION_IDLE_TIMEOUT
    session.save()

    answer = browser.get(SEARCH, HTTP_ACCEPT=JSON)
    assert answer.status_code == 401  # logged off: the request went on as anonymous
    assert not Session.objects.filter(session_key=session.session_key).exists()
    event = AuditEvent.unscoped_objects.get(event_type=EventType.SESSION_EXPIRED)
    assert (event.actor_user, event.extra) == (radiologist_a, {"reason": "idle"})


def test_a_session_cookie_beside_a_token_gets_every_check(
    client_for, api_client_for, tenant_a, radiologist_a, timeout_calls
):
    browser = client_for(radiologist_a)
    session = browser.session
    session[SESSION_LAST_SEEN] = time.time() - 10_000
    session.save()
    token = _token_of(api_client_for(radiologist_a, tenant_a))

    answer = browser.get(SEARCH, HTTP_ACCEPT=JSON, HTTP_AUTHORIZATION=token)
    assert answer.status_code == 204  # the token answers
    assert timeout_calls == [SEARCH]  # and the session was still timed out
    assert not Session.objects.filter(session_key=session.session_key).exists()
    assert AuditEvent.unscoped_objects.filter(event_type=EventType.SESSION_EXPIRED).count() == 1


def test_a_password_only_session_reads_nothing_from_dicomweb(tenant_a, radiologist_a):
    browser = Client()
    browser.force_login(radiologist_a)  # no second factor: django-otp's middleware says unverified
    answer = browser.get(SEARCH, HTTP_ACCEPT=JSON)
    assert answer.status_code == 401
    assert not AuditEvent.unscoped_objects.filter(event_type=EventType.STUDIES_QUERIED).exists()


def test_a_browser_post_still_needs_its_csrf_token(client_for, radiologist_a):
    browser = Client(enforce_csrf_checks=True)
    browser.cookies = client_for(radiologist_a).cookies
    answer = browser.post("/accounts/logout/")
    assert answer.status_code == 403  # CsrfViewMiddleware's


def test_without_the_end_of_the_browsers_middleware_nothing_is_served(settings):
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != "portal.middleware.BrowserEndMiddleware"]
    with pytest.raises(ImproperlyConfigured):
        Client(HTTP_AUTHORIZATION="Bearer abc").get(SEARCH)
