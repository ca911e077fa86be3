from __future__ import annotations

from audit.events import EventType
from devices.models import Device
from tests.devices.helpers import reload, revoke
from tests.tenants.helpers import events, last_event, problem, random_id

URL = "/api/v1/t/north/devices/"


def url(device) -> str:
    return f"{URL}{device.public_id}/approve/"


def test_a_second_administrator_approves(api_client_for, tenant_a, second_admin_a, pending_device):
    response = api_client_for(second_admin_a, tenant_a).post(url(pending_device))

    assert response.status_code == 200
    data = response.json()
    assert (data["status"], data["approved_by"]) == ("approved", "north-admin-2")
    assert data["approved_at"] is not None
    event = last_event(tenant_a, EventType.DEVICE_APPROVED)
    assert event.actor_user == second_admin_a
    assert (event.target_type, event.target_id) == ("devices.device", str(pending_device.public_id))


def test_the_registering_administrator_is_refused_by_the_two_person_rule(api_client_for, tenant_a, admin_a,
                                                                         pending_device):  # fmt: skip
    response = api_client_for(admin_a, tenant_a).post(url(pending_device))

    assert response.status_code == 403
    body = problem(response)
    assert body["code"] == "two_person_rule"
    assert body["detail"] == "A device is approved by another administrator than the one who registered it."
    assert reload(tenant_a, pending_device).status == Device.Status.PENDING
    assert events(tenant_a, EventType.DEVICE_APPROVED) == []
    [event] = events(tenant_a, EventType.ACCESS_DENIED)
    assert event.actor_user == admin_a
    assert event.extra == {"where": "DeviceApproveApi", "method": "POST"}


def test_a_revoked_device_cannot_be_approved(api_client_for, tenant_a, admin_a, second_admin_a, pending_device):
    revoke(tenant_a, admin_a, pending_device)

    response = api_client_for(second_admin_a, tenant_a).post(url(pending_device))

    assert response.status_code == 409
    body = problem(response)
    assert body["code"] == "illegal_transition"
    assert body["allowed"] == ["wipe_ordered"]


def test_another_tenants_device_is_a_404_like_a_missing_one(api_client_for, tenant_a, tenant_b, second_admin_a,
                                                            device_b):  # fmt: skip
    client = api_client_for(second_admin_a, tenant_a)

    other = client.post(url(device_b))
    missing = client.post(f"{URL}{random_id()}/approve/")

    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content
    assert reload(tenant_b, device_b).status == Device.Status.PENDING


def test_radiologist_is_refused_and_the_refusal_is_audited(api_client_for, tenant_a, radiologist_a, pending_device):
    response = api_client_for(radiologist_a, tenant_a).post(url(pending_device))

    assert response.status_code == 403
    event = last_event(tenant_a, EventType.ACCESS_DENIED)
    assert event.actor_user == radiologist_a
    assert event.extra == {"where": "DeviceApproveApi", "method": "POST"}
    assert reload(tenant_a, pending_device).status == Device.Status.PENDING
