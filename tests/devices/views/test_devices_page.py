from __future__ import annotations

import re

from django.test import override_settings

from audit.events import EventType
from devices.models import Device
from tenants.models import Tenant
from tests.devices.helpers import device_count, reload
from tests.tenants.helpers import events, last_event, random_id

URL = "/t/north/devices/"


def approve_url(device) -> str:
    return f"{URL}{device.public_id}/approve/"


def revoke_url(device) -> str:
    return f"{URL}{device.public_id}/revoke/"


def form(**fields):
    return {"kind": Device.Kind.MODALITY, "name": "CT 3", "ae_title": "CT_THREE", "host": "10.0.0.30", **fields}


def test_admin_sees_the_devices_and_how_they_connect(client_for, tenant_a, admin_a, second_admin_a, pending_device,
                                                     approved_device):  # fmt: skip
    Tenant.objects.filter(pk=tenant_a.pk).update(ae_title="NORTH")

    with override_settings(DICOM_HOST="192.0.2.10", DICOM_PORT=11999):
        response = client_for(admin_a).get(URL)

    assert response.status_code == 200
    html = response.content.decode()
    for text in ("CT 2, emergency", "CT_PENDING", "MR 1", "MR_OK", "10.0.0.5", "Requested", "Approved",
                 "north-admin-2", "Modality or PACS"):  # fmt: skip
        assert text in html, text
    assert "<strong>NORTH</strong>" in html  # the tenant's called AE title
    assert "<strong>192.0.2.10</strong>" in html
    assert "<strong>11999</strong>" in html
    assert "from its registered host" in html
    assert 'id="register-device"' in html
    # admin_a registered the pending device: no Approve button for them, but a note and a Revoke form.
    assert approve_url(pending_device) not in html
    assert "You registered it: another administrator approves it." in html
    assert revoke_url(pending_device) in html
    assert revoke_url(approved_device) in html
    assert "style=" not in html
    assert "<script>" not in html


def test_the_second_administrator_gets_the_approve_button(client_for, second_admin_a, pending_device):
    html = client_for(second_admin_a).get(URL).content.decode()

    assert approve_url(pending_device) in html


def test_a_tenant_without_a_called_ae_title_says_so(client_for, admin_a):
    html = client_for(admin_a).get(URL).content.decode()

    assert "Ask the platform operators to give North Hospital Group its called AE title." in html


def test_nav_and_home_link_to_devices_for_admins_only(client_for, tenant_a, admin_a, radiologist_a):
    link = f'href="{URL}"'
    assert link in client_for(admin_a).get("/t/north/").content.decode()
    assert link not in client_for(radiologist_a).get("/t/north/").content.decode()


def test_radiologist_is_refused_and_audited(client_for, tenant_a, radiologist_a, pending_device):
    client = client_for(radiologist_a)

    page = client.get(URL)
    approve_attempt = client.post(approve_url(pending_device))

    assert page.status_code == approve_attempt.status_code == 403
    first, second = events(tenant_a, EventType.ACCESS_DENIED)
    assert first.actor_user == second.actor_user == radiologist_a
    assert first.extra == {"where": "DevicesView", "method": "GET"}
    assert second.extra == {"where": "DeviceApproveView", "method": "POST"}
    assert reload(tenant_a, pending_device).status == Device.Status.PENDING


def test_another_tenant_is_a_404_like_no_tenant(client_for, tenant_b, admin_a):
    client = client_for(admin_a)

    other = client.get("/t/south/devices/")
    missing = client.get("/t/nowhere/devices/")

    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content


def test_another_tenants_device_is_a_404_like_a_missing_one(client_for, tenant_b, admin_a, second_admin_a, device_b):
    client = client_for(second_admin_a)

    for action in ("approve", "revoke"):
        other = client.post(f"{URL}{device_b.public_id}/{action}/", {"reason": "mine now"})
        missing = client.post(f"{URL}{random_id()}/{action}/", {"reason": "mine now"})
        assert other.status_code == missing.status_code == 404
        assert other.content == missing.content
    assert reload(tenant_b, device_b).status == Device.Status.PENDING


def test_register_a_device(client_for, tenant_a, admin_a):
    client = client_for(admin_a)

    response = client.post(f"{URL}register/", form(ae_title="ct_three"))

    assert response.status_code == 302
    assert response["Location"] == URL
    html = client.get(URL).content.decode()
    assert "“CT 3” is registered and waits for approval by another administrator." in html
    assert "CT_THREE" in html
    event = last_event(tenant_a, EventType.DEVICE_REGISTERED)
    assert event.actor_user == admin_a
    assert event.extra == {"kind": "modality", "ae_title": "CT_THREE", "host": "10.0.0.30", "port": None,
                           "custodian": None}  # fmt: skip


