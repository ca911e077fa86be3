from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from audit.events import EventType
from tenants import access
from tenants.models import Role
from tenants.scoping import tenant_scope
from tests.tenants.helpers import events, last_event, membership_of, problem, random_id

URL = "/api/v1/t/north/members/"


def url_of(user, tenant):
    return f"{URL}{membership_of(user, tenant).public_id}/"


def test_change_role(api_client_for, tenant_a, admin_a, radiologist_a):
    response = api_client_for(admin_a, tenant_a).patch(
        url_of(radiologist_a, tenant_a), {"role": Role.COMPLIANCE_OFFICER}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["role"] == Role.COMPLIANCE_OFFICER
    with tenant_scope(tenant_a):
        assert access.has_perm(radiologist_a, "tenants.view_audit", tenant_a)
    event = last_event(tenant_a, EventType.MEMBER_ROLE_CHANGED)
    assert event.actor_user == admin_a
    assert event.target_id == str(membership_of(radiologist_a, tenant_a).public_id)
    assert event.extra == {"from": Role.RADIOLOGIST, "to": Role.COMPLIANCE_OFFICER}


def test_set_and_clear_the_end_date(api_client_for, tenant_a, admin_a, radiologist_a):
    client = api_client_for(admin_a, tenant_a)
    ends_at = timezone.now() + timedelta(days=10)

    set_response = client.patch(url_of(radiologist_a, tenant_a), {"ends_at": ends_at.isoformat()}, format="json")
    clear_response = client.patch(url_of(radiologist_a, tenant_a), {"ends_at": None}, format="json")

    assert set_response.status_code == clear_response.status_code == 200
    assert parse_datetime(set_response.json()["ends_at"]) == ends_at
    assert clear_response.json()["ends_at"] is None
    set_event, clear_event = events(tenant_a, EventType.MEMBER_END_DATE_SET)
    assert set_event.extra == {"ends_at": ends_at.isoformat()}
    assert clear_event.extra == {"ends_at": None}
    assert clear_event.actor_user == admin_a


def test_becoming_an_auditor_and_back_in_one_request_each(api_client_for, tenant_a, admin_a, radiologist_a):
    client = api_client_for(admin_a, tenant_a)
    ends_at = (timezone.now() + timedelta(days=30)).isoformat()

    to_auditor = client.patch(
        url_of(radiologist_a, tenant_a), {"role": Role.AUDITOR, "ends_at": ends_at}, format="json"
    )
    back = client.patch(url_of(radiologist_a, tenant_a), {"role": Role.RADIOLOGIST, "ends_at": None}, format="json")

    assert to_auditor.status_code == back.status_code == 200
    assert back.json()["role"] == Role.RADIOLOGIST
    assert back.json()["ends_at"] is None


def test_an_auditor_without_an_end_date_is_refused_and_nothing_changes(
    api_client_for, tenant_a, admin_a, auditor_a, radiologist_a
):
    client = api_client_for(admin_a, tenant_a)

    to_auditor = client.patch(url_of(radiologist_a, tenant_a), {"role": Role.AUDITOR}, format="json")
    clear = client.patch(url_of(auditor_a, tenant_a), {"ends_at": None}, format="json")
    half = client.patch(
        url_of(radiologist_a, tenant_a),
        {"ends_at": (timezone.now() + timedelta(days=5)).isoformat(), "role": "surgeon"},
        format="json",
    )

    assert to_auditor.status_code == clear.status_code == half.status_code == 400
    assert problem(to_auditor)["errors"] == {"ends_at": ["An auditor's membership must have an end date."]}
    assert problem(clear)["errors"] == {"ends_at": ["An auditor's membership must have an end date."]}
    assert membership_of(radiologist_a, tenant_a).ends_at is None
    assert membership_of(radiologist_a, tenant_a).role == Role.RADIOLOGIST
    assert events(tenant_a, EventType.MEMBER_END_DATE_SET) == []


def test_an_admin_cannot_drop_their_own_admin_role(api_client_for, tenant_a, admin_a):
    response = api_client_for(admin_a, tenant_a).patch(
        url_of(admin_a, tenant_a), {"role": Role.RADIOLOGIST}, format="json"
    )

    assert response.status_code == 400
    assert problem(response)["errors"] == {"role": ["You cannot remove your own administrator role."]}
    assert membership_of(admin_a, tenant_a).role == Role.TENANT_ADMIN


def test_an_empty_change_is_a_400(api_client_for, tenant_a, admin_a, radiologist_a):
    response = api_client_for(admin_a, tenant_a).patch(url_of(radiologist_a, tenant_a), {}, format="json")

    assert response.status_code == 400
    assert problem(response)["errors"] == {"non_field_errors": ["Send `role`, `ends_at` or both."]}


def test_members_without_manage_members_are_refused(
    api_client_for, tenant_a, compliance_a, radiologist_a, technologist_a
):
    target = url_of(technologist_a, tenant_a)
    for user in (compliance_a, radiologist_a):
        response = api_client_for(user, tenant_a).patch(target, {"role": Role.RADIOLOGIST}, format="json")
        assert response.status_code == 403
        assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user == user
    assert membership_of(technologist_a, tenant_a).role == Role.TECHNOLOGIST


def test_another_tenants_member_is_a_404(api_client_for, tenant_a, tenant_b, admin_a, admin_b, outsider_b):
    client = api_client_for(admin_a, tenant_a)

    other = client.patch(url_of(outsider_b, tenant_b), {"role": Role.TECHNOLOGIST}, format="json")
    missing = client.patch(f"{URL}{random_id()}/", {"role": Role.TECHNOLOGIST}, format="json")
    other_tenant_url = client.patch(
        f"/api/v1/t/south/members/{membership_of(outsider_b, tenant_b).public_id}/",
        {"role": "technologist"},
        format="json",
    )

    assert other.status_code == missing.status_code == other_tenant_url.status_code == 404
    assert other.content == missing.content == other_tenant_url.content
    assert membership_of(outsider_b, tenant_b).role == Role.RADIOLOGIST
