"""The device story through HTTP with real tokens (issue 11, "How it is shown"): a tablet is requested, approved
with a view-only grant, enrolled with its code; its token reads rendered frames but not the DICOM files; reported
lost, its next request is refused and a wipe order appears; a wipe is confirmed by the device itself and closes
the order with its record; retiring without a record fails; a membership ended orders wipes."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from audit.events import EventType
from audit.models import SecurityAlert
from devices.models import Device, DeviceToken, WipeOrder
from tenants.scoping import tenant_scope
from tests.devices.helpers import reload
from tests.studies.dicomweb.reading import ingest
from tests.tenants.helpers import events, last_event, problem

pytestmark = pytest.mark.django_db(transaction=True)

API = "/api/v1/t/north/devices/"
GOOD = {"disk_encrypted": True, "screen_lock": True, "mdm_managed": False, "os_version": "17.4"}


def bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


@pytest.fixture
def study(tenant_a):
    return ingest(tenant_a, patient_id="P-DEVICE", frames=2, rows=16, columns=16)


@pytest.fixture
def tablet(api_client_for, tenant_a, radiologist_a) -> dict[str, Any]:
    """A tablet requested by the radiologist for their own custody, with a good attestation."""
    response = api_client_for(radiologist_a, tenant_a).post(
        f"{API}requests/",
        {"kind": "mobile", "name": "Reading tablet", "serial": "SN-123 456", "attestation": GOOD},
        format="json",
    )
    assert response.status_code == 201, response.content
    return response.json()


def enrol(api_client_for, tenant, custodian, device_id: str, attestation=GOOD) -> Any:
    code = api_client_for(custodian, tenant).post(f"{API}{device_id}/enrolment-code/")
    assert code.status_code == 201, code.content
    return bearer(code.json()["code"]).post(f"{API}enrol/", attestation, format="json")


@pytest.fixture
def enrolled(api_client_for, tenant_a, admin_a, radiologist_a, tablet) -> APIClient:
    approved = api_client_for(admin_a, tenant_a).post(
        f"{API}{tablet['id']}/approve/", {"grants": ["view"]}, format="json"
    )
    assert approved.status_code == 200, approved.content
    response = enrol(api_client_for, tenant_a, radiologist_a, tablet["id"])
    assert response.status_code == 201, response.content
    return bearer(response.json()["token"])


def test_a_requested_tablet_cannot_enrol_before_approval(api_client_for, tenant_a, radiologist_a, tablet):
    response = api_client_for(radiologist_a, tenant_a).post(f"{API}{tablet['id']}/enrolment-code/")

    assert response.status_code == 400
    assert "requested device cannot enrol" in str(problem(response)["errors"])
    with tenant_scope(tenant_a):
        assert not DeviceToken.objects.exists()


def test_the_serial_is_kept_only_as_a_keyed_hash_and_found_by_exact_serial(api_client_for, tenant_a, admin_a, tablet):
    with tenant_scope(tenant_a):
        device = Device.objects.get(public_id=tablet["id"])
    assert "123" not in device.serial_digest
    assert len(device.serial_digest) == 64
    client = api_client_for(admin_a, tenant_a)

    found = client.get(API, {"serial": "sn-123456"}).json()
    missed = client.get(API, {"serial": "SN-123457"}).json()

    assert [row["id"] for row in found["results"]] == [tablet["id"]]
    assert missed["count"] == 0
    assert tablet["serial_recorded"] is True
    assert "serial" not in tablet


def test_view_only_token_reads_rendered_frames_but_not_dicom_files(enrolled, tenant_a, radiologist_a, study):
    base = f"/dicomweb/north/studies/{study.study_instance_uid}"

    rendered = enrolled.get(f"{base}/rendered", HTTP_ACCEPT="image/jpeg")
    files = enrolled.get(base, HTTP_ACCEPT='multipart/related; type="application/dicom"')

    assert rendered.status_code == 200, rendered.content
    assert files.status_code == 403
    assert problem(files)["code"] == "device_not_granted"
    refusal = last_event(tenant_a, EventType.ACCESS_DENIED)
    assert refusal.actor_user == radiologist_a
    assert refusal.extra["where"] == "StudyRetrieveApi"


def test_a_grant_never_widens_what_the_person_may_do(api_client_for, tenant_a, admin_a, enrolled, radiologist_a):
    """The radiologist may not manage devices; neither may their device's token, whatever it holds."""
    with tenant_scope(tenant_a):
        device = Device.objects.get(custodian=radiologist_a)
    api_client_for(admin_a, tenant_a).put(f"{API}{device.public_id}/grants/", {"grants": ["view", "offline_cache"]},
                                          format="json")  # fmt: skip

    response = enrolled.get(API)

    assert response.status_code == 403
    assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user == radiologist_a


