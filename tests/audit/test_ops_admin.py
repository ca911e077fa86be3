"""The operators' admin at /ops/: staff with a verified second factor only, read-only audit, no patient data."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from audit.events import EventType
from audit.models import AuditEvent
from audit.selectors import audit_chain_verify
from tenants.models import Membership, Role, Tenant
from tests.audit.helpers import record
from tests.chains import chain_of
from tests.conftest import verified_client
from tests.tenants.factories import totp_device_for

pytestmark = pytest.mark.django_db

SECRET_PARTICIPANT = "DOE^JANE PATIENT-0042"


@pytest.fixture
def ops(platform_staff) -> Client:
    return verified_client(platform_staff)


def _event_with_patient(tenant) -> AuditEvent:
    return record(
        tenant,
        EventType.LOGIN_SUCCEEDED,
        actor_username="north-radiologist",
        participants=[{"type": "patient", "id": "PAT-0042", "name": SECRET_PARTICIPANT}],
        extra={"query": SECRET_PARTICIPANT},
    )


def _assert_no_such_admin_view(client: Client, url: str) -> None:
    """The admin answers an unknown view of an object by redirecting to the object's (read-only) page."""
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].endswith("/change/")


def test_staff_without_a_verified_second_factor_is_sent_to_sign_in(platform_staff):
    client = Client()
    client.force_login(platform_staff)  # password only
    response = client.get("/ops/tenants/tenant/")
    assert response.status_code == 302
    assert response["Location"].startswith("/ops/login/")
    login = client.get(response["Location"])
    assert login.status_code == 302
    assert login["Location"].startswith(reverse("accounts:mfa"))


def test_a_verified_member_who_is_not_staff_gets_no_admin(client_for, tenant_a, admin_a):
    response = client_for(admin_a).get("/ops/tenants/tenant/")
    assert response.status_code == 302
    assert response["Location"].startswith("/ops/login/")


