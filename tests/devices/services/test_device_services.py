"""The device registry's services: register (pending), approve (a second administrator), revoke, and what the DICOM
listener's check (`dicom_peer_get`) makes of each state."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from audit.events import EventType
from devices import selectors, services
from devices.models import Device, IllegalTransition
from tenants import access
from tenants.scoping import tenant_scope
from tests.devices.helpers import approve, device_count, register, reload, revoke
from tests.tenants.helpers import events, last_event


def peer(tenant, ae_title, address):
    with tenant_scope(tenant):
        return selectors.dicom_peer_get(ae_title=ae_title, address=address)


def test_register_is_pending_and_audited(tenant_a, admin_a):
    device = register(tenant_a, admin_a, ae_title=" ct_one ", host="10.0.0.5")

    assert device.status == Device.Status.PENDING
    assert device.ae_title == "CT_ONE"  # stripped and upper-cased
    assert device.requested_by == admin_a
    assert device.approved_by is None
    event = last_event(tenant_a, EventType.DEVICE_REGISTERED)
    assert event.actor_user == admin_a
    assert (event.target_type, event.target_id) == ("devices.device", str(device.public_id))
    assert event.event_id == "110113"
    assert event.event_type_code == "110128"
    assert event.action == "C"
    assert peer(tenant_a, "CT_ONE", "10.0.0.5") is None  # not let in before approval


def test_approve_by_a_second_administrator(tenant_a, admin_a, second_admin_a, pending_device):
    device = approve(tenant_a, second_admin_a, pending_device)

    assert device.status == Device.Status.APPROVED
    assert device.approved_by == second_admin_a
    assert device.approved_at is not None
    event = last_event(tenant_a, EventType.DEVICE_APPROVED)
    assert event.actor_user == second_admin_a
    assert event.target_id == str(device.public_id)
    assert event.action == "U"
    assert peer(tenant_a, "ct_pending", "10.0.0.5") == device


def test_the_administrator_who_registered_it_cannot_approve_it(tenant_a, admin_a, pending_device):
    with pytest.raises(access.Forbidden) as refused:
        approve(tenant_a, admin_a, pending_device)

    assert refused.value.code == "two_person_rule"
    assert "another administrator" in str(refused.value)
    assert reload(tenant_a, pending_device).status == Device.Status.PENDING
    assert events(tenant_a, EventType.DEVICE_APPROVED) == []


def test_approving_twice_changes_nothing(tenant_a, second_admin_a, approved_device):
    before = len(events(tenant_a, EventType.DEVICE_APPROVED))

    again = approve(tenant_a, second_admin_a, approved_device)

    assert again.approved_at == approved_device.approved_at
    assert len(events(tenant_a, EventType.DEVICE_APPROVED)) == before


def test_revoke_an_approved_device_shuts_it_out(tenant_a, admin_a, approved_device):
    assert peer(tenant_a, "MR_OK", "10.0.0.5") == approved_device

    device = revoke(tenant_a, admin_a, approved_device, reason="sold to another hospital")

    assert device.status == Device.Status.REVOKED
    assert peer(tenant_a, "MR_OK", "10.0.0.5") is None
    event = last_event(tenant_a, EventType.DEVICE_REVOKED)
    assert event.actor_user == admin_a
    assert (event.target_type, event.target_id) == ("devices.device", str(device.public_id))
    assert (event.event_id, event.event_type_code, event.action) == ("110113", "110128", "U")
    assert event.extra == {"reason": "sold to another hospital", "previous_status": "approved", "ae_title": "MR_OK"}


def test_revoke_a_pending_device_by_the_one_who_registered_it(tenant_a, admin_a, pending_device):
    # Shutting a device out takes one person; only letting one in takes two.
    assert revoke(tenant_a, admin_a, pending_device).status == Device.Status.REVOKED


def test_revoke_is_idempotent_and_a_revoked_device_cannot_be_approved(tenant_a, admin_a, second_admin_a,
                                                                      pending_device):  # fmt: skip
    revoke(tenant_a, admin_a, pending_device)
    revoke(tenant_a, admin_a, pending_device)

    assert len(events(tenant_a, EventType.DEVICE_REVOKED)) == 1
    with pytest.raises(IllegalTransition) as refused:
        approve(tenant_a, second_admin_a, pending_device)
    assert refused.value.allowed == ["wipe_ordered"]


def test_revoke_needs_a_reason(tenant_a, admin_a, approved_device):
    with pytest.raises(ValidationError) as refused:
        revoke(tenant_a, admin_a, approved_device, reason="  ")

    assert "reason" in refused.value.message_dict
    assert reload(tenant_a, approved_device).status == Device.Status.APPROVED


def test_a_retired_device_cannot_be_revoked(tenant_a, admin_a, approved_device):
    with tenant_scope(tenant_a):
        Device.objects.filter(pk=approved_device.pk).update(status=Device.Status.RETIRED)

    with pytest.raises(IllegalTransition) as refused:
        revoke(tenant_a, admin_a, approved_device)

    assert refused.value.allowed == []


def test_members_without_the_permission_are_refused(tenant_a, radiologist_a, approved_device):
    with pytest.raises(access.Forbidden):
        register(tenant_a, radiologist_a, ae_title="X_CT")
    with pytest.raises(access.Forbidden):
        approve(tenant_a, radiologist_a, approved_device)
    with pytest.raises(access.Forbidden):
        revoke(tenant_a, radiologist_a, approved_device)


def test_another_tenants_device_is_out_of_reach(tenant_a, admin_a, device_b):
    with tenant_scope(tenant_a), pytest.raises(access.Forbidden):
        services.device_revoke(actor=admin_a, device=device_b, reason="not mine")
    with tenant_scope(tenant_a), pytest.raises(access.NotVisible):
        selectors.device_get(actor=admin_a, public_id=device_b.public_id)


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"ae_title": ""}, "ae_title", "A DICOM device needs its AE title."),
        ({"ae_title": "BAD\\AE"}, "ae_title", "An AE title is up to 16 plain characters, no backslash."),
        ({"host": "ct.example.org"}, "host", "Enter a valid IPv4 or IPv6 address."),
        ({"host": "10.0.0.300"}, "host", "Enter a valid IPv4 or IPv6 address."),
        ({"kind": "toaster"}, "kind", "Value 'toaster' is not a valid choice."),
    ],
)
def test_invalid_devices_are_refused_with_a_clear_reason(tenant_a, admin_a, fields, field, message):
    arguments = {"kind": Device.Kind.MODALITY, "name": "CT", "ae_title": "CT_NEW", "host": "10.0.0.9", **fields}

    with tenant_scope(tenant_a), pytest.raises(ValidationError) as refused:
        services.device_register(actor=admin_a, **arguments)

    assert message in refused.value.message_dict[field]
    assert device_count(tenant_a) == 0
    assert events(tenant_a, EventType.DEVICE_REGISTERED) == []


def test_an_ae_title_is_unique_in_the_tenant_whatever_its_case_or_status(tenant_a, admin_a, pending_device):
    revoke(tenant_a, admin_a, pending_device)

    with pytest.raises(ValidationError) as refused:
        register(tenant_a, admin_a, ae_title="ct_pending", name="Another CT")

    assert refused.value.message_dict == {
        "ae_title": [
            "The AE title CT_PENDING is already registered for “CT 2, emergency” (revoked). "
            "Each device of the organisation needs its own."
        ]
    }


def test_the_same_ae_title_in_two_tenants_is_fine(tenant_a, admin_a, device_b):
    assert register(tenant_a, admin_a, ae_title=device_b.ae_title).ae_title == "SOUTH_CT"


def test_a_device_without_a_host_may_connect_from_anywhere(tenant_a, admin_a, second_admin_a):
    device = approve(tenant_a, second_admin_a, register(tenant_a, admin_a, ae_title="ROAMING", host=""))

    assert device.host is None
    assert peer(tenant_a, "ROAMING", "192.0.2.7") == device


def test_a_device_is_let_in_only_from_its_host(tenant_a, approved_device):
    assert peer(tenant_a, "MR_OK", "10.0.0.5") == approved_device
    assert peer(tenant_a, "MR_OK", "10.0.0.6") is None
