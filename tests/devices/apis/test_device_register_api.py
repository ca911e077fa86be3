from __future__ import annotations

import pytest

from audit.events import EventType
from tests.devices.helpers import device_count
from tests.tenants.helpers import events, last_event, problem

URL = "/api/v1/t/north/devices/"


def body(**fields):
    return {"kind": "modality", "name": "CT 3", "ae_title": "ct_three", "host": "10.0.0.30", **fields}


def test_admin_registers_a_pending_device(api_client_for, tenant_a, admin_a):
    response = api_client_for(admin_a, tenant_a).post(URL, body(), format="json")

    assert response.status_code == 201
    data = response.json()
    assert (data["ae_title"], data["host"], data["status"]) == ("CT_THREE", "10.0.0.30", "pending")
    assert data["requested_by"] == "north-admin"
    assert data["approved_by"] is None
    event = last_event(tenant_a, EventType.DEVICE_REGISTERED)
    assert event.actor_user == admin_a
    assert (event.target_type, event.target_id) == ("devices.device", data["id"])


def test_a_device_that_speaks_no_dicom_needs_no_ae_title_or_host(api_client_for, tenant_a, admin_a):
    response = api_client_for(admin_a, tenant_a).post(
        URL, {"kind": "mobile", "name": "Ward tablet", "host": None}, format="json"
    )

    assert response.status_code == 201
    assert (response.json()["ae_title"], response.json()["host"]) == ("", None)


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"ae_title": ""}, "ae_title", "A DICOM device needs its AE title."),
        ({"ae_title": "CT_PENDING"}, "ae_title", "The AE title CT_PENDING is already registered for “CT 2, emergency”"),
        ({"ae_title": "A" * 17}, "ae_title", "Ensure this field has no more than 16 characters."),
        ({"host": "ct.example.org"}, "host", "Enter a valid IPv4 or IPv6 address."),
        ({"kind": "toaster"}, "kind", '"toaster" is not a valid choice.'),
        ({"name": ""}, "name", "This field may not be blank."),
    ],
    ids=["missing-ae-title", "duplicate-ae-title", "long-ae-title", "bad-host", "bad-kind", "no-name"],
)
def test_invalid_devices_are_a_clear_400(api_client_for, tenant_a, admin_a, pending_device, fields, field, message):
    response = api_client_for(admin_a, tenant_a).post(URL, body(**fields), format="json")

    assert response.status_code == 400
    errors = problem(response)["errors"]
    assert list(errors) == [field]
    assert any(message in m for m in errors[field]), errors
    assert device_count(tenant_a) == 1
    assert len(events(tenant_a, EventType.DEVICE_REGISTERED)) == 1


def test_radiologist_is_refused_and_the_refusal_is_audited(api_client_for, tenant_a, radiologist_a):
    response = api_client_for(radiologist_a, tenant_a).post(URL, body(), format="json")

    assert response.status_code == 403
    event = last_event(tenant_a, EventType.ACCESS_DENIED)
    assert event.actor_user == radiologist_a
    assert event.extra == {"where": "DeviceRegisterApi", "method": "POST"}
    assert device_count(tenant_a) == 0


def test_another_tenant_is_a_404_like_no_tenant(api_client_for, tenant_a, tenant_b, admin_a):
    client = api_client_for(admin_a, tenant_a)

    other = client.post("/api/v1/t/south/devices/", body(), format="json")
    missing = client.post("/api/v1/t/nowhere/devices/", body(), format="json")

    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content
    assert device_count(tenant_b) == 0


def test_a_dicom_device_is_registered_with_its_certificate_fingerprint(api_client_for, tenant_a, admin_a):
    """SECURITY.md A8: the fingerprint the listener will require of the device's TLS client certificate."""
    client = api_client_for(admin_a, tenant_a)
    digest = "0f" * 32
    written = ":".join(digest[i : i + 2] for i in range(0, 64, 2)).upper()  # as openssl prints it

    response = client.post(URL, body(certificate_sha256=written), format="json")

    assert response.status_code == 201
    assert response.json()["certificate_sha256"] == digest
    event = last_event(tenant_a, EventType.DEVICE_REGISTERED)
    assert event.extra["certificate_sha256"] == digest
    assert client.get(f"{URL}{response.json()['id']}/").json()["certificate_sha256"] == digest
    bad = client.post(URL, body(ae_title="CT_FOUR", certificate_sha256="not-hex"), format="json")
    assert bad.status_code == 400
    assert "certificate_sha256" in bad.json()["errors"]
