"""The device registry in the operators' admin at /ops/: every tenant's devices, read-only."""

from __future__ import annotations

import pytest
from django.test import Client

from devices.models import Device
from tests.conftest import verified_client
from tests.devices.helpers import reload


@pytest.fixture
def ops(platform_staff) -> Client:
    return verified_client(platform_staff)


def test_operators_see_every_tenants_devices_read_only(ops, tenant_a, approved_device, device_b):
    listing = ops.get("/ops/devices/device/")
    detail = ops.get(f"/ops/devices/device/{approved_device.pk}/change/")

    assert listing.status_code == detail.status_code == 200
    page = listing.content.decode()
    for text in ("MR 1", "MR_OK", "SOUTH_CT", 'nowrap">north<', 'nowrap">south<', "Approved"):
        assert text in page, text
    assert "MR_OK" in detail.content.decode()
    assert ops.post(f"/ops/devices/device/{approved_device.pk}/change/", {"status": "revoked"}).status_code == 403
    assert ops.get(f"/ops/devices/device/{approved_device.pk}/delete/").status_code == 403
    assert ops.get("/ops/devices/device/add/").status_code == 403
    assert reload(tenant_a, approved_device).status == Device.Status.APPROVED


def test_operators_search_by_ae_title(ops, approved_device, device_b):
    page = ops.get("/ops/devices/device/", {"q": "south_ct"}).content.decode()

    assert "SOUTH_CT" in page
    assert "MR_OK" not in page


def test_a_member_who_is_not_staff_gets_no_admin(client_for, admin_a):
    response = client_for(admin_a).get("/ops/devices/device/")

    assert response.status_code == 302
    assert response["Location"].startswith("/ops/login/")
