"""A tenant administrator approves a technologist's tablet request in the browser, then reports a tablet lost; the
register shows the states and their counts (screenshot in test-artifacts/devices-register.png)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from audit.events import EventType
from audit.models import AuditEvent, SecurityAlert
from devices import services
from devices.models import Device, WipeOrder
from tenants.scoping import tenant_scope
from tests.e2e.conftest import ARTIFACTS
from tests.e2e.test_upload import sign_in
from tests.tenants.factories import totp_device_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

GOOD = {"disk_encrypted": True, "screen_lock": True, "mdm_managed": False, "os_version": "17.4"}


def test_admin_approves_a_request_and_reports_a_tablet_lost(live_server, page, tenant_a, admin_a, technologist_a):
    with tenant_scope(tenant_a):
        tablet = services.device_request(actor=technologist_a, kind=Device.Kind.MOBILE, name="Tech tablet",
                                         attestation=GOOD)  # fmt: skip

    sign_in(page, live_server.url, admin_a.username, totp_device_for(admin_a), "/t/north/devices/")
    row = page.locator(f"#device-{tablet.public_id}")
    row.get_by_role("button", name="Approve").click()
    page.wait_for_load_state()
    expect(page.locator(f"#device-{tablet.public_id}")).to_contain_text("Approved")

    row = page.locator(f"#device-{tablet.public_id}")
    row.locator("summary", has_text="Report lost").click()
    lost_form = row.locator("form", has=page.locator("input[value=report_lost]"))
    lost_form.locator("input[name=reason]").fill("left in a taxi")
    lost_form.get_by_role("button", name="Confirm").click()
    page.wait_for_url(f"**/t/north/devices/{tablet.public_id}/")
    expect(page.locator("#device-state")).to_have_text("Lost")
    expect(page.locator(".wipe-orders")).to_contain_text("reported lost: left in a taxi")

    page.goto(f"{live_server.url}/t/north/devices/")
    expect(page.locator('[data-status="lost"]')).to_have_text("1")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "devices-register.png"), full_page=True)

    with tenant_scope(tenant_a):
        assert Device.objects.get(pk=tablet.pk).status == Device.Status.LOST
        assert WipeOrder.objects.get(device=tablet).is_open
        assert SecurityAlert.objects.filter(kind="device_lost").count() == 1
        approved = AuditEvent.objects.get(event_type=EventType.DEVICE_APPROVED)
    assert approved.actor_user == admin_a
