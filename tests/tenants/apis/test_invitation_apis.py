"""Invitations through the REST API. Issue 8 #3: a tenant admin could pull another tenant's account in by user
name; the 201 showed its e-mail and name, and 400 vs 201 told whether the name existed."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from audit.events import EventType
from tenants.models import Invitation, Membership, Role, User
from tenants.scoping import tenant_scope
from tests.tenants.helpers import events, last_event, problem

URL = "/api/v1/t/north/invitations/"
VARYING = {"id", "email", "created_at", "expires_at"}


@pytest.fixture
def south_referrer(make_member, tenant_b):
    user = make_member(tenant_b, Role.REFERRING_PHYSICIAN, "south-referrer")
    user.first_name, user.last_name, user.email = "Sofia", "Referrer", "sr1984@mail.example"
    user.save(update_fields=["first_name", "last_name", "email"])
    return user


def invite(**overrides):
    return {"email": "newcomer@example.org", "first_name": "Nora", "role": Role.COMPLIANCE_OFFICER, **overrides}


def test_admin_invites_an_address(api_client_for, tenant_a, admin_a, django_capture_on_commit_callbacks):
    client = api_client_for(admin_a, tenant_a)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(URL, invite(email="Newcomer@Example.org"), format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["email"] == "newcomer@example.org"
    assert body["role"] == Role.COMPLIANCE_OFFICER
    assert body["status"] == "pending"
    assert not User.objects.filter(email__iexact="newcomer@example.org").exists()
    (message,) = mail.outbox
    assert message.to == ["newcomer@example.org"]
    raw = re.search(r"/invitations/(inv_[\w-]+)/", message.body).group(1)
    with tenant_scope(tenant_a):
        stored = Invitation.objects.get(public_id=body["id"])
    assert stored.digest == Invitation.digest_of(raw) != raw  # only the digest is kept
    assert stored.expires_at > timezone.now() + timedelta(days=6)
    event = last_event(tenant_a, EventType.INVITATION_SENT)
    assert event.actor_user == admin_a
    assert event.target_id == body["id"]


def test_security_review_scenario_answers_the_same_for_another_tenants_account(
    api_client_for, tenant_a, tenant_b, admin_a, south_referrer, django_capture_on_commit_callbacks
):
    client = api_client_for(admin_a, tenant_a)

    by_name = client.post(URL, {"username": "south-referrer", "role": Role.RADIOLOGIST}, format="json")
    by_unknown_name = client.post(URL, {"username": "nobody-at-all", "role": Role.RADIOLOGIST}, format="json")
    old_door = client.post("/api/v1/t/north/members/", {"username": "south-referrer", "role": "radiologist"})
    with django_capture_on_commit_callbacks(execute=True):
        by_email = client.post(URL, {"email": south_referrer.email, "role": Role.RADIOLOGIST}, format="json")
        by_unknown_email = client.post(URL, {"email": "nobody@example.org", "role": Role.RADIOLOGIST}, format="json")

    assert by_name.status_code == by_unknown_name.status_code == 400
    assert problem(by_name) == problem(by_unknown_name)
    assert old_door.status_code == 405  # no way to add an account directly any more
    assert by_email.status_code == by_unknown_email.status_code == 201
    known, unknown = by_email.json(), by_unknown_email.json()
    assert {k: v for k, v in known.items() if k not in VARYING} == {
        k: v for k, v in unknown.items() if k not in VARYING
    }
    assert set(known) == set(unknown)
    for response in (by_name, by_email):
        text = response.content.decode()
        assert "Sofia" not in text
        assert "Referrer" not in text
        assert "south" not in text.lower()
    with tenant_scope(tenant_a):
        assert not Membership.objects.filter(user=south_referrer).exists()
    assert south_referrer.groups.filter(name__startswith="north:").count() == 0
    # the mail goes to the address given, and names no account either
    assert [m.to for m in mail.outbox] == [[south_referrer.email], ["nobody@example.org"]]
    assert "south-referrer" not in mail.outbox[0].body
    assert events(tenant_b, EventType.INVITATION_SENT) == []


def test_input_is_validated(api_client_for, tenant_a, admin_a):
    client = api_client_for(admin_a, tenant_a)

    auditor = client.post(URL, invite(role=Role.AUDITOR), format="json")
    bad_role = client.post(URL, invite(role="surgeon"), format="json")
    past = client.post(URL, invite(ends_at="2001-01-01T00:00:00Z"), format="json")
    bad_email = client.post(URL, invite(email="not-an-address"), format="json")
    ends_at = (timezone.now() + timedelta(days=60)).isoformat()
    auditor_with_end = client.post(URL, invite(role=Role.AUDITOR, ends_at=ends_at), format="json")

    assert problem(auditor)["errors"] == {"ends_at": ["An auditor's membership must have an end date."]}
    assert "role" in problem(bad_role)["errors"]
    assert problem(past)["errors"] == {"ends_at": ["The end date must be in the future."]}
    assert "email" in problem(bad_email)["errors"]
    assert auditor_with_end.status_code == 201
    assert len(events(tenant_a, EventType.INVITATION_SENT)) == 1


def test_list_get_and_withdraw(api_client_for, tenant_a, admin_a, compliance_a):
    client = api_client_for(admin_a, tenant_a)
    created = client.post(URL, invite(), format="json").json()
    again = client.post(URL, invite(role=Role.RADIOLOGIST), format="json").json()  # replaces the first

    listed = api_client_for(compliance_a, tenant_a).get(f"{URL}?pending=true").json()
    one = client.get(f"{URL}{again['id']}/")
    withdrawn = client.delete(f"{URL}{again['id']}/")
    twice = client.delete(f"{URL}{again['id']}/")

    assert [row["id"] for row in listed["results"]] == [again["id"]]
    assert client.get(f"{URL}{created['id']}/").json()["status"] == "revoked"
    # The replaced invitation's withdrawal is a recorded change, not a silent QuerySet.update (issue 12).
    from auditlog.models import LogEntry

    replaced = LogEntry.objects.filter(
        content_type__model="invitation", action=LogEntry.Action.UPDATE, changes__has_key="revoked_at"
    )
    assert replaced.count() == 2  # the replaced one, then the withdrawn one
    assert one.json()["role"] == Role.RADIOLOGIST
    assert withdrawn.status_code == twice.status_code == 204
    assert client.get(f"{URL}{again['id']}/").json()["status"] == "revoked"
    assert len(events(tenant_a, EventType.INVITATION_REVOKED)) == 1


def test_members_without_the_permission_get_403_and_it_is_recorded(
    api_client_for, tenant_a, admin_a, compliance_a, radiologist_a
):
    made = api_client_for(admin_a, tenant_a).post(URL, invite(), format="json").json()
    for user in (compliance_a, radiologist_a):
        client = api_client_for(user, tenant_a)
        create = client.post(URL, invite(email="x@example.org"), format="json")
        revoke = client.delete(f"{URL}{made['id']}/")
        assert create.status_code == revoke.status_code == 403
        assert last_event(tenant_a, EventType.ACCESS_DENIED).actor_user == user
    assert len(events(tenant_a, EventType.INVITATION_SENT)) == 1
    assert events(tenant_a, EventType.INVITATION_REVOKED) == []


def test_another_tenant_is_a_404_like_a_missing_one(api_client_for, tenant_a, tenant_b, admin_a, admin_b):
    made = api_client_for(admin_a, tenant_a).post(URL, invite(), format="json").json()
    south = api_client_for(admin_b, tenant_b)

    other = south.post(URL, invite(), format="json")
    missing = south.post("/api/v1/t/nowhere/invitations/", invite(), format="json")
    other_id = south.get(f"/api/v1/t/south/invitations/{made['id']}/")
    random_id = south.get("/api/v1/t/south/invitations/00000000-0000-4000-8000-000000000000/")
    other_delete = south.delete(f"/api/v1/t/south/invitations/{made['id']}/")

    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content
    assert other_id.status_code == random_id.status_code == other_delete.status_code == 404
    assert other_id.content == random_id.content
    with tenant_scope(tenant_a):
        assert Invitation.objects.get(public_id=made["id"]).revoked_at is None


def test_list_query_budget(api_client_for, tenant_a, admin_a, django_assert_max_num_queries):
    client = api_client_for(admin_a, tenant_a)
    for n in range(10):
        client.post(URL, invite(email=f"p{n}@example.org"), format="json")
    with django_assert_max_num_queries(14):
        response = client.get(URL)
    assert response.json()["count"] == 10
