from __future__ import annotations

from tenants.models import Role
from tests.tenants.helpers import membership_of, problem, random_id

URL = "/api/v1/t/north/members/"


def test_get_one_member(api_client_for, tenant_a, compliance_a, radiologist_a):
    membership = membership_of(radiologist_a, tenant_a)

    response = api_client_for(compliance_a, tenant_a).get(f"{URL}{membership.public_id}/")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(membership.public_id)
    assert body["username"] == "north-radiologist"
    assert body["email"] == radiologist_a.email
    assert body["role"] == Role.RADIOLOGIST
    assert "password" not in body


def test_another_tenants_member_is_a_404_like_a_missing_one(api_client_for, tenant_a, tenant_b, admin_a, admin_b):
    client = api_client_for(admin_a, tenant_a)
    south_id = membership_of(admin_b, tenant_b).public_id

    other = client.get(f"{URL}{south_id}/")
    missing = client.get(f"{URL}{random_id()}/")
    malformed = client.get(f"{URL}not-a-uuid/")

    assert other.status_code == missing.status_code == malformed.status_code == 404
    assert other.content == missing.content == malformed.content
    assert problem(other)["detail"]


def test_radiologist_is_refused_whatever_the_id(api_client_for, tenant_a, radiologist_a, admin_a):
    client = api_client_for(radiologist_a, tenant_a)

    existing = client.get(f"{URL}{membership_of(admin_a, tenant_a).public_id}/")
    missing = client.get(f"{URL}{random_id()}/")

    assert existing.status_code == missing.status_code == 403
    assert existing.content == missing.content