def test_a_device_token_cannot_manage_even_for_an_admin_custodian(
    api_client_for, tenant_a, admin_a, second_admin_a, make_member
):
    """A device token of an administrator works for nothing but its grants: not for the register."""
    client = api_client_for(admin_a, tenant_a)
    made = client.post(f"{API}requests/", {"kind": "mobile", "name": "Admin phone", "attestation": GOOD}, format="json")
    api_client_for(second_admin_a, tenant_a).post(f"{API}{made.json()['id']}/approve/", {}, format="json")
    token = enrol(api_client_for, tenant_a, admin_a, made.json()["id"]).json()["token"]

    assert bearer(token).get(API).status_code == 403
    assert api_client_for(admin_a, tenant_a).get(API).status_code == 200


def test_a_failed_attestation_is_refused_at_enrolment_and_kept_on_the_trail(
    api_client_for, tenant_a, admin_a, radiologist_a, tablet
):
    api_client_for(admin_a, tenant_a).post(f"{API}{tablet['id']}/approve/", {}, format="json")

    response = enrol(api_client_for, tenant_a, radiologist_a, tablet["id"], {**GOOD, "disk_encrypted": False})

    assert response.status_code == 403
    assert problem(response)["code"] == "attestation_failed"
    assert "disk encryption is required" in problem(response)["detail"]
    assert last_event(tenant_a, EventType.DEVICE_ATTESTED).extra["accepted"] is False
    with tenant_scope(tenant_a):
        assert not DeviceToken.objects.exists()


def test_refresh_rechecks_the_attestation(api_client_for, tenant_a, admin_a, enrolled, study):
    base = f"/dicomweb/north/studies/{study.study_instance_uid}/rendered"
    api_client_for(admin_a, tenant_a).patch(f"{API}policy/", {"minimum_os_version": "18.0"}, format="json")

    refused = enrolled.post(f"{API}self/refresh/", GOOD, format="json")

    assert refused.status_code == 403
    assert "version 18.0 or later" in problem(refused)["detail"]
    assert enrolled.get(base, HTTP_ACCEPT="image/jpeg").status_code == 401  # every token of the device revoked
    assert last_event(tenant_a, EventType.DEVICE_TOKEN_REFUSED).outcome_description == "The device token is revoked."


def test_refresh_with_a_good_attestation_replaces_the_token(enrolled, study):
    base = f"/dicomweb/north/studies/{study.study_instance_uid}/rendered"

    refreshed = enrolled.post(f"{API}self/refresh/", GOOD, format="json")

    assert refreshed.status_code == 200, refreshed.content
    assert enrolled.get(base, HTTP_ACCEPT="image/jpeg").status_code == 401
    assert bearer(refreshed.json()["token"]).get(base, HTTP_ACCEPT="image/jpeg").status_code == 200


def test_reported_lost_the_next_request_is_refused_and_a_wipe_order_appears(
    api_client_for, tenant_a, radiologist_a, enrolled, study
):
    with tenant_scope(tenant_a):
        device = Device.objects.get(custodian=radiologist_a)
    assert enrolled.get(f"{API}self/").status_code == 200

    lost = api_client_for(radiologist_a, tenant_a).post(
        f"{API}{device.public_id}/report-lost/", {"reason": "left on the train"}, format="json"
    )
    after = enrolled.get(f"/dicomweb/north/studies/{study.study_instance_uid}/rendered", HTTP_ACCEPT="image/jpeg")

    assert lost.status_code == 200
    assert lost.json()["status"] == "lost"
    assert after.status_code == 401
    refusal = last_event(tenant_a, EventType.DEVICE_TOKEN_REFUSED)
    assert refusal.extra["why"] == "The device is lost."
    assert refusal.target_id == str(device.public_id)
    with tenant_scope(tenant_a):
        assert WipeOrder.objects.get(device=device).is_open
        assert SecurityAlert.objects.filter(kind="device_lost").count() == 1
    reported = last_event(tenant_a, EventType.DEVICE_REPORTED_LOST)
    assert (reported.actor_user, reported.extra["reason"]) == (radiologist_a, "left on the train")