def test_invalid_registrations_are_explained(client_for, tenant_a, admin_a, pending_device):
    client = client_for(admin_a)

    no_ae = client.post(f"{URL}register/", form(ae_title=""))
    duplicate = client.post(f"{URL}register/", form(ae_title="ct_pending"))
    bad_host = client.post(f"{URL}register/", form(host="ct.example.org"))

    assert no_ae.status_code == duplicate.status_code == bad_host.status_code == 400
    assert "A DICOM device needs its AE title." in no_ae.content.decode()
    assert "The AE title CT_PENDING is already registered for “CT 2, emergency”" in duplicate.content.decode()
    assert "Enter a valid IPv4 or IPv6 address." in bad_host.content.decode()
    assert 'value="ct.example.org"' in bad_host.content.decode()  # the form keeps what was typed
    assert device_count(tenant_a) == 1
    assert len(events(tenant_a, EventType.DEVICE_REGISTERED)) == 1


def test_approve_by_a_second_administrator(client_for, tenant_a, second_admin_a, pending_device):
    client = client_for(second_admin_a)

    response = client.post(approve_url(pending_device))

    assert response.status_code == 302
    html = client.get(URL).content.decode()
    assert "“CT 2, emergency” is approved: it may now send images as CT_PENDING, from 10.0.0.5." in html
    device = reload(tenant_a, pending_device)
    assert (device.status, device.approved_by) == (Device.Status.APPROVED, second_admin_a)
    event = last_event(tenant_a, EventType.DEVICE_APPROVED)
    assert (event.actor_user, event.target_id) == (second_admin_a, str(device.public_id))


def test_the_registering_administrator_is_refused_with_a_message_and_audited(client_for, tenant_a, admin_a,
                                                                             pending_device):  # fmt: skip
    response = client_for(admin_a).post(approve_url(pending_device))

    assert response.status_code == 403
    html = response.content.decode()
    assert "was not approved: A device is approved by another administrator than the one who registered it." in html
    assert 'id="register-device"' in html  # the page itself, not a bare error page
    assert reload(tenant_a, pending_device).status == Device.Status.PENDING
    assert events(tenant_a, EventType.DEVICE_APPROVED) == []
    [event] = events(tenant_a, EventType.ACCESS_DENIED)  # exactly one, though the page catches the refusal
    assert event.actor_user == admin_a
    assert event.extra == {"where": "DeviceApproveView", "method": "POST"}


def test_revoke_a_device(client_for, tenant_a, admin_a, approved_device):
    client = client_for(admin_a)

    response = client.post(revoke_url(approved_device), {"reason": "stolen from the van"})

    assert response.status_code == 302
    html = client.get(URL).content.decode()
    assert "“MR 1” is revoked: its next association will be refused." in html
    assert revoke_url(approved_device) not in html  # nothing left to revoke
    assert reload(tenant_a, approved_device).status == Device.Status.REVOKED
    event = last_event(tenant_a, EventType.DEVICE_REVOKED)
    assert (event.actor_user, event.target_id) == (admin_a, str(approved_device.public_id))
    assert event.extra["reason"] == "stolen from the van"


def test_revoke_needs_a_reason_and_a_revoked_device_cannot_be_approved(client_for, tenant_a, admin_a,
                                                                       second_admin_a, pending_device):  # fmt: skip
    no_reason = client_for(admin_a).post(revoke_url(pending_device), {"reason": ""})
    assert no_reason.status_code == 400
    assert "Say why the device is revoked" in no_reason.content.decode()

    client_for(admin_a).post(revoke_url(pending_device), {"reason": "wrong AE title"})
    approve_revoked = client_for(second_admin_a).post(approve_url(pending_device))

    assert approve_revoked.status_code == 409
    assert "A revoked device cannot become approved. Allowed: wipe_ordered." in approve_revoked.content.decode()
    assert reload(tenant_a, pending_device).status == Device.Status.REVOKED


def test_query_budget_does_not_grow_with_devices(client_for, admin_a, many_devices, django_assert_max_num_queries):
    client = client_for(admin_a)
    many_devices(1)
    with django_assert_max_num_queries(30) as one:
        client.get(URL)
    many_devices(39)

    with django_assert_max_num_queries(len(one.captured_queries)):
        response = client.get(URL)

    assert response.status_code == 200
    assert len(re.findall(r'<tr id="device-', response.content.decode())) == 40
