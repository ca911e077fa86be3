"""Every administrators' device endpoint: another tenant's device is a 404 with the body of a missing one; a
member without `tenants.manage_devices` is refused with a 403 and an ACCESS_DENIED event; the success paths of the
endpoints not covered elsewhere, each with its audit record. The OpenAPI schema documents them."""

from __future__ import annotations

import pytest

from audit.events import EventType
from devices.models import Device
from tenants.scoping import tenant_scope
from tests.devices.helpers import register, reload
from tests.tenants.apis.test_schema import PROBLEM, schema
from tests.tenants.helpers import events, last_event, random_id

API = "/api/v1/t/north/devices/"
GOOD = {"disk_encrypted": True, "screen_lock": True, "mdm_managed": True, "os_version": "17.4"}

# (method, path under the device, body)
DEVICE_ENDPOINTS = [
    ("get", "", None),
    ("get", "history/", None),
    ("post", "approve/", {}),
    ("post", "revoke/", {"reason": "x"}),
    ("post", "suspend/", {"reason": "x"}),
    ("post", "order-wipe/", {"reason": "x"}),
    ("post", "retire/", {"reason": "x"}),
    ("post", "sanitization/", {"method": "clear", "tool": "t", "verification": "v"}),
    ("post", "custodian/", {"custodian": "north-radiologist", "reason": "x"}),
    ("put", "grants/", {"grants": ["send_dicom"]}),
]


@pytest.mark.parametrize(("method", "path", "body"), DEVICE_ENDPOINTS)
def test_another_tenants_device_is_a_404_like_a_missing_one(api_client_for, tenant_a, admin_a, device_b, method,
                                                            path, body):  # fmt: skip
    client = api_client_for(admin_a, tenant_a)

    other = getattr(client, method)(f"{API}{device_b.public_id}/{path}", body, format="json")
    missing = getattr(client, method)(f"{API}{random_id()}/{path}", body, format="json")

    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content


@pytest.mark.parametrize(("method", "path", "body"), DEVICE_ENDPOINTS)
def test_a_member_without_the_permission_is_refused_and_it_is_recorded(
    api_client_for, tenant_a, radiologist_a, approved_device, method, path, body
):
    before = len(events(tenant_a, EventType.ACCESS_DENIED))

    response = getattr(api_client_for(radiologist_a, tenant_a), method)(
        f"{API}{approved_device.public_id}/{path}", body, format="json"
    )

    assert response.status_code == 403
    assert len(events(tenant_a, EventType.ACCESS_DENIED)) == before + 1
    assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user == radiologist_a
    assert reload(tenant_a, approved_device).status == Device.Status.APPROVED


@pytest.mark.parametrize(("method", "path"), [("get", "policy/"), ("patch", "policy/"), ("get", "wipe-orders/")])
def test_tenant_level_endpoints_refuse_members_without_the_permission(api_client_for, tenant_a, technologist_a,
                                                                      method, path):  # fmt: skip
    response = getattr(api_client_for(technologist_a, tenant_a), method)(f"{API}{path}", {}, format="json")

    assert response.status_code == 403
    assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user == technologist_a


def test_a_non_member_gets_a_404_for_the_tenant(api_client_for, tenant_b, admin_b):
    assert api_client_for(admin_b, tenant_b).get(f"{API}policy/").status_code == 404


def test_policy_read_and_change_is_audited(api_client_for, tenant_a, admin_a):
    client = api_client_for(admin_a, tenant_a)

    before = client.get(f"{API}policy/").json()
    changed = client.patch(f"{API}policy/", {"require_mdm": True, "offline_cache_hours": 12}, format="json")
    invalid = client.patch(f"{API}policy/", {"grants_by_kind": {"toaster": ["view"]}}, format="json")

    assert before["require_mdm"] is False
    assert changed.status_code == 200
    assert (changed.json()["require_mdm"], changed.json()["offline_cache_hours"]) == (True, 12)
    assert invalid.status_code == 400
    event = last_event(tenant_a, EventType.DEVICE_POLICY_CHANGED)
    assert event.actor_user == admin_a
    assert event.extra["changes"]["require_mdm"] == {"from": False, "to": True}


def test_grants_are_set_within_the_policy_and_audited(api_client_for, tenant_a, admin_a, approved_device):
    client = api_client_for(admin_a, tenant_a)

    refused = client.put(f"{API}{approved_device.public_id}/grants/", {"grants": ["view"]}, format="json")
    changed = client.put(f"{API}{approved_device.public_id}/grants/", {"grants": ["send_dicom"]}, format="json")

    assert refused.status_code == 400  # a modality may receive only send_dicom by default
    assert changed.status_code == 200
    assert changed.json()["grants"] == ["send_dicom"]