def test_a_suspended_device_is_refused_at_once_and_reinstated_by_approval(
    api_client_for, tenant_a, admin_a, radiologist_a, enrolled
):
    with tenant_scope(tenant_a):
        device = Device.objects.get(custodian=radiologist_a)
    admin = api_client_for(admin_a, tenant_a)

    suspended = admin.post(f"{API}{device.public_id}/suspend/", {"reason": "audit"}, format="json")
    refused = enrolled.get(f"{API}self/")
    reinstated = admin.post(f"{API}{device.public_id}/approve/", {"reason": "audit done"}, format="json")

    assert suspended.json()["status"] == "suspended"
    assert refused.status_code == 401
    assert reinstated.json()["status"] == "approved"
    assert last_event(tenant_a, EventType.DEVICE_REINSTATED).extra["reason"] == "audit done"


def test_wipe_order_confirmed_by_the_device_closes_with_its_record_then_retire(
    api_client_for, tenant_a, admin_a, radiologist_a, enrolled, study
):
    with tenant_scope(tenant_a):
        device = Device.objects.get(custodian=radiologist_a)
    admin = api_client_for(admin_a, tenant_a)
    retire_early = admin.post(f"{API}{device.public_id}/retire/", {"reason": "old"}, format="json")
    assert retire_early.status_code == 409
    assert problem(retire_early)["allowed"] == ["suspended", "lost", "wipe_ordered", "revoked"]

    ordered = admin.post(f"{API}{device.public_id}/order-wipe/", {"reason": "handing back"}, format="json")
    status = enrolled.get(f"{API}self/")
    reading = enrolled.get(f"/dicomweb/north/studies/{study.study_instance_uid}/rendered", HTTP_ACCEPT="image/jpeg")
    confirmed = enrolled.post(
        f"{API}self/wipe-confirmation/",
        {"method": "purge", "tool": "iOS erase all content", "verification": "factory setup screen seen"},
        format="json",
    )

    assert ordered.json()["status"] == "wipe_ordered"
    assert status.status_code == 200
    assert status.json()["wipe_order"]["reason"] == "handing back"
    assert reading.status_code == 404  # the token now opens nothing: the study is not visible to it
    assert confirmed.status_code == 200, confirmed.content
    record = confirmed.json()
    assert (record["method"], record["sanitized_by"]) == ("purge", "north-radiologist")
    assert reload(tenant_a, device).status == Device.Status.WIPED
    assert enrolled.get(f"{API}self/").status_code == 401

    retired = admin.post(f"{API}{device.public_id}/retire/", {"reason": "end of life"}, format="json")
    assert retired.status_code == 200
    assert retired.json()["status"] == "retired"
    assert last_event(tenant_a, EventType.DEVICE_SANITIZED).extra["method"] == "purge"


def test_a_lost_device_cannot_be_retired_without_its_sanitization_record(
    api_client_for, tenant_a, admin_a, radiologist_a, enrolled
):
    with tenant_scope(tenant_a):
        device = Device.objects.get(custodian=radiologist_a)
    admin = api_client_for(admin_a, tenant_a)
    admin.post(f"{API}{device.public_id}/report-lost/", {"reason": "stolen"}, format="json")

    refused = admin.post(f"{API}{device.public_id}/retire/", {"reason": "gone"}, format="json")
    recorded = admin.post(
        f"{API}{device.public_id}/sanitization/",
        {"method": "clear", "tool": "MDM remote wipe", "verification": "MDM reported wipe complete", "evidence": "t-1"},
        format="json",
    )
    retired = admin.post(f"{API}{device.public_id}/retire/", {"reason": "gone"}, format="json")

    assert refused.status_code == 409
    assert problem(refused)["allowed"] == ["wiped"]
    assert recorded.status_code == 200
    assert recorded.json()["sanitized_at"]
    assert retired.status_code == 200


def test_illegal_transitions_answer_409_and_change_nothing(api_client_for, tenant_a, admin_a, tablet):
    client = api_client_for(admin_a, tenant_a)
    before = len(events(tenant_a, EventType.DEVICE_SUSPENDED))

    response = client.post(f"{API}{tablet['id']}/suspend/", {"reason": "x"}, format="json")

    assert response.status_code == 409
    assert problem(response)["allowed"] == ["approved", "revoked"]
    assert client.get(f"{API}{tablet['id']}/").json()["status"] == "pending"
    assert len(events(tenant_a, EventType.DEVICE_SUSPENDED)) == before


