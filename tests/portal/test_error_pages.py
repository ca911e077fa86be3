"""With DEBUG off (make run, production), 403, 404 and 500 are pages in the site's look, with its navigation, and
say nothing of the request."""

from __future__ import annotations

import pytest
from django.test import RequestFactory
from django.utils.html import escape

from portal.errors import server_error

pytestmark = pytest.mark.django_db


def test_404_is_the_styled_page_with_the_navigation(client_for, radiologist_a, technologist_a):
    answer = client_for(radiologist_a).get("/no/such/page/")
    assert answer.status_code == 404
    html = answer.content.decode()
    assert 'class="topbar"' in html
    assert escape(radiologist_a.get_full_name()) not in html  # the same page whoever asks
    assert "Your organisations" in html
    assert "Not found" in html
    assert 'class="error-page"' in html
    assert "/no/such/page/" not in html
    # The same bytes every time (no per-render token): another tenant's object answers exactly like a missing one.
    assert client_for(radiologist_a).get("/t/nowhere/").content == answer.content
    assert client_for(technologist_a).get("/t/nowhere/").content == answer.content


def test_403_is_the_styled_page_with_the_navigation(client_for, tenant_a, admin_a, radiologist_a):
    answer = client_for(radiologist_a).get("/t/north/members/")  # the tenant admin's page
    assert answer.status_code == 403
    html = answer.content.decode()
    assert 'class="topbar"' in html
    assert escape(radiologist_a.get_full_name()) in html
    assert "Not allowed" in html
    assert 'class="error-page"' in html


def test_500_renders_with_the_request_and_without_it(radiologist_a):
    request = RequestFactory().get("/t/north/studies/")
    request.user = radiologist_a
    answer = server_error(request)
    assert answer.status_code == 500
    html = answer.content.decode()
    assert "Something went wrong" in html
    assert 'class="topbar"' in html

    class BrokenUser:  # what a failed session or database looks like from the template
        @property
        def is_authenticated(self) -> bool:
            raise RuntimeError("the database is down")

    request.user = BrokenUser()
    answer = server_error(request)
    assert answer.status_code == 500
    assert "Something went wrong" in answer.content.decode()


def test_an_unexpected_error_answers_the_500_page(client_for, radiologist_a, settings):
    """Through the whole stack: a view that raises gets the 500 page (the test client re-raises by default)."""
    from django.test import Client

    client = client_for(radiologist_a)
    quiet = Client(raise_request_exception=False)
    quiet.cookies = client.cookies
    settings.ROOT_URLCONF = "tests.portal.urls_raising"
    answer = quiet.get("/boom/")
    assert answer.status_code == 500
    html = answer.content.decode()
    assert "Something went wrong" in html
    assert escape(radiologist_a.get_full_name()) in html
    assert "Traceback" not in html
    assert "the secret detail" not in html


def test_a_forced_500_under_production_switches_says_nothing_and_keeps_the_headers(settings):
    """DEBUG off with production's HTTPS switches: the 500 page names no exception, path, file or version, and
    carries the same strict headers as any page (CSP without unsafe-inline, frame-ancestors none, nosniff)."""
    from django.test import Client

    settings.ROOT_URLCONF = "tests.portal.urls_raising"
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 31536000
    answer = Client(raise_request_exception=False).get("/boom/", secure=True)
    assert answer.status_code == 500
    html = answer.content.decode()
    for detail in ("the secret detail", "RuntimeError", "Traceback", "urls_raising", "/work/", "Django", "Python"):
        assert detail not in html, detail
    csp = answer["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert answer["X-Content-Type-Options"] == "nosniff"
    assert answer["X-Frame-Options"] == "DENY"
    assert answer["Referrer-Policy"] == "same-origin"
    assert answer["Cache-Control"] == "no-store"
    assert answer["Strict-Transport-Security"].startswith("max-age=31536000")
    assert "Server" not in answer
