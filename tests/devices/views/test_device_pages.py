"""The register's filters and counts, a device's page, the life-cycle step form and the wipe orders page: success,
another tenant's device (404 like a missing one), a member without the permission (403 + ACCESS_DENIED), and the
audit record of each change."""

from __future__ import annotations

import re

import pytest

from audit.events import EventType
from devices.models import Device
from tests.devices.helpers import register, reload
from tests.tenants.helpers import events, last_event, random_id

URL = "/t/north/devices/"


def test_register_filters_by_kind_state_and_custodian_and_counts_states(client_for, admin_a, pending_device,
                                                                        approved_device):  # fmt: skip
    client = client_for(admin_a)

    approved_only = client.get(URL, {"status": "approved"}).content.decode()
    media_only = client.get(URL, {"kind": "portable_media"}).content.decode()
    by_custodian = client.get(URL, {"custodian": "nobody"}).content.decode()

    assert "MR_OK" in approved_only
    assert "CT_PENDING" not in approved_only
    assert "MR_OK" not in media_only
    assert "No devices yet" in by_custodian
    counts = dict(re.findall(r'data-status="(\w+)">(\d+)<', approved_only))
    assert counts["approved"] == "1"
    assert counts["pending"] == "1"
    assert counts["lost"] == "0"


def test_a_device_page_shows_state_history_and_steps(client_for, tenant_a, admin_a, approved_device):
    response = client_for(admin_a).get(f"{URL}{approved_device.public_id}/")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="device-state">Approved<' in html
    assert "Device approved" in html  # the history, from the audit trail
    assert 'value="suspend"' in html
    assert 'value="retire"' not in html  # not allowed from approved


def test_step_form_suspends_with_its_reason_and_records_it(client_for, tenant_a, admin_a, approved_device):
    response = client_for(admin_a).post(f"{URL}{approved_device.public_id}/step/",
                                        {"action": "suspend", "reason": "screen cracked"})  # fmt: skip

    assert response.status_code == 302
    assert reload(tenant_a, approved_device).status == Device.Status.SUSPENDED
    event = last_event(tenant_a, EventType.DEVICE_SUSPENDED)
    assert (event.actor_user, event.extra["reason"]) == (admin_a, "screen cracked")


def test_step_form_refuses_an_illegal_step_with_the_allowed_states(client_for, tenant_a, admin_a, pending_device):
    response = client_for(admin_a).post(f"{URL}{pending_device.public_id}/step/", {"action": "retire", "reason": "x"})

    assert response.status_code == 409
    assert "Allowed: approved, revoked." in response.content.decode()
    assert reload(tenant_a, pending_device).status == Device.Status.PENDING
    assert not events(tenant_a, EventType.DEVICE_RETIRED)


@pytest.mark.parametrize("suffix", ["", "step/"])
def test_another_tenants_device_page_is_a_404_like_a_missing_one(client_for, admin_a, device_b, suffix):
    client = client_for(admin_a)
    method = client.post if suffix else client.get

    other = method(f"{URL}{device_b.public_id}/{suffix}", {"action": "suspend", "reason": "x"})
    missing = method(f"{URL}{random_id()}/{suffix}", {"action": "suspend", "reason": "x"})

    assert other.status_code == missing.status_code == 404
    assert reload(device_b.tenant, device_b).status == Device.Status.PENDING


@pytest.mark.parametrize(("method", "suffix"), [("get", "{id}/"), ("post", "{id}/step/"), ("get", "wipe-orders/")])
def test_members_without_the_permission_are_refused_and_recorded(client_for, tenant_a, radiologist_a,
                                                                 approved_device, method, suffix):  # fmt: skip
    path = URL + suffix.format(id=approved_device.public_id)

    response = getattr(client_for(radiologist_a), method)(path, {"action": "suspend", "reason": "x"})

    assert response.status_code == 403
    assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user == radiologist_a
    assert reload(tenant_a, approved_device).status == Device.Status.APPROVED


def test_wipe_orders_page_prints_each_certificate(client_for, tenant_a, admin_a, second_admin_a):
    from devices import services
    from tenants.scoping import tenant_scope

    medium = register(tenant_a, admin_a, ae_title="", host=None, name="USB 12", kind=Device.Kind.PORTABLE_MEDIA)
    with tenant_scope(tenant_a):
        services.device_approve(actor=second_admin_a, device=medium)
        services.device_wipe_order(actor=admin_a, device=medium, reason="project over")
        services.device_sanitization_record(actor=admin_a, device=medium, method="destroy", tool="shredder",
                                            verification="particles under 2 mm", evidence="cert 42")  # fmt: skip

    response = client_for(admin_a).get(f"{URL}wipe-orders/")

    assert response.status_code == 200
    html = response.content.decode()
    for text in ("USB 12", "project over", "Destroy", "shredder", "particles under 2 mm", "cert 42", "north-admin"):
        assert text in html, text
    assert "style=" not in html