def test_approval_needs_another_admin_than_the_requester(api_client_for, tenant_a, admin_a, second_admin_a):
    made = api_client_for(admin_a, tenant_a).post(
        f"{API}requests/", {"kind": "mobile", "name": "Phone", "attestation": GOOD}, format="json"
    )

    own = api_client_for(admin_a, tenant_a).post(f"{API}{made.json()['id']}/approve/", {}, format="json")
    other = api_client_for(second_admin_a, tenant_a).post(f"{API}{made.json()['id']}/approve/", {}, format="json")

    assert own.status_code == 403
    assert problem(own)["code"] == "two_person_rule"
    assert other.status_code == 200
    assert other.json()["grants"] == ["view"]


def test_a_membership_ended_orders_wipes_and_revokes_device_tokens(
    api_client_for, tenant_a, admin_a, radiologist_a, enrolled
):
    from tests.tenants.helpers import membership_of

    membership = membership_of(radiologist_a, tenant_a)
    response = api_client_for(admin_a, tenant_a).post(
        f"/api/v1/t/north/members/{membership.public_id}/end/", {"reason": "left"}, format="json"
    )

    assert response.status_code == 200, response.content
    with tenant_scope(tenant_a):
        device = Device.objects.get(custodian=radiologist_a)
        order = WipeOrder.objects.get(device=device)
        assert not DeviceToken.objects.filter(device=device, revoked_at__isnull=True).exists()
    assert device.status == Device.Status.WIPE_ORDERED
    assert order.ordered_by is None
    assert order.reason == "its custodian left the organisation"
    assert enrolled.get(f"{API}self/").status_code == 401


def test_the_policy_limits_the_grants_a_kind_may_receive(api_client_for, tenant_a, admin_a, second_admin_a, tablet):
    client = api_client_for(admin_a, tenant_a)

    refused = client.post(f"{API}{tablet['id']}/approve/", {"grants": ["view", "export_media"]}, format="json")

    assert refused.status_code == 400
    assert "export_media" in str(problem(refused)["errors"]["grants"])


def test_another_tenants_token_device_is_a_404(api_client_for, tenant_a, tenant_b, admin_b, tablet):
    response = api_client_for(admin_b, tenant_b).post(f"/api/v1/t/south/devices/{tablet['id']}/suspend/",
                                                      {"reason": "x"}, format="json")  # fmt: skip
    missing = api_client_for(admin_b, tenant_b).post(
        "/api/v1/t/south/devices/00000000-0000-0000-0000-000000000000/suspend/", {"reason": "x"}, format="json"
    )

    assert response.status_code == missing.status_code == 404
    assert response.content == missing.content


def test_a_device_token_works_only_for_its_own_tenant(enrolled, tenant_b, outsider_b):
    assert enrolled.get("/api/v1/t/south/devices/self/").status_code == 404


def test_technologist_request_is_pending_for_another_admin(api_client_for, tenant_a, technologist_a):
    response = api_client_for(technologist_a, tenant_a).post(
        f"{API}requests/", {"kind": "mobile", "name": "Tech tablet"}, format="json"
    )

    assert response.status_code == 201
    body = response.json()
    assert (body["status"], body["custodian"], body["requested_by"]) == (
        "pending",
        "north-technologist",
        "north-technologist",
    )
    event = last_event(tenant_a, EventType.DEVICE_REGISTERED)
    assert event.actor_user == technologist_a
    assert event.extra["custodian"] == "north-technologist"


def test_a_custodian_cannot_see_someone_elses_device(api_client_for, tenant_a, technologist_a, tablet):
    response = api_client_for(technologist_a, tenant_a).post(f"{API}{tablet['id']}/report-lost/", {"reason": "x"},
                                                             format="json")  # fmt: skip
    assert response.status_code == 404


def test_roles_without_manage_devices_are_refused_the_register(api_client_for, tenant_a, radiologist_a):
    response = api_client_for(radiologist_a, tenant_a).get(f"{API}wipe-orders/")

    assert response.status_code == 403
    assert last_event(tenant_a, EventType.ACCESS_DENIED).extra["where"] == "WipeOrderListApi"


