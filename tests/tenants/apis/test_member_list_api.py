from __future__ import annotations

from rest_framework.test import APIClient

from audit.events import EventType
from tenants import services
from tenants.models import Role
from tenants.scoping import tenant_scope
from tests.tenants.helpers import last_event, membership_of, problem

URL = "/api/v1/t/north/members/"


def test_admin_lists_members_without_secrets(api_client_for, tenant_a, admin_a, radiologist_a, auditor_a):
    response = api_client_for(admin_a, tenant_a).get(URL)

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3
    rows = {row["username"]: row for row in body["results"]}
    assert set(rows) == {"north-admin", "north-radiologist", "north-auditor"}
    radiologist = rows["north-radiologist"]
    assert radiologist["id"] == str(membership_of(radiologist_a, tenant_a).public_id)
    assert radiologist["role"] == Role.RADIOLOGIST
    assert radiologist["status"] == "active"
    assert radiologist["is_current"] is True
    assert rows["north-auditor"]["ends_at"] is not None
    text = response.content.decode()
    for secret in ("password", "digest", "pbkdf2", "md5$"):
        assert secret not in text


def test_filters_by_role_and_status(api_client_for, tenant_a, admin_a, radiologist_a, technologist_a):
    with tenant_scope(tenant_a):
        services.membership_end(actor=admin_a, membership=membership_of(technologist_a, tenant_a), reason="left")
    client = api_client_for(admin_a, tenant_a)

    by_role = client.get(URL, {"role": Role.RADIOLOGIST}).json()
    ended = client.get(URL, {"status": "ended"}).json()
    active_admins = client.get(URL, {"status": "active", "role": Role.TENANT_ADMIN}).json()

    assert [r["username"] for r in by_role["results"]] == ["north-radiologist"]
    assert [r["username"] for r in ended["results"]] == ["north-technologist"]
    assert ended["results"][0]["ended_reason"] == "left"
    assert [r["username"] for r in active_admins["results"]] == ["north-admin"]


def test_a_bad_filter_is_a_clear_400(api_client_for, tenant_a, admin_a):
    response = api_client_for(admin_a, tenant_a).get(URL, {"role": "king"})

    assert response.status_code == 400
    assert "role" in problem(response)["errors"]


def test_compliance_officer_and_auditor_may_read(api_client_for, tenant_a, compliance_a, auditor_a):
    assert api_client_for(compliance_a, tenant_a).get(URL).status_code == 200
    assert api_client_for(auditor_a, tenant_a).get(URL).status_code == 200


def test_radiologist_is_refused_and_the_refusal_is_audited(api_client_for, tenant_a, radiologist_a):
    response = api_client_for(radiologist_a, tenant_a).get(URL)

    assert response.status_code == 403
    assert problem(response)["status"] == 403
    event = last_event(tenant_a, EventType.ACCESS_DENIED)
    assert event.actor_user == radiologist_a
    assert event.extra == {"where": "MemberListApi", "method": "GET"}


def test_another_tenant_is_a_404_like_no_tenant(api_client_for, tenant_a, tenant_b, admin_a, admin_b):
    client = api_client_for(admin_a, tenant_a)

    other = client.get("/api/v1/t/south/members/")
    missing = client.get("/api/v1/t/nowhere/members/")

    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content
    assert problem(other)["title"] == "Not found"


def test_no_credentials_is_401():
    response = APIClient().get(URL)
    assert response.status_code == 401


def test_query_budget_does_not_grow_with_members(
    api_client_for, tenant_a, admin_a, make_member, django_assert_max_num_queries
):
    for n in range(30):
        make_member(tenant_a, Role.RADIOLOGIST, f"north-r{n:02d}")
    client = api_client_for(admin_a, tenant_a)

    with django_assert_max_num_queries(10):
        response = client.get(URL)

    assert response.json()["count"] == 31
