from __future__ import annotations

from datetime import timedelta

from django.core import mail
from django.utils import timezone

from audit.events import EventType
from tenants import access
from tenants.models import Membership, Role, User
from tenants.scoping import tenant_scope
from tests.tenants.helpers import events, last_event, membership_of, problem

URL = "/api/v1/t/north/members/"


def new_member(**overrides):
    return {
        "username": "north-newcomer",
        "email": "newcomer@example.org",
        "first_name": "Nora",
        "last_name": "Newcomer",
        "role": Role.COMPLIANCE_OFFICER,
        **overrides,
    }


def test_admin_adds_a_new_person(api_client_for, tenant_a, admin_a, django_capture_on_commit_callbacks):
    client = api_client_for(admin_a, tenant_a)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(URL, new_member(), format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["username"] == "north-newcomer"
    assert body["role"] == Role.COMPLIANCE_OFFICER
    user = User.objects.get(username="north-newcomer")
    assert not user.has_usable_password()
    membership = membership_of(user, tenant_a)
    assert body["id"] == str(membership.public_id)
    with tenant_scope(tenant_a):
        assert access.has_perm(user, "tenants.view_audit", tenant_a)
        assert not access.has_perm(user, "tenants.manage_members", tenant_a)
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["newcomer@example.org"]
    assert "/accounts/set-password/" in mail.outbox[0].body
    event = last_event(tenant_a, EventType.MEMBER_ADDED)
    assert event.actor_user == admin_a
    assert event.actor_role == Role.TENANT_ADMIN
    assert event.target_id == str(membership.public_id)
    assert event.extra["role"] == Role.COMPLIANCE_OFFICER


def test_an_existing_user_of_another_tenant_joins(
    api_client_for, tenant_a, admin_a, outsider_b, django_capture_on_commit_callbacks
):
    client = api_client_for(admin_a, tenant_a)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(URL, {"username": "South-Radiologist", "role": Role.RADIOLOGIST}, format="json")

    assert response.status_code == 201
    assert response.json()["username"] == "south-radiologist"
    assert membership_of(outsider_b, tenant_a).role == Role.RADIOLOGIST
    assert mail.outbox == []


def test_an_auditor_needs_an_end_date(api_client_for, tenant_a, admin_a):
    client = api_client_for(admin_a, tenant_a)

    refused = client.post(URL, new_member(role=Role.AUDITOR), format="json")
    ends_at = (timezone.now() + timedelta(days=60)).isoformat()
    accepted = client.post(URL, new_member(role=Role.AUDITOR, ends_at=ends_at), format="json")

    assert refused.status_code == 400
    assert problem(refused)["errors"] == {"ends_at": ["An auditor's membership must have an end date."]}
    assert accepted.status_code == 201
    assert accepted.json()["ends_at"] is not None


def test_clear_errors_for_bad_input(api_client_for, tenant_a, admin_a, radiologist_a):
    client = api_client_for(admin_a, tenant_a)

    no_email = client.post(URL, {"username": "north-nomail", "role": Role.RADIOLOGIST}, format="json")
    bad_role = client.post(URL, new_member(role="surgeon"), format="json")
    past = client.post(URL, new_member(ends_at="2001-01-01T00:00:00Z"), format="json")
    already = client.post(URL, {"username": "north-radiologist", "role": Role.TECHNOLOGIST}, format="json")

    assert problem(no_email)["errors"] == {"email": ["A new user needs an email address for the invitation."]}
    assert "role" in problem(bad_role)["errors"]
    assert problem(past)["errors"] == {"ends_at": ["The end date must be in the future."]}
    assert problem(already)["errors"] == {"username": ["This person is already a member."]}
    assert not User.objects.filter(username="north-nomail").exists()
    assert len(events(tenant_a, EventType.MEMBER_ADDED)) == 0


def test_a_former_member_is_reinstated(api_client_for, tenant_a, admin_a, make_member, tenant_b):
    person = make_member(tenant_a, Role.TECHNOLOGIST, "north-returning")
    make_member(tenant_b, Role.RADIOLOGIST, "north-returning-elsewhere")  # another user, for a busy database
    client = api_client_for(admin_a, tenant_a)
    end = client.post(f"{URL}{membership_of(person, tenant_a).public_id}/end/", {"reason": "leave"}, format="json")
    assert end.status_code == 200
    person.is_active = True  # an operator reactivated the account; a tenant admin cannot
    person.save(update_fields=["is_active"])

    response = client.post(URL, {"username": "north-returning", "role": Role.RADIOLOGIST}, format="json")

    assert response.status_code == 201
    membership = membership_of(person, tenant_a)
    assert (membership.status, membership.role, membership.ended_reason) == ("active", Role.RADIOLOGIST, "")


def test_compliance_officer_and_radiologist_are_refused(api_client_for, tenant_a, compliance_a, radiologist_a):
    for user in (compliance_a, radiologist_a):
        response = api_client_for(user, tenant_a).post(URL, new_member(), format="json")
        assert response.status_code == 403
        assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user == user
    assert not User.objects.filter(username="north-newcomer").exists()


def test_another_tenants_admin_gets_a_404(api_client_for, tenant_a, tenant_b, admin_a, admin_b):
    other = api_client_for(admin_b, tenant_b).post(URL, new_member(), format="json")
    missing = api_client_for(admin_b, tenant_b).post("/api/v1/t/nowhere/members/", new_member(), format="json")

    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content
    with tenant_scope(tenant_a):
        assert not Membership.objects.filter(user__username="north-newcomer").exists()
