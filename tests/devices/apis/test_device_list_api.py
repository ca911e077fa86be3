from __future__ import annotations

from rest_framework.test import APIClient

from audit.events import EventType
from tests.devices.helpers import revoke
from tests.tenants.helpers import last_event, problem

URL = "/api/v1/t/north/devices/"


def test_admin_lists_devices(api_client_for, tenant_a, admin_a, second_admin_a, pending_device, approved_device):
    response = api_client_for(admin_a, tenant_a).get(URL)

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    rows = {row["ae_title"]: row for row in body["results"]}
    assert rows["CT_PENDING"] == {
        "id": str(pending_device.public_id),
        "kind": "modality",
        "name": "CT 2, emergency",
        "ae_title": "CT_PENDING",
        "host": "10.0.0.5",
        "port": None,
        "status": "pending",
        "allowed_next": ["approved", "revoked"],
        "custodian": None,
        "grants": [],
        "certificate_sha256": "",
        "serial_recorded": False,
        "requested_by": "north-admin",
        "approved_by": None,
        "approved_at": None,
        "created_at": rows["CT_PENDING"]["created_at"],
    }
    assert rows["MR_OK"]["status"] == "approved"
    assert rows["MR_OK"]["approved_by"] == "north-admin-2"
    assert rows["MR_OK"]["approved_at"] is not None


def test_filters_by_status_and_kind(api_client_for, tenant_a, admin_a, pending_device, approved_device):
    revoke(tenant_a, admin_a, pending_device)
    client = api_client_for(admin_a, tenant_a)

    revoked = client.get(URL, {"status": "revoked"}).json()
    approved_modalities = client.get(URL, {"status": "approved", "kind": "modality"}).json()
    workstations = client.get(URL, {"kind": "workstation"}).json()

    assert [r["ae_title"] for r in revoked["results"]] == ["CT_PENDING"]
    assert [r["ae_title"] for r in approved_modalities["results"]] == ["MR_OK"]
    assert workstations["count"] == 0


def test_a_bad_filter_is_a_clear_400(api_client_for, tenant_a, admin_a):
    response = api_client_for(admin_a, tenant_a).get(URL, {"status": "lost-in-the-post"})

    assert response.status_code == 400
    assert "status" in problem(response)["errors"]


def test_only_this_tenants_devices(api_client_for, tenant_a, admin_a, pending_device, device_b):
    body = api_client_for(admin_a, tenant_a).get(URL).json()

    assert [r["ae_title"] for r in body["results"]] == ["CT_PENDING"]


def test_radiologist_is_refused_and_the_refusal_is_audited(api_client_for, tenant_a, radiologist_a, pending_device):
    response = api_client_for(radiologist_a, tenant_a).get(URL)

    assert response.status_code == 403
    assert problem(response)["status"] == 403
    event = last_event(tenant_a, EventType.ACCESS_DENIED)
    assert event.actor_user == radiologist_a
    assert event.extra == {"where": "DeviceListApi", "method": "GET"}


def test_another_tenant_is_a_404_like_no_tenant(api_client_for, tenant_a, tenant_b, admin_a):
    client = api_client_for(admin_a, tenant_a)

    other = client.get("/api/v1/t/south/devices/")
    missing = client.get("/api/v1/t/nowhere/devices/")

    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content


def test_no_credentials_is_401():
    assert APIClient().get(URL).status_code == 401


def test_query_budget_does_not_grow_with_devices(
    api_client_for, tenant_a, admin_a, many_devices, django_assert_max_num_queries
):
    client = api_client_for(admin_a, tenant_a)
    many_devices(1)
    with django_assert_max_num_queries(20) as one:
        client.get(URL)
    many_devices(39)

    with django_assert_max_num_queries(len(one.captured_queries)):
        response = client.get(URL)

    assert response.json()["count"] == 40
