from __future__ import annotations

from audit.events import EventType
from tests.tenants.helpers import last_event, problem, random_id

URL = "/api/v1/t/north/devices/"


def test_admin_gets_a_device(api_client_for, tenant_a, admin_a, approved_device):
    response = api_client_for(admin_a, tenant_a).get(f"{URL}{approved_device.public_id}/")

    assert response.status_code == 200
    data = response.json()
    assert (data["id"], data["ae_title"], data["status"]) == (str(approved_device.public_id), "MR_OK", "approved")
    assert data["approved_by"] == "north-admin-2"


def test_another_tenants_device_is_a_404_like_a_missing_one(api_client_for, tenant_a, admin_a, device_b):
    client = api_client_for(admin_a, tenant_a)

    other = client.get(f"{URL}{device_b.public_id}/")
    missing = client.get(f"{URL}{random_id()}/")
    malformed = client.get(f"{URL}not-a-uuid/")

    assert other.status_code == missing.status_code == malformed.status_code == 404
    assert other.content == missing.content == malformed.content
    assert problem(other)["title"] == "Not found"


def test_radiologist_is_refused_and_the_refusal_is_audited(api_client_for, tenant_a, radiologist_a, approved_device):
    response = api_client_for(radiologist_a, tenant_a).get(f"{URL}{approved_device.public_id}/")

    assert response.status_code == 403
    event = last_event(tenant_a, EventType.ACCESS_DENIED)
    assert event.actor_user == radiologist_a
    assert event.extra == {"where": "DeviceGetApi", "method": "GET"}


def test_query_budget(api_client_for, tenant_a, admin_a, approved_device, django_assert_max_num_queries):
    client = api_client_for(admin_a, tenant_a)

    with django_assert_max_num_queries(12):
        response = client.get(f"{URL}{approved_device.public_id}/")

    assert response.status_code == 200