@pytest.fixture
def burner(api_client_for, tenant_a, admin_a, second_admin_a, radiologist_a) -> str:
    made = api_client_for(admin_a, tenant_a).post(
        API, {"kind": "portable_media", "name": "Disc burner", "custodian": "north-radiologist"}, format="json"
    )
    assert made.status_code == 201, made.content
    api_client_for(second_admin_a, tenant_a).post(f"{API}{made.json()['id']}/approve/", {}, format="json")
    return made.json()["id"]


def test_media_export_is_recorded_as_a_disclosure_naming_patients_and_medium(
    api_client_for, tenant_a, radiologist_a, burner, study
):
    response = api_client_for(radiologist_a, tenant_a).post(
        f"{API}{burner}/media-exports/",
        {"studies": [study.study_instance_uid], "deidentified": False, "recipient": "Dr. Lee, St. Mary"},
        format="json",
    )

    assert response.status_code == 201, response.content
    assert response.json()["patient_count"] == 1
    event = last_event(tenant_a, EventType.DEVICE_MEDIA_EXPORTED)
    assert event.actor_user == radiologist_a
    assert event.target_id == burner
    assert {"type": "patient", "id": "P-DEVICE"}.items() <= next(
        p for p in event.participants if p["type"] == "patient"
    ).items()
    assert event.extra["Anonymized"] is False


def test_media_export_refusals(api_client_for, tenant_a, tenant_b, outsider_b, technologist_a, admin_a, burner, study):
    body = {"studies": [study.study_instance_uid], "deidentified": False}

    identified_by_technologist = api_client_for(technologist_a, tenant_a).post(
        f"{API}{burner}/media-exports/", body, format="json"
    )
    by_admin = api_client_for(admin_a, tenant_a).post(f"{API}{burner}/media-exports/", body, format="json")
    other_tenant = api_client_for(outsider_b, tenant_b).post(
        f"/api/v1/t/south/devices/{burner}/media-exports/", body, format="json"
    )
    deidentified = api_client_for(technologist_a, tenant_a).post(
        f"{API}{burner}/media-exports/", {**body, "deidentified": True}, format="json"
    )

    assert identified_by_technologist.status_code == 403  # no tenants.export_identified
    assert by_admin.status_code == 403  # administrators see no images
    missing = api_client_for(outsider_b, tenant_b).post(
        "/api/v1/t/south/devices/00000000-0000-0000-0000-000000000000/media-exports/", body, format="json"
    )
    assert other_tenant.status_code == missing.status_code == 404
    assert other_tenant.content == missing.content
    assert deidentified.status_code == 201
    assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user == admin_a


def test_media_export_needs_the_medium_approved_with_the_export_grant(
    api_client_for, tenant_a, admin_a, radiologist_a, burner, study
):
    api_client_for(admin_a, tenant_a).post(f"{API}{burner}/suspend/", {"reason": "audit"}, format="json")

    response = api_client_for(radiologist_a, tenant_a).post(
        f"{API}{burner}/media-exports/", {"studies": [study.study_instance_uid], "deidentified": True}, format="json"
    )

    assert response.status_code == 403
    assert problem(response)["code"] == "device_not_granted"


def test_a_device_token_cannot_mint_a_person_token_or_reach_other_apis(enrolled, tenant_a, radiologist_a):
    """Minimum necessary: a device's token works only on DICOMweb reads and the device's own endpoints, so it
    cannot be swapped for a person's token that its device gate would not narrow."""
    minted = enrolled.post("/api/v1/t/north/tokens/", {"name": "escape"}, format="json")
    members = enrolled.get("/api/v1/t/north/members/")

    assert minted.status_code == 403
    assert problem(minted)["code"] == "device_not_granted"
    assert members.status_code == 403
    assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user == radiologist_a


def test_a_device_whose_wipe_is_ordered_gets_no_new_token(api_client_for, tenant_a, admin_a, radiologist_a, enrolled):
    with tenant_scope(tenant_a):
        device = Device.objects.get(custodian=radiologist_a)
    api_client_for(admin_a, tenant_a).post(f"{API}{device.public_id}/order-wipe/", {"reason": "x"}, format="json")

    response = enrolled.post(f"{API}self/refresh/", GOOD, format="json")

    assert response.status_code == 403
    assert problem(response)["code"] == "device_not_approved"