def test_history_shows_custody_orders_and_events(api_client_for, tenant_a, admin_a, second_admin_a, radiologist_a):
    device = register(tenant_a, admin_a, ae_title="", host=None, name="Burner", kind=Device.Kind.PORTABLE_MEDIA)
    client = api_client_for(admin_a, tenant_a)
    client.post(f"{API}{device.public_id}/custodian/", {"custodian": "north-radiologist", "reason": "issued"},
                format="json")  # fmt: skip
    api_client_for(second_admin_a, tenant_a).post(f"{API}{device.public_id}/approve/", {}, format="json")
    client.post(f"{API}{device.public_id}/order-wipe/", {"reason": "end of project"}, format="json")

    body = client.get(f"{API}{device.public_id}/history/").json()

    assert [c["custodian"] for c in body["custody"]] == ["north-radiologist"]
    assert body["wipe_orders"][0]["reason"] == "end of project"
    assert [e["event"] for e in body["events"]][:3] == ["Device wipe ordered", "Device approved",
                                                         "Device custodian changed"]  # fmt: skip
    assert body["events"][0]["reason"] == "end of project"


def test_re_use_needs_a_sanitization_record_and_a_new_approval(api_client_for, tenant_a, admin_a, second_admin_a,
                                                               radiologist_a, technologist_a):  # fmt: skip
    device = register(tenant_a, admin_a, ae_title="", host=None, name="USB 7", kind=Device.Kind.PORTABLE_MEDIA)
    client = api_client_for(admin_a, tenant_a)
    url = f"{API}{device.public_id}/"
    client.post(f"{url}custodian/", {"custodian": "north-radiologist", "reason": "issued"}, format="json")
    api_client_for(second_admin_a, tenant_a).post(f"{url}approve/", {}, format="json")

    too_early = client.post(f"{url}custodian/", {"custodian": "north-technologist", "reason": "swap"}, format="json")
    client.post(f"{url}order-wipe/", {"reason": "re-use"}, format="json")
    client.post(f"{url}sanitization/", {"method": "purge", "tool": "nwipe", "verification": "sampled zeros"},
                format="json")  # fmt: skip
    reused = client.post(f"{url}custodian/", {"custodian": "north-technologist", "reason": "swap"}, format="json")

    assert too_early.status_code == 400
    assert reused.status_code == 200
    assert (reused.json()["status"], reused.json()["custodian"]) == ("pending", "north-technologist")
    history = client.get(f"{url}history/").json()
    assert [c["custodian"] for c in history["custody"]] == ["north-technologist", "north-radiologist"]
    assert history["custody"][1]["ended_at"] is not None


def test_wipe_orders_list(api_client_for, tenant_a, admin_a, approved_device):
    client = api_client_for(admin_a, tenant_a)
    client.post(f"{API}{approved_device.public_id}/order-wipe/", {"reason": "decommission"}, format="json")

    rows = client.get(f"{API}wipe-orders/", {"open": "true"}).json()["results"]

    assert [(r["device"], r["reason"], r["sanitized_at"]) for r in rows] == [
        (str(approved_device.public_id), "decommission", None)
    ]
    assert last_event(tenant_a, EventType.DEVICE_WIPE_ORDERED).actor_user == admin_a


def test_enrolment_code_only_for_the_custodian_or_an_admin(api_client_for, tenant_a, technologist_a, radiologist_a):
    made = api_client_for(radiologist_a, tenant_a).post(
        f"{API}requests/", {"kind": "mobile", "name": "Tab", "attestation": GOOD}, format="json"
    )

    other = api_client_for(technologist_a, tenant_a).post(f"{API}{made.json()['id']}/enrolment-code/")

    assert other.status_code == 404
    with tenant_scope(tenant_a):
        assert Device.objects.get(public_id=made.json()["id"]).custodian == radiologist_a


def test_schema_documents_the_life_cycle_and_device_operations(api_client_for, tenant_a, admin_a):
    paths = schema(api_client_for(admin_a, tenant_a))["paths"]
    prefix = "/api/v1/t/{tenant}/devices/"
    operations = {op["operationId"] for path, item in paths.items() if path.startswith(prefix) for op in item.values()
                  if isinstance(op, dict) and "operationId" in op}  # fmt: skip

    assert {
        "device_request", "device_enrol", "device_self_status", "device_self_refresh", "device_self_wipe_confirm",
        "device_suspend", "device_report_lost", "device_order_wipe", "device_sanitization_record", "device_retire",
        "device_custodian_change", "device_grants_set", "device_history", "device_enrolment_code_issue",
        "wipe_order_list", "device_policy_get", "device_policy_update", "media_export_create",
    } <= operations  # fmt: skip
    suspend = paths[prefix + "{public_id}/suspend/"]["post"]
    assert PROBLEM in suspend["responses"]["409"]["content"]