def test_a_verified_operator_sees_the_tenants(ops, tenant_a, tenant_b):
    response = ops.get("/ops/tenants/tenant/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "North Hospital Group" in page
    assert "South Hospital Group" in page


def test_an_operator_creates_a_tenant_through_the_service(ops):
    response = ops.post("/ops/tenants/tenant/add/", {"slug": "east", "name": "East Hospital Group"})

    assert response.status_code == 302
    tenant = Tenant.objects.get(slug="east")
    chain = chain_of(tenant)
    assert chain.last_sequence == 1
    assert AuditEvent.unscoped_objects.get(chain=chain).event_type == EventType.TENANT_CREATED
    assert Group.objects.filter(name__startswith="east:").count() == len(Role.values)  # the role groups
    assert ops.get(f"/ops/tenants/tenant/{tenant.pk}/change/").status_code == 200
    assert ops.post(f"/ops/tenants/tenant/{tenant.pk}/change/", {"slug": "west", "name": "x"}).status_code == 403
    assert ops.get(f"/ops/tenants/tenant/{tenant.pk}/delete/").status_code == 403


def test_audit_events_are_read_only_and_show_no_participants(ops, tenant_a):
    event = _event_with_patient(tenant_a)

    listing = ops.get("/ops/audit/auditevent/")
    detail = ops.get(f"/ops/audit/auditevent/{event.pk}/change/")

    assert listing.status_code == 200
    assert detail.status_code == 200
    for response in (listing, detail):
        page = response.content.decode()
        assert "north-radiologist" in page
        assert SECRET_PARTICIPANT not in page
        assert "PAT-0042" not in page
    assert ops.post(f"/ops/audit/auditevent/{event.pk}/change/", {"actor_username": "mallory"}).status_code == 403
    assert ops.get(f"/ops/audit/auditevent/{event.pk}/delete/").status_code == 403
    assert ops.post(f"/ops/audit/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert ops.get("/ops/audit/auditevent/add/").status_code == 403
    assert audit_chain_verify(chain=chain_of(tenant_a)).ok


def test_reading_audit_events_in_the_admin_is_recorded(ops, platform_staff, tenant_a):
    ops.get("/ops/audit/auditevent/", {"tenant__id__exact": tenant_a.pk})
    used = AuditEvent.unscoped_objects.filter(event_type=EventType.AUDIT_LOG_USED).get()
    assert used.tenant is None
    assert used.actor_user == platform_staff
    assert used.extra == {"where": "ops", "filters": {"tenant__id__exact": str(tenant_a.pk)}}


def test_audit_chains_are_read_only_and_can_be_verified(ops, tenant_a):
    chain = chain_of(tenant_a)
    assert ops.get("/ops/audit/auditchain/").status_code == 200
    assert ops.get(f"/ops/audit/auditchain/{chain.pk}/delete/").status_code == 403
    response = ops.post("/ops/audit/auditchain/", {"action": "verify", "_selected_action": [chain.pk]}, follow=True)
    assert response.status_code == 200
    assert "1 events, OK" in response.content.decode()


def test_auditlog_entries_are_not_in_the_admin(ops):
    assert ops.get("/ops/auditlog/logentry/").status_code == 404


def test_authenticator_secrets_are_not_in_the_admin(ops, platform_staff):
    device = totp_device_for(platform_staff)
    listing = ops.get("/ops/otp_totp/totpdevice/")
    assert listing.status_code == 200
    detail = ops.get(f"/ops/otp_totp/totpdevice/{device.pk}/change/").content.decode()
    assert device.key not in detail
    _assert_no_such_admin_view(ops, f"/ops/otp_totp/totpdevice/{device.pk}/config/")  # django-otp's QR code
    assert ops.get("/ops/otp_totp/totpdevice/add/").status_code == 403


def test_users_are_listed_and_searched_without_password_editing(ops, tenant_a, radiologist_a):
    response = ops.get("/ops/tenants/user/", {"q": "north-radio"})
    assert response.status_code == 200
    assert "north-radiologist" in response.content.decode()
    detail = ops.get(f"/ops/tenants/user/{radiologist_a.pk}/change/")
    assert detail.status_code == 200
    assert "north · Radiologist · Active" in detail.content.decode()  # memberships, across tenants
    _assert_no_such_admin_view(ops, f"/ops/tenants/user/{radiologist_a.pk}/password/")  # UserAdmin's set-password
    assert ops.post(f"/ops/tenants/user/{radiologist_a.pk}/change/", {"is_staff": "on"}).status_code == 403
    assert ops.get("/ops/tenants/user/add/").status_code == 403


def test_deactivate_action_calls_the_service(ops, platform_staff, tenant_a, radiologist_a):
    response = ops.post(
        "/ops/tenants/user/", {"action": "deactivate", "_selected_action": [radiologist_a.pk]}, follow=True
    )

    assert response.status_code == 200
    radiologist_a.refresh_from_db()
    assert not radiologist_a.is_active
    membership = Membership.unscoped_objects.get(user=radiologist_a)
    assert membership.status == Membership.Status.ENDED
    deactivated = AuditEvent.unscoped_objects.get(event_type=EventType.USER_DEACTIVATED)
    assert deactivated.actor_user == platform_staff
    assert deactivated.tenant is None
    assert deactivated.participants[0]["name"] == "north-radiologist"
    ended = AuditEvent.unscoped_objects.get(event_type=EventType.MEMBERSHIP_ENDED)
    assert ended.tenant == tenant_a


def test_an_operator_cannot_deactivate_themselves(ops, platform_staff):
    ops.post("/ops/tenants/user/", {"action": "deactivate", "_selected_action": [platform_staff.pk]})
    platform_staff.refresh_from_db()
    assert platform_staff.is_active


def test_the_operators_index_says_which_malware_scanner_runs(ops, settings):
    settings.CLAMD_ADDRESS = ""
    page = ops.get("/ops/").content.decode()
    assert "only recognises the EICAR test file" in page
    assert "Set CLAMD_ADDRESS" in page
    settings.CLAMD_ADDRESS = "unix:///run/clamav/clamd.ctl"
    page = ops.get("/ops/").content.decode()
    assert "clamd at unix:///run/clamav/clamd.ctl" in page
