"""`/api/docs/` renders Swagger UI under the site's CSP, which allows no inline script or style: the assets come
from drf-spectacular-sidecar through our static files, the start script from `?script`."""

from __future__ import annotations

import re

import pytest

from tests.e2e.test_upload import sign_in
from tests.tenants.factories import totp_device_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)


def test_the_docs_page_has_no_inline_code_and_its_csp_no_unsafe_inline(client_for, admin_a):
    client = client_for(admin_a)
    page = client.get("/api/docs/")
    assert page.status_code == 200
    csp = page["Content-Security-Policy"]
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert "script-src 'self'" in csp
    html = page.content.decode()
    assert not INLINE_SCRIPT.search(html), html
    assert "<style" not in html
    assert " style=" not in html
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")
    assert b"SwaggerUIBundle" in script.content


def test_swagger_ui_renders_the_operations_in_chromium(live_server, page, tenant_a, admin_a):
    violations: list[str] = []
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    sign_in(page, live_server.url, admin_a.username, totp_device_for(admin_a), "/t/north/")
    page.goto(f"{live_server.url}/api/docs/")
    operations = page.locator(".opblock")
    operations.first.wait_for(state="visible", timeout=20_000)
    assert operations.count() > 5
    assert page.locator(".opblock-summary-path", has_text="/api/v1/t/{tenant}/members/").count() >= 1
    assert violations == []
