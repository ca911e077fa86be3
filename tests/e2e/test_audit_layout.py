"""The audit page fits a 1280-pixel screen (issue 8: it overflowed sideways), with long values wrapped and the
pipeline's bookkeeping folded, in Debian's Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from auditlog.context import set_actor
from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType

from audit.context import audit_context
from audit.events import EventType
from audit.services import audit_event_record
from studies.models import Export
from tenants.scoping import tenant_scope
from tests.studies.access_fixtures import study_make
from tests.tenants.factories import totp_device_for, totp_now

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def test_the_audit_page_fits_1280_pixels(live_server, page, tenant_a, compliance_a, radiologist_a):
    studies = [study_make(tenant_a) for _ in range(3)]
    with tenant_scope(tenant_a), set_actor(radiologist_a), audit_context(request_id="a" * 64):
        export = Export.objects.create(
            tenant=tenant_a, owner=radiologist_a, purpose="x" * 400, options=[{"code": "113100", "v": "y" * 300}]
        )
        export.studies.set(studies)
        audit_event_record(
            event=EventType.STUDY_EXPORTED, actor=radiologist_a, target=export, extra={"note": "z" * 500}
        )
    blob_type = ContentType.objects.get(app_label="studies", model="blob")
    for n in range(4):
        LogEntry.objects.create(
            content_type=blob_type, object_pk=str(n), object_repr="blob " + "f" * 120, action=LogEntry.Action.CREATE,
            changes={"sha256": [None, "e" * 64]}, cid="b" * 64, additional_data={"tenant_id": tenant_a.pk},
        )  # fmt: skip

    device = totp_device_for(compliance_a)
    page.goto(f"{live_server.url}/accounts/login/?next=/t/north/audit/")
    main = page.locator("main")
    main.locator("input[name=username]").fill("north-compliance")
    main.locator("input[name=password]").fill("correct horse battery staple 42")
    main.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(r"/accounts/mfa/"))
    main.locator("input[name=otp_token]").fill(totp_now(device))
    main.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(r"/t/north/audit/"))

    table = main.locator("table.audit")
    assert "Pipeline bookkeeping" in table.inner_text()
    assert "De-identified export" in table.inner_text()
    page.locator("details.folded summary").first.click()
    widths = page.evaluate(
        """() => ({
            page: document.documentElement.scrollWidth, viewport: window.innerWidth,
            table: document.querySelector('table.audit').scrollWidth,
            box: document.querySelector('table.audit').parentElement.clientWidth,
        })"""
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "audit-1280.png"), full_page=True)
    assert widths["page"] <= widths["viewport"], widths
    assert widths["table"] <= widths["box"], widths
