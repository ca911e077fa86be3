"""A device that receives C-MOVE deliveries is registered with its port, through the API and the service."""

from __future__ import annotations

from devices.models import Device
from devices.selectors import move_destination_get
from devices.services import device_approve
from tenants.scoping import tenant_scope


def test_a_move_destination_is_registered_with_its_port(api_client_for, tenant_a, admin_a, make_member):
    from tenants.models import Role

    second_admin = make_member(tenant_a, Role.TENANT_ADMIN, "north-admin-2")
    response = api_client_for(admin_a, tenant_a).post(
        "/api/v1/t/north/devices/",
        {"kind": "workstation", "name": "Reading room 3", "ae_title": "READ3", "host": "10.2.3.4", "port": 104},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["port"] == 104
    with tenant_scope(tenant_a):
        device = Device.objects.get(ae_title="READ3")
        assert move_destination_get(ae_title="READ3") is None  # not approved yet
        device_approve(actor=second_admin, device=device)
        assert move_destination_get(ae_title="READ3") == ("10.2.3.4", 104)


def test_a_port_out_of_range_is_refused(api_client_for, tenant_a, admin_a):
    response = api_client_for(admin_a, tenant_a).post(
        "/api/v1/t/north/devices/",
        {"kind": "workstation", "name": "Bad", "ae_title": "BAD1", "host": "10.2.3.5", "port": 70000},
        format="json",
    )
    assert response.status_code == 400
    assert "port" in response.json()["errors"]