def test_a_member_requests_a_device_for_their_own_custody(client_for, tenant_a, technologist_a):
    client = client_for(technologist_a)

    page = client.get(f"{URL}request/")
    response = client.post(
        f"{URL}request/",
        {
            "kind": "mobile",
            "name": "Tech tablet",
            "serial": "SN 9",
            "disk_encrypted": "on",
            "screen_lock": "on",
            "os_version": "17",
        },
    )
    invalid = client.post(f"{URL}request/", {"kind": "modality", "name": "CT"})

    assert page.status_code == 200
    assert response.status_code == 302
    assert invalid.status_code == 400
    event = last_event(tenant_a, EventType.DEVICE_REGISTERED)
    assert (event.actor_user, event.extra["custodian"]) == (technologist_a, "north-technologist")
    assert last_event(tenant_a, EventType.DEVICE_ATTESTED).extra["accepted"] is True


def test_the_request_page_is_a_404_in_another_tenant(client_for, technologist_a):
    assert client_for(technologist_a).get("/t/south/devices/request/").status_code == 404


def test_sanitization_form_closes_a_lost_devices_order(client_for, tenant_a, admin_a, approved_device):
    from devices import services
    from tenants.scoping import tenant_scope

    with tenant_scope(tenant_a):
        services.device_report_lost(actor=admin_a, device=approved_device, reason="stolen")
    client = client_for(admin_a)
    url = f"{URL}{approved_device.public_id}/sanitization/"

    assert 'id="sanitization"' in client.get(f"{URL}{approved_device.public_id}/").content.decode()
    incomplete = client.post(url, {"method": "clear", "tool": "MDM"})
    done = client.post(url, {"method": "clear", "tool": "MDM remote wipe", "verification": "MDM reported done"})
    again = client.post(url, {"method": "clear", "tool": "MDM remote wipe", "verification": "MDM reported done"})

    assert incomplete.status_code == 400
    assert done.status_code == 302
    assert again.status_code == 409
    assert reload(tenant_a, approved_device).status == Device.Status.WIPED
    event = last_event(tenant_a, EventType.DEVICE_SANITIZED)
    assert (event.actor_user, event.extra["method"]) == (admin_a, "clear")


def test_sanitization_form_refuses_others(client_for, tenant_a, radiologist_a, admin_a, approved_device, device_b):
    url = f"{URL}{approved_device.public_id}/sanitization/"
    body = {"method": "clear", "tool": "t", "verification": "v"}

    refused = client_for(radiologist_a).post(url, body)
    other = client_for(admin_a).post(f"{URL}{device_b.public_id}/sanitization/", body)

    assert refused.status_code == 403
    assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user == radiologist_a
    assert other.status_code == 404


def test_auditors_and_compliance_officers_read_the_register_without_changing_it(
    client_for, tenant_a, auditor_a, compliance_a, admin_a, approved_device, pending_device
):
    """Issue 12: an outside auditor sees the device register (and a device's history, and the wipe orders),
    read-only: no form to change anything, and a change posted anyway is a 403 on the trail."""
    for person in (auditor_a, compliance_a):
        client = client_for(person)
        register_page = client.get(URL)
        assert register_page.status_code == 200
        html = register_page.content.decode()
        assert "MR_OK" in html
        assert "CT_PENDING" in html
        assert 'id="register-device"' not in html
        assert "/approve/" not in html
        assert "Read-only" in html
        detail = client.get(f"{URL}{approved_device.public_id}/")
        assert detail.status_code == 200
        assert 'name="action"' not in detail.content.decode()
        assert client.get(f"{URL}wipe-orders/").status_code == 200
        assert f'href="{URL}"' in client.get("/t/north/").content.decode()  # the nav names the register

    auditor = client_for(auditor_a)
    refused = auditor.post(f"{URL}{pending_device.public_id}/approve/")
    assert refused.status_code == 403
    assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user_id == auditor_a.pk
    assert reload(tenant_a, pending_device).status == Device.Status.PENDING
    assert auditor.post(f"{URL}register/", {"name": "sneaky", "kind": "modality"}).status_code == 403
