from __future__ import annotations

from audit.events import EventType
from devices import selectors
from devices.models import Device
from tenants.scoping import tenant_scope
from tests.devices.helpers import reload
from tests.tenants.helpers import events, last_event, problem, random_id

URL = "/api/v1/t/north/devices/"


def url(device) -> str:
    return f"{URL}{device.public_id}/revoke/"


def test_admin_revokes_and_the_next_association_is_refused(api_client_for, tenant_a, admin_a, approved_device):
    with tenant_scope(tenant_a):
        assert selectors.dicom_peer_get(ae_title="MR_OK", address="10.0.0.5") == approved_device

    response = api_client_for(admin_a, tenant_a).post(url(approved_device), {"reason": "lost"}, format="json")

    assert response.status_code == 200
    assert response.json()["status"] == "revoked"
    with tenant_scope(tenant_a):
        assert selectors.dicom_peer_get(ae_title="MR_OK", address="10.0.0.5") is None
    event = last_event(tenant_a, EventType.DEVICE_REVOKED)
    assert event.actor_user == admin_a
    assert (event.target_type, event.target_id) == ("devices.device", str(approved_device.public_id))
    assert event.extra["reason"] == "lost"


def test_revoking_twice_changes_nothing(api_client_for, tenant_a, admin_a, approved_device):
    client = api_client_for(admin_a, tenant_a)

    first = client.post(url(approved_device), {"reason": "lost"}, format="json")
    second = client.post(url(approved_device), {"reason": "lost again"}, format="json")

    assert first.status_code == second.status_code == 200
    assert len(events(tenant_a, EventType.DEVICE_REVOKED)) == 1


def test_a_reason_is_required(api_client_for, tenant_a, admin_a, approved_device):
    client = api_client_for(admin_a, tenant_a)

    missing = client.post(url(approved_device), {}, format="json")
    blank = client.post(url(approved_device), {"reason": "   "}, format="json")

    assert missing.status_code == blank.status_code == 400
    assert "reason" in problem(missing)["errors"]
    assert "reason" in problem(blank)["errors"]
    assert reload(tenant_a, approved_device).status == Device.Status.APPROVED


def test_another_tenants_device_is_a_404_like_a_missing_one(api_client_for, tenant_a, tenant_b, admin_a, device_b):
    client = api_client_for(admin_a, tenant_a)

    other = client.post(url(device_b), {"reason": "x"}, format="json")
    missing = client.post(f"{URL}{random_id()}/revoke/", {"reason": "x"}, format="json")

    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content
    assert reload(tenant_b, device_b).status == Device.Status.PENDING


def test_radiologist_is_refused_and_the_refusal_is_audited(api_client_for, tenant_a, radiologist_a, approved_device):
    response = api_client_for(radiologist_a, tenant_a).post(url(approved_device), {"reason": "x"}, format="json")

    assert response.status_code == 403
    event = last_event(tenant_a, EventType.ACCESS_DENIED)
    assert event.actor_user == radiologist_a
    assert event.extra == {"where": "DeviceRevokeApi", "method": "POST"}
    assert reload(tenant_a, approved_device).status == Device.Status.APPROVED
